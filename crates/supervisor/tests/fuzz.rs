//! Fuzzing on the stable toolchain: the config loader and the control protocol's decoder never
//! panic nor hang, on the saved corpus (`tests/corpus/`, replayed whole) and on inputs generated
//! from it (seeded mutations: bytes flipped, inserted, deleted; lines spliced between files;
//! tokens from a dictionary of edge cases; frames with odd length prefixes). The normal suite
//! runs a bounded number; `bench/fuzz.sh` runs many more (`FUZZ_ITERS`), and the
//! coverage-guided targets in `fuzz/` where cargo-fuzz and a nightly toolchain are there.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use supervisor::fuzzing;

/// The longest one input may take (a debug build, on a loaded machine): anything near it is a
/// hang in the making.
const PER_INPUT: Duration = Duration::from_secs(2);

/// SplitMix64: the same seed, the same inputs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

fn corpus(kind: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus")
        .join(kind);
    let mut files: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let path = e.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            (path, bytes)
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no corpus in {}", dir.display());
    files
}

/// Runs `target` on `input`: a panic or an input that takes too long fails, naming the input.
fn exercise<T>(what: &str, input: &[u8], target: impl Fn(&[u8]) -> T) -> T {
    let started = Instant::now();
    let out = std::panic::catch_unwind(AssertUnwindSafe(|| target(input)));
    let took = started.elapsed();
    let shown = String::from_utf8_lossy(&input[..input.len().min(300)]).into_owned();
    match out {
        Ok(v) => {
            assert!(took < PER_INPUT, "{what}: {took:?} on {shown:?}");
            v
        }
        Err(_) => panic!("{what}: panicked on {} bytes: {shown:?}", input.len()),
    }
}

/// Edge cases the mutations insert.
const CONFIG_TOKENS: &[&str] = &[
    "\n[[app]]\nname = \"z\"\ncommand = \"/bin/sh\"\n",
    "\n[[app.listen]]\naddress = \"127.0.0.1:0\"\n",
    "\n[[app.listen]]\npath = \"",
    "\n[[job]]\nname = \"j\"\nschedule = \"* * * * * *\"\ncommand = [\"/bin/true\"]\n",
    "\n[app.restart]\n",
    "\n[cron]\nredis_url = \"redis://:pw@h:1/0\"\n",
    "\n[cron]\nstate_dir = \"/\"\n",
    "\"18446744073709551615s\"",
    "18446744073709551615",
    "-9223372036854775808",
    "1e309",
    "nan",
    "\"\\u0000\"",
    "\"-5s\"",
    "\"0s\"",
    "\"99999999999TiB\"",
    " = [",
    " = {",
    "]]]]",
    "\"\"\"",
    "'''",
    "\u{feff}",
    "\u{1F600}",
    "after = [\"web\", \"web\", \"once\"]\n",
    "instances = 1025\n",
    "scope = \"cluster\"\n",
    "runtime = \"node\"\n",
    "readiness = \"exec\"\n",
];

/// One input from the corpus: mutated, spliced with another file, tokens inserted.
fn mutate(rng: &mut Rng, corpus: &[(PathBuf, Vec<u8>)], tokens: &[&[u8]]) -> Vec<u8> {
    let mut data = corpus[rng.below(corpus.len())].1.clone();
    for _ in 0..1 + rng.below(8) {
        let at = rng.below(data.len() + 1);
        match rng.below(7) {
            0 if !data.is_empty() => {
                let i = rng.below(data.len());
                data[i] ^= 1 << rng.below(8);
            }
            1 if !data.is_empty() => {
                let end = (at + 1 + rng.below(16)).min(data.len());
                data.drain(at.min(end)..end);
            }
            2 => {
                let b = rng.next() as u8;
                data.insert(at, b);
            }
            3 | 4 => {
                let t = tokens[rng.below(tokens.len())];
                data.splice(at..at, t.iter().copied());
            }
            5 => {
                // The tail of another file from one of its line starts.
                let other = &corpus[rng.below(corpus.len())].1;
                let from = rng.below(other.len() + 1);
                let from = other[from..]
                    .iter()
                    .position(|b| *b == b'\n')
                    .map_or(other.len(), |p| from + p);
                data.truncate(at);
                data.extend_from_slice(&other[from..]);
            }
            _ => {
                // A run repeated: long values, deep nesting.
                let n = 1 + rng.below(2000);
                let b = [b'[', b'{', b'a', b'"', b'\\', b'9'][rng.below(6)];
                data.splice(at..at, std::iter::repeat_n(b, n));
            }
        }
    }
    data
}

