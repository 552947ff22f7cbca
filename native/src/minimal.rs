//! Minimal re-encodings for the Ion hash (``qldbstream/ion/hash.py``: ``_varint_bytes``,
//! ``_varuint_bytes``, ``_int_bytes``, ``_decimal_rep``, ``_timestamp_rep``,
//! ``_timestamp_reencode``). They work on the bytes: the spec's representation of a value is its
//! Ion binary body in minimal form, so a padded VarInt, a coefficient with leading zero bytes or
//! a timestamp with a negative-zero exponent is rewritten, whatever its size.

use crate::error::{Error, Result};
use crate::reader::{read_varint, read_varuint};

/// Minimal VarInt for the VarInt whose bytes are ``bytes`` (``_varint_bytes`` of its value);
/// ``negative`` is the sign to write when the magnitude is not zero, or always (the caller
/// decides: a timestamp offset keeps ``-0``, exponents do not).
fn minimal_varint(out: &mut Vec<u8>, bytes: &[u8], negative: bool) {
    let n = bytes.len();
    let mut i = 0;
    let mut first = bytes[0] & 0x3F;
    // A leading byte with no magnitude bits can go when the next byte's top magnitude bit is
    // clear (its 7 bits then fit in the 6 bits of a first byte).
    while first == 0 && i + 1 < n && bytes[i + 1] & 0x40 == 0 {
        i += 1;
        first = bytes[i] & 0x3F;
    }
    let mut b = first;
    if negative {
        b |= 0x40;
    }
    if i == n - 1 {
        b |= 0x80;
    }
    out.push(b);
    out.extend_from_slice(&bytes[i + 1..]);
}

/// Minimal VarUInt (``_varuint_bytes``) for the VarUInt whose bytes are ``bytes``.
fn minimal_varuint(out: &mut Vec<u8>, bytes: &[u8]) {
    let mut i = 0;
    while i + 1 < bytes.len() && bytes[i] & 0x7F == 0 {
        i += 1;
    }
    out.extend_from_slice(&bytes[i..]);
}

/// Minimal Int subfield (``_int_bytes``) for the sign-magnitude Int whose bytes are ``bytes``.
fn minimal_int(out: &mut Vec<u8>, bytes: &[u8], negative: bool) {
    let mut i = 0;
    let mut first = 0;
    while i < bytes.len() {
        first = if i == 0 { bytes[0] & 0x7F } else { bytes[i] };
        if first != 0 {
            break;
        }
        i += 1;
    }
    if i == bytes.len() {
        if negative {
            out.push(0x80);
        }
        return;
    }
    let sign = if negative { 0x80 } else { 0 };
    if first & 0x80 != 0 {
        out.push(sign);
        out.push(first);
    } else {
        out.push(first | sign);
    }
    out.extend_from_slice(&bytes[i + 1..]);
}

/// ``_decimal_rep`` (empty: the decimal is ``0d0``).
pub fn decimal_rep(buf: &[u8], start: usize, end: usize, rep: &mut Vec<u8>) -> Result<()> {
    if start == end {
        return Ok(());
    }
    let e = read_varint(buf, start, end)?;
    let coefficient = &buf[e.end..end];
    let negative = coefficient.first().is_some_and(|&c| c & 0x80 != 0);
    let zero = coefficient.iter().enumerate().all(|(i, &c)| (if i == 0 { c & 0x7F } else { c }) == 0);
    if zero && !negative && e.zero {
        return Ok(());
    }
    minimal_varint(rep, &buf[e.start..e.end], e.negative && !e.zero);
    minimal_int(rep, coefficient, negative);
    Ok(())
}

pub enum TimestampRep {
    /// Already minimal: the body as it is.
    Raw,
    Reencoded(Vec<u8>),
}

