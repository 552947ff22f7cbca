"""QLDB's hash combinators: ``dot``, the Merkle root of a hash list, and proof folding.

Specified identically by the QLDB drivers, samples and verification docs
(qldb-stream-format.md §4.2-§4.3):

* ``dot(a, b)`` = SHA-256 of the two 32-byte hashes concatenated in sorted order, where the
  order compares bytes as **signed** values starting from the **last** byte. An empty hash is
  the identity. ``dot`` is commutative but not associative.
* ``merkle_root(hashes)``: combine adjacent pairs with ``dot``, carry an unpaired last node up
  unchanged, repeat until one node is left (empty list -> empty hash).
* ``fold_proof(leaf, proof)``: a left fold of ``dot`` over the proof (GetRevision / GetBlock).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence

from qldbstream.core.native import chosen

__all__ = [
    "HASH_LENGTH",
    "compare_hashes",
    "dot",
    "fold_proof",
    "merkle_root",
    "native_available",
    "use_native",
]

HASH_LENGTH = 32
_sha256 = hashlib.sha256
# For the signed, last-byte-first comparison: flip the sign bit of every byte and reverse the
# order; an unsigned lexicographic comparison of the result is then QLDB's comparison.
_SIGNED_KEY = bytes((b ^ 0x80) for b in range(256))


def _sort_key(h: bytes) -> bytes:
    return h.translate(_SIGNED_KEY)[::-1]


def compare_hashes(h1: bytes, h2: bytes) -> int:
    """QLDB order of two 32-byte hashes: negative, zero or positive (signed bytes, last first)."""
    if len(h1) != HASH_LENGTH or len(h2) != HASH_LENGTH:
        raise ValueError(f"hashes must be {HASH_LENGTH} bytes, got {len(h1)} and {len(h2)}")
    for i in range(HASH_LENGTH - 1, -1, -1):
        a, b = h1[i], h2[i]
        if a != b:
            return (a if a < 128 else a - 256) - (b if b < 128 else b - 256)
    return 0


def _dot_py(h1: bytes, h2: bytes) -> bytes:
    """QLDB's combination of two hashes (an empty hash is the identity)."""
    if not h1:
        return h2
    if not h2:
        return h1
    if _sort_key(h1) < _sort_key(h2):
        return _sha256(h1 + h2).digest()
    return _sha256(h2 + h1).digest()


def _merkle_root_py(hashes: Sequence[bytes]) -> bytes:
    """Merkle root as QLDB computes it for ``entriesHashList`` and a block's revisions."""
    level = list(hashes)
    if not level:
        return b""
    while len(level) > 1:
        nxt = [_dot_py(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


try:  # the same two functions compiled (qldbstream-native): identical results, bytes only
    from qldbstream_native import dot as _dot_native
    from qldbstream_native import merkle_root as _merkle_root_native
except ImportError:  # pragma: no cover - depends on the installation
    _dot_native = _merkle_root_native = None

#: ``dot(h1, h2)``: QLDB's combination of two hashes (an empty hash is the identity).
dot: Callable[[bytes, bytes], bytes] = _dot_native or _dot_py
#: ``merkle_root(hashes)``: the Merkle root of ``entriesHashList`` and of a block's revisions.
merkle_root: Callable[[Sequence[bytes]], bytes] = _merkle_root_native or _merkle_root_py


def native_available() -> bool:
    return _dot_native is not None and _merkle_root_native is not None


def use_native(enabled: bool) -> None:
    """Switch ``dot`` and ``merkle_root`` between the compiled and the pure-Python code (tests and
    benchmarks, through :func:`qldbstream.core.native.use`). A module that imported them by name
    keeps the function it imported; read them as ``qldb_hash.dot`` to follow the switch."""
    global dot, merkle_root  # noqa: PLW0603 - one module-level switch, read on the hot path
    dot = chosen(enabled, _dot_native, _dot_py)
    merkle_root = chosen(enabled, _merkle_root_native, _merkle_root_py)


def fold_proof(leaf: bytes, proof: Iterable[bytes]) -> bytes:
    """Fold a GetRevision / GetBlock proof onto ``leaf``: ``dot(...dot(dot(leaf, p0), p1)..., pn)``."""
    acc = leaf
    for p in proof:
        acc = dot(acc, p)
    return acc
