//! A minimal Ion 1.0 binary reader: the Rust twin of ``qldbstream/ion/binary.py``.
//!
//! Every function mirrors its Python namesake step for step - the same checks in the same order
//! with the same messages - because the scan contract promises identical results *and* the same
//! error kind for every input, malformed ones included. Where Python is lax (``struct_slots``
//! does not check a bool's length nibble, say), this reader is lax in the same way.
//!
//! Positions are byte offsets into the record; nothing reads past ``end`` and nothing panics:
//! every index is checked first.

use std::collections::HashSet;

use crate::error::{Error, Result, decimal_be, decimal_varuint};
use crate::symbols;
pub use crate::symbols::{Lookup, SymbolTable};

pub const IVM: &[u8; 4] = b"\xe0\x01\x00\xea";

pub const T_NULL: u8 = 0;
pub const T_BOOL: u8 = 1;
pub const T_POSINT: u8 = 2;
pub const T_NEGINT: u8 = 3;
pub const T_FLOAT: u8 = 4;
pub const T_DECIMAL: u8 = 5;
pub const T_TIMESTAMP: u8 = 6;
pub const T_SYMBOL: u8 = 7;
pub const T_STRING: u8 = 8;
pub const T_CLOB: u8 = 9;
pub const T_BLOB: u8 = 10;
pub const T_LIST: u8 = 11;
pub const T_SEXP: u8 = 12;
pub const T_STRUCT: u8 = 13;
pub const T_ANNOTATION: u8 = 14;

const SID_ION_SYMBOL_TABLE: u64 = 3;

/// A VarUInt as read: its value (saturated at ``u64::MAX``) and its bytes (for messages).
#[derive(Clone, Copy, Debug)]
pub struct VarUInt {
    pub value: u64,
    pub overflow: bool,
    pub start: usize,
    pub end: usize,
}

impl VarUInt {
    pub fn as_usize(&self) -> usize {
        if self.overflow { usize::MAX } else { usize::try_from(self.value).unwrap_or(usize::MAX) }
    }

    /// The exact value, however large, in decimal.
    pub fn decimal(&self, buf: &[u8]) -> String {
        if self.overflow { decimal_varuint(&buf[self.start..self.end]) } else { self.value.to_string() }
    }

    /// ``value == n`` for the exact (unbounded) value.
    pub fn is(&self, n: u64) -> bool {
        !self.overflow && self.value == n
    }
}

#[inline]
fn accumulate(value: u64, overflow: bool, bits: u64, shift: u32) -> (u64, bool) {
    if overflow || value >> (64 - shift) != 0 { (u64::MAX, true) } else { ((value << shift) | bits, false) }
}

/// ``read_varuint``: an Ion VarUInt at ``pos``; ``(value, next_pos)``.
#[inline]
pub fn read_varuint(buf: &[u8], pos: usize, end: usize) -> Result<(VarUInt, usize)> {
    let start = pos;
    let mut pos = pos;
    let mut value: u64 = 0;
    let mut overflow = false;
    while pos < end {
        let b = buf[pos];
        pos += 1;
        (value, overflow) = accumulate(value, overflow, u64::from(b & 0x7F), 7);
        if b & 0x80 != 0 {
            return Ok((VarUInt { value, overflow, start, end: pos }, pos));
        }
    }
    Err(Error::ion("Ion VarUInt runs past the end of its value"))
}

/// ``read_varint``: an Ion VarInt; ``(magnitude is zero, is_negative, next_pos)`` plus its span.
/// Callers that need the value re-encode it from its bytes (see ``hash::minimal_varint``).
pub struct VarInt {
    pub negative: bool,
    pub zero: bool,
    pub start: usize,
    pub end: usize,
}

pub fn read_varint(buf: &[u8], pos: usize, end: usize) -> Result<VarInt> {
    const RUNS_PAST: &str = "Ion VarInt runs past the end of its value";
    if pos >= end {
        return Err(Error::ion(RUNS_PAST));
    }
    let start = pos;
    let mut pos = pos;
    let mut b = buf[pos];
    pos += 1;
    let negative = b & 0x40 != 0;
    let mut zero = b & 0x3F == 0;
    while b & 0x80 == 0 {
        if pos >= end {
            return Err(Error::ion(RUNS_PAST));
        }
        b = buf[pos];
        pos += 1;
        zero &= b & 0x7F == 0;
    }
    Ok(VarInt { negative, zero, start, end: pos })
}

