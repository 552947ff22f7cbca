//! ``qldbstream_native``: the compiled hot path of qldbstream.
//!
//! * ``scan_record(data)`` - the scan contract of ``qldbstream.decode`` (see its comment block);
//! * ``parse_aggregate(data)`` - ``qldbstream.deaggregate.parse_aggregate``;
//! * ``ion_hash_bytes(data, algorithm)`` - Ion Hash of a binary Ion stream's single value;
//! * ``dot(h1, h2)``, ``merkle_root(hashes)`` - ``qldbstream.qldb_hash``.
//!
//! Malformed input raises ``NativeDecodeError(kind, message)`` with ``kind`` one of ``"ion"``,
//! ``"record"``, ``"type"``, ``"hash"`` (Ion/record errors) or ``"kpl"`` (aggregates). The core
//! modules never index out of bounds and never panic on any input; a panic would still reach
//! Python as ``pyo3_runtime.PanicException`` rather than abort the interpreter.
//!
//! No ``unsafe`` code of our own (PyO3, sha2 and base64-simd have theirs): the safe API is fast
//! enough here (the result tuples are small).

pub mod check;
pub mod error;
pub mod hash;
pub mod kpl;
pub mod minimal;
pub mod qldb_hash;
pub mod reader;
pub mod scan;
pub mod state;
pub mod symbols;

use pyo3::create_exception;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};

use crate::error::{Error, Part};
use crate::hash::{Algo, IdentityAlgo, Md5Algo, Serializer, Sha256Algo};
use crate::scan::{Scanned, UInt};

create_exception!(
    qldbstream_native,
    NativeDecodeError,
    PyValueError,
    "Malformed input: ``args == (kind, message)``, kind one of ion, record, type, hash, kpl."
);

fn to_py_err(py: Python<'_>, e: Error) -> PyErr {
    let mut message = String::new();
    for part in e.parts {
        match part {
            Part::Text(t) => message.push_str(&t),
            Part::Repr(None) => message.push_str("None"),
            Part::Repr(Some(t)) => match PyString::new(py, &t).repr() {
                Ok(r) => message.push_str(&r.to_string()),
                Err(err) => return err,
            },
        }
    }
    NativeDecodeError::new_err((e.kind.as_str(), message))
}

type Obj<'py> = Bound<'py, PyAny>;

#[inline]
fn s<'py>(py: Python<'py>, text: &str) -> Obj<'py> {
    PyString::new(py, text).into_any()
}

#[inline]
fn b<'py>(py: Python<'py>, bytes: &[u8]) -> Obj<'py> {
    PyBytes::new(py, bytes).into_any()
}

fn opt_b<'py>(py: Python<'py>, bytes: Option<&[u8]>) -> Obj<'py> {
    match bytes {
        Some(v) => b(py, v),
        None => py.None().into_bound(py),
    }
}

#[inline]
fn int<'py>(py: Python<'py>, v: usize) -> PyResult<Obj<'py>> {
    Ok(v.into_pyobject(py)?.into_any())
}

/// A big-endian unsigned integer of any size as a Python ``int``.
fn uint<'py>(py: Python<'py>, data: &[u8], u: UInt) -> PyResult<Obj<'py>> {
    let body = &data[u.start..u.end];
    let first = body.iter().position(|&x| x != 0).unwrap_or(body.len());
    let body = &body[first..];
    if body.len() <= 8 {
        let v = body.iter().fold(0u64, |acc, &x| (acc << 8) | u64::from(x));
        return Ok(v.into_pyobject(py)?.into_any());
    }
    py.get_type::<PyInt>().call_method1("from_bytes", (PyBytes::new(py, body), "big"))
}

fn slot<'py>(py: Python<'py>, slot: (usize, usize)) -> PyResult<Obj<'py>> {
    Ok(PyTuple::new(py, [int(py, slot.0)?, int(py, slot.1)?])?.into_any())
}

fn tuple<'py>(py: Python<'py>, items: Vec<Obj<'py>>) -> PyResult<Obj<'py>> {
    Ok(PyTuple::new(py, items)?.into_any())
}

