//! Ion Hash (amazon-ion/ion-hash ``docs/spec.md``) straight from Ion binary bytes: the Rust twin
//! of ``qldbstream/ion/hash.py`` (``_ser`` and its helpers), check for check.
//!
//! ``s(value)`` is appended to one output buffer. A struct hashes each field (``s(name) ||
//! s(value)``) as soon as it is written, truncates the buffer back, and finally writes the
//! sorted, escaped field digests; the digests of all open structs share one stack. Minimal
//! re-encodings (ints with leading zero bytes, decimals, timestamps, 32-bit floats) work on the
//! bytes, so values of any size are handled without big-number arithmetic.

use md5::Md5;
use sha2::{Digest, Sha256};

use crate::error::{Error, Kind, Result, decimal_be};
use crate::minimal::{TimestampRep, decimal_rep, timestamp_rep};
use crate::reader::{
    Lookup, SymbolTable, T_ANNOTATION, T_BLOB, T_BOOL, T_CLOB, T_DECIMAL, T_FLOAT, T_LIST, T_NEGINT, T_NULL,
    T_POSINT, T_SEXP, T_STRING, T_STRUCT, T_SYMBOL, T_TIMESTAMP, VarUInt, header, read_uint_u64,
    read_varuint, truncated,
};

/// Containers (list, sexp, struct, annotation wrapper) nested deeper than this below the hashed
/// value are an error instead of a stack overflow. The pure-Python ``_ser`` has no limit of its
/// own: it raises ``RecursionError`` at about 990 levels (see the report).
pub const MAX_DEPTH: usize = 100;

/// A hash function of the Ion Hash spec.
pub trait Algo {
    type Digest: AsRef<[u8]> + Ord;
    fn digest(data: &[u8]) -> Self::Digest;
}

pub struct Sha256Algo;
impl Algo for Sha256Algo {
    type Digest = [u8; 32];
    #[inline]
    fn digest(data: &[u8]) -> [u8; 32] {
        Sha256::digest(data).into()
    }
}

pub struct Md5Algo;
impl Algo for Md5Algo {
    type Digest = [u8; 16];
    #[inline]
    fn digest(data: &[u8]) -> [u8; 16] {
        Md5::digest(data).into()
    }
}

/// The ion-hash-test ``identity`` algorithm: the "digest" is its input.
pub struct IdentityAlgo;
impl Algo for IdentityAlgo {
    type Digest = Vec<u8>;
    fn digest(data: &[u8]) -> Vec<u8> {
        data.to_vec()
    }
}

const SID0: &[u8] = b"\x0b\x71\x0e";
const ZERO_INT: &[u8] = b"\x0b\x20\x0e";
const ZERO_FLOAT: &[u8] = b"\x0b\x40\x0e";
const ZERO_DECIMAL: &[u8] = b"\x0b\x50\x0e";
const NAN: [u8; 8] = [0x7f, 0xf8, 0, 0, 0, 0, 0, 0];

/// Does ``data`` hold 0x0B, 0x0C or 0x0E? Eight bytes at a time (most text and most digests
/// hold none, and then the bytes are copied as they are).
#[inline]
fn has_special(data: &[u8]) -> bool {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    // non-zero iff some byte of v is zero (no false positives for this yes/no question)
    let zero_byte = |v: u64| v.wrapping_sub(LO) & !v & HI;
    let mut chunks = data.chunks_exact(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let v = u64::from_le_bytes(word);
        if zero_byte(v ^ (0x0B * LO)) | zero_byte(v ^ (0x0C * LO)) | zero_byte(v ^ (0x0E * LO)) != 0 {
            return true;
        }
    }
    chunks.remainder().iter().any(|&b| b == 0x0B || b == 0x0C || b == 0x0E)
}

/// ``_escape``: 0x0B, 0x0C and 0x0E are each preceded by 0x0C.
#[inline]
pub fn escape_into(out: &mut Vec<u8>, data: &[u8]) {
    if !has_special(data) {
        out.extend_from_slice(data);
        return;
    }
    let mut last = 0;
    for (i, &b) in data.iter().enumerate() {
        if b == 0x0B || b == 0x0C || b == 0x0E {
            out.extend_from_slice(&data[last..i]);
            out.push(0x0C);
            out.push(b);
            last = i + 1;
        }
    }
    out.extend_from_slice(&data[last..]);
}

