"""Built-in handler plugins for qldbstream.

Each plugin is registered under the ``qldbstream.handlers`` entry-point group in this
distribution's ``pyproject.toml`` and becomes active only when configured.
"""

__all__: list[str] = []
