//! Time the Rust core alone (no Python objects):
//! ``cargo run --release --example bench_core -- USERS.bin [AGGREGATES.bin]``, files of
//! ``u32 little-endian length + bytes`` records. ``REPS`` (default 15) repetitions, best kept;
//! ``PER_KIND=0`` skips the per-record-type timings (for callgrind).

use std::time::Instant;

use qldbstream_native::{kpl, scan};

fn load(path: &str) -> Vec<Vec<u8>> {
    let data = std::fs::read(path).expect("read input");
    let mut out = Vec::new();
    let mut pos = 0;
    while pos + 4 <= data.len() {
        let mut len = [0u8; 4];
        len.copy_from_slice(&data[pos..pos + 4]);
        let n = u32::from_le_bytes(len) as usize;
        out.push(data[pos + 4..pos + 4 + n].to_vec());
        pos += 4 + n;
    }
    out
}

fn best_of<T>(reps: usize, items: &[T], mut f: impl FnMut(&T)) -> f64 {
    let mut best = f64::MAX;
    for _ in 0..reps {
        let t = Instant::now();
        for item in items {
            f(item);
        }
        best = best.min(t.elapsed().as_secs_f64());
    }
    best / items.len().max(1) as f64 * 1e6
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let reps: usize = std::env::var("REPS").ok().and_then(|r| r.parse().ok()).unwrap_or(15);
    let users = load(&args[1]);
    let us = best_of(reps, &users, |u| assert!(scan::scan_record(u).is_ok()));
    println!("scan_record: {us:.3} us/record over {} records (best of {reps})", users.len());
    if std::env::var("PER_KIND").map(|v| v != "0").unwrap_or(true) {
        for (kind, marker) in [("revision", &b"REVISION_DETAILS"[..]), ("block", &b"BLOCK_SUMMARY"[..])] {
            let some: Vec<&Vec<u8>> =
                users.iter().filter(|u| u.windows(marker.len()).any(|w| w == marker)).collect();
            let us = best_of(reps, &some, |u| assert!(scan::scan_record(u).is_ok()));
            println!("  {kind}: {us:.3} us/record over {}", some.len());
        }
    }
    if let Some(path) = args.get(2) {
        let aggs = load(path);
        let us = best_of(reps, &aggs, |a| assert!(kpl::parse_aggregate(a).is_ok()));
        println!("parse_aggregate: {us:.3} us/aggregate over {} aggregates", aggs.len());
    }
}