/// Scan one QLDB stream record (Ion binary) into the flat tuple of the scan contract.
#[pyfunction]
fn scan_record<'py>(py: Python<'py>, data: &[u8]) -> PyResult<Obj<'py>> {
    let scanned = scan::scan_record(data).map_err(|e| to_py_err(py, e))?;
    match scanned {
        Scanned::Control { arn, control_record_type } => {
            tuple(py, vec![intern!(py, "CONTROL").clone().into_any(), s(py, arn), s(py, control_record_type)])
        }
        Scanned::Revision(r) => {
            // V2 / V2b's expected hash, computed here: one bytes object instead of a dot() call
            let expected = match &r.content_hash {
                Some(content) => qldb_hash::dot(&r.metadata_hash, content),
                None => r.metadata_hash.to_vec(),
            };
            tuple(
                py,
                vec![
                    intern!(py, "REVISION_DETAILS").clone().into_any(),
                    s(py, r.arn),
                    s(py, r.table_name),
                    s(py, r.table_id),
                    s(py, r.strand_id),
                    uint(py, data, r.sequence_no)?,
                    b(py, r.hash),
                    s(py, r.document_id),
                    uint(py, data, r.version)?,
                    s(py, r.tx_id),
                    slot(py, r.tx_time_slot)?,
                    int(py, usize::from(r.kind))?,
                    opt_b(py, r.data_hash),
                    b(py, &r.metadata_hash),
                    opt_b(py, r.content_hash.as_ref().map(|h| &h[..])),
                    b(py, &expected),
                ],
            )
        }
        Scanned::Block(k) => {
            let entries = PyList::new(py, k.entries_hash_list.iter().map(|h| b(py, h)))?;
            let mut summaries = Vec::with_capacity(k.revision_summaries.len());
            for (h, doc) in &k.revision_summaries {
                let doc = match doc {
                    Some(d) => s(py, d),
                    None => py.None().into_bound(py),
                };
                summaries.push(tuple(py, vec![b(py, h), doc])?);
            }
            let mut statements = Vec::with_capacity(k.statements.len());
            for (text, digest, text_hash) in &k.statements {
                statements.push(tuple(py, vec![s(py, text), b(py, digest), b(py, text_hash)])?);
            }
            // V4 / V7 / V8's computed values (see the scan contract in qldbstream/decode.py)
            let summaries_root = if k.revision_summaries.is_empty() {
                py.None().into_bound(py)
            } else {
                let hashes: Vec<&[u8]> = k.revision_summaries.iter().map(|(h, _)| *h).collect();
                b(py, &qldb_hash::merkle_root(&hashes))
            };
            let entries_root = b(py, &qldb_hash::merkle_root(&k.entries_hash_list));
            let chained = b(py, &qldb_hash::dot(k.entries_hash, k.previous_block_hash));
            tuple(
                py,
                vec![
                    intern!(py, "BLOCK_SUMMARY").clone().into_any(),
                    s(py, k.arn),
                    s(py, k.strand_id),
                    uint(py, data, k.sequence_no)?,
                    s(py, k.transaction_id),
                    slot(py, k.block_timestamp_slot)?,
                    b(py, k.block_hash),
                    b(py, k.entries_hash),
                    b(py, k.previous_block_hash),
                    entries.into_any(),
                    PyList::new(py, summaries)?.into_any(),
                    PyList::new(py, statements)?.into_any(),
                    opt_b(py, k.transaction_info_hash.as_ref().map(|h| &h[..])),
                    opt_b(py, k.redaction_info_hash.as_ref().map(|h| &h[..])),
                    summaries_root,
                    entries_root,
                    chained,
                ],
            )
        }
    }
}

/// Strict base64 (RFC 4648 alphabet, canonical ``=`` padding, nothing else) of a Kinesis record's
/// ``data``, SIMD-decoded straight into the new ``bytes``: CPython's ``binascii.a2b_base64`` does
/// ~380 MB/s, ~3 us of a ~1 KB record, more than the whole Rust scan of most records.
///
/// Raises ``NativeDecodeError("base64", ...)`` for anything else - including what Python's
/// strict mode still accepts (non-zero bits after the last symbol): the caller then asks
/// ``binascii.a2b_base64(data, strict_mode=True)`` for the verdict, so results never differ.
#[pyfunction]
fn b64decode<'py>(py: Python<'py>, data: &Bound<'py, PyString>) -> PyResult<Bound<'py, PyBytes>> {
    let text = data.to_str()?.as_bytes();
    let engine = base64_simd::STANDARD;
    let invalid = || NativeDecodeError::new_err(("base64", "not canonical base64"));
    let n = engine.decoded_length(text).map_err(|_| invalid())?;
    PyBytes::new_with(py, n, |out| {
        engine.decode(text, base64_simd::Out::from_slice(out)).map(|_| ()).map_err(|_| invalid())
    })
}

