//! The cross-record state of V3 and V9, the twins of ``qldbstream/crossref.py``
//! (``CrossReferencer``) and ``qldbstream/chain.py`` (``ChainTracker``): the same operations, the
//! same results in the same order, the same bounded memory and eviction order. The Python classes
//! are the reference; ``tests/unit/test_native_state.py`` runs both on the same operation
//! sequences.
//!
//! Why in Rust: on the hot path every revision and every block summary passes through one of
//! them, and in Python their dictionaries, tuples and result objects cost ~3 us per record - more
//! than half the verification. Here a key is two integers (the strand's index, the sequence
//! number) and a passing check creates no Python object at all (a shared ``(PASSED,)`` tuple, or a
//! count).
//!
//! Results are built with the Python classes given to the constructors (``CrossCheck``,
//! ``Unmatched``, ``LinkResult``, ``Gap``), so callers see exactly the objects the Python
//! implementation returns. Hashes of revisions and summary entries are 32 bytes (the scan
//! guarantees it); block sequence numbers fit in 64 bits (the scan guarantees that too).

use std::collections::{HashMap, VecDeque};

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};

type Hash = [u8; 32];
/// (strand index, block sequence number)
type Key = (u32, u64);

fn hash32(bytes: &[u8]) -> PyResult<Hash> {
    bytes.try_into().map_err(|_| PyValueError::new_err("a revision hash is 32 bytes"))
}

/// Strand IDs seen so far, each with the Python string first given for it.
#[derive(Default)]
struct Strands {
    texts: Vec<Box<str>>,
    objects: Vec<Py<PyString>>,
    index: HashMap<Box<str>, u32>,
    last: u32,
}

impl Strands {
    fn intern(&mut self, strand: &Bound<'_, PyString>) -> PyResult<u32> {
        let text = strand.to_str()?;
        // nearly always the strand of the previous call (a ledger has one)
        if let Some(t) = self.texts.get(self.last as usize) {
            if &**t == text {
                return Ok(self.last);
            }
        }
        let i = match self.index.get(text) {
            Some(&i) => i,
            None => {
                let i =
                    u32::try_from(self.texts.len()).map_err(|_| PyValueError::new_err("too many strands"))?;
                self.texts.push(Box::from(text));
                self.objects.push(strand.clone().unbind());
                self.index.insert(Box::from(text), i);
                i
            }
        };
        self.last = i;
        Ok(i)
    }

    fn object<'py>(&self, py: Python<'py>, i: u32) -> Bound<'py, PyString> {
        self.objects[i as usize].bind(py).clone()
    }
}

/// A map that remembers insertion order like Python's ``OrderedDict``: ``touch`` moves a key to
/// the end, ``pop_front`` removes the oldest. Order entries are stamped; an entry whose stamp is
/// no longer the key's is stale and skipped (and compacted away when they pile up).
struct Ordered<V> {
    map: HashMap<Key, (u64, V)>,
    order: VecDeque<(u64, Key)>,
    stamp: u64,
}

impl<V> Default for Ordered<V> {
    fn default() -> Self {
        Ordered { map: HashMap::new(), order: VecDeque::new(), stamp: 0 }
    }
}

impl<V> Ordered<V> {
    fn len(&self) -> usize {
        self.map.len()
    }

    fn contains(&self, key: &Key) -> bool {
        self.map.contains_key(key)
    }

    fn get_mut(&mut self, key: &Key) -> Option<&mut V> {
        self.map.get_mut(key).map(|(_, v)| v)
    }

    fn next_stamp(&mut self) -> u64 {
        self.stamp += 1;
        self.stamp
    }

    /// Insert at the end, or replace the value in place (``d[key] = value``).
    fn insert(&mut self, key: Key, value: V) {
        if let Some(entry) = self.map.get_mut(&key) {
            entry.1 = value;
            return;
        }
        let stamp = self.next_stamp();
        self.map.insert(key, (stamp, value));
        self.order.push_back((stamp, key));
    }

    fn remove(&mut self, key: &Key) -> Option<V> {
        let value = self.map.remove(key).map(|(_, v)| v);
        if value.is_some() {
            self.compact();
        }
        value
    }

    fn is_live(&self, stamp: u64, key: &Key) -> bool {
        self.map.get(key).is_some_and(|(s, _)| *s == stamp)
    }

