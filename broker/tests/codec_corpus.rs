//! Replays, with a plain `cargo test` (no fuzzer): the malformed-input regression file
//! (`tests/data/malformed.txt`, each line with the verdict the spec asks for), the fuzz targets'
//! committed corpus (`fuzz/corpus/<target>/`), and a short deterministic mutation run over both,
//! through the same entry points the fuzz targets call (`mqim_broker::codec::probe`).

use std::path::{Path, PathBuf};

use mqim_broker::codec::probe::{decode_all, publish_round_trip, Verdict};
use mqim_broker::codec::Version;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

struct Case {
    line: usize,
    version: Version,
    verdict: Verdict,
    bytes: Vec<u8>,
    what: String,
}

fn cases() -> Vec<Case> {
    let text = std::fs::read_to_string(root().join("tests/data/malformed.txt")).unwrap();
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let (data, what) = line.split_once('#').unwrap_or((line, ""));
        let mut words = data.split_whitespace();
        let Some(v) = words.next() else { continue };
        let version = match v {
            "v4" => Version::V311,
            "v5" => Version::V5,
            other => panic!("line {}: version {other:?}", i + 1),
        };
        let verdict = match words.next().expect("verdict") {
            "packets" => Verdict::Packets,
            "incomplete" => Verdict::Incomplete,
            "malformed" => Verdict::Malformed,
            "protocol" => Verdict::Protocol,
            "toolarge" => Verdict::TooLarge,
            other => panic!("line {}: verdict {other:?}", i + 1),
        };
        let bytes = words
            .map(|h| u8::from_str_radix(h, 16).unwrap_or_else(|_| panic!("line {}: {h}", i + 1)))
            .collect();
        out.push(Case {
            line: i + 1,
            version,
            verdict,
            bytes,
            what: what.trim().to_string(),
        });
    }
    out
}

#[test]
fn every_malformed_input_gets_the_verdict_the_spec_asks_for() {
    let cases = cases();
    assert!(cases.len() > 30);
    let wrong: Vec<String> = cases
        .iter()
        .filter_map(|c| {
            let got = decode_all(c.version, &c.bytes);
            (got != c.verdict).then(|| {
                format!(
                    "line {} ({}): expected {:?}, got {got:?}",
                    c.line, c.what, c.verdict
                )
            })
        })
        .collect();
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = root().join("../fuzz/corpus").join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| std::fs::read(e.ok()?.path()).ok())
        .collect()
}

#[test]
fn the_fuzz_corpus_replays_without_a_finding() {
    for input in corpus("codec_v4") {
        decode_all(Version::V311, &input);
    }
    for input in corpus("codec_v5") {
        decode_all(Version::V5, &input);
    }
    for input in corpus("publish_round_trip") {
        publish_round_trip(&input);
    }
}

/// xorshift64*: deterministic, so a failure here reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

#[test]
fn mutations_of_the_regression_inputs_never_break_the_codec() {
    let seeds: Vec<(Version, Vec<u8>)> = cases()
        .into_iter()
        .map(|c| (c.version, c.bytes))
        .chain(corpus("codec_v5").into_iter().map(|b| (Version::V5, b)))
        .collect();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..50_000 {
        let (v, seed) = &seeds[rng.below(seeds.len())];
        let mut input = seed.clone();
        for _ in 0..1 + rng.below(4) {
            match rng.below(4) {
                0 if !input.is_empty() => {
                    let i = rng.below(input.len());
                    input[i] = rng.next() as u8;
                }
                1 => {
                    let i = rng.below(input.len() + 1);
                    input.insert(i, rng.next() as u8);
                }
                2 if !input.is_empty() => {
                    let i = rng.below(input.len());
                    input.remove(i);
                }
                _ => {
                    let other = &seeds[rng.below(seeds.len())].1;
                    input.extend_from_slice(other);
                }
            }
        }
        decode_all(*v, &input);
        let other = if *v == Version::V5 {
            Version::V311
        } else {
            Version::V5
        };
        decode_all(other, &input);
        publish_round_trip(&input);
    }
}
