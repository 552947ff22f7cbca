//! The scan contract of ``qldbstream/decode.py`` (``scan_record`` and its ``_scan_*`` / typed
//! field helpers), ported step for step: the same fields are read, checked and hashed in the
//! same order, so that a record with several problems fails with the same error kind (and the
//! same message) as the pure-Python scanner.

use crate::check::Checker;
use crate::error::{Error, Kind, Part, Result};
use crate::hash::{Serializer, Sha256Algo};
use crate::reader::{
    Field, Header, Lookup, RecordView, SlotsError, SymbolTable, T_BLOB, T_LIST, T_POSINT, T_STRING, T_STRUCT,
    T_SYMBOL, T_TIMESTAMP, header, iter_list, parse_record, read_uint_u64, read_varuint, struct_slots,
    uint_decimal, utf8,
};

pub const HASH_LENGTH: usize = 32;
pub const LIVE: u8 = 0;
pub const REDACTED: u8 = 1;
pub const DELETED: u8 = 2;

/// ``(value position, value end)`` in the record's bytes.
pub type Slot = (usize, usize);
pub type Hash = [u8; 32];

/// An unsigned integer field: the span of its big-endian body (any size).
#[derive(Clone, Copy, Debug)]
pub struct UInt {
    pub start: usize,
    pub end: usize,
}

pub struct Revision<'a> {
    pub arn: &'a str,
    pub table_name: &'a str,
    pub table_id: &'a str,
    pub strand_id: &'a str,
    pub sequence_no: UInt,
    pub hash: &'a [u8],
    pub document_id: &'a str,
    pub version: UInt,
    pub tx_id: &'a str,
    pub tx_time_slot: Slot,
    pub kind: u8,
    pub data_hash: Option<&'a [u8]>,
    pub metadata_hash: Hash,
    /// ``H(data)`` (live), ``dataHash`` (redacted), ``None`` (deleted)
    pub content_hash: Option<Hash>,
}

pub struct Block<'a> {
    pub arn: &'a str,
    pub strand_id: &'a str,
    pub sequence_no: UInt,
    pub transaction_id: &'a str,
    pub block_timestamp_slot: Slot,
    pub block_hash: &'a [u8],
    pub entries_hash: &'a [u8],
    pub previous_block_hash: &'a [u8],
    pub entries_hash_list: Vec<&'a [u8]>,
    pub revision_summaries: Vec<(&'a [u8], Option<&'a str>)>,
    pub statements: Vec<(&'a str, &'a [u8], Hash)>,
    pub transaction_info_hash: Option<Hash>,
    pub redaction_info_hash: Option<Hash>,
}

pub enum Scanned<'a> {
    Control { arn: &'a str, control_record_type: &'a str },
    Revision(Revision<'a>),
    Block(Block<'a>),
}

/// ``where`` of the Python helpers, kept as parts and joined with ``.`` only for a message.
type Path<'p> = &'p [&'p str];

fn join(path: Path<'_>, name: &str) -> String {
    let mut s = path.join(".");
    if !name.is_empty() {
        s.push('.');
        s.push_str(name);
    }
    s
}

fn missing(name: &str, path: Path<'_>) -> Error {
    // ``{name!r}`` of a field name of the schema: plain ASCII, so Python quotes it with ''.
    Error::record(format!("{} has no '{name}' field", path.join(".")))
}

/// A struct's fields: ``dict[str, Slot]`` in Python (names are unique and known).
struct Fields<'a>(Vec<Field<'a>>);

impl Fields<'_> {
    #[inline]
    fn get(&self, name: &str) -> Option<Slot> {
        let name = name.as_bytes();
        self.0.iter().find(|f| f.0 == Some(name)).map(|f| (f.1, f.2))
    }

    fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    fn slot(&self, name: &str, path: Path<'_>) -> Result<Slot> {
        self.get(name).ok_or_else(|| missing(name, path))
    }
}

/// Text decoding failed: malformed Ion, or (``Record``) not a non-null string/symbol.
enum TextError {
    Ion(Error),
    Record,
}

struct Scanner<'a, 't> {
    buf: &'a [u8],
    table: &'t SymbolTable<'a>,
    hasher: Serializer<'a, 't, Sha256Algo>,
}

impl<'a, 't> Scanner<'a, 't> {
    fn header(&self, slot: Slot) -> Result<Header> {
        header(self.buf, slot.0, slot.1)
    }