/// ``_float_rep`` written as ``s(float)`` into ``out``.
fn float_ser(out: &mut Vec<u8>, body: &[u8]) -> Result<()> {
    let raw: [u8; 8] = match body.len() {
        0 => {
            out.extend_from_slice(ZERO_FLOAT);
            return Ok(());
        }
        8 => body.try_into().map_err(|_| Error::ion("Ion float has length 8"))?,
        4 => {
            let f = f32::from_be_bytes(body.try_into().map_err(|_| Error::ion("Ion float has length 4"))?);
            f64::from(f).to_be_bytes()
        }
        n => return Err(Error::ion(format!("Ion float has length {n} (must be 0, 4 or 8)"))),
    };
    let value = f64::from_be_bytes(raw);
    if value.is_nan() {
        out.extend_from_slice(b"\x0b\x40");
        escape_into(out, &NAN);
        out.push(0x0E);
        return Ok(());
    }
    if value == 0.0 && raw[0] & 0x80 == 0 {
        out.extend_from_slice(ZERO_FLOAT);
        return Ok(());
    }
    out.extend_from_slice(b"\x0b\x40");
    escape_into(out, &raw);
    out.push(0x0E);
    Ok(())
}

/// How a symbol ID was written: a VarUInt (field names, annotations) or a UInt (symbol values).
#[derive(Clone, Copy)]
enum SidBytes {
    VarUInt(VarUInt),
    UInt { value: Option<u64>, start: usize, end: usize },
}

/// The serializer: ``s(value)`` into ``out``, with ``A`` as the hash function.
pub struct Serializer<'a, 't, A: Algo> {
    buf: &'a [u8],
    symbols: &'t SymbolTable<'a>,
    pub out: Vec<u8>,
    digests: Vec<A::Digest>,
}

impl<'a, 't, A: Algo> Serializer<'a, 't, A> {
    pub fn new(buf: &'a [u8], symbols: &'t SymbolTable<'a>) -> Self {
        Serializer {
            buf,
            symbols,
            out: Vec::with_capacity(buf.len() / 2 + 64),
            digests: Vec::with_capacity(32),
        }
    }

    /// ``H(value)`` of the value at ``pos`` (``ion_hash_at``).
    pub fn hash_at(&mut self, pos: usize, end: usize) -> Result<A::Digest> {
        self.out.clear();
        self.ser(pos, end, 0)?;
        Ok(A::digest(&self.out))
    }

    /// ``s(value)`` of the value at ``pos`` (``serialize_at``), left in ``self.out``.
    pub fn serialize_at(&mut self, pos: usize, end: usize) -> Result<()> {
        self.out.clear();
        self.ser(pos, end, 0).map(|_| ())
    }

