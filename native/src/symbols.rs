//! Ion symbol tables: the system table, local tables (``$ion_symbol_table::{...}``, including
//! ``imports: $ion_symbol_table`` appends and shared imports known only by ``max_id``), and a
//! cache of tables by their bytes - the twin of the symbol-table part of
//! ``qldbstream/ion/binary.py``.
//!
//! QLDB writes a local symbol table into every record, and records of one shape carry the very
//! same table bytes, so (like Python's ``_TABLE_CACHE``) a table read from a stream whose
//! current table is the system table is cached by its bytes. Symbol texts are kept as spans of
//! the record's bytes relative to the table's first byte, so a cached table serves any record
//! that holds the same bytes anywhere.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::rc::Rc;

use crate::check::Checker;
use crate::error::{Error, Kind, Part, Result};
use crate::reader::{
    T_LIST, T_POSINT, T_STRING, T_STRUCT, T_SYMBOL, VarUInt, header, iter_list, read_uint_u64, read_varuint,
    utf8,
};

const SID_ION_SYMBOL_TABLE: u64 = 3;
const SID_NAME: u64 = 4;
const SID_IMPORTS: u64 = 6;
const SID_SYMBOLS: u64 = 7;
const SID_MAX_ID: u64 = 8;

pub const SYSTEM_SYMBOLS: [Option<&[u8]>; 10] = [
    None,
    Some(b"$ion"),
    Some(b"$ion_1_0"),
    Some(b"$ion_symbol_table"),
    Some(b"name"),
    Some(b"version"),
    Some(b"imports"),
    Some(b"symbols"),
    Some(b"max_id"),
    Some(b"$ion_shared_symbol_table"),
];

/// One symbol of a dense run.
#[derive(Clone, Copy, Debug)]
enum Sym {
    Unknown,
    /// ``SYSTEM_SYMBOLS[i]``
    System(u8),
    /// ``buf[base + start .. base + end]`` (valid UTF-8, checked when the table was read)
    Span(usize, usize),
}

#[derive(Clone, Debug)]
enum Seg {
    Dense(Vec<Sym>),
    /// Symbols of a shared table we do not have: known by ID only. Python keeps
    /// ``[None] * max_id`` list entries; a run costs nothing for a huge ``max_id``.
    Gap(u64),
}

#[derive(Clone, Debug, Default)]
struct TableData {
    segs: Vec<Seg>,
    /// First symbol ID of each segment.
    starts: Vec<u64>,
    total: u64,
}

impl TableData {
    fn system() -> Self {
        TableData { segs: vec![Seg::Dense((0..10).map(Sym::System).collect())], starts: vec![0], total: 10 }
    }

    fn push(&mut self, sym: Sym) {
        if let Some(Seg::Dense(v)) = self.segs.last_mut() {
            v.push(sym);
        } else {
            self.starts.push(self.total);
            self.segs.push(Seg::Dense(vec![sym]));
        }
        self.total += 1;
    }

    fn push_gap(&mut self, n: u64) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        let total = self.total.checked_add(n).ok_or_else(too_many_symbols)?;
        if let Some(Seg::Gap(g)) = self.segs.last_mut() {
            *g += n;
        } else {
            self.starts.push(self.total);
            self.segs.push(Seg::Gap(n));
        }
        self.total = total;
        Ok(())
    }
}

/// What a symbol ID resolves to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup<'a> {
    OutOfRange,
    Unknown,
    Text(&'a [u8]),
}

/// A resolved symbol table over one record's bytes (``list[str | None]`` in Python).
#[derive(Clone, Debug)]
pub struct SymbolTable<'a> {
    buf: &'a [u8],
    data: Rc<TableData>,
    /// Spans are relative to this offset of ``buf``.
    base: usize,
    /// The system table itself (Python's ``current is SYSTEM_TABLE``).
    system: bool,
}

impl<'a> SymbolTable<'a> {
    pub fn system(buf: &'a [u8]) -> Self {
        SYSTEM.with(|s| SymbolTable { buf, data: Rc::clone(s), base: 0, system: true })
    }

    /// ``len(symbols)``
    pub fn len(&self) -> u64 {
        self.data.total
    }

    pub fn is_empty(&self) -> bool {
        self.data.total == 0
    }

    /// ``len(symbols) - 1`` as Python prints it.
    pub fn max_id_text(&self) -> String {
        if self.data.total == 0 { "-1".to_string() } else { (self.data.total - 1).to_string() }
    }

