//! The fused kernels against the same models built from elementary ops: every variant and
//! fixture model, energies, forces and per-atom virials, the float32 model included. The
//! two forms differ only in summation order, so they agree to rounding.

mod common;

use dpc_runtime::{DeepPot, Frame};

fn pair(path: &std::path::Path) -> (DeepPot, DeepPot) {
    let tree = dpc_formats::read_model(path).unwrap();
    (
        DeepPot::from_tree(tree.clone()).unwrap(),
        DeepPot::from_tree_with(tree, true).unwrap(),
    )
}

fn close(label: &str, a: &[f64], b: &[f64], tol: f64) {
    assert_eq!(a.len(), b.len(), "{label}: lengths");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= tol * (1.0 + y.abs()),
            "{label}[{i}]: fused {x}, unfused {y}"
        );
    }
}

/// The graph's fused embedding and attention ops (forward and VJP).
fn fused_ops(pot: &DeepPot) -> (usize, usize) {
    let exec = pot.executor(true).unwrap();
    let count = |prefix: &str| {
        exec.graph()
            .nodes
            .iter()
            .filter(|n| n.op.name().starts_with(prefix))
            .count()
    };
    (count("embed_contract"), count("attention"))
}

/// Both forms on one configuration; returns how many embedding and attention ops the
/// fused graph has.
fn compare(label: &str, path: &std::path::Path, frame: &Frame, tol: f64) -> (usize, usize) {
    let (fused, plain) = pair(path);
    let ops = fused_ops(&fused);
    assert_eq!(
        fused_ops(&plain),
        (0, 0),
        "{label}: the unfused graph has fused ops"
    );
    // Each embedding VJP starts from the activations its forward op kept.
    let exec = fused.executor(true).unwrap();
    let vjps = exec
        .graph()
        .nodes
        .iter()
        .filter(|n| n.op.name() == "embed_contract_vjp")
        .count();
    assert_eq!(
        exec.kept_pairs(),
        vjps,
        "{label}: VJPs without kept activations"
    );
    let a = fused.compute(frame, true).unwrap();
    let b = plain.compute(frame, true).unwrap();
    close(&format!("{label} energy"), &[a.energy], &[b.energy], tol);
    close(&format!("{label} force"), &a.force, &b.force, tol);
    close(&format!("{label} virial"), &a.virial, &b.virial, tol);
    close(
        &format!("{label} atom_energy"),
        &a.atom_energy,
        &b.atom_energy,
        tol,
    );
    close(
        &format!("{label} atom_virial"),
        a.atom_virial.as_ref().unwrap(),
        b.atom_virial.as_ref().unwrap(),
        tol,
    );
    ops
}

#[test]
fn fused_and_unfused_graphs_agree_on_every_variant() {
    let text =
        std::fs::read_to_string(common::local_fixtures().join("variants/reference.json")).unwrap();
    let doc = dpc_formats::json::parse(&text).unwrap();
    let (mut fused_models, mut attention_models) = (0, 0);
    for (name, entry) in doc.as_dict().unwrap() {
        let path = common::local_fixtures()
            .join("variants")
            .join(entry.get("model").unwrap().as_str().unwrap());
        let c = &entry.get("configs").unwrap().as_list().unwrap()[0];
        let cfg = common::Config::from_value(c);
        let frame = cfg.frame();
        let tol = if name.ends_with("f32") { 1e-5 } else { 1e-12 };
        let (embed, attention) = compare(name, &path, &frame, tol);
        fused_models += usize::from(embed > 0);
        attention_models += usize::from(attention > 0);
    }
    assert!(
        fused_models >= 4,
        "only {fused_models} variants use the fused kernels"
    );
    // dpa1_atom_ener, dpa1_concat_tos_t, dpa1_overflow, dpa1_softplus, dpa1_strip_smooth,
    // se_atten_v2, hybrid_dpa1_dpa3: smooth and not, normalised and not, with and without
    // dotr, float64 and float32.
    assert!(
        attention_models >= 6,
        "only {attention_models} variants use the fused attention"
    );
}

#[test]
fn fused_and_unfused_graphs_agree_on_the_fixture_models() {
    for name in common::MODELS {
        let path = common::fixtures().join(format!("models/{name}/model.dp"));
        for c in common::reference(name).iter().take(2) {
            let frame = Frame::new(&c.coord, &c.atype, c.cell.as_deref());
            let (_, attention) = compare(&format!("{name} {}", c.name), &path, &frame, 1e-12);
            assert_eq!(
                attention > 0,
                name == "se_atten",
                "{name}: fused attention ops"
            );
        }
    }
}
