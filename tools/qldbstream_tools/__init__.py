"""Developer tools for qldbstream, a distribution of their own (``qldbstream-tools``, ``tools/``).

* :mod:`qldbstream_tools.simulate` - a deterministic QLDB ledger and its journal stream, byte for
  byte as QLDB writes it to Kinesis (the tests' and the benchmarks' source of streams);
* :mod:`qldbstream_tools.demo` - the whole runtime path on an embedded local AWS (moto in this
  process), checked against the simulator's ground truth;
* :mod:`qldbstream_tools.cli` - the ``qldbstream simulate`` and ``qldbstream demo`` sub-commands,
  found by ``qldbstream`` through the ``qldbstream.commands`` entry points.

None of it belongs in a deployed consumer: the core distribution (``qldbstream``) does not
depend on it, so a Lambda zip built from the core wheel carries no simulator, demo or moto.
"""
