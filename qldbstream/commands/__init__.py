"""Sub-commands of the ``qldbstream`` command (one module each, see :mod:`qldbstream.cli`)."""
