//! Runs every fuzz target over its committed seed corpus (`corpus/<target>/`) and random
//! mutations of it (bit flips, insertions, deletions, truncations, splices). A case fails on
//! a panic, or when the live heap grows past a bound proportional to the input.
//!
//! `INFERA_FUZZ_CASES` sets the mutations per target (CI runs the default briefly);
//! `INFERA_FUZZ_TARGET` runs one target.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call forwards to the system allocator with the same layout; the counters
// are only statistics.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        // SAFETY: the caller's layout, passed through.
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            let now = LIVE.fetch_add(l.size(), Ordering::Relaxed) + l.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: `p` came from `alloc` with this layout.
        unsafe { System.dealloc(p, l) };
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        // SAFETY: `p` came from `alloc` with layout `l`.
        let q = unsafe { System.realloc(p, l, new) };
        if !q.is_null() {
            if new > l.size() {
                let now = LIVE.fetch_add(new - l.size(), Ordering::Relaxed) + new - l.size();
                PEAK.fetch_max(now, Ordering::Relaxed);
            } else {
                LIVE.fetch_sub(l.size() - new, Ordering::Relaxed);
            }
        }
        q
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

type Target = fn(&[u8]);

/// Heap a case may add: a fixed allowance (decoders' tables, a 1 M pixel image's buffers)
/// plus a multiple of the input.
fn bound(input: usize) -> usize {
    (48 << 20) + 64 * input
}

fn run_case(name: &str, target: Target, input: &[u8]) -> Result<(), TestCaseError> {
    // For crashes no test can catch (a stack overflow aborts): the last input is on disk.
    if let Ok(path) = std::env::var("INFERA_FUZZ_LAST") {
        let _ = std::fs::write(path, input);
    }
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let outcome = std::panic::catch_unwind(|| target(input));
    let grew = PEAK.load(Ordering::Relaxed).saturating_sub(before);
    prop_assert!(outcome.is_ok(), "{name} panicked on {} bytes", input.len());
    prop_assert!(
        grew <= bound(input.len()),
        "{name} allocated {grew} bytes for {} bytes of input",
        input.len()
    );
    Ok(())
}

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    let mut seeds: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("seed corpus {}: {e}", dir.display()))
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    seeds.sort();
    assert!(!seeds.is_empty(), "no seeds in {}", dir.display());
    seeds
}

#[derive(Debug, Clone)]
enum Edit {
    Flip(usize, u8),
    Set(usize, u8),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
    Truncate(usize),
    Splice(usize, usize, usize),
    Repeat(usize, usize, usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    let interesting = prop::sample::select(vec![
        0u8, 1, 0x7f, 0x80, 0xff, b'[', b']', b'{', b'}', b'"', b',', b'-', b'9', b'e', b'\\',
    ]);
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Edit::Flip(at, 1 << bit)),
        (any::<usize>(), interesting.clone()).prop_map(|(at, b)| Edit::Set(at, b)),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(at, v)| Edit::Insert(at, v)),
        (any::<usize>(), 1usize..64).prop_map(|(at, n)| Edit::Delete(at, n)),
        any::<usize>().prop_map(Edit::Truncate),
        (any::<usize>(), any::<usize>(), any::<usize>())
            .prop_map(|(s, a, b)| Edit::Splice(s, a, b)),
        (any::<usize>(), 1usize..32, 1usize..2000)
            .prop_map(|(at, len, times)| Edit::Repeat(at, len, times)),
    ]
}

fn apply(seeds: &[Vec<u8>], seed: usize, edits: &[Edit]) -> Vec<u8> {
    let mut d = seeds[seed % seeds.len()].clone();
    for e in edits {
        let at = |i: usize, d: &Vec<u8>| if d.is_empty() { 0 } else { i % (d.len() + 1) };
        match e {
            Edit::Flip(i, m) if !d.is_empty() => {
                let n = d.len();
                d[i % n] ^= m;
            }
            Edit::Set(i, b) if !d.is_empty() => {
                let n = d.len();
                d[i % n] = *b;
            }
            Edit::Insert(i, v) => {
                let p = at(*i, &d);
                d.splice(p..p, v.iter().copied());
            }
            Edit::Delete(i, n) => {
                let p = at(*i, &d);
                let end = (p + n).min(d.len());
                d.drain(p..end);
            }
            Edit::Truncate(i) => {
                let p = at(*i, &d);
                d.truncate(p);
            }
            Edit::Splice(s, a, b) => {
                let other = &seeds[s % seeds.len()];
                if !other.is_empty() {
                    let (x, y) = (a % other.len(), b % other.len());
                    let (x, y) = (x.min(y), x.max(y));
                    let p = at(*a, &d);
                    d.splice(p..p, other[x..y].iter().copied());
                }
            }
            Edit::Repeat(i, len, times) if !d.is_empty() => {
                let p = i % d.len();
                let piece: Vec<u8> = d[p..(p + len).min(d.len())].to_vec();
                let reps: Vec<u8> = piece
                    .iter()
                    .copied()
                    .cycle()
                    .take(piece.len() * times)
                    .collect();
                d.splice(p..p, reps);
            }
            _ => {}
        }
    }
    d
}

fn fuzz(name: &str, target: Target) {
    if std::env::var("INFERA_FUZZ_TARGET").is_ok_and(|t| t != name) {
        return;
    }
    let seeds = corpus(name);
    for s in &seeds {
        run_case(name, target, s).unwrap_or_else(|e| panic!("seed: {e}"));
    }
    let cases = std::env::var("INFERA_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1500);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = (any::<usize>(), prop::collection::vec(edit(), 1..6));
    runner
        .run(&strategy, |(seed, edits)| {
            run_case(name, target, &apply(&seeds, seed, &edits))
        })
        .unwrap_or_else(|e| panic!("{name}: {e}"));
}

/// One test, so no other test's allocations land in a case's measurement.
#[test]
fn every_target_survives_its_corpus_and_mutations() {
    fuzz("infer_body", infera_fuzz::infer_body);
    fuzz("config_pbtxt", infera_fuzz::config_pbtxt);
    fuzz("config_json", infera_fuzz::config_json);
    fuzz("bytes_tensor", infera_fuzz::bytes_tensor);
    fuzz("image", infera_fuzz::image);
}
