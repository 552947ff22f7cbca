//! Refuse Ion that amazon-ion would not load, or would load to another value: the Rust twin of
//! ``qldbstream/ion/check.py`` (same checks, same order, same messages; see its docstring for
//! why each one is there). Numbers of any size saturate instead of overflowing; no message
//! prints an unbounded value except symbol IDs, which are printed exactly.

use crate::error::{Error, Result, decimal_be};
use crate::reader::{
    Lookup, SymbolTable, T_ANNOTATION, T_BOOL, T_DECIMAL, T_FLOAT, T_LIST, T_NEGINT, T_NULL, T_SEXP,
    T_STRING, T_STRUCT, T_SYMBOL, T_TIMESTAMP, VarUInt, read_uint_u64, read_varuint, truncated,
};

/// Containers nested deeper than this are refused (``MAX_CHECK_DEPTH``).
pub const MAX_CHECK_DEPTH: usize = 103;
const DECIMAL_MIN_EXPONENT: i64 = -6176;
const DECIMAL_MAX_EXPONENT: i64 = 6111;
const DAYS: [u64; 12] = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];

/// ``_varuint``: a VarUInt whose value saturates; ``what`` names it in the message.
fn varuint(buf: &[u8], pos: usize, end: usize, what: &str) -> Result<(u64, usize)> {
    let mut pos = pos;
    let mut value: u64 = 0;
    while pos < end {
        let b = buf[pos];
        pos += 1;
        value = value.checked_mul(128).map_or(u64::MAX, |v| v | u64::from(b & 0x7F));
        if b & 0x80 != 0 {
            return Ok((value, pos));
        }
    }
    Err(Error::ion(format!("Ion {what} runs past the end of its value")))
}

/// A VarInt's sign and saturated magnitude, and where it ends (``None``: it runs past ``end``).
fn varint(buf: &[u8], pos: usize, end: usize) -> Option<(bool, u64, usize)> {
    let mut b = buf[pos];
    let mut pos = pos + 1;
    let negative = b & 0x40 != 0;
    let mut value = u64::from(b & 0x3F);
    while b & 0x80 == 0 {
        if pos >= end {
            return None;
        }
        b = buf[pos];
        pos += 1;
        value = value.checked_mul(128).map_or(u64::MAX, |v| v | u64::from(b & 0x7F));
    }
    Some((negative, value, pos))
}

fn ion(message: &str) -> Error {
    Error::ion(message)
}