/// `n` generated inputs for `target` from `corpus`, seeds `first..first + n`.
fn generated<T>(
    what: &str,
    corpus: &[(PathBuf, Vec<u8>)],
    tokens: &[&[u8]],
    first: u64,
    n: u64,
    target: impl Fn(&[u8]) -> T,
) {
    for seed in first..first + n {
        let mut rng = Rng(seed);
        let input = mutate(&mut rng, corpus, tokens);
        exercise(&format!("{what} (seed {seed})"), &input, &target);
    }
}

/// A framed control stream: valid requests, mutated, with odd length prefixes between.
fn frame_tokens() -> Vec<Vec<u8>> {
    let mut t: Vec<Vec<u8>> = [
        &br#"{"request":"status"}"#[..],
        br#"{"request":"scale","app":"web","instances":18446744073709551616}"#,
        br#"{"request":"reload","wait":true,"app":null}"#,
        br#"{"response":"status"}"#,
        br#"{"request":"upgrade","binary":"\u0000"}"#,
    ]
    .iter()
    .map(|j| {
        let mut f = (j.len() as u32).to_be_bytes().to_vec();
        f.extend_from_slice(j);
        f
    })
    .collect();
    for prefix in [0u32, 1, 65_536, 65_537, 16 << 20, u32::MAX] {
        t.push(prefix.to_be_bytes().to_vec());
    }
    t
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn the_saved_corpus_replays_without_a_panic() {
    let configs = corpus("config");
    let accepted: Vec<String> = configs
        .iter()
        .filter(|(path, text)| exercise(&path.display().to_string(), text, fuzzing::config))
        .map(|(path, _)| path.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    // What a user runs is valid (relative paths resolve in the test's directory).
    assert!(
        accepted.contains(&"everything.toml".to_string()),
        "{accepted:?}"
    );
    assert!(!accepted.contains(&"bounds.toml".to_string()));
    let frames: usize = corpus("control")
        .iter()
        .map(|(path, bytes)| exercise(&path.display().to_string(), bytes, fuzzing::control))
        .sum();
    assert!(frames >= 10, "the valid frames decode: {frames}");
}

#[test]
fn generated_configs_never_panic_nor_hang() {
    let tokens: Vec<&[u8]> = CONFIG_TOKENS.iter().map(|t| t.as_bytes()).collect();
    generated(
        "config",
        &corpus("config"),
        &tokens,
        0,
        env_or("FUZZ_QUICK", 1500),
        fuzzing::config,
    );
}

#[test]
fn generated_control_streams_never_panic_nor_hang() {
    let tokens = frame_tokens();
    let tokens: Vec<&[u8]> = tokens.iter().map(Vec::as_slice).collect();
    generated(
        "control",
        &corpus("control"),
        &tokens,
        0,
        env_or("FUZZ_QUICK", 1500) * 4,
        fuzzing::control,
    );
}

#[test]
#[ignore = "long: run by bench/fuzz.sh (FUZZ_ITERS, FUZZ_FIRST)"]
fn fuzz_for_long() {
    let n = env_or("FUZZ_ITERS", 200_000);
    let first = env_or("FUZZ_FIRST", 1_000_000);
    let started = Instant::now();
    let tokens: Vec<&[u8]> = CONFIG_TOKENS.iter().map(|t| t.as_bytes()).collect();
    generated(
        "config",
        &corpus("config"),
        &tokens,
        first,
        n,
        fuzzing::config,
    );
    let config_secs = started.elapsed().as_secs_f64();
    let frames = frame_tokens();
    let frames: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
    generated(
        "control",
        &corpus("control"),
        &frames,
        first,
        n,
        fuzzing::control,
    );
    let control_secs = started.elapsed().as_secs_f64() - config_secs;
    println!(
        "fuzz: {n} configs in {config_secs:.1}s ({:.0}/s), {n} control streams in {control_secs:.1}s ({:.0}/s): no panic, no input over {PER_INPUT:?}",
        n as f64 / config_secs.max(1e-9),
        n as f64 / control_secs.max(1e-9)
    );
}
