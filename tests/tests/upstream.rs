//! DeePMD-kit's own test models and expected values (`source/tests/infer/*-testcase.yaml`).

mod common;

use common::{assert_close, floats, Expected};
use dpc_formats::Value;
use dpc_runtime::{DeepPot, Frame, Output};

fn testcase(name: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(common::fixtures().join("upstream").join(name)).unwrap();
    let doc = dpc_formats::yaml::read(&text).unwrap();
    doc.get("results").unwrap().as_list().unwrap().to_vec()
}

/// Evaluate one testcase block (coord, atype, box, optional fparam/aparam).
fn eval_block(pot: &DeepPot, block: &Value) -> Output {
    let coord = floats(block.get("coord").unwrap());
    let atype: Vec<i32> = floats(block.get("atype").unwrap())
        .iter()
        .map(|&t| t as i32)
        .collect();
    let cell = block.get("box").filter(|v| !v.is_null()).map(floats);
    let fparam = block.get("fparam").map(floats);
    let aparam = block.get("aparam").map(floats);
    let frame = Frame {
        coord: &coord,
        atype: &atype,
        cell: cell.as_deref(),
        fparam: fparam.as_deref(),
        aparam: aparam.as_deref(),
    };
    pot.compute(&frame, true).unwrap()
}

/// The block's expected values; totals are the sums of the per-atom values it stores.
fn expected(block: &Value) -> Expected {
    let atom_energy = floats(block.get("atomic_energy").unwrap());
    let atom_virial = floats(block.get("atomic_virial").unwrap());
    let mut virial = vec![0.0; 9];
    for (i, x) in atom_virial.iter().enumerate() {
        virial[i % 9] += x;
    }
    Expected {
        energy: atom_energy.iter().sum(),
        force: floats(block.get("force").unwrap()),
        virial,
        atom_energy,
        atom_virial,
    }
}

fn check(model: &str, case: &str, atol: f64, rtol: f64) {
    let pot = DeepPot::load(&common::fixtures().join("upstream").join(model)).unwrap();
    for (b, block) in testcase(case).iter().enumerate() {
        assert_close(
            &format!("{model} block {b}"),
            &eval_block(&pot, block),
            &expected(block),
            atol,
            rtol,
        );
    }
}

#[test]
fn deeppot_sea_matches_every_block() {
    check("deeppot_sea.yaml", "deeppot-testcase.yaml", 1e-10, 1e-12);
}

/// The testcase file predates DeePMD-kit 3.2.0, which differs from it by 2e-8 eV on this
/// model (both its NumPy and PyTorch backends); 1e-7 is the tolerance the issue sets.
#[test]
fn fparam_aparam_matches_every_block() {
    check(
        "fparam_aparam.yaml",
        "fparam_aparam-testcase.yaml",
        1e-7,
        0.0,
    );
}

/// The same model against what DeePMD-kit 3.2.0 itself computes for it: 1e-10.
#[test]
fn fparam_aparam_matches_deepmd_kit_3_2_0() {
    let text =
        std::fs::read_to_string(common::local_fixtures().join("fparam_aparam.dp320.json")).unwrap();
    let want = Expected::from_value(&dpc_formats::json::parse(&text).unwrap());
    let pot = DeepPot::load(&common::fixtures().join("upstream/fparam_aparam.yaml")).unwrap();
    let out = eval_block(&pot, &testcase("fparam_aparam-testcase.yaml")[0]);
    assert_close(
        "fparam_aparam vs DeePMD-kit 3.2.0",
        &out,
        &want,
        1e-10,
        1e-12,
    );
}
