//! Mutation fuzzing of the file parsers without a nightly toolchain (test-only).
//!
//! Each parser has a committed corpus in `tests/fuzz-corpus/<parser>/` at the repository root:
//! valid seed files and, for every kind of outcome the campaign has reached (accepted, or each
//! error variant), the first input that reached it. A campaign replays the corpus, then derives
//! inputs from it by truncation, byte overwrites, 32-bit field rewrites and appended bytes. No
//! input may panic, and every outcome kind the corpus records must still be reachable.
//! `FUZZ_WRITE_CORPUS=1 cargo test -p datasets fuzz` adds inputs for newly reached kinds.

use std::collections::BTreeMap;
use std::path::PathBuf;

/// xorshift64: a fixed, seeded input stream, so a campaign is reproducible.
struct Xorshift(u64);

impl Xorshift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(seed: &[u8], rng: &mut Xorshift) -> Vec<u8> {
    let mut bytes = seed.to_vec();
    for _ in 0..=rng.below(4) {
        let len = bytes.len();
        match rng.below(5) {
            0 => bytes.truncate(rng.below(len + 1)),
            1 if len > 0 => bytes[rng.below(len)] = rng.next() as u8,
            2 if len >= 4 => {
                // A 32-bit field (a size, a count) set to a small or an extreme value.
                let at = rng.below(len - 3);
                let value = match rng.below(3) {
                    0 => rng.below(16) as u32,
                    1 => u32::MAX - rng.below(16) as u32,
                    _ => rng.next() as u32,
                };
                bytes[at..at + 4].copy_from_slice(&value.to_be_bytes());
            }
            3 if len > 0 => {
                // Duplicate a slice (repeated chunks, repeated records).
                let start = rng.below(len);
                let end = start + rng.below(len - start + 1).min(64);
                let copy = bytes[start..end].to_vec();
                let at = rng.below(len + 1);
                bytes.splice(at..at, copy);
            }
            _ => {
                let extra = rng.below(8);
                bytes.extend((0..extra).map(|_| rng.next() as u8));
            }
        }
    }
    bytes
}

/// The outcome kind of a parse: "ok", or the error's variant name.
pub fn outcome<T, E: std::fmt::Debug>(result: &Result<T, E>) -> String {
    match result {
        Ok(_) => "ok".to_string(),
        Err(e) => format!("{e:?}")
            .split(|c: char| !c.is_alphanumeric() && c != '_')
            .next()
            .unwrap_or_default()
            .to_string(),
    }
}

fn corpus_dir(parser: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fuzz-corpus")
        .join(parser)
}

/// Run the corpus and `iterations` inputs mutated from `seeds` and the corpus through `parse`
/// (which returns the outcome kind and panics on any inconsistency it finds). Every committed
/// `reached-<kind>` input must still parse to `<kind>`. Returns how many inputs of each kind
/// the campaign saw.
pub fn campaign(
    parser: &str,
    seeds: &[Vec<u8>],
    iterations: usize,
    parse: impl Fn(&[u8]) -> String,
) -> BTreeMap<String, usize> {
    let dir = corpus_dir(parser);
    let write = std::env::var_os("FUZZ_WRITE_CORPUS").is_some();
    if write {
        std::fs::create_dir_all(&dir).expect("corpus folder");
        for (i, seed) in seeds.iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i}")), seed).expect("write corpus");
        }
    }
    let mut seen = BTreeMap::<String, usize>::new();
    let mut pool: Vec<Vec<u8>> = seeds.to_vec();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e} (the committed corpus)", dir.display()))
        .map(|entry| entry.expect("corpus entry").path())
        .collect();
    entries.sort();
    for path in entries {
        let bytes = std::fs::read(&path).expect("corpus file");
        let kind = parse(&bytes);
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if let Some(recorded) = name.strip_prefix("reached-") {
            assert_eq!(kind, recorded, "{}: outcome changed", path.display());
        }
        *seen.entry(kind).or_default() += 1;
        pool.push(bytes);
    }
    let mut rng = Xorshift(0x2545_F491_4F6C_DD1D);
    for i in 0..iterations {
        let input = mutate(&pool[i % pool.len()], &mut rng);
        let kind = parse(&input);
        if write && !seen.contains_key(&kind) {
            std::fs::write(dir.join(format!("reached-{kind}")), &input).expect("write corpus");
        }
        *seen.entry(kind).or_default() += 1;
    }
    eprintln!("{parser}: corpus and {iterations} mutated inputs, outcomes {seen:?}");
    seen
}