/// ``_timestamp_rep``: the body itself when it is already minimal (the usual case).
pub fn timestamp_rep(buf: &[u8], start: usize, end: usize) -> Result<TimestampRep> {
    // Split into VarUInt/VarInt components by their end bits; a component whose first byte
    // carries no magnitude bits but is not its last byte is padded (not minimal).
    let mut pos = start;
    let mut count = 0; // components read: offset, year, month, day, hour, minute, second
    let mut minimal = true;
    while pos < end && count < 7 {
        let mut b = buf[pos];
        if b & 0x80 == 0 && (b & if count == 0 { 0x3F } else { 0x7F }) == 0 {
            minimal = false;
        }
        while b & 0x80 == 0 {
            pos += 1;
            if pos >= end {
                return Err(Error::ion("Ion timestamp component runs past the end of its value"));
            }
            b = buf[pos];
        }
        pos += 1;
        count += 1;
    }
    if !minimal || count == 1 || count == 5 {
        return timestamp_reencode(buf, start, end);
    }
    if pos == end {
        return Ok(TimestampRep::Raw);
    }
    // fractional seconds: exponent VarInt, then coefficient Int (the rest)
    let mut b = buf[pos];
    if b == 0xC0 || (b & 0x80 == 0 && b & 0x3F == 0) {
        return timestamp_reencode(buf, start, end); // -0 exponent, or a padded one
    }
    let exp_negative = b & 0x40 != 0;
    while b & 0x80 == 0 {
        pos += 1;
        if pos >= end {
            return Err(Error::ion("Ion timestamp fraction runs past the end of its value"));
        }
        b = buf[pos];
    }
    pos += 1;
    if pos == end {
        if exp_negative {
            return Ok(TimestampRep::Raw); // 0d-N: zero with N digits of precision
        }
        return timestamp_reencode(buf, start, end);
    }
    let c0 = buf[pos];
    if c0 & 0x80 != 0 || (c0 == 0 && (pos + 1 == end || buf[pos + 1] & 0x80 == 0)) {
        return timestamp_reencode(buf, start, end);
    }
    Ok(TimestampRep::Raw)
}

/// ``_timestamp_reencode``
fn timestamp_reencode(buf: &[u8], start: usize, end: usize) -> Result<TimestampRep> {
    let offset = read_varint(buf, start, end)?;
    let mut out = Vec::with_capacity(end - start);
    minimal_varint(&mut out, &buf[offset.start..offset.end], offset.negative);
    let mut pos = offset.end;
    let mut count = 0;
    while pos < end && count < 6 {
        let (v, p) = read_varuint(buf, pos, end)?;
        minimal_varuint(&mut out, &buf[v.start..v.end]);
        pos = p;
        count += 1;
    }
    if count == 0 || count == 4 {
        return Err(Error::ion("Ion timestamp has an hour without minutes, or no year"));
    }
    if pos < end {
        if count < 6 {
            return Err(Error::ion("Ion timestamp has a fraction but no seconds"));
        }
        let e = read_varint(buf, pos, end)?;
        let coefficient = &buf[e.end..end];
        let c_negative = coefficient.first().is_some_and(|&c| c & 0x80 != 0);
        let c_zero = coefficient.iter().enumerate().all(|(i, &c)| (if i == 0 { c & 0x7F } else { c }) == 0);
        if c_negative && !c_zero {
            return Err(Error::ion("Ion timestamp has negative fractional seconds"));
        }
        let exp_negative = e.negative && !e.zero;
        if !c_zero || exp_negative {
            minimal_varint(&mut out, &buf[e.start..e.end], exp_negative);
            minimal_int(&mut out, coefficient, false);
        }
    }
    Ok(TimestampRep::Reencoded(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(bytes: &[u8], negative: bool) -> Vec<u8> {
        let mut out = Vec::new();
        minimal_varint(&mut out, bytes, negative);
        out
    }

    #[test]
    fn varints() {
        assert_eq!(varint(&[0x00, 0x00, 0x80], false), vec![0x80]);
        assert_eq!(varint(&[0x00, 0x00, 0x80], true), vec![0xC0]);
        assert_eq!(varint(&[0x40, 0x85], true), vec![0xC5]);
        assert_eq!(varint(&[0x00, 0xC5], false), vec![0x00, 0xC5]);
        assert_eq!(varint(&[0x83], false), vec![0x83]);
    }

    #[test]
    fn ints() {
        let int = |b: &[u8], n: bool| {
            let mut out = Vec::new();
            minimal_int(&mut out, b, n);
            out
        };
        assert_eq!(int(&[], false), Vec::<u8>::new());
        assert_eq!(int(&[0x80], true), vec![0x80]);
        assert_eq!(int(&[0x00, 0x00, 0x05], false), vec![0x05]);
        assert_eq!(int(&[0x80, 0x00, 0xF5], true), vec![0x80, 0xF5]);
        assert_eq!(int(&[0x00, 0xF5], false), vec![0x00, 0xF5]);
    }
}
