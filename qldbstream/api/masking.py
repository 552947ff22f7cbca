"""Public API for handlers that must respect masking (``docs/handlers/masking.md``).

Opt-in (``from qldbstream.api.masking import ...``). With masking on, the pipeline hands handlers
masked views of the records; a handler that copies records *out* (a replica, an archive) must
write the masked form too, or seal the original bytes - never the clear values. Why each name:

* :class:`Masker`, :func:`masking_from_settings`, :func:`masked_copy` - build the masker from
  the ``masking`` settings and give a wrapped handler masked views (the ``masking`` handler);
* :func:`masked_record_bytes` - the bytes to write for a record the pipeline masked (QLDB's
  redacted form plus ``maskedData``; it still verifies);
* :class:`Sealer`, :class:`KmsSealer`, :func:`seal_record` - the original bytes encrypted under
  a KMS data key instead, for a copy that must verify byte for byte.
"""

from __future__ import annotations

from qldbstream.core.masking import Masker, masked_copy
from qldbstream.core.masking_dlq import Sealer
from qldbstream.core.replica import masked_record_bytes, seal_record
from qldbstream.io.sealers import KmsSealer, masking_from_settings

__all__ = [
    "KmsSealer",
    "Masker",
    "Sealer",
    "masked_copy",
    "masked_record_bytes",
    "masking_from_settings",
    "seal_record",
]