    /// ``popitem(last=False)``
    fn pop_front(&mut self) -> Option<(Key, V)> {
        while let Some((stamp, key)) = self.order.pop_front() {
            if self.is_live(stamp, &key) {
                return self.map.remove(&key).map(|(_, v)| (key, v));
            }
        }
        None
    }

    fn compact(&mut self) {
        if self.order.len() > 2 * self.map.len() + 64 {
            let map = &self.map;
            self.order.retain(|(stamp, key)| map.get(key).is_some_and(|(s, _)| s == stamp));
        }
    }

    /// Keys and values, oldest first.
    fn iter(&self) -> impl Iterator<Item = (&Key, &V)> {
        self.order.iter().filter_map(|(stamp, key)| match self.map.get(key) {
            Some((s, v)) if s == stamp => Some((key, v)),
            _ => None,
        })
    }
}

// --- V3 -------------------------------------------------------------------------------------

struct Block {
    transaction_id: Py<PyString>,
    /// documented entries still waiting for their revision, in the summary's order
    waiting: Vec<(Hash, Py<PyString>)>,
    matched: Vec<Hash>,
}

/// A remembered failure: (id, documentId, version, the ``CrossCheck``).
type Failed = (u64, Py<PyString>, Py<PyAny>, Py<PyAny>);

struct Rev {
    document_id: Py<PyString>,
    version: Py<PyAny>,
    tx_id: Py<PyString>,
    hash: Hash,
}

/// ``qldbstream.crossref.CrossReferencer``, with the same methods and results.
#[pyclass(module = "qldbstream_native")]
pub struct CrossReferencer {
    #[pyo3(get)]
    max_pending: usize,
    strands: Strands,
    blocks: Ordered<Block>,
    revisions: Ordered<Vec<Rev>>,
    done: Ordered<()>,
    /// failed pairs, so that a duplicate delivery of a failing revision fails again: by (key,
    /// hash), each (id, documentId, version, the CrossCheck); ``failed_order`` is the ids (with
    /// their (key, hash)) oldest first - ``_failed`` is an OrderedDict bounded like the rest
    failed: HashMap<(Key, Hash), Vec<Failed>>,
    failed_order: VecDeque<(u64, Key, Hash)>,
    failed_id: u64,
    pending_revisions: usize,
    #[pyo3(get)]
    evicted: Py<PyList>,
    cross_check: Py<PyAny>,
    unmatched_cls: Py<PyAny>,
    one_passed: Py<PyTuple>,
    nothing: Py<PyTuple>,
}

fn text_eq(a: &Py<PyString>, b: &Bound<'_, PyString>) -> PyResult<bool> {
    let py = b.py();
    Ok(a.bind(py).to_str()? == b.to_str()?)
}

#[pymethods]
impl CrossReferencer {
    /// ``CrossReferencer(max_pending, CrossCheck, Unmatched, PASSED)``: the Python result
    /// classes and the shared passing ``CrossCheck``.
    #[new]
    fn new(
        py: Python<'_>,
        max_pending: usize,
        cross_check: Py<PyAny>,
        unmatched: Py<PyAny>,
        passed: Py<PyAny>,
    ) -> PyResult<Self> {
        Ok(CrossReferencer {
            max_pending,
            strands: Strands::default(),
            blocks: Ordered::default(),
            revisions: Ordered::default(),
            done: Ordered::default(),
            failed: HashMap::new(),
            failed_order: VecDeque::new(),
            failed_id: 0,
            pending_revisions: 0,
            evicted: PyList::empty(py).unbind(),
            cross_check,
            unmatched_cls: unmatched,
            one_passed: PyTuple::new(py, [passed])?.unbind(),
            nothing: PyTuple::empty(py).unbind(),
        })
    }