    /// ``symbols[sid]``; out of range is left to the caller's message.
    #[inline]
    pub fn get(&self, sid: &VarUInt) -> Lookup<'a> {
        if sid.overflow { Lookup::OutOfRange } else { self.get_u64(sid.value) }
    }

    #[inline]
    pub fn get_u64(&self, sid: u64) -> Lookup<'a> {
        let data = &*self.data;
        if sid >= data.total {
            return Lookup::OutOfRange;
        }
        let i = if data.segs.len() == 1 { 0 } else { data.starts.partition_point(|&s| s <= sid) - 1 };
        let sym = match &data.segs[i] {
            Seg::Dense(v) => v[(sid - data.starts[i]) as usize],
            Seg::Gap(_) => Sym::Unknown,
        };
        match sym {
            Sym::Unknown => Lookup::Unknown,
            Sym::System(k) => match SYSTEM_SYMBOLS[usize::from(k)] {
                Some(t) => Lookup::Text(t),
                None => Lookup::Unknown,
            },
            Sym::Span(s, e) => Lookup::Text(&self.buf[self.base + s..self.base + e]),
        }
    }

    /// Copy the symbols into ``out`` with spans made relative to ``base``.
    fn copy_into(&self, out: &mut TableData, base: usize) -> Result<()> {
        for seg in &self.data.segs {
            match seg {
                Seg::Dense(v) => {
                    for &sym in v {
                        out.push(match sym {
                            Sym::Span(s, e) => Sym::Span(self.base + s - base, self.base + e - base),
                            other => other,
                        });
                    }
                }
                Seg::Gap(n) => out.push_gap(*n)?,
            }
        }
        Ok(())
    }
}

thread_local! {
    static SYSTEM: Rc<TableData> = Rc::new(TableData::system());
    static CACHE: RefCell<HashMap<Vec<u8>, Rc<TableData>, BuildHasherDefault<WordHasher>>> =
        RefCell::new(HashMap::default());
    static SEEN: RefCell<Seen> = RefCell::new(Seen(Default::default()));
}

/// Hashes of table bytes seen once (bounded like the cache).
struct Seen(std::collections::HashSet<u64, BuildHasherDefault<WordHasher>>);

impl Seen {
    /// Record ``h``; ``true`` when it was not there yet.
    fn insert(&mut self, h: u64) -> bool {
        if self.0.len() >= 8 * CACHE_ENTRIES {
            self.0.clear();
        }
        self.0.insert(h)
    }
}

fn hash_key(key: &[u8]) -> u64 {
    let mut h = WordHasher::default();
    h.write(key);
    h.finish()
}

/// Tables cached at most (Python: 4096), and only tables of at most this many bytes, so the
/// cache stays below ~16 MiB whatever the input (Python's cache has no byte bound).
const CACHE_ENTRIES: usize = 1024;
const CACHE_MAX_KEY: usize = 16 * 1024;

/// A fast, non-cryptographic hash for cache keys (8 bytes a step); collisions only cost an
/// extra key comparison.
#[derive(Default)]
struct WordHasher(u64);

impl Hasher for WordHasher {
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut h = self.0 ^ (bytes.len() as u64);
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            h = (h.rotate_left(5) ^ u64::from_le_bytes(word)).wrapping_mul(K);
        }
        for &b in chunks.remainder() {
            h = (h.rotate_left(5) ^ u64::from(b)).wrapping_mul(K);
        }
        self.0 = h;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

pub fn too_many_symbols() -> Error {
    Error::ion("Ion symbol table is too large (more than 2**64 symbols)")
}

/// ``symbol_text``: the text of ``sid`` (``None`` if unknown); out of range is an error.
fn symbol_text<'a>(table: &SymbolTable<'a>, sid: &VarUInt) -> Result<Option<&'a [u8]>> {
    match table.get(sid) {
        Lookup::OutOfRange => Err(Error::ion(format!(
            "Ion symbol ID {} is not in the symbol table (max ID {})",
            sid.decimal(table.buf),
            table.max_id_text()
        ))),
        Lookup::Unknown => Ok(None),
        Lookup::Text(t) => Ok(Some(t)),
    }
}

/// ``_symbol_table``: the table a ``$ion_symbol_table::{...}`` value at ``pos..stop`` (struct
/// body ``start..end``) makes current.
pub fn symbol_table<'a>(
    buf: &'a [u8],
    pos: usize,
    stop: usize,
    start: usize,
    end: usize,
    current: &SymbolTable<'a>,
) -> Result<SymbolTable<'a>> {
    // amazon-ion reads the whole table value: check it as the record's values are checked
    let check = || Checker::new(buf, current).check_value(pos, stop, 0);
    if !current.system {
        check()?;
        let data = local_symbol_table(buf, start, end, current, 0)?;
        return Ok(SymbolTable { buf, data: Rc::new(data), base: 0, system: false });
    }
    let key = &buf[pos..stop];
    let cacheable = key.len() <= CACHE_MAX_KEY;
    if cacheable && let Some(data) = CACHE.with(|c| c.borrow().get(key).cloned()) {
        return Ok(SymbolTable { buf, data, base: pos, system: false });
    }
    check()?;
    let data = Rc::new(local_symbol_table(buf, start, end, current, pos)?);
    // Admit a table on its second sighting: tables that name per-record symbols (QLDB puts the
    // document IDs of transactionInfo.documents into the block summary's table) never repeat.
    if cacheable && SEEN.with(|seen| !seen.borrow_mut().insert(hash_key(key))) {
        CACHE.with(|c| {
            let mut cache = c.borrow_mut();
            if cache.len() >= CACHE_ENTRIES {
                cache.clear();
            }
            cache.insert(key.to_vec(), Rc::clone(&data));
        });
    }
    Ok(SymbolTable { buf, data, base: pos, system: false })
}

