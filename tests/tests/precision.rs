//! `--precision float32` (float32 networks, float64 accumulation) against DeePMD-kit's
//! float64 numbers: the errors are float32 rounding, stated in docs/performance.md, and
//! bounded here so a regression (a float32 accumulation, a wrong cast) fails.

mod common;

use dpc_compiler::build::BuildOptions;
use dpc_compiler::graph::DType;
use dpc_runtime::{DeepPot, Frame};

#[test]
fn float32_networks_stay_within_float32_error_of_deepmd_kit() {
    let opts = BuildOptions {
        precision: Some(DType::F32),
        ..BuildOptions::default()
    };
    for name in ["se_e2_a", "se_e2_a_tos", "se_e2_r", "se_e3"] {
        let path = common::fixtures().join(format!("models/{name}/model.dp"));
        let pot = DeepPot::from_tree_opts(dpc_formats::read_model(&path).unwrap(), opts).unwrap();
        let graph = pot.executor(false).unwrap().graph();
        assert!(
            graph.nodes.iter().any(|n| n.ty.dtype == DType::F32),
            "{name}: nothing computes in float32"
        );
        let (mut we, mut wf, mut wv) = (0.0f64, 0.0f64, 0.0f64);
        for c in common::reference(name) {
            let frame = Frame::new(&c.coord, &c.atype, c.cell.as_deref());
            let out = pot.compute(&frame, false).unwrap();
            let x = &c.expected;
            let n = c.atype.len() as f64;
            we = we.max((out.energy - x.energy).abs() / n);
            for (a, b) in out.force.iter().zip(&x.force) {
                wf = wf.max((a - b).abs());
            }
            for (a, b) in out.virial.iter().zip(&x.virial) {
                wv = wv.max((a - b).abs() / n);
            }
        }
        eprintln!("{name} float32: energy/atom {we:.1e}, force {wf:.1e}, virial/atom {wv:.1e}");
        assert!(
            we < 1e-5 && wf < 1e-4 && wv < 1e-4,
            "{name}: {we} {wf} {wv}"
        );
        // And not float64 by accident.
        assert!(wf > 1e-10, "{name}: float32 forces agree to {wf}");
    }
}

#[test]
fn float32_dpa1_is_refused_by_name() {
    let opts = BuildOptions {
        precision: Some(DType::F32),
        ..BuildOptions::default()
    };
    let path = common::fixtures().join("models/se_atten/model.dp");
    let err = DeepPot::from_tree_opts(dpc_formats::read_model(&path).unwrap(), opts)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("se_atten"), "{err}");
}
