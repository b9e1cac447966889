//! `DeepPot` against DeePMD-kit 3.2.0's own numbers (`../shared/fixtures/reference`): energy,
//! force, virial, atom energy and atom virial within 1e-10 absolute + 1e-12 relative.

mod common;

use dpc_runtime::{DeepPot, Frame};

const ATOL: f64 = 1e-10;
const RTOL: f64 = 1e-12;

fn check_model(name: &str, file: &str) {
    let pot = DeepPot::load(&common::fixtures().join("models").join(name).join(file)).unwrap();
    for c in common::reference(name) {
        let out = pot
            .compute(&Frame::new(&c.coord, &c.atype, c.cell.as_deref()), true)
            .unwrap();
        common::assert_close(
            &format!("{name}/{file} {}", c.name),
            &out,
            &c.expected,
            ATOL,
            RTOL,
        );
    }
}

#[test]
fn se_e2_a_dp() {
    check_model("se_e2_a", "model.dp");
}

#[test]
fn se_e2_a_yaml() {
    check_model("se_e2_a", "model.yaml");
}

#[test]
fn se_e2_a_tos_dp() {
    check_model("se_e2_a_tos", "model.dp");
}

#[test]
fn se_e2_a_tos_yaml() {
    check_model("se_e2_a_tos", "model.yaml");
}

#[test]
fn se_e2_r_dp() {
    check_model("se_e2_r", "model.dp");
}

#[test]
fn se_e2_r_yaml() {
    check_model("se_e2_r", "model.yaml");
}

#[test]
fn se_e3_dp() {
    check_model("se_e3", "model.dp");
}

#[test]
fn se_e3_yaml() {
    check_model("se_e3", "model.yaml");
}

#[test]
fn se_atten_dp() {
    check_model("se_atten", "model.dp");
}

#[test]
fn se_atten_yaml() {
    check_model("se_atten", "model.yaml");
}

/// Running the centres through the graph a few at a time gives the same numbers.
#[test]
fn chunked_evaluation_matches() {
    for name in ["se_e2_a", "se_atten"] {
        let mut pot = DeepPot::load(
            &common::fixtures()
                .join("models")
                .join(name)
                .join("model.dp"),
        )
        .unwrap();
        pot.set_chunk_size(5);
        for c in common::reference(name) {
            let out = pot
                .compute(&Frame::new(&c.coord, &c.atype, c.cell.as_deref()), true)
                .unwrap();
            common::assert_close(
                &format!("{name} chunked {}", c.name),
                &out,
                &c.expected,
                ATOL,
                RTOL,
            );
        }
    }
}