/// ``check_timestamp``: the timestamp body ``buf[start..end]``.
pub fn check_timestamp(buf: &[u8], start: usize, end: usize) -> Result<()> {
    if start >= end {
        return Err(ion("Ion timestamp has no year"));
    }
    let (negative, offset, mut pos) =
        varint(buf, start, end).ok_or_else(|| ion("Ion timestamp offset runs past the end of its value"))?;
    let unknown_offset = negative && offset == 0;
    if pos - start > 2 {
        // amazon-ion reads at most two bytes (a padded +23:59 is three)
        return Err(ion("Ion timestamp offset is longer than 2 bytes"));
    }
    if offset >= 24 * 60 {
        return Err(ion("Ion timestamp offset is 24 hours or more"));
    }
    let mut fields = [0u64; 6];
    let mut n = 0;
    while pos < end && n < 6 {
        if buf[pos] == 0 {
            return Err(ion("Ion timestamp has a padded component"));
        }
        let (v, p) = varuint(buf, pos, end, "timestamp component")?;
        fields[n] = v;
        n += 1;
        pos = p;
    }
    if n == 0 {
        return Err(ion("Ion timestamp has no year"));
    }
    if n == 4 {
        return Err(ion("Ion timestamp has an hour without minutes"));
    }
    let year = fields[0];
    if !(1..=9999).contains(&year) {
        return Err(ion("Ion timestamp year is not 1 to 9999"));
    }
    if n > 1 {
        let month = fields[1];
        if !(1..=12).contains(&month) {
            return Err(ion("Ion timestamp month is not 1 to 12"));
        }
        if n > 2 {
            let leap = month == 2 && year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
            let last = DAYS[(month - 1) as usize] + u64::from(leap);
            if !(1..=last).contains(&fields[2]) {
                return Err(Error::ion(format!("Ion timestamp day is not 1 to {last}")));
            }
        }
    }
    if n < 5 {
        if !unknown_offset {
            return Err(ion("Ion timestamp has an offset but no time (amazon-ion drops it)"));
        }
    } else {
        if fields[3] > 23 {
            return Err(ion("Ion timestamp hour is not 0 to 23"));
        }
        if fields[4] > 59 {
            return Err(ion("Ion timestamp minute is not 0 to 59"));
        }
        if n == 6 && fields[5] > 59 {
            return Err(ion("Ion timestamp second is not 0 to 59"));
        }
        if offset != 0 && (year == 1 || year == 9999) {
            // the local time (UTC + offset) must be in years 1 to 9999 too
            let minutes = (fields[3] * 60 + fields[4]) as i64;
            let local = if negative { minutes - offset as i64 } else { minutes + offset as i64 };
            let first = year == 1 && fields[1] == 1 && fields[2] == 1 && local < 0;
            let last = year == 9999 && fields[1] == 12 && fields[2] == 31 && local >= 24 * 60;
            if first || last {
                return Err(ion("Ion timestamp's local time is outside years 1 to 9999"));
            }
        }
    }
    if pos < end {
        if n < 6 {
            return Err(ion("Ion timestamp has a fraction but no seconds"));
        }
        let (exp_negative, exponent, p) = varint(buf, pos, end)
            .ok_or_else(|| ion("Ion timestamp fraction runs past the end of its value"))?;
        // the coefficient: an Int (sign-magnitude), the rest of the body
        let mut nonzero = false;
        let mut significant: &[u8] = &[];
        if p < end {
            let first = buf[p] & 0x7F;
            let rest = &buf[p + 1..end];
            nonzero = first != 0 || rest.iter().any(|&b| b != 0);
            if buf[p] & 0x80 != 0 && nonzero {
                return Err(ion("Ion timestamp has negative fractional seconds"));
            }
            significant = &buf[p..end];
        }
        if nonzero && !exp_negative {
            return Err(ion("Ion timestamp fractional seconds must be less than 1"));
        }
        if exp_negative && exponent > 9 {
            return Err(ion(
                "Ion timestamp has fractional seconds finer than nanoseconds (amazon-ion changes them)",
            ));
        }
        if nonzero {
            // coefficient >= 10**exponent, exponent <= 9 here
            let mut digits = significant.iter().copied();
            let mut value: u64 = u64::from(digits.next().unwrap_or(0) & 0x7F);
            let mut big = false;
            for b in digits {
                if value >> 48 != 0 {
                    big = true;
                    break;
                }
                value = (value << 8) | u64::from(b);
            }
            if big || value >= 10u64.pow(exponent as u32) {
                return Err(ion("Ion timestamp fractional seconds must be less than 1"));
            }
        }
    }
    Ok(())
}

fn check_decimal(buf: &[u8], start: usize, end: usize) -> Result<()> {
    if start == end {
        return Ok(());
    }
    let (negative, magnitude, _) =
        varint(buf, start, end).ok_or_else(|| ion("Ion decimal exponent runs past the end of its value"))?;
    let exponent = i64::try_from(magnitude).unwrap_or(i64::MAX);
    let exponent = if negative { -exponent } else { exponent };
    if !(DECIMAL_MIN_EXPONENT..=DECIMAL_MAX_EXPONENT).contains(&exponent) {
        return Err(Error::ion(format!(
            "Ion decimal exponent is outside {DECIMAL_MIN_EXPONENT} to {DECIMAL_MAX_EXPONENT} \
             (amazon-ion changes or refuses it)"
        )));
    }
    Ok(())
}

/// The checker over one record's bytes and symbol table.
pub struct Checker<'a, 't> {
    buf: &'a [u8],
    symbols: &'t SymbolTable<'a>,
}

impl<'a, 't> Checker<'a, 't> {
    pub fn new(buf: &'a [u8], symbols: &'t SymbolTable<'a>) -> Self {
        Checker { buf, symbols }
    }

