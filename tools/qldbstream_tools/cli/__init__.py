"""The sub-commands this distribution adds to ``qldbstream`` (entry-point group ``qldbstream.commands``).

Each module exposes ``register(subparsers)``, as the core's own sub-command modules do.
"""
