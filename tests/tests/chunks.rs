//! Centres evaluated in chunks (what bounds memory on large systems and what the threads
//! split) give the same result as one pass over the whole system, for every variant. DPA-1
//! in `concat` mode is the sharp case: DeePMD-kit reads the type of the system's atom 0 for
//! padded neighbour slots, which a chunk must reproduce.

mod common;

use dpc_runtime::DeepPot;

fn close(label: &str, a: &[f64], b: &[f64]) {
    // float32 models differ by float32 rounding between summation orders.
    let tol = if label.contains("f32") { 1e-5 } else { 1e-12 };
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= tol * (1.0 + y.abs()),
            "{label}[{i}]: chunked {x}, whole {y}"
        );
    }
}

#[test]
fn chunked_evaluation_equals_one_pass_on_every_variant() {
    let doc = common::variants_doc();
    for (name, entry) in doc.as_dict().unwrap() {
        let path = common::local_fixtures()
            .join("variants")
            .join(entry.get("model").unwrap().as_str().unwrap());
        let tree = dpc_formats::read_model(&path).unwrap();
        let mut whole = DeepPot::from_tree(tree.clone()).unwrap();
        whole.set_chunk_size(1 << 20);
        let mut chunked = DeepPot::from_tree(tree).unwrap();
        chunked.set_chunk_size(3);
        let c = &entry.get("configs").unwrap().as_list().unwrap()[0];
        let mut cfg = common::Config::from_value(c);
        // Atom 0 of a type the later chunks do not start with, so a chunk that read its own
        // first atom for padding would differ.
        let ntypes = whole.model().ntypes() as i32;
        cfg.atype[0] = (cfg.atype[3] + 1) % ntypes;
        let frame = cfg.frame();
        let a = chunked.compute(&frame, true).unwrap();
        let b = whole.compute(&frame, true).unwrap();
        close(&format!("{name} energy"), &[a.energy], &[b.energy]);
        close(
            &format!("{name} atom_energy"),
            &a.atom_energy,
            &b.atom_energy,
        );
        close(&format!("{name} force"), &a.force, &b.force);
        close(&format!("{name} virial"), &a.virial, &b.virial);
        close(
            &format!("{name} atom_virial"),
            a.atom_virial.as_ref().unwrap(),
            b.atom_virial.as_ref().unwrap(),
        );
    }
}
