//! `dpc-fuzz [--seconds N] [--seed S] [TARGET...]`: mutation fuzzing of every reader.
//!
//! Each target starts from real files (the fixtures) and feeds the reader mutated copies:
//! bit flips, byte overwrites, truncations, insertions, duplicated chunks and splices of two
//! seeds. A reader may return an error; it must never panic. A panicking input is saved to
//! `fuzz/crashes/` and the run fails. Runs on stable Rust, so CI can afford a bounded run.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use dpc_formats::{Format, Value};

struct Target {
    name: &'static str,
    seeds: Vec<&'static str>,
    run: fn(&[u8]),
}

fn read_as(format: Format, data: &[u8]) -> Option<Value> {
    dpc_formats::read_model_bytes(format, data.to_vec(), Path::new("fuzz")).ok()
}

/// Reading, and when that succeeds, building and verifying the model's graph.
fn model(format: Format, data: &[u8]) {
    if let Some(tree) = read_as(format, data) {
        compile(&tree);
    }
}

fn compile(tree: &Value) {
    if let Ok(m) = dpc_compiler::model::Model::from_tree(tree) {
        if let Ok(g) = dpc_compiler::build::build_graph(&m, Default::default()) {
            dpc_compiler::graph::verify::verify(&g).expect("a built graph verifies");
        }
    }
}

/// A Paddle model is two files; its seeds are members of `tests/fixtures/paddle/models.zip`
/// (named `paddle:<member>`), and each input replaces one of the two (the program when it
/// starts like JSON, else the tensors) while the other stays intact.
const PADDLE_ZIP: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/fixtures/paddle/models.zip"
);

fn paddle_member(name: &str) -> Vec<u8> {
    let zip = std::fs::read(PADDLE_ZIP).unwrap_or_else(|e| panic!("{PADDLE_ZIP}: {e}"));
    let mut a = dpc_formats::archive::Archive::open(zip).expect("models.zip opens");
    a.read(name)
        .unwrap_or_else(|e| panic!("models.zip {name}: {e}"))
}

fn paddle(data: &[u8]) {
    static PAIR: OnceLock<(Vec<u8>, Vec<u8>)> = OnceLock::new();
    paddle_pair(&PAIR, "v_f32_fparam", data)
}

fn paddle_dpa1(data: &[u8]) {
    static PAIR: OnceLock<(Vec<u8>, Vec<u8>)> = OnceLock::new();
    paddle_pair(&PAIR, "dpa1_strip", data)
}

/// Read `data` as one half of model `name` (from models.zip), the other half intact.
fn paddle_pair(pair: &OnceLock<(Vec<u8>, Vec<u8>)>, name: &str, data: &[u8]) {
    let (json, params) = pair.get_or_init(|| {
        (
            paddle_member(&format!("{name}.json")),
            paddle_member(&format!("{name}.pdiparams")),
        )
    });
    let tree = if data.first() == Some(&b'{') {
        dpc_formats::paddle::read(data, params)
    } else {
        dpc_formats::paddle::read(json, data)
    };
    if let Ok(tree) = tree {
        compile(&tree);
    }
}

fn targets() -> Vec<Target> {
    vec![
        Target {
            name: "dp",
            seeds: vec!["models/se_e2_a_tos/model.dp", "models/se_atten/model.dp"],
            run: |d| model(Format::Dp, d),
        },
        Target {
            name: "yaml",
            seeds: vec!["models/se_e2_r/model.yaml"],
            run: |d| model(Format::Yaml, d),
        },
        Target {
            name: "hlo",
            seeds: vec!["models/se_e3/model.hlo"],
            run: |d| {
                if let Some(tree) = read_as(Format::Hlo, d) {
                    tree.for_each_leaf_array(&mut |v| {
                        if let Value::Bytes(b) = v {
                            let _ = dpc_formats::jax_export::info(b);
                        }
                    });
                }
            },
        },
        Target {
            name: "pte",
            seeds: vec!["models/se_e2_r/model.pte"],
            run: |d| model(Format::Pte, d),
        },
        Target {
            name: "pth",
            seeds: vec!["models/se_e2_a/model.pth", "upstream/deeppot_sea.pth"],
            run: |d| model(Format::Pth, d),
        },
        Target {
            // The path `fuzz` has no extension, so `pb::is_text` decides binary or text from
            // the content: both the binary and the text parser get inputs.
            name: "pb",
            seeds: vec!["models/se_e2_a/model.pb", "upstream/deeppot.pbtxt"],
            run: |d| model(Format::Pb, d),
        },
        Target {
            name: "paddle",
            seeds: vec!["paddle:v_f32_fparam.json", "paddle:v_f32_fparam.pdiparams"],
            run: paddle,
        },
        Target {
            name: "paddle_dpa1",
            seeds: vec!["paddle:dpa1_strip.json", "paddle:dpa1_strip.pdiparams"],
            run: paddle_dpa1,
        },
        Target {
            name: "pickle",
            seeds: vec!["models/se_atten/model.pth"],
            run: |d| {
                if let Ok(mut ts) = dpc_formats::torchscript::TorchScript::open(d.to_vec()) {
                    let ids: Vec<usize> = (0..ts.data.nodes.len())
                        .filter(|&i| ts.is_tensor(i))
                        .collect();
                    for id in ids {
                        let _ = ts.tensor(id);
                    }
                }
            },
        },
        Target {
            name: "json",
            seeds: vec!["reference/se_e3.json"],
            run: |d| drop(std::str::from_utf8(d).map(dpc_formats::json::parse)),
        },
        Target {
            name: "npy",
            seeds: vec![
                "data/valid/set.000/coord.npy",
                "data/valid/set.000/energy.npy",
            ],
            run: |d| drop(dpc_formats::npy::read(d)),
        },
    ]
}