/// An unsigned big-endian integer subfield: its value if it fits in 64 bits.
pub fn read_uint_u64(buf: &[u8], start: usize, end: usize) -> Option<u64> {
    let mut value: u64 = 0;
    for &b in &buf[start..end] {
        if value >> 56 != 0 {
            return None;
        }
        value = (value << 8) | u64::from(b);
    }
    Some(value)
}

/// Decimal text of ``read_uint`` for messages.
pub fn uint_decimal(buf: &[u8], start: usize, end: usize) -> String {
    decimal_be(&buf[start..end])
}

fn invalid_td(td: u8) -> Error {
    Error::ion(format!("invalid Ion type descriptor 0x{td:02x}"))
}

pub fn truncated() -> Error {
    Error::ion("Ion value is truncated (its length runs past the end of its container)")
}

/// A decoded value header: ``(type_code, low_nibble, body_start, body_end)``.
#[derive(Clone, Copy, Debug)]
pub struct Header {
    pub t: u8,
    pub ln: u8,
    pub start: usize,
    pub stop: usize,
}

impl Header {
    pub fn is_null(&self) -> bool {
        self.ln == 15
    }

    /// NOP padding: type 0 that is not ``null.null``.
    pub fn is_nop(&self) -> bool {
        self.t == T_NULL && self.ln != 15
    }
}

/// ``header``: decode the value header at ``pos``.
#[inline]
pub fn header(buf: &[u8], pos: usize, end: usize) -> Result<Header> {
    if pos >= end {
        return Err(Error::ion("Ion value expected but the data ended"));
    }
    let td = buf[pos];
    let t = td >> 4;
    let ln = td & 0x0F;
    let pos = pos + 1;
    if ln == 15 {
        if t == T_ANNOTATION || t == 15 {
            return Err(invalid_td(td));
        }
        return Ok(Header { t, ln: 15, start: pos, stop: pos });
    }
    if t == T_BOOL {
        if ln > 1 {
            return Err(Error::ion(format!("invalid Ion bool type descriptor 0x{td:02x}")));
        }
        return Ok(Header { t, ln, start: pos, stop: pos });
    }
    if t == 15 {
        return Err(invalid_td(td));
    }
    let (length, pos) = if ln == 14 || (t == T_STRUCT && ln == 1) {
        let (v, p) = read_varuint(buf, pos, end)?;
        (v.as_usize(), p)
    } else {
        (usize::from(ln), pos)
    };
    let stop = pos.saturating_add(length);
    if stop > end {
        return Err(truncated());
    }
    Ok(Header { t, ln, start: pos, stop })
}

pub fn utf8(buf: &[u8], start: usize, end: usize) -> Result<&str> {
    std::str::from_utf8(&buf[start..end]).map_err(|_| Error::ion("Ion string is not valid UTF-8"))
}

/// ``iter_list``: a list/sexp body's values as ``(value_pos, value_end)``, NOP padding skipped.
///
/// Eager, like the Python (every header is checked before any value is used), and exactly as
/// lax: the header is decoded inline, a bool's length nibble is not checked here.
pub fn iter_list(buf: &[u8], start: usize, end: usize) -> Result<Vec<(usize, usize)>> {
    let mut out = Vec::new();
    let mut pos = start;
    while pos < end {
        let vpos = pos;
        let td = buf[pos];
        pos += 1;
        let ln = td & 0x0F;
        let t = td >> 4;
        if t == 15 || (t == T_ANNOTATION && ln == 15) {
            return Err(invalid_td(td));
        }
        let length = if ln == 14 || (ln == 1 && t == T_STRUCT) {
            let mut length: u64 = 0;
            let mut overflow = false;
            loop {
                if pos >= end {
                    return Err(Error::ion("Ion VarUInt runs past the end of its value"));
                }
                let b = buf[pos];
                pos += 1;
                (length, overflow) = accumulate(length, overflow, u64::from(b & 0x7F), 7);
                if b & 0x80 != 0 {
                    break;
                }
            }
            if overflow { usize::MAX } else { usize::try_from(length).unwrap_or(usize::MAX) }
        } else if ln == 15 || t == T_BOOL {
            0
        } else {
            usize::from(ln)
        };
        pos = pos.saturating_add(length);
        if pos > end {
            return Err(truncated());
        }
        if td >= 0x0F {
            out.push((vpos, pos)); // not NOP padding
        }
    }
    Ok(out)
}