/// The Kinesis records of a Lambda event's ``Records`` list, built with ``kinesis_record`` (the
/// ``KinesisRecord`` class): what ``qldbstream.sources.lambda_event.kinesis_record`` does for each
/// entry, without its ~1 us of Python per record. Where an entry is anything but the plain,
/// well-formed case (not a dict, a missing or mistyped field, base64 that is not canonical, a
/// non-float arrival time), its place in the result holds ``None`` and the caller asks the Python
/// code for the record or for its exact error - so results never differ.
#[pyfunction]
fn lambda_records<'py>(
    py: Python<'py>,
    records: &Bound<'py, PyList>,
    source: &str,
    kinesis_record: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyList>> {
    let out = PyList::empty(py);
    let mut shard: Option<(String, Bound<'py, PyString>)> = None;
    for (i, entry) in records.iter().enumerate() {
        match lambda_record(py, &entry, source, i, kinesis_record, &mut shard)? {
            Some(record) => out.append(record)?,
            None => out.append(py.None())?,
        }
    }
    Ok(out)
}

fn lambda_record<'py>(
    py: Python<'py>,
    entry: &Bound<'py, PyAny>,
    source: &str,
    i: usize,
    kinesis_record: &Bound<'py, PyAny>,
    shard_cache: &mut Option<(String, Bound<'py, PyString>)>,
) -> PyResult<Option<Bound<'py, PyAny>>> {
    let Ok(entry) = entry.cast_exact::<PyDict>() else { return Ok(None) };
    let Some(kinesis) = entry.get_item(intern!(py, "kinesis"))? else { return Ok(None) };
    let Ok(kinesis) = kinesis.cast_exact::<PyDict>() else { return Ok(None) };
    let Some(seq) = kinesis.get_item(intern!(py, "sequenceNumber"))? else { return Ok(None) };
    let Ok(seq) = seq.cast_exact::<PyString>() else { return Ok(None) };
    if seq.to_str()?.is_empty() {
        return Ok(None);
    }
    let shard: Bound<'py, PyAny> = match entry.get_item(intern!(py, "eventID"))? {
        None => py.None().into_bound(py),
        Some(id) => {
            let Ok(id) = id.cast_exact::<PyString>() else { return Ok(None) };
            match id.to_str()?.split_once(':') {
                None => py.None().into_bound(py),
                Some((prefix, _)) => match shard_cache {
                    Some((text, obj)) if text == prefix => obj.clone().into_any(),
                    _ => {
                        let obj = PyString::new(py, prefix);
                        *shard_cache = Some((prefix.to_owned(), obj.clone()));
                        obj.into_any()
                    }
                },
            }
        }
    };
    let Some(data) = kinesis.get_item(intern!(py, "data"))? else { return Ok(None) };
    let Ok(data) = data.cast_exact::<PyString>() else { return Ok(None) };
    let Ok(raw) = b64decode(py, data) else { return Ok(None) };
    let arrival: Bound<'py, PyAny> = match kinesis.get_item(intern!(py, "approximateArrivalTimestamp"))? {
        None => py.None().into_bound(py),
        Some(a) if a.is_exact_instance_of::<PyFloat>() || a.is_none() => a,
        Some(_) => return Ok(None),
    };
    let partition_key = match kinesis.get_item(intern!(py, "partitionKey"))? {
        Some(pk) if pk.is_exact_instance_of::<PyString>() => pk,
        _ => return Ok(None),
    };
    let explicit_hash_key: Bound<'py, PyAny> = match kinesis.get_item(intern!(py, "explicitHashKey"))? {
        None => py.None().into_bound(py),
        Some(k) if k.is_none() => k,
        Some(k) if k.is_exact_instance_of::<PyString>() => {
            if k.cast::<PyString>()?.to_str()?.is_empty() {
                py.None().into_bound(py)
            } else {
                k
            }
        }
        Some(_) => return Ok(None),
    };
    let arn: Bound<'py, PyAny> = match entry.get_item(intern!(py, "eventSourceARN"))? {
        Some(a) => a,
        None => py.None().into_bound(py),
    };
    let place = format!("{source} Records[{i}]");
    let args = PyTuple::new(
        py,
        [
            raw.into_any(),
            seq.clone().into_any(),
            partition_key,
            shard,
            arrival,
            explicit_hash_key,
            arn,
            PyString::new(py, &place).into_any(),
        ],
    )?;
    Ok(Some(kinesis_record.call1(args)?))
}