    /// ``_fields``
    fn fields(&self, start: usize, end: usize, what: &dyn Fn() -> String) -> Result<Fields<'a>> {
        let mut out = Vec::with_capacity(8);
        match struct_slots(self.buf, start, end, self.table, &mut out) {
            Ok(()) => {}
            Err(SlotsError::Ion(e)) => return Err(e),
            Err(SlotsError::Duplicate(name)) => {
                return Err(Error::with_parts(
                    Kind::Record,
                    vec![
                        Part::Text(format!("{} has the field ", what())),
                        Part::Repr(name),
                        Part::Text(" twice".into()),
                    ],
                ));
            }
        }
        if out.iter().any(|f| f.0.is_none()) {
            return Err(Error::ion(format!("{} has a field whose name has unknown text", what())));
        }
        Ok(Fields(out))
    }

    /// ``_as_struct``
    fn as_struct(&self, slot: Slot, what: &dyn Fn() -> String) -> Result<Fields<'a>> {
        let h = self.header(slot)?;
        if h.t != T_STRUCT || h.is_null() {
            return Err(Error::record(format!("{} must be a struct", what())));
        }
        self.fields(h.start, h.stop, what)
    }

    /// ``_struct``
    fn struct_(&self, fields: &Fields<'a>, name: &str, path: Path<'_>) -> Result<Fields<'a>> {
        let slot = fields.slot(name, path)?;
        self.as_struct(slot, &|| join(path, name))
    }

    /// ``_decode_text`` (the header is decoded inline and not validated, as in Python)
    fn decode_text(&self, slot: Slot) -> std::result::Result<&'a str, TextError> {
        let (pos, end) = slot;
        let td = self.buf[pos];
        let t = td >> 4;
        if td & 0x0F == 15 {
            return Err(TextError::Record); // "a text field is null"
        }
        let mut body = pos + 1;
        if td & 0x0F == 14 {
            body = read_varuint(self.buf, body, end).map_err(TextError::Ion)?.1;
        }
        if t == T_STRING {
            return utf8(self.buf, body, end).map_err(TextError::Ion);
        }
        if t == T_SYMBOL {
            let lookup = match read_uint_u64(self.buf, body, end) {
                Some(sid) => self.table.get_u64(sid),
                None => Lookup::OutOfRange,
            };
            return match lookup {
                // symbol texts were checked to be UTF-8 when the table was read
                Lookup::Text(t) => std::str::from_utf8(t).map_err(|_| TextError::Record),
                _ => Err(TextError::Ion(Error::ion(format!(
                    "Ion symbol ID {} has no text",
                    uint_decimal(self.buf, body, end)
                )))),
            };
        }
        Err(TextError::Record) // "a text field is not a string"
    }

    /// ``_text``
    fn text(&self, fields: &Fields<'a>, name: &str, path: Path<'_>) -> Result<&'a str> {
        let slot = fields.slot(name, path)?;
        self.decode_text(slot).map_err(|e| match e {
            TextError::Ion(e) => e,
            TextError::Record => Error::record(format!("{} must be a string", join(path, name))),
        })
    }

    /// ``_typed``
    fn typed(&self, fields: &Fields<'a>, name: &str, path: Path<'_>, t: u8, what: &str) -> Result<Slot> {
        let slot = fields.slot(name, path)?;
        let h = self.header(slot)?;
        if h.t != t || h.is_null() {
            return Err(Error::record(format!("{} must be {what}", join(path, name))));
        }
        Ok(slot)
    }

    /// ``_uint``
    fn uint(&self, fields: &Fields<'a>, name: &str, path: Path<'_>) -> Result<UInt> {
        let slot = fields.slot(name, path)?;
        let h = self.header(slot)?;
        if h.t != T_POSINT || h.is_null() {
            return Err(Error::record(format!("{} must be a non-negative int", join(path, name))));
        }
        Ok(UInt { start: h.start, end: h.stop })
    }

    /// ``_blob32``
    fn blob32(&self, slot: Slot, what: &dyn Fn() -> String, allow_empty: bool) -> Result<&'a [u8]> {
        let h = self.header(slot)?;
        if h.t != T_BLOB || h.is_null() {
            return Err(Error::record(format!("{} must be a blob", what())));
        }
        let n = h.stop - h.start;
        if n != HASH_LENGTH && !(allow_empty && n == 0) {
            return Err(Error::record(format!(
                "{} is {n} bytes long; a QLDB hash is {HASH_LENGTH} bytes",
                what()
            )));
        }
        Ok(&self.buf[h.start..h.stop])
    }

    /// ``_hash``
    fn hash(&self, fields: &Fields<'a>, name: &str, path: Path<'_>, allow_empty: bool) -> Result<&'a [u8]> {
        let slot = fields.slot(name, path)?;
        self.blob32(slot, &|| join(path, name), allow_empty)
    }

    /// ``_list``: every element slot (the whole list is walked before any element is used).
    fn list(&self, fields: &Fields<'a>, name: &str, path: Path<'_>) -> Result<Vec<Slot>> {
        let slot = fields.slot(name, path)?;
        let h = self.header(slot)?;
        if h.t != T_LIST || h.is_null() {
            return Err(Error::record(format!("{} must be a list", join(path, name))));
        }
        iter_list(self.buf, h.start, h.stop)
    }

    /// ``_block_address``
    fn block_address(&self, fields: &Fields<'a>, path: Path<'_>) -> Result<(&'a str, UInt)> {
        let addr = self.struct_(fields, "blockAddress", path)?;
        let mut sub: Vec<&str> = path.to_vec();
        sub.push("blockAddress");
        let strand = self.text(&addr, "strandId", &sub)?;
        let seq = self.uint(&addr, "sequenceNo", &sub)?;
        if read_uint_u64(self.buf, seq.start, seq.end).is_none() {
            return Err(Error::record(format!(
                "{} does not fit in 64 bits (a QLDB block sequence number does)",
                join(&sub, "sequenceNo")
            )));
        }
        Ok((strand, seq))
    }

    /// ``_hash_slot``
    fn hash_slot(&mut self, slot: Slot) -> Result<Hash> {
        self.hasher.hash_at(slot.0, slot.1)
    }

    fn revision(&mut self, arn: &'a str, payload: &Fields<'a>) -> Result<Revision<'a>> {
        let table = self.struct_(payload, "tableInfo", &["payload"])?;
        let rev = self.struct_(payload, "revision", &["payload"])?;
        let (strand_id, sequence_no) = self.block_address(&rev, &["revision"])?;
        let rev_hash = self.hash(&rev, "hash", &["revision"], false)?;
        let mut data_hash = None;
        let kind = if let Some(slot) = rev.get("data") {
            let h = self.header(slot)?;
            if h.t != T_STRUCT || h.is_null() {
                return Err(Error::record("revision.data must be a struct"));
            }
            if rev.has("dataHash") {
                return Err(Error::record("revision has both data and dataHash"));
            }
            LIVE
        } else if rev.has("dataHash") {
            data_hash = Some(self.hash(&rev, "dataHash", &["revision"], false)?);
            REDACTED
        } else {
            DELETED
        };
        let meta_slot = rev.slot("metadata", &["revision"])?;
        let meta = self.struct_(&rev, "metadata", &["revision"])?;
        const META: Path<'static> = &["revision.metadata"];
        let document_id = self.text(&meta, "id", META)?;
        let version = self.uint(&meta, "version", META)?;
        let tx_id = self.text(&meta, "txId", META)?;
        let tx_time_slot = self.typed(&meta, "txTime", META, T_TIMESTAMP, "a timestamp")?;
        let metadata_hash = self.hash_slot(meta_slot)?;
        let content_hash = match kind {
            LIVE => Some(self.hash_slot(rev.slot("data", &["revision"])?)?),
            _ => match data_hash {
                Some(d) => Some(d.try_into().map_err(|_| Error::record("dataHash is not 32 bytes"))?),
                None => None,
            },
        };
        Ok(Revision {
            arn,
            table_name: self.text(&table, "tableName", &["tableInfo"])?,
            table_id: self.text(&table, "tableId", &["tableInfo"])?,
            strand_id,
            sequence_no,
            hash: rev_hash,
            document_id,
            version,
            tx_id,
            tx_time_slot,
            kind,
            data_hash,
            metadata_hash,
            content_hash,
        })
    }

    fn block(&mut self, arn: &'a str, payload: &Fields<'a>) -> Result<Block<'a>> {
        const P: Path<'static> = &["payload"];
        let (strand_id, sequence_no) = self.block_address(payload, P)?;
        let transaction_id = self.text(payload, "transactionId", P)?;
        let block_timestamp_slot = self.typed(payload, "blockTimestamp", P, T_TIMESTAMP, "a timestamp")?;
        let block_hash = self.hash(payload, "blockHash", P, false)?;
        let entries_hash = self.hash(payload, "entriesHash", P, false)?;
        let previous_block_hash = self.hash(payload, "previousBlockHash", P, true)?;
        let mut entries_hash_list = Vec::new();
        for slot in self.list(payload, "entriesHashList", P)? {
            entries_hash_list.push(self.blob32(slot, &|| "entriesHashList[]".to_string(), false)?);
        }
        let mut revision_summaries = Vec::new();
        const RS: Path<'static> = &["revisionSummaries[]"];
        for slot in self.list(payload, "revisionSummaries", P)? {
            let s = self.as_struct(slot, &|| "revisionSummaries[]".to_string())?;
            let doc = if s.has("documentId") { Some(self.text(&s, "documentId", RS)?) } else { None };
            revision_summaries.push((self.hash(&s, "hash", RS, false)?, doc));
        }
        let mut statements = Vec::new();
        let mut transaction_info_hash = None;
        if let Some(info_slot) = payload.get("transactionInfo") {
            let info = self.struct_(payload, "transactionInfo", P)?;
            if info.has("statements") {
                const ST: Path<'static> = &["statements[]"];
                for slot in self.list(&info, "statements", &["transactionInfo"])? {
                    let s = self.as_struct(slot, &|| "statements[]".to_string())?;
                    let text_slot = self.typed(&s, "statement", ST, T_STRING, "a string")?;
                    let digest = self.hash(&s, "statementDigest", ST, false)?;
                    let text = self.decode_text(text_slot).map_err(|e| match e {
                        TextError::Ion(e) => e,
                        TextError::Record => Error::record("a text field is not a string"),
                    })?;
                    statements.push((text, digest, self.hash_slot(text_slot)?));
                }
            }
            transaction_info_hash = Some(self.hash_slot(info_slot)?);
        }
        let mut redaction_info_hash = None;
        if let Some(slot) = payload.get("redactionInfo") {
            self.struct_(payload, "redactionInfo", P)?;
            redaction_info_hash = Some(self.hash_slot(slot)?);
        }
        Ok(Block {
            arn,
            strand_id,
            sequence_no,
            transaction_id,
            block_timestamp_slot,
            block_hash,
            entries_hash,
            previous_block_hash,
            entries_hash_list,
            revision_summaries,
            statements,
            transaction_info_hash,
            redaction_info_hash,
        })
    }
}

