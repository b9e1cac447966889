//! Shared helpers for the conformance tests.
#![allow(dead_code)]

use std::path::PathBuf;

/// `../shared/fixtures` beside the checkout (read-only in CI).
pub fn fixtures() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    if let Ok(dir) = std::env::var("DPC_FIXTURES") {
        return PathBuf::from(dir);
    }
    root.join("../shared/fixtures")
}

/// This repository's own small fixtures (`tests/fixtures`).
pub fn local_fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// A scratch directory for files a test writes (never inside the fixtures).
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dpc-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The descriptors issue 2 supports, each with model.dp, model.yaml and reference/<name>.json.
pub const MODELS: [&str; 7] = [
    "se_e2_a",
    "se_e2_a_tos",
    "se_e2_r",
    "se_e3",
    "se_atten",
    "dpa2",
    "dpa3",
];

use dpc_formats::Value;
use dpc_runtime::Output;

/// DeePMD-kit's outputs for one configuration.
pub struct Expected {
    pub energy: f64,
    pub force: Vec<f64>,
    pub virial: Vec<f64>,
    pub atom_energy: Vec<f64>,
    pub atom_virial: Vec<f64>,
}

impl Expected {
    /// From a dict with keys energy, force, virial, atom_energy, atom_virial.
    pub fn from_value(e: &Value) -> Expected {
        Expected {
            energy: e.get("energy").unwrap().as_f64().unwrap(),
            force: floats(e.get("force").unwrap()),
            virial: floats(e.get("virial").unwrap()),
            atom_energy: floats(e.get("atom_energy").unwrap()),
            atom_virial: floats(e.get("atom_virial").unwrap()),
        }
    }
}

/// Assert every output is within `atol + rtol |expected|`, printing each max |diff|.
pub fn assert_close(label: &str, out: &Output, exp: &Expected, atol: f64, rtol: f64) {
    let checks = [
        ("energy", worst(&[out.energy], &[exp.energy], atol, rtol)),
        ("force", worst(&out.force, &exp.force, atol, rtol)),
        ("virial", worst(&out.virial, &exp.virial, atol, rtol)),
        (
            "atom_energy",
            worst(&out.atom_energy, &exp.atom_energy, atol, rtol),
        ),
        (
            "atom_virial",
            worst(
                out.atom_virial.as_ref().expect("atomic virial computed"),
                &exp.atom_virial,
                atol,
                rtol,
            ),
        ),
    ];
    for (what, (ratio, absmax)) in checks {
        eprintln!("{label} {what}: max |diff| {absmax:.2e}");
        assert!(
            ratio <= 1.0,
            "{label} {what}: max |diff| {absmax:e} exceeds {atol:e} + {rtol:e} relative"
        );
    }
}

/// One configuration of a `reference/<name>.json` file with DeePMD-kit's expected outputs.
pub struct RefConfig {
    pub name: String,
    pub coord: Vec<f64>,
    pub atype: Vec<i32>,
    pub cell: Option<Vec<f64>>,
    pub expected: Expected,
}

pub fn floats(v: &Value) -> Vec<f64> {
    fn walk(v: &Value, out: &mut Vec<f64>) {
        match v {
            Value::List(l) => l.iter().for_each(|x| walk(x, out)),
            other => out.push(other.as_f64().expect("number")),
        }
    }
    let mut out = Vec::new();
    walk(v, &mut out);
    out
}

/// The configurations of `reference/<name>.json`.
pub fn reference(name: &str) -> Vec<RefConfig> {
    let text =
        std::fs::read_to_string(fixtures().join("reference").join(format!("{name}.json"))).unwrap();
    let doc = dpc_formats::json::parse(&text).unwrap();
    doc.get("configs")
        .unwrap()
        .as_list()
        .unwrap()
        .iter()
        .map(|c| RefConfig {
            name: c.get("name").unwrap().as_str().unwrap().to_string(),
            coord: floats(c.get("coord").unwrap()),
            atype: floats(c.get("atom_types").unwrap())
                .iter()
                .map(|&t| t as i32)
                .collect(),
            cell: c.get("box").filter(|b| !b.is_null()).map(floats),
            expected: Expected::from_value(c.get("expected").unwrap()),
        })
        .collect()
}

/// Largest violation of |a - b| <= atol + rtol |b|, as a multiple of the allowance (<= 1 passes).
pub fn worst(a: &[f64], b: &[f64], atol: f64, rtol: f64) -> (f64, f64) {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let mut ratio: f64 = 0.0;
    let mut absmax: f64 = 0.0;
    for (x, y) in a.iter().zip(b) {
        let d = (x - y).abs();
        absmax = absmax.max(d);
        ratio = ratio.max(d / (atol + rtol * y.abs()));
        if !d.is_finite() {
            ratio = f64::INFINITY;
        }
    }
    (ratio, absmax)
}

/// One configuration of a reference JSON (`coord`, `atom_types` or `atype`, optional `box`,
/// `fparam`, `aparam`; null = absent), owned, ready to become a `Frame`.
pub struct Config {
    pub coord: Vec<f64>,
    pub atype: Vec<i32>,
    pub cell: Option<Vec<f64>>,
    pub fparam: Option<Vec<f64>>,
    pub aparam: Option<Vec<f64>>,
}

impl Config {
    pub fn from_value(c: &Value) -> Config {
        let get = |k: &str| c.get(k).filter(|v| !v.is_null()).map(floats);
        let atype = get("atom_types")
            .or_else(|| get("atype"))
            .expect("atom types");
        Config {
            coord: get("coord").expect("coord"),
            atype: atype.iter().map(|&t| t as i32).collect(),
            cell: get("box"),
            fparam: get("fparam"),
            aparam: get("aparam"),
        }
    }

    pub fn frame(&self) -> dpc_runtime::Frame<'_> {
        dpc_runtime::Frame {
            coord: &self.coord,
            atype: &self.atype,
            cell: self.cell.as_deref(),
            fparam: self.fparam.as_deref(),
            aparam: self.aparam.as_deref(),
        }
    }
}

/// `tests/fixtures/variants/reference.json`: per variant, its model file and configurations.
pub fn variants_doc() -> Value {
    let text = std::fs::read_to_string(local_fixtures().join("variants/reference.json")).unwrap();
    dpc_formats::json::parse(&text).unwrap()
}

/// `file` of fixture model `name` (`../shared/fixtures/models/<name>/<file>`).
pub fn model_file(name: &str, file: &str) -> PathBuf {
    fixtures().join("models").join(name).join(file)
}