    /// ``_symbol``: the text of a symbol ID for hashing (``None`` for SID 0).
    fn symbol(&self, sid: SidBytes) -> Result<Option<&'a [u8]>> {
        let (value, exact) = match sid {
            SidBytes::VarUInt(v) => (v.value, !v.overflow),
            SidBytes::UInt { value, .. } => (value.unwrap_or(u64::MAX), value.is_some()),
        };
        if exact && value == 0 {
            return Ok(None);
        }
        let lookup = if exact { self.symbols.get_u64(value) } else { Lookup::OutOfRange };
        let decimal = || match sid {
            SidBytes::VarUInt(v) => v.decimal(self.buf),
            SidBytes::UInt { start, end, .. } => decimal_be(&self.buf[start..end]),
        };
        match lookup {
            Lookup::Text(t) => Ok(Some(t)),
            Lookup::OutOfRange => {
                Err(Error::ion(format!("Ion symbol ID {} is not in the symbol table", decimal())))
            }
            Lookup::Unknown => Err(Error::new(
                Kind::Hash,
                format!("Ion symbol ID {} has unknown text and cannot be hashed", decimal()),
            )),
        }
    }

    #[inline]
    fn write_symbol(&mut self, text: Option<&[u8]>) {
        match text {
            None => self.out.extend_from_slice(SID0),
            Some(t) => {
                self.out.extend_from_slice(b"\x0b\x70");
                escape_into(&mut self.out, t);
                self.out.push(0x0E);
            }
        }
    }

    #[inline]
    fn scalar(&mut self, tq: u8, start: usize, stop: usize) {
        self.out.push(0x0B);
        self.out.push(tq);
        escape_into(&mut self.out, &self.buf[start..stop]);
        self.out.push(0x0E);
    }

    /// ``_ser``: append ``s(value)`` of the value at ``pos`` (within ``end``); return its end.
    fn ser(&mut self, pos: usize, end: usize, depth: usize) -> Result<usize> {
        if depth > MAX_DEPTH {
            return Err(Error::ion(format!("Ion value is nested more than {MAX_DEPTH} levels deep")));
        }
        let buf = self.buf;
        let td = buf[pos];
        let t = td >> 4;
        let ln = td & 0x0F;
        let mut pos = pos + 1;
        if ln == 15 {
            if t >= T_ANNOTATION {
                return Err(Error::ion(format!("invalid Ion type descriptor 0x{td:02x}")));
            }
            // 0x3F is null.int too: amazon-ion writes it back as 0x2F
            let t = if t == T_NEGINT { T_POSINT } else { t };
            self.out.extend_from_slice(&[0x0B, (t << 4) | 0x0F, 0x0E]);
            return Ok(pos);
        }
        if t == T_BOOL {
            if ln > 1 {
                return Err(Error::ion(format!("invalid Ion bool type descriptor 0x{td:02x}")));
            }
            self.out.extend_from_slice(&[0x0B, 0x10 | ln, 0x0E]);
            return Ok(pos);
        }
        let length = if ln == 14 || (ln == 1 && t == T_STRUCT) {
            let mut length: usize = 0;
            loop {
                if pos >= end {
                    return Err(Error::ion("Ion VarUInt runs past the end of its value"));
                }
                let b = buf[pos];
                pos += 1;
                length = length.checked_mul(128).map_or(usize::MAX, |l| l | usize::from(b & 0x7F));
                if b & 0x80 != 0 {
                    break;
                }
            }
            length
        } else {
            usize::from(ln)
        };
        let stop = pos.saturating_add(length);
        if stop > end {
            return Err(truncated());
        }
        match t {
            T_STRING | T_BLOB | T_CLOB => self.scalar(t << 4, pos, stop),
            T_STRUCT => self.ser_struct(pos, stop, depth)?,
            T_SYMBOL => {
                let sid = SidBytes::UInt { value: read_uint_u64(buf, pos, stop), start: pos, end: stop };
                let text = self.symbol(sid)?;
                self.write_symbol(text);
            }
            T_POSINT | T_NEGINT => {
                let mut i = pos;
                while i < stop && buf[i] == 0 {
                    i += 1;
                }
                if i == stop {
                    self.out.extend_from_slice(ZERO_INT);
                } else {
                    self.scalar(t << 4, i, stop);
                }
            }
            T_TIMESTAMP => {
                self.out.extend_from_slice(b"\x0b\x60");
                match timestamp_rep(buf, pos, stop)? {
                    TimestampRep::Raw => escape_into(&mut self.out, &buf[pos..stop]),
                    TimestampRep::Reencoded(rep) => escape_into(&mut self.out, &rep),
                }
                self.out.push(0x0E);
            }
            T_DECIMAL => {
                let mut rep = Vec::new();
                decimal_rep(buf, pos, stop, &mut rep)?;
                if rep.is_empty() {
                    self.out.extend_from_slice(ZERO_DECIMAL);
                } else {
                    self.out.extend_from_slice(b"\x0b\x50");
                    escape_into(&mut self.out, &rep);
                    self.out.push(0x0E);
                }
            }
            T_LIST | T_SEXP => {
                self.out.push(0x0B);
                self.out.push(t << 4);
                let mut p = pos;
                while p < stop {
                    if buf[p] < 0x0F {
                        p = header(buf, p, stop)?.stop; // NOP padding
                        continue;
                    }
                    p = self.ser(p, stop, depth + 1)?;
                }
                self.out.push(0x0E);
            }
            T_FLOAT => float_ser(&mut self.out, &buf[pos..stop])?,
            T_ANNOTATION => self.ser_annotation(pos, stop, depth)?,
            T_NULL => return Err(Error::ion("Ion NOP padding where a value was expected")),
            _ => return Err(Error::ion(format!("invalid Ion type descriptor 0x{td:02x}"))),
        }
        Ok(stop)
    }

    fn ser_struct(&mut self, pos: usize, stop: usize, depth: usize) -> Result<()> {
        let buf = self.buf;
        let base = self.digests.len();
        let mut p = pos;
        while p < stop {
            let sid_start = p;
            let mut sid: u64 = 0;
            let mut overflow = false;
            loop {
                let b = buf[p];
                p += 1;
                if sid >> 57 != 0 {
                    overflow = true;
                }
                sid = (sid << 7) | u64::from(b & 0x7F);
                if b & 0x80 != 0 {
                    break;
                }
                if p >= stop {
                    return Err(Error::ion("Ion field name runs past the end of its struct"));
                }
            }
            if p >= stop {
                return Err(Error::ion("Ion struct field has a name but no value"));
            }
            if buf[p] < 0x0F {
                p = header(buf, p, stop)?.stop; // NOP padding (type 0, any length but 15)
                continue;
            }
            // Python serializes the value before it resolves the name: keep that error order.
            let sid =
                VarUInt { value: if overflow { u64::MAX } else { sid }, overflow, start: sid_start, end: p };
            let name = self.symbol(SidBytes::VarUInt(sid));
            let field_start = self.out.len();
            if let Ok(text) = name {
                self.write_symbol(text);
            }
            p = self.ser(p, stop, depth + 1)?;
            name?;
            let digest = A::digest(&self.out[field_start..]);
            self.out.truncate(field_start);
            self.digests.push(digest);
        }
        self.digests[base..].sort_unstable();
        self.out.extend_from_slice(b"\x0b\xd0");
        for d in self.digests.drain(base..) {
            escape_into(&mut self.out, d.as_ref());
        }
        self.out.push(0x0E);
        Ok(())
    }

    fn ser_annotation(&mut self, pos: usize, stop: usize, depth: usize) -> Result<()> {
        let buf = self.buf;
        let (alen, mut p) = read_varuint(buf, pos, stop)?;
        let aend = p.saturating_add(alen.as_usize());
        if alen.is(0) || aend >= stop {
            return Err(Error::ion("Ion annotation wrapper has no annotations or no value"));
        }
        self.out.extend_from_slice(b"\x0b\xe0");
        while p < aend {
            let (sid, np) = read_varuint(buf, p, aend)?;
            p = np;
            let text = self.symbol(SidBytes::VarUInt(sid))?;
            self.write_symbol(text);
        }
        if buf[aend] >> 4 == T_ANNOTATION || buf[aend] < 0x0F {
            return Err(Error::ion("Ion annotation wrapper must wrap exactly one value"));
        }
        let p = self.ser(aend, stop, depth + 1)?;
        if p != stop {
            return Err(Error::ion("Ion annotation wrapper length does not match its value"));
        }
        self.out.push(0x0E);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specials() {
        for n in 0..40 {
            for pos in 0..n {
                for special in [0x0Bu8, 0x0C, 0x0E] {
                    let mut data = vec![0x41u8; n];
                    data[pos] = special;
                    assert!(has_special(&data));
                }
                let mut data = vec![0x0Du8; n];
                data[pos] = 0x0F;
                assert!(!has_special(&data));
            }
        }
    }

    #[test]
    fn escapes() {
        let mut out = Vec::new();
        escape_into(&mut out, &[1, 0x0B, 0x0C, 0x0E, 2]);
        assert_eq!(out, vec![1, 0x0C, 0x0B, 0x0C, 0x0C, 0x0C, 0x0E, 2]);
    }
}