/// ``unwrap``: look through an annotation wrapper. Returns the first annotation SID (if any),
/// and the header of the wrapped value.
fn unwrap(buf: &[u8], pos: usize, end: usize) -> Result<(Option<VarUInt>, Header)> {
    let h = header(buf, pos, end)?;
    if h.t != T_ANNOTATION {
        return Ok((None, h));
    }
    let (alen, mut p) = read_varuint(buf, h.start, h.stop)?;
    let aend = p.saturating_add(alen.as_usize());
    if alen.is(0) || aend >= h.stop {
        return Err(Error::ion("Ion annotation wrapper has no annotations or no value"));
    }
    let mut first = None;
    while p < aend {
        let (sid, np) = read_varuint(buf, p, aend)?;
        if first.is_none() {
            first = Some(sid);
        }
        p = np;
    }
    let v = header(buf, aend, h.stop)?;
    if v.t == T_ANNOTATION || v.is_nop() {
        return Err(Error::ion("Ion annotation wrapper must wrap exactly one value"));
    }
    if v.stop != h.stop {
        return Err(Error::ion("Ion annotation wrapper length does not match its value"));
    }
    Ok((first, v))
}

/// One Ion binary stream holding exactly one top-level value (a QLDB user record).
pub struct RecordView<'a> {
    pub buf: &'a [u8],
    pub table: SymbolTable<'a>,
    pub pos: usize,
    pub end: usize,
}

/// ``parse_record``: locate the single top-level user value of an Ion binary stream.
pub fn parse_record(buf: &[u8]) -> Result<RecordView<'_>> {
    if buf.len() < 4 || &buf[..4] != IVM {
        return Err(Error::ion("not an Ion binary stream (no Ion 1.0 version marker)"));
    }
    let end = buf.len();
    let mut pos = 4;
    let mut table = SymbolTable::system(buf);
    // The value's table: the current one, unless a symbol table follows the value (then a copy).
    let mut found: Option<(usize, usize, Option<SymbolTable<'_>>)> = None;
    while pos < end {
        if buf.len() - pos >= 4 && &buf[pos..pos + 4] == IVM {
            let next = SymbolTable::system(buf);
            if let Some((_, _, own @ None)) = &mut found {
                *own = Some(std::mem::replace(&mut table, next));
            } else {
                table = next;
            }
            pos += 4;
            continue;
        }
        let (first, v) = unwrap(buf, pos, end)?;
        let stop = header(buf, pos, end)?.stop;
        if v.is_nop() {
            pos = stop;
            continue;
        }
        if first.is_some_and(|s| s.is(SID_ION_SYMBOL_TABLE)) && v.t == T_STRUCT && !v.is_null() {
            let next = symbols::symbol_table(buf, pos, stop, v.start, v.stop, &table)?;
            if let Some((_, _, own @ None)) = &mut found {
                *own = Some(std::mem::replace(&mut table, next));
            } else {
                table = next;
            }
        } else if found.is_none() {
            found = Some((pos, stop, None));
        } else {
            return Err(Error::ion("Ion stream holds more than one top-level value"));
        }
        pos = stop;
    }
    match found {
        Some((pos, end, own)) => Ok(RecordView { buf, table: own.unwrap_or(table), pos, end }),
        None => Err(Error::ion("Ion stream holds no value")),
    }
}

// --- struct fields (the scanner's ``struct_slots``) ----------------------------------------

