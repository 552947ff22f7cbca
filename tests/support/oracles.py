"""Independent reference implementations used as test oracles (never imported by the package).

* PyPI ``ionhash`` 1.2.1 - the Ion Hash reference. It does ``from amazon.ion.simple_types import
  _IonNature`` at import time only to monkey-patch a convenience method onto that class, and
  amazon-ion >= 0.11 removed the class (ion-hash-python issue #36), so a plain ``import ionhash``
  fails. When the class is missing an empty placeholder is installed first; the hashing code
  itself (``ionhash.fast_value_hasher.hash_value``) is unchanged.
* ``reference_dot`` - QLDB's ``dot`` written the way the AWS samples write it (signed bytes,
  last byte first), independently of :mod:`qldbstream.core.qldb_hash`.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Callable
from typing import Any


def import_ionhash() -> Callable[[Any], bytes]:
    """Return ``H(value)`` (SHA-256) computed by PyPI ionhash."""
    import amazon.ion.simple_types as st

    if not hasattr(st, "_IonNature"):
        st._IonNature = type("_IonNature", (object,), {})  # placeholder, see module doc
    import ionhash  # noqa: F401
    from ionhash.fast_value_hasher import hash_value
    from ionhash.hasher import hashlib_hash_function_provider

    hfp = hashlib_hash_function_provider("SHA256")

    def ionhash_sha256(value: Any) -> bytes:
        return bytes(hash_value(value, hfp))

    return ionhash_sha256


def reference_dot(h1: bytes, h2: bytes) -> bytes:
    if not h1:
        return h2
    if not h2:
        return h1
    a1, a2 = array("b", h1), array("b", h2)
    cmp = 0
    for i in range(len(h1) - 1, -1, -1):
        cmp = a1[i] - a2[i]
        if cmp:
            break
    return hashlib.sha256(h1 + h2 if cmp < 0 else h2 + h1).digest()