    /// ``add_block_entries(strand_id, sequence_no, transaction_id, {hash: documentId})``
    fn add_block_entries<'py>(
        &mut self,
        py: Python<'py>,
        strand_id: &Bound<'py, PyString>,
        sequence_no: u64,
        transaction_id: &Bound<'py, PyString>,
        documented: &Bound<'py, PyDict>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let key = (self.strands.intern(strand_id)?, sequence_no);
        if self.blocks.contains(&key) || self.done.contains(&key) {
            return Ok(self.nothing.bind(py).clone().into_any());
        }
        let mut waiting = Vec::with_capacity(documented.len());
        for (h, doc) in documented.iter() {
            let h = hash32(h.cast::<PyBytes>()?.as_bytes())?;
            waiting.push((h, doc.cast_into::<PyString>()?.unbind()));
        }
        let mut block =
            Block { transaction_id: transaction_id.clone().unbind(), waiting, matched: Vec::new() };
        let Some(revisions) = self.revisions.remove(&key) else {
            if block.waiting.is_empty() {
                self.finish(key);
            } else {
                self.blocks.insert(key, block);
                if self.blocks.len() > self.max_pending {
                    self.bound(py)?;
                }
            }
            return Ok(self.nothing.bind(py).clone().into_any());
        };
        self.pending_revisions -= revisions.len();
        let mut results = Vec::with_capacity(revisions.len());
        let passed = self.one_passed.bind(py).get_item(0)?;
        for rev in revisions {
            results.push(self.judge(py, key, &mut block, rev)?.unwrap_or_else(|| passed.clone()));
        }
        if block.waiting.is_empty() {
            self.finish(key);
        } else {
            self.blocks.insert(key, block);
        }
        self.bound(py)?;
        Ok(PyList::new(py, results)?.into_any())
    }

    /// ``add_block(strand_id, sequence_no, transaction_id, [(hash, documentId | None), ...])``
    fn add_block<'py>(
        &mut self,
        py: Python<'py>,
        strand_id: &Bound<'py, PyString>,
        sequence_no: u64,
        transaction_id: &Bound<'py, PyString>,
        summaries: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let documented = PyDict::new(py);
        for item in summaries.try_iter()? {
            let item = item?;
            let (h, doc): (Bound<'py, PyAny>, Bound<'py, PyAny>) = item.extract()?;
            if !doc.is_none() {
                documented.set_item(h, doc)?;
            }
        }
        self.add_block_entries(py, strand_id, sequence_no, transaction_id, &documented)
    }

    /// ``add_revision(strand_id, sequence_no, document_id, version, tx_id, revision_hash)``
    #[allow(clippy::too_many_arguments)]
    fn add_revision<'py>(
        &mut self,
        py: Python<'py>,
        strand_id: &Bound<'py, PyString>,
        sequence_no: u64,
        document_id: &Bound<'py, PyString>,
        version: &Bound<'py, PyAny>,
        tx_id: &Bound<'py, PyString>,
        revision_hash: &[u8],
    ) -> PyResult<Bound<'py, PyAny>> {
        let key = (self.strands.intern(strand_id)?, sequence_no);
        let hash = hash32(revision_hash)?;
        if !self.failed.is_empty() {
            if let Some(entries) = self.failed.get(&(key, hash)) {
                for (_, doc, v, check) in entries {
                    if text_eq(doc, document_id)? && v.bind(py).eq(version)? {
                        return Ok(PyTuple::new(py, [check.bind(py)])?.into_any());
                    }
                }
            }
        }
        if let Some((stamp, mut block)) = self.blocks.map.remove(&key) {
            // taken out while it is judged (then settled like ``_settle``)
            if block.matched.contains(&hash) {
                self.blocks.map.insert(key, (stamp, block)); // untouched, in its place
                return Ok(self.nothing.bind(py).clone().into_any());
            }
            let rev = Rev {
                document_id: document_id.clone().unbind(),
                version: version.clone().unbind(),
                tx_id: tx_id.clone().unbind(),
                hash,
            };
            let result = match self.judge(py, key, &mut block, rev) {
                Ok(result) => result,
                Err(e) => {
                    self.blocks.map.insert(key, (stamp, block));
                    return Err(e);
                }
            };
            if block.waiting.is_empty() {
                self.blocks.compact();
                self.finish(key);
            } else {
                let stamp = self.blocks.next_stamp(); // move_to_end
                self.blocks.map.insert(key, (stamp, block));
                self.blocks.order.push_back((stamp, key));
                self.blocks.compact();
            }
            return Ok(match result {
                None => self.one_passed.bind(py).clone().into_any(),
                Some(failure) => PyTuple::new(py, [failure])?.into_any(),
            });
        }
        if self.done.contains(&key) {
            return Ok(self.nothing.bind(py).clone().into_any());
        }
        let rev = Rev {
            document_id: document_id.clone().unbind(),
            version: version.clone().unbind(),
            tx_id: tx_id.clone().unbind(),
            hash,
        };
        match self.revisions.get_mut(&key) {
            Some(waiting) => {
                if waiting.iter().any(|r| r.hash == hash) {
                    return Ok(self.nothing.bind(py).clone().into_any());
                }
                waiting.push(rev);
            }
            None => self.revisions.insert(key, vec![rev]),
        }
        self.pending_revisions += 1;
        if self.pending_revisions > self.max_pending {
            self.bound(py)?;
        }
        Ok(self.nothing.bind(py).clone().into_any())
    }

    /// Pairs still incomplete (plus those given up to bound memory), as ``Unmatched``.
    fn unmatched<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let out = PyList::empty(py);
        for u in self.evicted.bind(py).iter() {
            out.append(u)?;
        }
        for (key, block) in self.blocks.iter() {
            for u in self.block_unmatched(py, *key, block)? {
                out.append(u)?;
            }
        }
        for (key, revs) in self.revisions.iter() {
            for u in self.revision_unmatched(py, *key, revs)? {
                out.append(u)?;
            }
        }
        Ok(out)
    }
}

