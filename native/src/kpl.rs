//! Strict KPL aggregate parser: the Rust twin of ``qldbstream/deaggregate.py``
//! ``parse_aggregate`` (magic and length, MD5, then a hand-written protobuf walk), with the same
//! checks in the same order and the same messages.

use md5::{Digest, Md5};

use crate::error::{Error, Result};

pub const KPL_MAGIC: &[u8; 4] = b"\xf3\x89\x9a\xc2";
const MD5_LEN: usize = 16;
const MIN_AGGREGATE: usize = KPL_MAGIC.len() + MD5_LEN;

const VARINT: u64 = 0;
const I64: u64 = 1;
const LEN: u64 = 2;
const I32: u64 = 5;

/// One user record: partition key, explicit hash key, data (slices of the aggregate).
pub type Entry<'a> = (&'a str, Option<&'a str>, &'a [u8]);

/// ``_varint``: a protobuf varint (at most 10 bytes, at most 64 bits).
fn varint(buf: &[u8], pos: usize, end: usize) -> Result<(u64, usize)> {
    const TRUNCATED: &str = "protobuf is truncated (a varint runs past the end)";
    if pos >= end {
        return Err(Error::kpl(TRUNCATED));
    }
    let b = buf[pos];
    if b < 0x80 {
        return Ok((u64::from(b), pos + 1));
    }
    let mut result = u128::from(b & 0x7F);
    let mut shift = 7u32;
    let mut pos = pos + 1;
    loop {
        if pos >= end {
            return Err(Error::kpl(TRUNCATED));
        }
        let b = buf[pos];
        pos += 1;
        result |= u128::from(b & 0x7F) << shift;
        if b < 0x80 {
            if result >> 64 != 0 {
                return Err(Error::kpl("protobuf varint does not fit in 64 bits"));
            }
            return Ok((result as u64, pos));
        }
        shift += 7;
        if shift > 63 {
            return Err(Error::kpl("protobuf varint is longer than 10 bytes"));
        }
    }
}

/// ``_key``: ``(field number, wire type)``.
fn key(buf: &[u8], pos: usize, end: usize) -> Result<(u64, u64, usize)> {
    let (k, pos) = varint(buf, pos, end)?;
    if k >> 3 == 0 {
        return Err(Error::kpl("protobuf has a field with number 0"));
    }
    Ok((k >> 3, k & 7, pos))
}

/// ``pos + n`` (``n`` from a varint), saturating: anything past ``end`` is caught by the caller.
fn add(pos: usize, n: u64) -> usize {
    pos.saturating_add(usize::try_from(n).unwrap_or(usize::MAX))
}

/// ``_skip``: skip an unknown field; groups and reserved wire types are errors.
fn skip(buf: &[u8], pos: usize, end: usize, wtype: u64) -> Result<usize> {
    let (pos, width) = match wtype {
        VARINT => return Ok(varint(buf, pos, end)?.1),
        LEN => {
            let (n, p) = varint(buf, pos, end)?;
            (p, n)
        }
        I64 => (pos, 8),
        I32 => (pos, 4),
        _ => return Err(Error::kpl(format!("protobuf has unsupported wire type {wtype}"))),
    };
    let stop = add(pos, width);
    if stop > end {
        return Err(Error::kpl("protobuf is truncated (a field runs past the end)"));
    }
    Ok(stop)
}

fn utf8(buf: &[u8], start: usize, stop: usize, fnum: u64) -> Result<&str> {
    std::str::from_utf8(&buf[start..stop])
        .map_err(|_| Error::kpl(format!("protobuf string field {fnum} is not valid UTF-8")))
}

/// ``_check_tag``
fn check_tag(buf: &[u8], mut pos: usize, end: usize, index: usize) -> Result<()> {
    let mut has_key = false;
    while pos < end {
        let (fnum, wtype, p) = key(buf, pos, end)?;
        pos = p;
        if (fnum == 1 || fnum == 2) && wtype == LEN {
            let (n, p) = varint(buf, pos, end)?;
            pos = p;
            let stop = add(pos, n);
            if stop > end {
                return Err(Error::kpl(format!(
                    "user record {index}: a tag runs past the end of the record"
                )));
            }
            utf8(buf, pos, stop, 4)?;
            has_key = has_key || fnum == 1;
            pos = stop;
        } else {
            pos = skip(buf, pos, end, wtype)?;
        }
    }
    if !has_key {
        return Err(Error::kpl(format!("user record {index}: a tag has no key")));
    }
    Ok(())
}