/// xorshift64*: deterministic, dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545F4914F6CDD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

fn mutate(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut d = seeds[rng.below(seeds.len())].clone();
    for _ in 0..1 + rng.below(4) {
        let len = d.len();
        match rng.below(6) {
            0 if len > 0 => {
                let i = rng.below(len);
                d[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                d[i] = [0, 0xff, 0x7f, 0x80, b'"', b'[', b'{'][rng.below(7)];
            }
            2 => d.truncate(rng.below(len + 1)),
            3 => {
                let i = rng.below(len + 1);
                let junk: Vec<u8> = (0..1 + rng.below(16)).map(|_| rng.next() as u8).collect();
                d.splice(i..i, junk);
            }
            4 if len > 0 => {
                let a = rng.below(len);
                let b = (a + 1 + rng.below(64)).min(len);
                let chunk = d[a..b].to_vec();
                let i = rng.below(len + 1);
                d.splice(i..i, chunk);
            }
            _ => {
                let other = &seeds[rng.below(seeds.len())];
                let cut = rng.below(d.len() + 1).min(other.len());
                d.truncate(cut);
                d.extend_from_slice(&other[cut..]);
            }
        }
    }
    d
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut seconds, mut seed, mut only) = (10u64, 0x9E3779B97F4A7C15u64, Vec::new());
    while let Some(a) = args.next() {
        match a.as_str() {
            "--seconds" => {
                seconds = args
                    .next()
                    .and_then(|s| s.parse().ok())
                    .expect("--seconds N")
            }
            "--seed" => seed = args.next().and_then(|s| s.parse().ok()).expect("--seed S"),
            other => only.push(other.to_string()),
        }
    }
    let fixtures = std::env::var("DPC_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures")
        });
    let crash_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("crashes");
    // Panics are caught and reported here; keep the default message short.
    std::panic::set_hook(Box::new(|info| eprintln!("panic: {info}")));
    let known: Vec<&str> = targets().iter().map(|t| t.name).collect();
    if let Some(u) = only.iter().find(|o| !known.contains(&o.as_str())) {
        eprintln!("unknown target `{u}` (targets: {})", known.join(", "));
        std::process::exit(2);
    }
    let mut failed = false;
    for t in targets()
        .into_iter()
        .filter(|t| only.is_empty() || only.iter().any(|o| o == t.name))
    {
        let seeds: Vec<Vec<u8>> = t
            .seeds
            .iter()
            .map(|s| match s.strip_prefix("paddle:") {
                Some(member) => paddle_member(member),
                None => std::fs::read(fixtures.join(s)).unwrap_or_else(|e| panic!("seed {s}: {e}")),
            })
            .collect();
        let mut rng = Rng(seed ^ t.name.len() as u64 ^ (t.name.as_bytes()[0] as u64) << 32);
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let mut runs = 0u64;
        while Instant::now() < deadline {
            let input = mutate(&mut rng, &seeds);
            runs += 1;
            if catch_unwind(AssertUnwindSafe(|| (t.run)(&input))).is_err() {
                std::fs::create_dir_all(&crash_dir).unwrap();
                let path = crash_dir.join(format!("{}-{}-{runs}", t.name, seed));
                std::fs::write(&path, &input).unwrap();
                eprintln!("{}: PANIC on input saved to {}", t.name, path.display());
                failed = true;
                break;
            }
        }
        println!(
            "{:<12} {runs} inputs in {seconds} s, no panic{}",
            t.name,
            if failed { "?" } else { "" }
        );
    }
    if failed {
        std::process::exit(1);
    }
}