impl CrossReferencer {
    fn fail<'py>(
        &self,
        py: Python<'py>,
        rev: &Rev,
        seq: u64,
        expected: Bound<'py, PyAny>,
        actual: Bound<'py, PyAny>,
        message: String,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.cross_check.bind(py).call1((
            false,
            rev.document_id.bind(py),
            rev.version.bind(py),
            seq,
            expected,
            actual,
            message,
        ))
    }

    /// ``_compare``: ``None`` when the pair matches, else the failing ``CrossCheck``.
    fn compare<'py>(
        &self,
        py: Python<'py>,
        key: Key,
        block: &mut Block,
        rev: &Rev,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        let seq = key.1;
        let Some(i) = block.waiting.iter().position(|(h, _)| *h == rev.hash) else {
            let hex: String = rev.hash.iter().map(|b| format!("{b:02x}")).collect();
            return self
                .fail(
                    py,
                    rev,
                    seq,
                    PyString::new(py, "a revisionSummaries entry with this hash").into_any(),
                    PyString::new(py, &hex).into_any(),
                    format!("revision hash is not among block {seq}'s revisionSummaries"),
                )
                .map(Some);
        };
        let (_, expected_doc) = block.waiting.remove(i);
        block.matched.push(rev.hash);
        let expected_doc = expected_doc.bind(py);
        if !text_eq(&rev.document_id, expected_doc)? {
            let message =
                format!("block {seq} lists this revision hash for document {}", expected_doc.to_str()?);
            let actual = rev.document_id.bind(py).clone().into_any();
            return self.fail(py, rev, seq, expected_doc.clone().into_any(), actual, message).map(Some);
        }
        if !text_eq(&rev.tx_id, block.transaction_id.bind(py))? {
            return self
                .fail(
                    py,
                    rev,
                    seq,
                    block.transaction_id.bind(py).clone().into_any(),
                    rev.tx_id.bind(py).clone().into_any(),
                    format!("metadata.txId differs from block {seq}'s transactionId"),
                )
                .map(Some);
        }
        Ok(None)
    }

    /// ``_judge``: compare, and remember a failure (a duplicate of the revision fails again).
    fn judge<'py>(
        &mut self,
        py: Python<'py>,
        key: Key,
        block: &mut Block,
        rev: Rev,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        let Some(result) = self.compare(py, key, block, &rev)? else {
            return Ok(None);
        };
        let entries = self.failed.entry((key, rev.hash)).or_default();
        let mut replaced = false;
        for e in entries.iter_mut() {
            // ``d[k] = v`` for a (key, hash, documentId, version) already there: replaced in place
            if text_eq(&e.1, rev.document_id.bind(py))? && e.2.bind(py).eq(rev.version.bind(py))? {
                e.3 = result.clone().unbind();
                replaced = true;
                break;
            }
        }
        if !replaced {
            self.failed_id += 1;
            entries.push((self.failed_id, rev.document_id, rev.version, result.clone().unbind()));
            self.failed_order.push_back((self.failed_id, key, rev.hash));
            if self.failed_order.len() > self.max_pending {
                // ``popitem(last=False)``
                if let Some((id, k, h)) = self.failed_order.pop_front() {
                    if let Some(list) = self.failed.get_mut(&(k, h)) {
                        list.retain(|e| e.0 != id);
                        if list.is_empty() {
                            self.failed.remove(&(k, h));
                        }
                    }
                }
            }
        }
        Ok(Some(result))
    }

    /// ``_finish``
    fn finish(&mut self, key: Key) {
        self.done.insert(key, ());
        if self.done.len() > self.max_pending {
            self.done.pop_front();
        }
    }

    /// ``_bound``
    fn bound(&mut self, py: Python<'_>) -> PyResult<()> {
        let evicted = self.evicted.bind(py).clone();
        while self.blocks.len() > self.max_pending {
            let Some((key, block)) = self.blocks.pop_front() else { break };
            for u in self.block_unmatched(py, key, &block)? {
                evicted.append(u)?;
            }
        }
        while self.pending_revisions > self.max_pending {
            let Some((key, revs)) = self.revisions.pop_front() else { break };
            self.pending_revisions -= revs.len();
            for u in self.revision_unmatched(py, key, &revs)? {
                evicted.append(u)?;
            }
        }
        Ok(())
    }

    fn block_unmatched<'py>(
        &self,
        py: Python<'py>,
        key: Key,
        block: &Block,
    ) -> PyResult<Vec<Bound<'py, PyAny>>> {
        let cls = self.unmatched_cls.bind(py);
        let strand = self.strands.object(py, key.0);
        block
            .waiting
            .iter()
            .map(|(h, doc)| {
                cls.call1(("missing-revision", &strand, key.1, doc.bind(py), PyBytes::new(py, h)))
            })
            .collect()
    }

    fn revision_unmatched<'py>(
        &self,
        py: Python<'py>,
        key: Key,
        revs: &[Rev],
    ) -> PyResult<Vec<Bound<'py, PyAny>>> {
        let cls = self.unmatched_cls.bind(py);
        let strand = self.strands.object(py, key.0);
        revs.iter()
            .map(|r| {
                cls.call1((
                    "missing-block-summary",
                    &strand,
                    key.1,
                    r.document_id.bind(py),
                    PyBytes::new(py, &r.hash),
                ))
            })
            .collect()
    }
}