/// Text of a symbol (``None``: unknown).
pub type Sym<'a> = Option<&'a [u8]>;

/// A field of a struct: name text (``None`` = unknown) and ``(value_pos, value_end)``.
pub type Field<'a> = (Sym<'a>, usize, usize);

/// Why ``struct_slots`` failed: malformed Ion, or the same field name twice.
pub enum SlotsError {
    Ion(Error),
    Duplicate(Option<String>),
}

impl From<Error> for SlotsError {
    fn from(e: Error) -> Self {
        SlotsError::Ion(e)
    }
}

/// ``struct_slots``: each field of a struct body with its value slot; NOP padding skipped.
///
/// Exactly as lax as the Python (the value header is decoded inline: a bool's length nibble is
/// not checked here, ``header`` checks it when the field is read).
pub fn struct_slots<'a>(
    buf: &[u8],
    start: usize,
    end: usize,
    symbols: &SymbolTable<'a>,
    out: &mut Vec<Field<'a>>,
) -> std::result::Result<(), SlotsError> {
    out.clear();
    let mut seen: Option<HashSet<Sym<'a>>> = None;
    let mut pos = start;
    while pos < end {
        let sid_start = pos;
        let mut sid: u64 = 0;
        let mut overflow = false;
        loop {
            let b = buf[pos];
            pos += 1;
            (sid, overflow) = accumulate(sid, overflow, u64::from(b & 0x7F), 7);
            if b & 0x80 != 0 {
                break;
            }
            if pos >= end {
                return Err(Error::ion("Ion field name runs past the end of its struct").into());
            }
        }
        if pos >= end {
            return Err(Error::ion("Ion struct field has a name but no value").into());
        }
        let vpos = pos;
        let td = buf[pos];
        pos += 1;
        let ln = td & 0x0F;
        let t = td >> 4;
        let length = if ln == 14 || (ln == 1 && t == T_STRUCT) {
            let mut length: u64 = 0;
            let mut lover = false;
            loop {
                if pos >= end {
                    return Err(Error::ion("Ion VarUInt runs past the end of its value").into());
                }
                let b = buf[pos];
                pos += 1;
                (length, lover) = accumulate(length, lover, u64::from(b & 0x7F), 7);
                if b & 0x80 != 0 {
                    break;
                }
            }
            if lover { usize::MAX } else { usize::try_from(length).unwrap_or(usize::MAX) }
        } else if ln == 15 || t == T_BOOL {
            0
        } else {
            usize::from(ln)
        };
        if t == 15 || (t == T_ANNOTATION && ln == 15) {
            return Err(invalid_td(td).into());
        }
        pos = pos.saturating_add(length);
        if pos > end {
            return Err(truncated().into());
        }
        if td < 0x0F {
            continue; // NOP padding
        }
        let sidv = VarUInt { value: sid, overflow, start: sid_start, end: vpos };
        let name = match symbols.get(&sidv) {
            Lookup::OutOfRange => {
                return Err(Error::ion(format!(
                    "Ion symbol ID {} is not in the symbol table (max ID {})",
                    sidv.decimal(buf),
                    symbols.max_id_text()
                ))
                .into());
            }
            Lookup::Unknown => None,
            Lookup::Text(t) => Some(t),
        };
        if is_duplicate(out, &mut seen, name) {
            return Err(SlotsError::Duplicate(name.map(|n| String::from_utf8_lossy(n).into_owned())));
        }
        out.push((name, vpos, pos));
    }
    Ok(())
}

/// Has a field of this name been seen? A linear scan for the usual handful of fields; a hash set
/// once a struct is large, so that a hostile record cannot make the check quadratic.
#[inline]
fn is_duplicate<'a>(out: &[Field<'a>], seen: &mut Option<HashSet<Sym<'a>>>, name: Sym<'a>) -> bool {
    const LINEAR: usize = 16;
    if out.len() < LINEAR {
        return out.iter().any(|f| f.0 == name);
    }
    let set = seen.get_or_insert_with(|| out.iter().map(|f| f.0).collect());
    !set.insert(name)
}
