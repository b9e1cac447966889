//! `.pth` (TorchScript) models read into exactly the tree DeePMD-kit 3.2's
//! `dp convert-backend model.pth model.dp` writes: same keys in the same order, same scalar
//! types, arrays bit for bit. Then evaluated against DeePMD-kit's numbers.

mod common;

use std::path::Path;

use dpc_formats::{read_model, Value};
use dpc_runtime::{DeepPot, Frame};

/// Keys the converter sets from its own environment, not from the model file.
const WRITER_KEYS: [&str; 4] = ["software", "version", "time", "pt_version"];

/// Identical trees: ordered keys, equal scalars (int/float/bool distinct), arrays bit for bit.
fn assert_identical(a: &Value, b: &Value, path: &str) {
    match (a, b) {
        (Value::Dict(x), Value::Dict(y)) => {
            let keep = |k: &&String| !(path.is_empty() && WRITER_KEYS.contains(&k.as_str()));
            let kx: Vec<&String> = x.keys().filter(keep).collect();
            let ky: Vec<&String> = y.keys().filter(keep).collect();
            assert_eq!(kx, ky, "key order differs at {path}");
            for k in kx {
                assert_identical(&x[k], &y[k], &format!("{path}/{k}"));
            }
        }
        (Value::List(x), Value::List(y)) => {
            assert_eq!(x.len(), y.len(), "list length differs at {path}");
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                assert_identical(p, q, &format!("{path}[{i}]"));
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            assert_eq!(
                (x.dtype, &x.shape),
                (y.dtype, &y.shape),
                "array type differs at {path}"
            );
            assert!(x.bytes == y.bytes, "array bytes differ at {path}");
        }
        (Value::Array(x), Value::Float(f)) if x.shape.is_empty() => {
            assert_eq!(x.get_f64(0).to_bits(), f.to_bits(), "{path}")
        }
        (Value::Float(f), Value::Array(x)) if x.shape.is_empty() => {
            assert_eq!(x.get_f64(0).to_bits(), f.to_bits(), "{path}")
        }
        _ => assert_eq!(a, b, "value differs at {path}"),
    }
}

fn check_twin(pth: &Path, twin: &Path) {
    let ours = read_model(pth).unwrap_or_else(|e| panic!("{}: {e}", pth.display()));
    let theirs = read_model(twin).unwrap();
    assert_identical(&ours, &theirs, "");
}

#[test]
fn fixture_models_equal_their_dp_twins() {
    for name in common::MODELS {
        let dir = common::fixtures().join("models").join(name);
        check_twin(&dir.join("model.pth"), &dir.join("model.dp"));
        let pot = DeepPot::load(&dir.join("model.pth")).unwrap();
        for c in common::reference(name) {
            let out = pot
                .compute(&Frame::new(&c.coord, &c.atype, c.cell.as_deref()), true)
                .unwrap();
            common::assert_close(
                &format!("{name}.pth {}", c.name),
                &out,
                &c.expected,
                1e-10,
                1e-12,
            );
        }
    }
}

#[test]
fn variant_models_equal_their_dp_twins() {
    let dir = common::local_fixtures().join("variants");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let d = entry.unwrap().path();
        if d.join("model.pth").exists() {
            check_twin(&d.join("model.pth"), &d.join("model.dp"));
            n += 1;
        }
    }
    assert_eq!(n, 33);
}

/// Synthetic models covering what the others do not: un-normalised scripts (constructor
/// defaults), lmax 2, type-embedding bias and electronic configurations, case embedding,
/// per-layer trainable lists, env_protection, precision spelled default/double/single.
#[test]
fn option_coverage_models_equal_their_dp_twins() {
    let dir = common::local_fixtures().join("pth_extra");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let d = entry.unwrap().path();
        if d.join("twin.dp").exists() {
            check_twin(&d.join("model.pth"), &d.join("twin.dp"));
            n += 1;
        }
    }
    assert_eq!(n, 11);
}

/// A 3.0-era file DeePMD-kit 3.2.0 can no longer convert (it lacks buffers 3.2 expects):
/// dpc reads it (matching 3.2's non-strict load) and reproduces DeePMD-kit's testcase.
#[test]
fn old_upstream_pth_still_works() {
    let pth = common::fixtures().join("upstream/deeppot_sea.pth");
    check_twin(
        &pth,
        &common::local_fixtures().join("pth_extra/deeppot_sea_nonstrict_twin.dp"),
    );
    let ours = read_model(&pth).unwrap();
    let yaml = read_model(&common::fixtures().join("upstream/deeppot_sea.yaml")).unwrap();
    // Same weights as the model's own yaml (schema versions differ, data does not).
    let mut a = Vec::new();
    let mut b = Vec::new();
    ours.get("model")
        .unwrap()
        .for_each_leaf_array(&mut |v| a.push(v.clone()));
    yaml.get("model")
        .unwrap()
        .for_each_leaf_array(&mut |v| b.push(v.clone()));
    assert_eq!(a.len(), b.len());
    let pot = DeepPot::from_tree(ours).unwrap();
    let coord = [
        12.83, 2.56, 2.18, 12.09, 2.87, 2.74, 0.25, 3.32, 1.68, 3.36, 3.00, 1.81, 3.51, 2.51, 2.60,
        4.27, 3.22, 1.56,
    ];
    let cell = [13.0, 0.0, 0.0, 0.0, 13.0, 0.0, 0.0, 0.0, 13.0];
    let out = pot
        .compute(&Frame::new(&coord, &[0, 1, 1, 0, 1, 1], Some(&cell)), true)
        .unwrap();
    assert!(
        (out.energy - -929.7371700503966).abs() < 1e-10,
        "{}",
        out.energy
    );
}

#[test]
fn unsupported_pth_models_are_named() {
    let e = read_model(&common::local_fixtures().join("pth_extra/preset_out_bias/model.pth"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("preset_out_bias"), "{e}");
}