/// ``_parse_record``: ``(partition_key_index, explicit_hash_key_index, data)``.
fn parse_record(buf: &[u8], mut pos: usize, end: usize, index: usize) -> Result<(u64, Option<u64>, &[u8])> {
    let mut pk_index = None;
    let mut ehk_index = None;
    let mut payload = None;
    while pos < end {
        let (fnum, wtype, p) = key(buf, pos, end)?;
        pos = p;
        if fnum == 1 || fnum == 2 {
            if wtype != VARINT {
                return Err(Error::kpl(format!(
                    "user record {index}: field {fnum} has wire type {wtype}, expected 0"
                )));
            }
            let (value, p) = varint(buf, pos, end)?;
            pos = p;
            if fnum == 1 {
                pk_index = Some(value);
            } else {
                ehk_index = Some(value);
            }
        } else if fnum == 3 || fnum == 4 {
            if wtype != LEN {
                return Err(Error::kpl(format!(
                    "user record {index}: field {fnum} has wire type {wtype}, expected 2"
                )));
            }
            let (n, p) = varint(buf, pos, end)?;
            pos = p;
            let stop = add(pos, n);
            if stop > end {
                return Err(Error::kpl(format!(
                    "user record {index}: field {fnum} runs past the end of the record"
                )));
            }
            if fnum == 3 {
                payload = Some(&buf[pos..stop]);
            } else {
                check_tag(buf, pos, stop, index)?;
            }
            pos = stop;
        } else {
            pos = skip(buf, pos, end, wtype)?;
        }
    }
    let Some(pk_index) = pk_index else {
        return Err(Error::kpl(format!("user record {index}: the required partition_key_index is missing")));
    };
    let Some(payload) = payload else {
        return Err(Error::kpl(format!("user record {index}: the required data field is missing")));
    };
    Ok((pk_index, ehk_index, payload))
}

/// ``parse_aggregate``: the user records of a KPL aggregate (which starts with the magic).
pub fn parse_aggregate(data: &[u8]) -> Result<Vec<Entry<'_>>> {
    if data.len() < MIN_AGGREGATE {
        return Err(Error::kpl(format!(
            "record starts with the KPL magic but is only {} bytes long (an aggregate needs at least {MIN_AGGREGATE})",
            data.len()
        )));
    }
    let buf = &data[4..data.len() - MD5_LEN];
    let digest: [u8; 16] = Md5::digest(buf).into();
    if digest[..] != data[data.len() - MD5_LEN..] {
        return Err(Error::kpl("KPL aggregate MD5 does not match its protobuf (corrupt or truncated)"));
    }
    let end = buf.len();
    let mut pk_table: Vec<&str> = Vec::new();
    let mut ehk_table: Vec<&str> = Vec::new();
    let mut raw_records: Vec<(usize, usize)> = Vec::new();
    let mut pos = 0;
    while pos < end {
        let (fnum, wtype, p) = key(buf, pos, end)?;
        pos = p;
        if (1..=3).contains(&fnum) {
            if wtype != LEN {
                return Err(Error::kpl(format!(
                    "AggregatedRecord field {fnum} has wire type {wtype}, expected 2"
                )));
            }
            let (n, p) = varint(buf, pos, end)?;
            pos = p;
            let stop = add(pos, n);
            if stop > end {
                return Err(Error::kpl(format!(
                    "AggregatedRecord field {fnum} runs past the end of the protobuf"
                )));
            }
            match fnum {
                3 => raw_records.push((pos, stop)),
                1 => pk_table.push(utf8(buf, pos, stop, fnum)?),
                _ => ehk_table.push(utf8(buf, pos, stop, fnum)?),
            }
            pos = stop;
        } else {
            pos = skip(buf, pos, end, wtype)?;
        }
    }
    let mut out = Vec::with_capacity(raw_records.len());
    for (index, &(start, stop)) in raw_records.iter().enumerate() {
        let (pk_index, ehk_index, payload) = parse_record(buf, start, stop, index)?;
        let pk = usize::try_from(pk_index).ok().and_then(|i| pk_table.get(i)).ok_or_else(|| {
            Error::kpl(format!(
                "user record {index}: partition_key_index {pk_index} is outside the table of {} partition keys",
                pk_table.len()
            ))
        })?;
        let ehk = match ehk_index {
            None => None,
            Some(i) => Some(*usize::try_from(i).ok().and_then(|i| ehk_table.get(i)).ok_or_else(|| {
                Error::kpl(format!(
                    "user record {index}: explicit_hash_key_index {i} is outside the table of {} explicit hash keys",
                    ehk_table.len()
                ))
            })?),
        };
        out.push((*pk, ehk, payload));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints() {
        assert_eq!(varint(&[0x05], 0, 1).unwrap(), (5, 1));
        assert_eq!(varint(&[0x80, 0x01], 0, 2).unwrap(), (128, 2));
        let max = [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01];
        assert_eq!(varint(&max, 0, 10).unwrap(), (u64::MAX, 10));
        let too_big = [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x02];
        assert!(varint(&too_big, 0, 10).is_err());
        let too_long = [0x80; 11];
        assert!(varint(&too_long, 0, 11).is_err());
    }
}
