//! QLDB's ``dot`` and Merkle root (``qldbstream/qldb_hash.py``, qldb-stream-format.md §4.2-§4.3).

use sha2::{Digest, Sha256};

/// QLDB's order: bytes compared as **signed** values starting from the **last** byte. Python
/// compares ``translate(^0x80)[::-1]`` keys, which also orders hashes of other lengths; so does
/// this (a shorter key that is a prefix of a longer one sorts first).
fn less(h1: &[u8], h2: &[u8]) -> bool {
    let k1 = h1.iter().rev().map(|b| b ^ 0x80);
    let k2 = h2.iter().rev().map(|b| b ^ 0x80);
    k1.lt(k2)
}

/// ``dot``: SHA-256 of the two hashes concatenated in QLDB's order; an empty hash is the identity.
pub fn dot(h1: &[u8], h2: &[u8]) -> Vec<u8> {
    if h1.is_empty() {
        return h2.to_vec();
    }
    if h2.is_empty() {
        return h1.to_vec();
    }
    let (a, b) = if less(h1, h2) { (h1, h2) } else { (h2, h1) };
    let mut hasher = Sha256::new();
    hasher.update(a);
    hasher.update(b);
    hasher.finalize().to_vec()
}

/// ``merkle_root``: combine adjacent pairs with ``dot``, carry an unpaired last node up, repeat.
pub fn merkle_root(hashes: &[&[u8]]) -> Vec<u8> {
    if hashes.is_empty() {
        return Vec::new();
    }
    let mut level: Vec<Vec<u8>> = hashes.iter().map(|h| h.to_vec()).collect();
    while level.len() > 1 {
        let mut next = Vec::with_capacity(level.len().div_ceil(2));
        for pair in level.chunks(2) {
            match pair {
                [a, b] => next.push(dot(a, b)),
                [a] => next.push(a.clone()),
                _ => {}
            }
        }
        level = next;
    }
    level.pop().unwrap_or_default()
}