// --- V9 -------------------------------------------------------------------------------------

struct Run {
    lo: u64,
    hi: u64,
    first_prev: Box<[u8]>,
    last_hash: Box<[u8]>,
}

/// One link's outcome before it becomes a ``LinkResult``.
struct Link {
    seq: u64,
    passed: bool,
    expected: Box<[u8]>,
    actual: Box<[u8]>,
    message: String,
}

/// ``qldbstream.chain.ChainTracker``, with the same methods and results.
#[pyclass(module = "qldbstream_native")]
pub struct ChainTracker {
    strands: Strands,
    /// per strand index: its runs, sorted
    runs: Vec<Vec<Run>>,
    link_result: Py<PyAny>,
    gap: Py<PyAny>,
}

fn link(seq: u64, expected: &[u8], actual: &[u8]) -> Link {
    let passed = expected == actual;
    let message = if passed {
        String::new()
    } else {
        format!("chain break: previousBlockHash of block {seq} does not equal blockHash of block {}", seq - 1)
    };
    Link { seq, passed, expected: expected.into(), actual: actual.into(), message }
}

#[pymethods]
impl ChainTracker {
    /// ``ChainTracker(LinkResult, Gap)``: the Python result classes.
    #[new]
    fn new(link_result: Py<PyAny>, gap: Py<PyAny>) -> Self {
        ChainTracker { strands: Strands::default(), runs: Vec::new(), link_result, gap }
    }

    /// ``add(strand_id, sequence_no, block_hash, previous_hash)``: the links this block completes.
    fn add<'py>(
        &mut self,
        py: Python<'py>,
        strand_id: &Bound<'py, PyString>,
        sequence_no: u64,
        block_hash: &[u8],
        previous_hash: &[u8],
    ) -> PyResult<Bound<'py, PyList>> {
        let links = self.record(strand_id, sequence_no, block_hash, previous_hash)?;
        self.results(py, strand_id, links)
    }

    /// ``check(...)``: like ``add``, but the number of links when every one passed.
    fn check<'py>(
        &mut self,
        py: Python<'py>,
        strand_id: &Bound<'py, PyString>,
        sequence_no: u64,
        block_hash: &[u8],
        previous_hash: &[u8],
    ) -> PyResult<Bound<'py, PyAny>> {
        let links = self.record(strand_id, sequence_no, block_hash, previous_hash)?;
        if links.iter().all(|l| l.passed) {
            return Ok(links.len().into_pyobject(py)?.into_any());
        }
        Ok(self.results(py, strand_id, links)?.into_any())
    }

    /// Sequence numbers never received between the first and the last block seen, per strand.
    fn gaps<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let out = PyList::empty(py);
        for (i, runs) in self.runs.iter().enumerate() {
            let strand = self.strands.object(py, i as u32);
            for pair in runs.windows(2) {
                out.append(self.gap.bind(py).call1((&strand, pair[0].hi + 1, pair[1].lo - 1))?)?;
            }
        }
        Ok(out)
    }

    fn span(&self, strand_id: &str) -> Option<(u64, u64)> {
        let i = *self.strands.index.get(strand_id)?;
        let runs = &self.runs[i as usize];
        Some((runs.first()?.lo, runs.last()?.hi))
    }

    #[getter]
    fn run_count(&self) -> usize {
        self.runs.iter().map(Vec::len).sum()
    }
}