    fn not_in_table(&self, sid: String) -> Error {
        Error::ion(format!(
            "Ion symbol ID {sid} is not in the symbol table (max ID {})",
            self.symbols.max_id_text()
        ))
    }

    /// ``_sid`` for a VarUInt symbol ID (field names, annotations).
    fn sid(&self, sid: &VarUInt) -> Result<()> {
        if self.symbols.get(sid) == Lookup::OutOfRange {
            return Err(self.not_in_table(sid.decimal(self.buf)));
        }
        Ok(())
    }

    /// ``check_value``: the value whose type descriptor is at ``pos``; returns where it ends.
    pub fn check_value(&self, pos: usize, end: usize, depth: usize) -> Result<usize> {
        let buf = self.buf;
        let td = buf[pos];
        let t = td >> 4;
        let ln = td & 0x0F;
        let pos = pos + 1;
        if ln == 15 {
            if t >= T_ANNOTATION {
                return Err(Error::ion(format!("invalid Ion type descriptor 0x{td:02x}")));
            }
            return Ok(pos);
        }
        if t == T_BOOL {
            if ln > 1 {
                return Err(Error::ion(format!("invalid Ion bool type descriptor 0x{td:02x}")));
            }
            return Ok(pos);
        }
        if t == 15 {
            return Err(Error::ion(format!("invalid Ion type descriptor 0x{td:02x}")));
        }
        let (length, pos) = if ln == 14 || (ln == 1 && t == T_STRUCT) {
            let (length, p) = varuint(buf, pos, end, "VarUInt")?;
            if ln == 1 && length == 0 {
                return Err(ion("Ion sorted struct is empty"));
            }
            (usize::try_from(length).unwrap_or(usize::MAX), p)
        } else {
            (usize::from(ln), pos)
        };
        let stop = pos.saturating_add(length);
        if stop > end {
            return Err(truncated());
        }
        match t {
            T_STRING if std::str::from_utf8(&buf[pos..stop]).is_err() => {
                return Err(ion("Ion string is not valid UTF-8"));
            }
            T_STRUCT | T_LIST | T_SEXP => {
                if depth >= MAX_CHECK_DEPTH {
                    return Err(Error::ion(format!(
                        "Ion value is nested more than {MAX_CHECK_DEPTH} levels deep"
                    )));
                }
                let in_struct = t == T_STRUCT;
                let mut p = pos;
                while p < stop {
                    if in_struct {
                        let (sid, np) = read_varuint(buf, p, stop)
                            .map_err(|_| ion("Ion field name runs past the end of its value"))?;
                        p = np;
                        if p >= stop {
                            return Err(ion("Ion struct field has a name but no value"));
                        }
                        if buf[p] >= 0x0F {
                            self.sid(&sid)?;
                        }
                    }
                    if buf[p] < 0x0F {
                        // NOP padding
                        let mut n = usize::from(buf[p] & 0x0F);
                        p += 1;
                        if n == 14 {
                            let (v, np) = varuint(buf, p, stop, "VarUInt")?;
                            n = usize::try_from(v).unwrap_or(usize::MAX);
                            p = np;
                        }
                        p = p.saturating_add(n);
                        if p > stop {
                            return Err(truncated());
                        }
                        continue;
                    }
                    p = self.check_value(p, stop, depth + 1)?;
                }
            }
            T_TIMESTAMP => check_timestamp(buf, pos, stop)?,
            T_DECIMAL => check_decimal(buf, pos, stop)?,
            T_SYMBOL if length > 4 => {
                // amazon-ion overflows on more (leading zero bytes included)
                return Err(ion("Ion symbol value is longer than 4 bytes"));
            }
            T_SYMBOL => {
                let out = match read_uint_u64(buf, pos, stop) {
                    Some(sid) => self.symbols.get_u64(sid) == Lookup::OutOfRange,
                    None => true,
                };
                if out {
                    return Err(self.not_in_table(decimal_be(&buf[pos..stop])));
                }
            }
            T_NEGINT if buf[pos..stop].iter().all(|&b| b == 0) => {
                return Err(ion("Ion int is a negative zero"));
            }
            T_FLOAT if !matches!(length, 0 | 4 | 8) => {
                return Err(Error::ion(format!("Ion float has length {length} (must be 0, 4 or 8)")));
            }
            T_ANNOTATION => {
                let (alen, mut p) = varuint(buf, pos, stop, "VarUInt")?;
                let aend = p.saturating_add(usize::try_from(alen).unwrap_or(usize::MAX));
                if alen == 0 || aend >= stop {
                    return Err(ion("Ion annotation wrapper has no annotations or no value"));
                }
                while p < aend {
                    let (sid, np) = read_varuint(buf, p, aend)
                        .map_err(|_| ion("Ion VarUInt runs past the end of its value"))?;
                    p = np;
                    self.sid(&sid)?;
                }
                if buf[aend] >> 4 == T_ANNOTATION || buf[aend] < 0x0F {
                    return Err(ion("Ion annotation wrapper must wrap exactly one value"));
                }
                if self.check_value(aend, stop, depth)? != stop {
                    return Err(ion("Ion annotation wrapper length does not match its value"));
                }
            }
            T_NULL => return Err(ion("Ion NOP padding where a value was expected")),
            _ => {}
        }
        Ok(stop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(body: &[u8]) -> Result<()> {
        check_timestamp(body, 0, body.len())
    }

    #[test]
    fn timestamps() {
        assert!(ts(b"\x80\x00\x0f\xd0").is_err()); // a padded year
        assert!(ts(b"\x00\x80\x0f\xd0\x81\x81\x80\x80").is_ok()); // a padded offset of two bytes
        assert!(ts(b"\x00\x0b\x9f\x0f\xd0\x81\x81\x80\x80").is_err()); // three bytes
        // 2000-01-01T00:00Z, then minute 112, hour 25, February 29 of 2000 and of 1900
        assert!(ts(b"\x80\x0f\xd0\x81\x81\x80\x80").is_ok());
        assert_eq!(
            ts(b"\x80\x0f\xd0\x81\x81\x80\xf0").unwrap_err().to_string(),
            "Ion timestamp minute is not 0 to 59"
        );
        assert_eq!(
            ts(b"\x80\x0f\xd0\x81\x81\x99\x80").unwrap_err().to_string(),
            "Ion timestamp hour is not 0 to 23"
        );
        assert!(ts(b"\xc0\x0f\xd0\x82\x9d").is_ok());
        assert_eq!(ts(b"\xc0\x0e\xec\x82\x9d").unwrap_err().to_string(), "Ion timestamp day is not 1 to 28");
        // an offset on a year; nanoseconds and finer
        assert!(ts(b"\x81\x0f\xd0").is_err());
        assert!(ts(b"\x80\x0f\xd0\x81\x81\x80\x80\x80\xc9\x3b\x9a\xc9\xff").is_ok());
        assert!(ts(b"\x80\x0f\xd0\x81\x81\x80\x80\x80\xca\x01").is_err());
        // a huge offset or component saturates instead of overflowing
        assert!(ts(b"\x7f\x7f\x7f\x7f\x7f\x7f\x7f\x7f\x7f\x7f\x7f\xff\x0f\xd0").is_err());
        assert!(ts(b"\x80\x7f\x7f\x7f\x7f\x7f\x7f\x7f\x7f\x7f\x7f\x7f\xff").is_err());
    }

    #[test]
    fn decimals() {
        assert!(check_decimal(b"\x2f\xdf\x01", 0, 3).is_ok()); // 1d6111
        assert!(check_decimal(b"\x2f\xe0\x01", 0, 3).is_err()); // 1d6112
        assert!(check_decimal(b"\x70\xa0\x01", 0, 3).is_ok()); // 1d-6176
        assert!(check_decimal(b"\x70\xa1\x01", 0, 3).is_err()); // 1d-6177
        assert!(check_decimal(b"\x7f\x7f\x7f\x7f\x7f\x7f\x7f\x7f\x7f\x7f\xff", 0, 11).is_err());
    }
}