/// One step of ``iter_struct``: the next non-NOP field at or after ``pos`` as
/// ``(sid, value_pos, value_end)``.
fn next_struct_field(buf: &[u8], mut pos: usize, end: usize) -> Result<Option<(VarUInt, usize, usize)>> {
    while pos < end {
        let (sid, p) = read_varuint(buf, pos, end)?;
        let h = header(buf, p, end)?;
        if h.is_nop() {
            pos = h.stop;
            continue;
        }
        return Ok(Some((sid, p, h.stop)));
    }
    Ok(None)
}

/// ``_local_symbol_table``: apply a ``$ion_symbol_table::{...}`` struct body; spans relative to
/// ``base``.
fn local_symbol_table<'a>(
    buf: &'a [u8],
    start: usize,
    end: usize,
    current: &SymbolTable<'a>,
    base: usize,
) -> Result<TableData> {
    let mut symbols = TableData::system();
    let mut new: Vec<Sym> = Vec::with_capacity(64);
    let mut pos = start;
    while let Some((sid, vpos, vend)) = next_struct_field(buf, pos, end)? {
        pos = vend;
        symbol_text(current, &sid)?;
        let h = header(buf, vpos, vend)?;
        if sid.is(SID_IMPORTS) && !h.is_null() {
            if h.t == T_SYMBOL && read_uint_u64(buf, h.start, h.stop) == Some(SID_ION_SYMBOL_TABLE) {
                symbols = TableData::default(); // append to the current local symbol table
                current.copy_into(&mut symbols, base)?;
            } else if h.t == T_LIST {
                for (ipos, iend) in iter_list(buf, h.start, h.stop)? {
                    shared_import(buf, ipos, iend, current, &mut symbols)?;
                }
            }
        } else if sid.is(SID_SYMBOLS) && h.t == T_LIST && !h.is_null() {
            symbol_strings(buf, h.start, h.stop, base, &mut new)?;
        }
    }
    if let Some(Seg::Dense(v)) = symbols.segs.last_mut() {
        v.reserve(new.len());
    }
    for sym in new {
        symbols.push(sym);
    }
    Ok(symbols)
}

/// ``_symbol_strings``: the ``symbols`` list of a local symbol table (``Unknown`` for entries
/// that are not strings).
fn symbol_strings(buf: &[u8], start: usize, end: usize, base: usize, new: &mut Vec<Sym>) -> Result<()> {
    for (spos, send) in iter_list(buf, start, end)? {
        let td = buf[spos];
        if td >> 4 == T_STRING && td != 0x8F {
            let mut body = spos + 1;
            if td & 0x0F == 14 {
                body = read_varuint(buf, body, send)?.1;
            }
            utf8(buf, body, send)?;
            new.push(Sym::Span(body - base, send - base));
        } else {
            new.push(Sym::Unknown); // not a string: a symbol with unknown text
        }
    }
    Ok(())
}

/// ``_shared_import``: an import of a shared table we do not have - its symbols are known by ID.
fn shared_import<'a>(
    buf: &'a [u8],
    pos: usize,
    end: usize,
    current: &SymbolTable<'a>,
    symbols: &mut TableData,
) -> Result<()> {
    let h = header(buf, pos, end)?;
    if h.t != T_STRUCT || h.is_null() {
        return Ok(());
    }
    let mut name: Option<&str> = None;
    let mut max_id: Option<(usize, usize)> = None;
    let mut p = h.start;
    while let Some((sid, vpos, vend)) = next_struct_field(buf, p, h.stop)? {
        p = vend;
        symbol_text(current, &sid)?;
        let v = header(buf, vpos, vend)?;
        if sid.is(SID_NAME) && v.t == T_STRING && !v.is_null() {
            name = Some(utf8(buf, v.start, v.stop)?);
        } else if sid.is(SID_MAX_ID) && v.t == T_POSINT && !v.is_null() {
            max_id = Some((v.start, v.stop));
        }
    }
    let name = match name {
        None | Some("$ion") => return Ok(()),
        Some(n) => n,
    };
    let Some((s, e)) = max_id else {
        return Err(Error::with_parts(
            Kind::Ion,
            vec![
                Part::Text("Ion import of unknown shared symbol table ".into()),
                Part::Repr(Some(name.to_string())),
                Part::Text(" has no max_id".into()),
            ],
        ));
    };
    // Python: ``[None] * max_id``; beyond 64 bits it raises OverflowError (see the report).
    let n = read_uint_u64(buf, s, e).ok_or_else(too_many_symbols)?;
    symbols.push_gap(n)
}