impl ChainTracker {
    fn results<'py>(
        &self,
        py: Python<'py>,
        strand: &Bound<'py, PyString>,
        links: Vec<Link>,
    ) -> PyResult<Bound<'py, PyList>> {
        let items: Vec<Bound<'py, PyAny>> =
            links.into_iter().map(|l| self.result(py, strand, l)).collect::<PyResult<_>>()?;
        PyList::new(py, items)
    }

    fn result<'py>(
        &self,
        py: Python<'py>,
        strand: &Bound<'py, PyString>,
        l: Link,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.link_result.bind(py).call1((
            strand,
            l.seq,
            l.passed,
            PyBytes::new(py, &l.expected),
            PyBytes::new(py, &l.actual),
            l.message,
        ))
    }

    /// The run logic of ``ChainTracker.add``.
    fn record(
        &mut self,
        strand_id: &Bound<'_, PyString>,
        seq: u64,
        block_hash: &[u8],
        prev: &[u8],
    ) -> PyResult<Vec<Link>> {
        let s = self.strands.intern(strand_id)? as usize;
        if s == self.runs.len() {
            self.runs.push(Vec::new());
        }
        let runs = &mut self.runs[s];
        if let Some(last) = runs.last_mut() {
            if seq >= 1 && last.hi == seq - 1 {
                // the usual case: the next block of the strand's last run
                let l = link(seq, &last.last_hash, prev);
                last.hi = seq;
                last.last_hash = block_hash.into();
                return Ok(vec![l]);
            }
        }
        let i = runs.partition_point(|r| r.lo <= seq); // bisect_right over the starts
        if i > 0 {
            let left = &runs[i - 1];
            if left.lo <= seq && seq <= left.hi {
                return Ok(duplicate(left, seq, block_hash, prev).into_iter().collect());
            }
        }
        let joins_left = i > 0 && seq >= 1 && runs[i - 1].hi == seq - 1;
        let joins_right = i < runs.len() && seq < u64::MAX && runs[i].lo == seq + 1;
        let mut results = Vec::new();
        if joins_left {
            results.push(link(seq, &runs[i - 1].last_hash, prev));
        }
        if joins_right {
            results.push(link(seq + 1, block_hash, &runs[i].first_prev));
        }
        if joins_left && joins_right {
            let right = runs.remove(i);
            let left = &mut runs[i - 1];
            left.hi = right.hi;
            left.last_hash = right.last_hash;
        } else if joins_left {
            let left = &mut runs[i - 1];
            left.hi = seq;
            left.last_hash = block_hash.into();
        } else if joins_right {
            let right = &mut runs[i];
            right.lo = seq;
            right.first_prev = prev.into();
        } else {
            runs.insert(i, Run { lo: seq, hi: seq, first_prev: prev.into(), last_hash: block_hash.into() });
        }
        Ok(results)
    }
}

/// ``ChainTracker._duplicate``
fn duplicate(run: &Run, seq: u64, block_hash: &[u8], prev: &[u8]) -> Option<Link> {
    if seq == run.hi && block_hash != &*run.last_hash {
        return Some(Link {
            seq,
            passed: false,
            expected: run.last_hash.clone(),
            actual: block_hash.into(),
            message: format!("two different blocks claim sequence number {seq} (blockHash differs)"),
        });
    }
    if seq == run.lo && prev != &*run.first_prev {
        return Some(Link {
            seq,
            passed: false,
            expected: run.first_prev.clone(),
            actual: prev.into(),
            message: format!("two different blocks claim sequence number {seq} (previousBlockHash differs)"),
        });
    }
    None
}
