"""The pure stages: bytes in, typed and verified journal records out - no I/O, no clock, no boto3.

deaggregate (KPL) → decode (Ion, hashes from the bytes: ``decode``, ``scan``; the record types in
``journal``) → verify (V1-V10: ``verify``, ``crossref``, ``chain``, ``proof``) → admit (the
delivery gate: ``gate``, ``gate_store``, ``admit``, ``release``, ``entries``, ``order``)
→ dedupe planning (``dedupe``); beside them the masking rules (``masking``, ``masking_text``,
``masking_dlq``), Ion (``ion``) and QLDB's hash combinators (``qldb_hash``). The rule is in
``README.md`` here and ``tests/unit/test_layout.py`` enforces it.
"""