/// ``scan_record``: the scan contract for one user record.
pub fn scan_record(data: &[u8]) -> Result<Scanned<'_>> {
    let view = parse_record(data)?;
    let scanned = scan_view(&view)?;
    // last, as in the Python: anything amazon-ion would not load to the value just hashed
    Checker::new(view.buf, &view.table).check_value(view.pos, view.end, 0)?;
    Ok(scanned)
}

fn scan_view<'a>(view: &RecordView<'a>) -> Result<Scanned<'a>> {
    let mut scanner =
        Scanner { buf: view.buf, table: &view.table, hasher: Serializer::new(view.buf, &view.table) };
    let h = header(view.buf, view.pos, view.end)?;
    if h.t != T_STRUCT || h.is_null() {
        return Err(Error::record("a QLDB stream record must be an Ion struct"));
    }
    const R: Path<'static> = &["record"];
    let top = scanner.fields(h.start, h.stop, &|| "record".to_string())?;
    let arn = scanner.text(&top, "qldbStreamArn", R)?;
    let record_type = scanner.text(&top, "recordType", R)?;
    let payload = scanner.struct_(&top, "payload", R)?;
    match record_type {
        "REVISION_DETAILS" => Ok(Scanned::Revision(scanner.revision(arn, &payload)?)),
        "BLOCK_SUMMARY" => Ok(Scanned::Block(scanner.block(arn, &payload)?)),
        "CONTROL" => Ok(Scanned::Control {
            arn,
            control_record_type: scanner.text(&payload, "controlRecordType", &["payload"])?,
        }),
        other => Err(Error::with_parts(
            Kind::Type,
            vec![
                Part::Text("unknown recordType ".into()),
                Part::Repr(Some(other.to_string())),
                Part::Text(" (expected CONTROL, BLOCK_SUMMARY or REVISION_DETAILS)".into()),
            ],
        )),
    }
}