/// Parse a KPL aggregate into ``[(partition_key, explicit_hash_key | None, data), ...]``.
#[pyfunction]
fn parse_aggregate<'py>(py: Python<'py>, data: &[u8]) -> PyResult<Bound<'py, PyList>> {
    let entries = kpl::parse_aggregate(data).map_err(|e| to_py_err(py, e))?;
    let mut items = Vec::with_capacity(entries.len());
    for (pk, ehk, payload) in entries {
        let ehk = match ehk {
            Some(e) => s(py, e),
            None => py.None().into_bound(py),
        };
        items.push(tuple(py, vec![s(py, pk), ehk, b(py, payload)])?);
    }
    PyList::new(py, items)
}

fn hash_with<A: Algo>(py: Python<'_>, data: &[u8]) -> PyResult<Vec<u8>> {
    let view = reader::parse_record(data).map_err(|e| to_py_err(py, e))?;
    let mut ser = Serializer::<A>::new(view.buf, &view.table);
    let digest = ser.hash_at(view.pos, view.end).map_err(|e| to_py_err(py, e))?;
    Ok(digest.as_ref().to_vec())
}

/// ``H(value)`` of the single top-level value of an Ion binary stream. ``algorithm`` is
/// ``"sha256"``, ``"md5"`` or ``"identity"`` (which returns the serialization ``s(value)``).
#[pyfunction]
#[pyo3(signature = (data, algorithm = "sha256"))]
fn ion_hash_bytes<'py>(py: Python<'py>, data: &[u8], algorithm: &str) -> PyResult<Obj<'py>> {
    let digest = match algorithm {
        "sha256" => hash_with::<Sha256Algo>(py, data)?,
        "md5" => hash_with::<Md5Algo>(py, data)?,
        "identity" => hash_with::<IdentityAlgo>(py, data)?,
        other => {
            return Err(PyValueError::new_err(format!(
                "unknown Ion hash algorithm {other:?} (expected sha256, md5 or identity)"
            )));
        }
    };
    Ok(b(py, &digest))
}

/// QLDB's ``dot`` of two hashes (an empty hash is the identity).
#[pyfunction]
fn dot<'py>(py: Python<'py>, h1: &[u8], h2: &[u8]) -> Obj<'py> {
    b(py, &qldb_hash::dot(h1, h2))
}

/// QLDB's Merkle root of a sequence of hashes (``b""`` for none).
#[pyfunction]
fn merkle_root<'py>(py: Python<'py>, hashes: &Bound<'py, PyAny>) -> PyResult<Obj<'py>> {
    let mut items: Vec<Bound<'py, PyBytes>> = Vec::new();
    for item in hashes.try_iter()? {
        let item = item?;
        let bytes = item
            .cast_into::<PyBytes>()
            .map_err(|_| PyTypeError::new_err("merkle_root() takes a sequence of bytes"))?;
        items.push(bytes);
    }
    let slices: Vec<&[u8]> = items.iter().map(|h| h.as_bytes()).collect();
    Ok(b(py, &qldb_hash::merkle_root(&slices)))
}

/// The compiled hot path of qldbstream (KPL deaggregation, QLDB record scan, Ion hash).
#[pymodule]
mod qldbstream_native {
    #[pymodule_export]
    use super::{
        NativeDecodeError, b64decode, dot, ion_hash_bytes, lambda_records, merkle_root, parse_aggregate,
        scan_record,
    };

    #[pymodule_export]
    use crate::state::{ChainTracker, CrossReferencer};

    #[pymodule_export]
    const MAX_DEPTH: usize = crate::hash::MAX_DEPTH;
}
