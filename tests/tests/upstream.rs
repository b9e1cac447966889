//! DeePMD-kit's own test models and expected values (`source/tests/infer/*-testcase.yaml`).

mod common;

use common::{floats, worst};
use dpc_formats::Value;
use dpc_runtime::{DeepPot, Frame};

fn testcase(name: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(common::fixtures().join("upstream").join(name)).unwrap();
    let doc = dpc_formats::yaml::read(&text).unwrap();
    doc.get("results").unwrap().as_list().unwrap().to_vec()
}

/// Evaluate every block and return the worst allowance ratio and absolute error per quantity.
fn run(model: &str, case: &str, atol: f64, rtol: f64) -> Vec<(String, f64, f64)> {
    let pot = DeepPot::load(&common::fixtures().join("upstream").join(model)).unwrap();
    let mut report = Vec::new();
    for (b, block) in testcase(case).iter().enumerate() {
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
        let out = pot.compute(&frame, true).unwrap();
        let ae = floats(block.get("atomic_energy").unwrap());
        let av = floats(block.get("atomic_virial").unwrap());
        let e: f64 = ae.iter().sum();
        let mut v = [0.0; 9];
        for (i, x) in av.iter().enumerate() {
            v[i % 9] += x;
        }
        let f = floats(block.get("force").unwrap());
        for (what, (ratio, absmax)) in [
            ("energy", worst(&[out.energy], &[e], atol, rtol)),
            ("force", worst(&out.force, &f, atol, rtol)),
            ("virial", worst(&out.virial, &v, atol, rtol)),
            ("atom_energy", worst(&out.atom_energy, &ae, atol, rtol)),
            (
                "atom_virial",
                worst(out.atom_virial.as_ref().unwrap(), &av, atol, rtol),
            ),
        ] {
            eprintln!("{model} block {b} {what}: max |diff| {absmax:.2e}");
            report.push((format!("block {b} {what}"), ratio, absmax));
        }
    }
    report
}

#[test]
fn deeppot_sea_matches_every_block() {
    for (what, ratio, absmax) in run("deeppot_sea.yaml", "deeppot-testcase.yaml", 1e-10, 1e-12) {
        assert!(ratio <= 1.0, "deeppot_sea {what}: {absmax:e}");
    }
}

/// The testcase file predates DeePMD-kit 3.2.0, whose own backends differ from it by ~2e-8 eV
/// on this model (see the issue note); 1e-7 is the tolerance the issue sets.
#[test]
fn fparam_aparam_matches_every_block() {
    for (what, ratio, absmax) in run(
        "fparam_aparam.yaml",
        "fparam_aparam-testcase.yaml",
        1e-7,
        0.0,
    ) {
        assert!(ratio <= 1.0, "fparam_aparam {what}: {absmax:e}");
    }
}

/// The same model against what DeePMD-kit 3.2.0 itself computes for it: 1e-10.
#[test]
fn fparam_aparam_matches_deepmd_kit_3_2_0() {
    let text =
        std::fs::read_to_string(common::local_fixtures().join("fparam_aparam.dp320.json")).unwrap();
    let want = dpc_formats::json::parse(&text).unwrap();
    let block = &testcase("fparam_aparam-testcase.yaml")[0];
    let pot = DeepPot::load(&common::fixtures().join("upstream/fparam_aparam.yaml")).unwrap();
    let (coord, atype) = (
        floats(block.get("coord").unwrap()),
        floats(block.get("atype").unwrap()),
    );
    let atype: Vec<i32> = atype.iter().map(|&t| t as i32).collect();
    let (cell, fparam, aparam) = (
        floats(block.get("box").unwrap()),
        floats(block.get("fparam").unwrap()),
        floats(block.get("aparam").unwrap()),
    );
    let frame = Frame {
        coord: &coord,
        atype: &atype,
        cell: Some(&cell),
        fparam: Some(&fparam),
        aparam: Some(&aparam),
    };
    let out = pot.compute(&frame, true).unwrap();
    for (what, got, exp) in [
        (
            "energy",
            vec![out.energy],
            floats(want.get("energy").unwrap()),
        ),
        (
            "force",
            out.force.clone(),
            floats(want.get("force").unwrap()),
        ),
        (
            "virial",
            out.virial.to_vec(),
            floats(want.get("virial").unwrap()),
        ),
        (
            "atom_energy",
            out.atom_energy.clone(),
            floats(want.get("atom_energy").unwrap()),
        ),
        (
            "atom_virial",
            out.atom_virial.clone().unwrap(),
            floats(want.get("atom_virial").unwrap()),
        ),
    ] {
        let (ratio, absmax) = worst(&got, &exp, 1e-10, 1e-12);
        eprintln!("fparam_aparam vs DeePMD-kit 3.2.0 {what}: max |diff| {absmax:.2e}");
        assert!(ratio <= 1.0, "{what}: {absmax:e}");
    }
}
