"""Assembling a running qldbstream: settings read once (``config``), handler plugins found
(``plugins``), and the :class:`~qldbstream.app.assembly.App` that builds the pipeline and the
services the handlers share from them, once per process.
"""
