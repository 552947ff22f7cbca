//! The one error type of the core: a kind (which Python exception it maps to) and a message.
//!
//! Messages follow the pure-Python implementation word for word. Where Python formats a value
//! with ``!r`` (field names, record types, shared table names), the text is kept as a
//! [`Part::Repr`] and the binding formats it with Python's own ``repr()``, so that quoting and
//! escaping match exactly.

use std::fmt;

/// Which exception the pure-Python code raises for the same input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// ``MalformedIonError``: the bytes are not valid Ion.
    Ion,
    /// ``MalformedRecordError``: valid Ion, but not a well-formed QLDB record.
    Record,
    /// ``UnknownRecordTypeError``.
    Type,
    /// ``IonHashError`` (a ``MalformedIonError`` subclass): a value that cannot be Ion-hashed.
    Hash,
    /// ``DeaggregationError``: a KPL aggregate that is not valid.
    Kpl,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Ion => "ion",
            Kind::Record => "record",
            Kind::Type => "type",
            Kind::Hash => "hash",
            Kind::Kpl => "kpl",
        }
    }
}

/// A piece of an error message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Part {
    Text(String),
    /// Python's ``repr()`` of this text (``None`` when the text is unknown).
    Repr(Option<String>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    pub kind: Kind,
    pub parts: Vec<Part>,
}

impl Error {
    pub fn new(kind: Kind, message: impl Into<String>) -> Self {
        Error { kind, parts: vec![Part::Text(message.into())] }
    }

    pub fn with_parts(kind: Kind, parts: Vec<Part>) -> Self {
        Error { kind, parts }
    }

    pub fn ion(message: impl Into<String>) -> Self {
        Error::new(Kind::Ion, message)
    }

    pub fn record(message: impl Into<String>) -> Self {
        Error::new(Kind::Record, message)
    }

    pub fn kpl(message: impl Into<String>) -> Self {
        Error::new(Kind::Kpl, message)
    }
}

/// Rust-side rendering (tests and debugging); ``Repr`` parts are approximated with ``{:?}``.
impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for part in &self.parts {
            match part {
                Part::Text(t) => f.write_str(t)?,
                Part::Repr(None) => f.write_str("None")?,
                Part::Repr(Some(t)) => write!(f, "'{t}'")?,
            }
        }
        Ok(())
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// Decimal text of an unsigned big-endian number of any size (for messages only).
pub fn decimal_be(bytes: &[u8]) -> String {
    let mut digits: Vec<u8> = bytes.iter().copied().skip_while(|&b| b == 0).collect();
    if digits.is_empty() {
        return "0".to_string();
    }
    let mut out = Vec::new();
    while !digits.is_empty() {
        let mut rem: u32 = 0;
        let mut next = Vec::with_capacity(digits.len());
        for &d in &digits {
            let cur = (rem << 8) | u32::from(d);
            let q = cur / 10;
            rem = cur % 10;
            if !(next.is_empty() && q == 0) {
                next.push(q as u8);
            }
        }
        out.push(b'0' + rem as u8);
        digits = next;
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

/// Decimal text of an Ion VarUInt given its bytes (7 magnitude bits per byte).
pub fn decimal_varuint(bytes: &[u8]) -> String {
    decimal_be(&groups_to_be(bytes.iter().map(|b| (b & 0x7F, 7))))
}

/// Pack (value, bit count) groups, most significant first, into big-endian bytes.
pub fn groups_to_be(groups: impl Iterator<Item = (u8, u32)>) -> Vec<u8> {
    let mut bits: Vec<bool> = Vec::new();
    for (v, n) in groups {
        for i in (0..n).rev() {
            bits.push((v >> i) & 1 == 1);
        }
    }
    let pad = (8 - bits.len() % 8) % 8;
    let mut out = Vec::with_capacity(bits.len().div_ceil(8));
    let mut acc: u8 = 0;
    let mut count = 0;
    for bit in std::iter::repeat_n(false, pad).chain(bits) {
        acc = (acc << 1) | u8::from(bit);
        count += 1;
        if count == 8 {
            out.push(acc);
            acc = 0;
            count = 0;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals() {
        assert_eq!(decimal_be(&[]), "0");
        assert_eq!(decimal_be(&[0, 0]), "0");
        assert_eq!(decimal_be(&[1, 0]), "256");
        assert_eq!(decimal_be(&[0xFF; 16]), u128::MAX.to_string());
        assert_eq!(decimal_varuint(&[0x01, 0x80]), "128");
        assert_eq!(decimal_varuint(&[0x8A]), "10");
    }
}
