//! TensorFlow frozen graphs (`.pb` binary, `.pbtxt` text) read into the graph-truth tree
//! (`dpc_formats::pb`) and evaluated with TensorFlow's numerics (`@dpc_runtime`), against the
//! numbers DeePMD-kit's TensorFlow backend gives for the same files.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::{assert_close, floats, Expected};
use dpc_formats::tf::graph_def::{attr_value, GraphDef, NodeDef};
use dpc_formats::{read_model, read_model_bytes, Format, FormatError, NdArray, Value};
use dpc_runtime::{DeepPot, Frame};
use prost::Message;

const ATOL: f64 = 1e-10;
const RTOL: f64 = 1e-12;

fn model_pb(name: &str) -> std::path::PathBuf {
    common::model_file(name, "model.pb")
}

/// Every array under `v`, by path (`/descriptor/embeddings/networks[0]/layers[1]/@variables/w`).
fn arrays(v: &Value, path: &str, out: &mut BTreeMap<String, NdArray>) {
    match v {
        Value::Dict(d) => d
            .iter()
            .for_each(|(k, x)| arrays(x, &format!("{path}/{k}"), out)),
        Value::List(l) => l
            .iter()
            .enumerate()
            .for_each(|(i, x)| arrays(x, &format!("{path}[{i}]"), out)),
        Value::Array(a) => {
            out.insert(path.to_string(), a.clone());
        }
        _ => {}
    }
}

/// The `.pb`'s model arrays against the `.dp` twin's (the PyTorch model the graph was
/// converted from): bit for bit, except `differ` (paths whose bytes differ) and `only_dp`
/// (paths the graph cannot have).
fn check_arrays(name: &str, differ: &[String], only_dp: &[String]) {
    let dir = common::fixtures().join("models").join(name);
    let ours = read_model(&dir.join("model.pb")).unwrap();
    let twin = read_model(&dir.join("model.dp")).unwrap();
    let (mut a, mut b) = (BTreeMap::new(), BTreeMap::new());
    arrays(ours.get("model").unwrap(), "", &mut a);
    arrays(twin.get("model").unwrap(), "", &mut b);
    let only_pb: Vec<&String> = a.keys().filter(|k| !b.contains_key(*k)).collect();
    assert!(
        only_pb.is_empty(),
        "{name}: arrays only in the .pb tree: {only_pb:?}"
    );
    let missing: Vec<&String> = b.keys().filter(|k| !a.contains_key(*k)).collect();
    assert_eq!(
        missing,
        only_dp.iter().collect::<Vec<_>>(),
        "{name}: arrays only in the .dp twin"
    );
    let mut differing = Vec::new();
    for (k, x) in &a {
        let y = &b[k];
        assert_eq!((x.dtype, &x.shape), (y.dtype, &y.shape), "{name} {k}");
        if x.bytes != y.bytes {
            differing.push(k.clone());
        }
    }
    assert_eq!(differing, differ, "{name}: arrays whose bytes differ");
    eprintln!(
        "{name}: {} arrays, {} bit-identical to the .dp twin",
        a.len(),
        a.len() - differing.len()
    );
}

/// `per_format.pb` of `reference/<name>.json`: what DeePMD-kit's TensorFlow backend computed
/// from `model.pb`, within 1e-10 absolute + 1e-12 relative, or `atol` for the configurations
/// `loose` names.
fn check_against_tf(name: &str, loose: &[&str], atol: f64) {
    let text = std::fs::read_to_string(
        common::fixtures()
            .join("reference")
            .join(format!("{name}.json")),
    )
    .unwrap();
    let doc = dpc_formats::json::parse(&text).unwrap();
    let pot = DeepPot::load(&model_pb(name)).unwrap();
    for c in doc.get("configs").unwrap().as_list().unwrap() {
        let coord = floats(c.get("coord").unwrap());
        let atype: Vec<i32> = floats(c.get("atom_types").unwrap())
            .iter()
            .map(|&t| t as i32)
            .collect();
        let cell = c.get("box").filter(|b| !b.is_null()).map(floats);
        let exp = Expected::from_value(c.get("per_format").unwrap().get("pb").unwrap());
        let out = pot
            .compute(&Frame::new(&coord, &atype, cell.as_deref()), true)
            .unwrap();
        let cname = c.get("name").unwrap().as_str().unwrap();
        let tol = if loose.contains(&cname) { atol } else { ATOL };
        assert_close(&format!("{name}.pb {cname}"), &out, &exp, tol, RTOL);
    }
}

fn layer0_idt(n: usize) -> Vec<String> {
    (0..n)
        .map(|t| format!("/fitting/nets/networks[{t}]/layers[0]/@variables/idt"))
        .collect()
}

/// se_e2_a, se_e2_a_tos and se_atten converted from PyTorch: the graph holds every array
/// of the original model, bit for bit (out_bias/out_std included).
#[test]
fn pt_converted_graphs_hold_the_original_arrays() {
    for name in ["se_e2_a", "se_e2_a_tos", "se_atten"] {
        check_arrays(name, &[], &[]);
    }
}

/// se_e2_r and se_e3 (fitting layer 0 is 32 → 32, resp. 16·2 → 32): the PyTorch model has
/// a residual with a timestep there, TensorFlow's fitting has none, so `dp convert-backend`
/// drops that `idt` and the converted graph is a different function. se_e3 also trains the
/// unused (Au, Cu) embedding net in PyTorch, which TensorFlow stores as zeros.
#[test]
fn se_e2_r_and_se_e3_lose_what_tensorflow_cannot_hold() {
    check_arrays("se_e2_r", &[], &layer0_idt(2));
    let se_e3_zero_net: Vec<String> = (0..3)
        .flat_map(|l| {
            ["b", "w"]
                .map(|v| format!("/descriptor/embeddings/networks[1]/layers[{l}]/@variables/{v}"))
        })
        .collect();
    check_arrays("se_e3", &se_e3_zero_net, &layer0_idt(2));
}

#[test]
fn se_e2_a_pb_matches_tensorflow() {
    check_against_tf("se_e2_a", &[], ATOL);
}

#[test]
fn se_e2_a_tos_pb_matches_tensorflow() {
    check_against_tf("se_e2_a_tos", &[], ATOL);
}

#[test]
fn se_e2_r_pb_matches_tensorflow() {
    check_against_tf("se_e2_r", &[], ATOL);
}

#[test]
fn se_e3_pb_matches_tensorflow() {
    check_against_tf("se_e3", &[], ATOL);
}

/// TensorFlow's attention gate normalises the direction part `x` of each environment-matrix
/// row with `x * rsqrt(max(|x|^2, 1e-12))`: for a neighbour within ~0.02 Å of the cutoff,
/// `|x| < 1e-6` and the gate is `1e6 x`, proportional to the switching function `sw ~ 1e-8`.
/// Both TensorFlow and dpc evaluate `sw = 1 + u^3 (-6u^2 + 15u - 10)` to ~1e-16 absolute, i.e.
/// only ~1e-8 relative there, and that relative error reaches every other neighbour's gate
/// (the attention couples them with O(1) weights). The three periodic configurations have such
/// neighbours (4e-3 to 8e-3 Å inside the cutoff; sw/r = 1.4e-9 to 1.3e-8) and differ from
/// TensorFlow by up to 6e-11 eV in energy, 2.6e-10 eV/Å in force and 1.5e-9 eV in virial; the
/// two whose nearest neighbour to the cutoff is 0.3 Å away agree to 3e-14. The same arrays with
/// PyTorch's normalisation (floor on |x|, not |x|^2) match the .pth to 1e-14 on all five, and
/// DeePMD-kit's own NumPy implementation of TensorFlow's formula is 3.7e-11 away from
/// TensorFlow in atom energy (pb_spec SPEC §5.4), so this is round-off, not a model difference.
#[test]
fn se_atten_pb_matches_tensorflow() {
    check_against_tf(
        "se_atten",
        &["pbc_32_valid0", "pbc_32_valid5", "pbc_48_triclinic"],
        3e-9,
    );
}

/// The tree's frame: DeePMD-kit's top-level keys, the model definition from the graph's
/// training script, `min_nbor_dist`, and the TensorFlow-numerics marker.
#[test]
fn tree_carries_script_statistics_and_runtime_marker() {
    let t = read_model(&model_pb("se_atten")).unwrap();
    let keys: Vec<&str> = t.as_dict().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "backend",
            "model",
            "model_def_script",
            "@variables",
            "@dpc_runtime"
        ]
    );
    assert_eq!(t.get("backend").unwrap().as_str(), Some("TensorFlow"));
    assert_eq!(t.get("@dpc_runtime").unwrap().as_str(), Some("tensorflow"));
    let mds = t.get("model_def_script").unwrap();
    assert_eq!(
        mds.get("descriptor").unwrap().get("type").unwrap().as_str(),
        Some("se_atten")
    );
    let m = t.get("@variables").unwrap().get("min_nbor_dist").unwrap();
    assert!(matches!(m, Value::Float(x) if (x - 1.9285158341470814).abs() < 1e-15));
    let d = t.get("model").unwrap().get("descriptor").unwrap();
    // TensorFlow's attention logits are not scaled; its layer norm uses the graph's epsilon
    // (1e-5 here, from PyTorch), not the 1e-3 DeePMD-kit's serializer would write.
    assert_eq!(d.get("temperature"), Some(&Value::Float(1.0)));
    assert_eq!(d.get("ln_eps"), Some(&Value::Float(1e-5)));
    assert_eq!(d.get("type_one_side"), Some(&Value::Bool(false)));
    let att = d.get("attention_layers").unwrap();
    assert_eq!(att.get("temperature"), Some(&Value::Float(1.0)));
    // The out_std TensorFlow multiplies in.
    let std = t
        .get("model")
        .unwrap()
        .get("@variables")
        .unwrap()
        .get("out_std")
        .unwrap()
        .as_array()
        .unwrap();
    assert_eq!(std.shape, [1, 2, 1]);
    assert!((std.get_f64(0) - 1.67427151).abs() < 1e-8);
    // se_e2_r: PyTorch's script says type_one_side false, the graph's nets are one-side.
    let r = read_model(&model_pb("se_e2_r")).unwrap();
    let rd = r.get("model").unwrap().get("descriptor").unwrap();
    assert_eq!(rd.get("type_one_side"), Some(&Value::Bool(true)));
    // Fitting layer 0 (32 → 32): no residual in TensorFlow.
    let l0 = r
        .get("model")
        .unwrap()
        .get("fitting")
        .unwrap()
        .get("nets")
        .unwrap()
        .get("networks")
        .unwrap()
        .as_list()
        .unwrap()[0]
        .get("layers")
        .unwrap()
        .as_list()
        .unwrap()[0]
        .clone();
    assert_eq!(l0.get("resnet"), Some(&Value::Bool(false)));
    assert_eq!(l0.get("use_timestep"), Some(&Value::Bool(false)));
}

// ---------------------------------------------------------------------------------------------
// upstream/deeppot.pbtxt: DeePMD-kit's own TensorFlow test graph (no training script)
// ---------------------------------------------------------------------------------------------

fn deeppot_pbtxt() -> std::path::PathBuf {
    common::fixtures().join("upstream/deeppot.pbtxt")
}

/// DeePMD-kit's C++ test values (`tf_deeppot_ref`, `tf_deeppot_no_pbc_ref`), extracted by
/// `tests/fixtures/pb/make_deeppot_ref.py`; energy and virial are the per-atom sums, as
/// DeePMD-kit's tests take them.
#[test]
fn upstream_deeppot_pbtxt_matches_tensorflow() {
    let text =
        std::fs::read_to_string(common::local_fixtures().join("pb/deeppot_ref.json")).unwrap();
    let doc = dpc_formats::json::parse(&text).unwrap();
    let coord = floats(doc.get("coord").unwrap());
    let atype: Vec<i32> = floats(doc.get("atype").unwrap())
        .iter()
        .map(|&t| t as i32)
        .collect();
    let pot = DeepPot::load(&deeppot_pbtxt()).unwrap();
    let blocks = doc.get("blocks").unwrap().as_list().unwrap();
    assert_eq!(blocks.len(), 2);
    for b in blocks {
        let atom_energy = floats(b.get("atom_energy").unwrap());
        let atom_virial = floats(b.get("atom_virial").unwrap());
        let mut virial = vec![0.0; 9];
        for (i, x) in atom_virial.iter().enumerate() {
            virial[i % 9] += x;
        }
        let exp = Expected {
            energy: atom_energy.iter().sum(),
            force: floats(b.get("force").unwrap()),
            virial,
            atom_energy,
            atom_virial,
        };
        let cell = b.get("box").filter(|v| !v.is_null()).map(floats);
        let out = pot
            .compute(&Frame::new(&coord, &atype, cell.as_deref()), true)
            .unwrap();
        let label = format!("deeppot.pbtxt {}", b.get("name").unwrap().as_str().unwrap());
        assert_close(&label, &out, &exp, ATOL, RTOL);
    }
}

/// Without a training script, the model definition is inferred from the graph.
#[test]
fn upstream_deeppot_pbtxt_model_definition_is_inferred() {
    let t = read_model(&deeppot_pbtxt()).unwrap();
    let mds = t.get("model_def_script").unwrap();
    assert_eq!(
        dpc_formats::json::write(mds).unwrap(),
        concat!(
            r#"{"type_map":["O","H"],"descriptor":{"type":"se_e2_a","sel":[46,92],"rcut_smth":0.5,"#,
            r#""rcut":6.0,"neuron":[2,4,8],"resnet_dt":false,"activation_function":"tanh","#,
            r#""precision":"float64","type_one_side":false,"exclude_types":[],"set_davg_zero":false,"#,
            r#""axis_neuron":4},"fitting_net":{"type":"ener","neuron":[6,6,6],"resnet_dt":true,"#,
            r#""numb_fparam":0,"numb_aparam":0,"activation_function":"tanh","precision":"float64","#,
            r#""use_aparam_as_mask":false}}"#
        )
    );
    assert_eq!(t.get("@variables"), Some(&Value::Dict(Default::default())));
}

/// The same graph as binary protobuf reads to the same tree; text is recognised by its
/// content too (a `.pb` name holding text).
#[test]
fn text_and_binary_graphs_read_alike() {
    let text = std::fs::read(deeppot_pbtxt()).unwrap();
    let from_text = read_model(&deeppot_pbtxt()).unwrap();
    let def = dpc_formats::tf::parse(&text, true).unwrap();
    let binary = def.encode_to_vec();
    let from_binary = read_model_bytes(Format::Pb, binary, Path::new("deeppot.pb")).unwrap();
    assert_eq!(from_text, from_binary);
    let misnamed = read_model_bytes(Format::Pb, text, Path::new("deeppot.pb")).unwrap();
    assert_eq!(from_text, misnamed);
}

// ---------------------------------------------------------------------------------------------
// what is refused, and bad input
// ---------------------------------------------------------------------------------------------

/// A fixture graph: `models/<name>/model.pb`, or `tests/fixtures/pb/<name>.pb`.
fn graph(name: &str) -> GraphDef {
    let local = common::local_fixtures()
        .join("pb")
        .join(format!("{name}.pb"));
    let path = if local.exists() {
        local
    } else {
        model_pb(name)
    };
    dpc_formats::tf::parse(&std::fs::read(path).unwrap(), false).unwrap()
}

fn read_def(def: &GraphDef) -> Result<Value, FormatError> {
    read_model_bytes(Format::Pb, def.encode_to_vec(), Path::new("x.pb"))
}

fn node_mut<'a>(def: &'a mut GraphDef, name: &str) -> &'a mut NodeDef {
    def.node.iter_mut().find(|n| n.name == name).unwrap()
}

/// Rewrite the graph's training script.
fn with_script(name: &str, edit: impl Fn(&str) -> String) -> GraphDef {
    let mut def = graph(name);
    let n = node_mut(&mut def, "train_attr/training_script");
    let Some(attr_value::Value::Tensor(t)) = &mut n.attr.get_mut("value").unwrap().value else {
        panic!("training_script is not a tensor")
    };
    let old = String::from_utf8(t.string_val[0].clone()).unwrap();
    let new = edit(&old);
    assert_ne!(old, new, "the edit changed nothing");
    t.string_val[0] = new.into_bytes();
    def
}

fn unsupported(r: Result<Value, FormatError>) -> String {
    match r {
        Err(FormatError::Unsupported(m)) => m,
        other => panic!("expected an Unsupported error, got {other:?}"),
    }
}

#[test]
fn unsupported_graphs_are_named() {
    let mut def = graph("se_e2_a");
    def.node.push(NodeDef {
        name: "filter_type_0/TabulateFusionSeA".into(),
        op: "TabulateFusionSeA".into(),
        ..Default::default()
    });
    let m = unsupported(read_def(&def));
    assert!(
        m.contains("compressed .pb (tabulated embedding nets) is not supported; use the uncompressed model"),
        "{m}"
    );

    let m = unsupported(read_def(&with_script("se_e2_a", |s| {
        s.replace(r#""type":"se_e2_a""#, r#""type":"dpa2""#)
    })));
    assert!(m.contains("descriptor `dpa2`"), "{m}");

    let m = unsupported(read_def(&with_script("se_atten", |s| {
        s.replace(r#""type":"se_atten""#, r#""type":"se_atten_v2""#)
    })));
    assert!(m.contains("se_atten_v2"), "{m}");

    let m = unsupported(read_def(&with_script("se_e2_a", |s| {
        s.replace(r#""type":"ener""#, r#""type":"dipole""#)
    })));
    assert!(m.contains("fitting `dipole`"), "{m}");

    let m = unsupported(read_def(&with_script("se_e2_a", |s| {
        s.replace(r#""type":"standard""#, r#""type":"linear_ener""#)
    })));
    assert!(m.contains("model type `linear_ener`"), "{m}");

    let m = unsupported(read_def(&with_script("se_e2_a_tos", |s| {
        s.replace(r#""exclude_types":[]"#, r#""exclude_types":[[0,1]]"#)
    })));
    assert!(m.contains("one-side se_e2_a with exclude_types"), "{m}");

    let mut def = graph("se_e2_a");
    let n = node_mut(&mut def, "model_attr/model_type");
    if let Some(attr_value::Value::Tensor(t)) = &mut n.attr.get_mut("value").unwrap().value {
        t.string_val[0] = b"polar".to_vec();
    }
    assert!(unsupported(read_def(&def)).contains("model type `polar`"));

    let mut def = graph("se_e2_a");
    def.node.push(NodeDef {
        name: "modifier_attr/type".into(),
        op: "Placeholder".into(),
        ..Default::default()
    });
    assert!(unsupported(read_def(&def)).contains("data modifier"));
}

/// Removing any one weight or statistic, or giving it a wrong shape, is an error naming the
/// node, never a panic and never a silently incomplete tree.
#[test]
fn missing_or_misshapen_nodes_are_errors() {
    for name in [
        "se_e2_a",
        "se_e3",
        "se_atten",
        "sea_fp_ap_excl_f32",
        "atten_strip",
    ] {
        let def = graph(name);
        let used = |n: &str| {
            [
                "filter_type_",
                "layer_",
                "final_layer",
                "attention_layer_",
                "type_embed_net/",
            ]
            .iter()
            .any(|p| n.starts_with(p))
                && ["matrix", "bias", "idt", "gamma", "beta"]
                    .iter()
                    .any(|leaf| n.rsplit('/').next().unwrap().starts_with(leaf))
                || n == "descrpt_attr/t_avg"
                || n == "descrpt_attr/t_std"
        };
        let names: Vec<String> = def
            .node
            .iter()
            .filter(|n| n.op == "Const" && used(&n.name))
            .map(|n| n.name.clone())
            .collect();
        assert!(names.len() > 15, "{name}: {} weight nodes", names.len());
        for victim in &names {
            let mut d = def.clone();
            d.node.retain(|n| &n.name != victim);
            // (The type embedding's bias is there or not: its node decides.)
            assert!(
                read_def(&d).is_err() || victim == "type_embed_net/bias_1",
                "{name}: reading without `{victim}` succeeded"
            );
            // The same node with a wrong shape.
            let mut d = def.clone();
            let n = node_mut(&mut d, victim);
            if let Some(attr_value::Value::Tensor(t)) = &mut n.attr.get_mut("value").unwrap().value
            {
                if let Some(s) = &mut t.tensor_shape {
                    if let Some(dim) = s.dim.first_mut() {
                        dim.size += 1;
                    } else {
                        continue;
                    }
                }
            }
            assert!(
                read_def(&d).is_err(),
                "{name}: reading with a misshapen `{victim}` succeeded"
            );
        }
    }
}

/// A constant whose shape asks for more elements than it stores values is expanded by
/// repeating the last value, up to a limit (no terabyte allocations from a 30-byte node).
#[test]
fn huge_broadcast_constants_are_refused() {
    let mut def = graph("se_e2_a");
    let n = node_mut(&mut def, "descrpt_attr/t_avg");
    let Some(attr_value::Value::Tensor(t)) = &mut n.attr.get_mut("value").unwrap().value else {
        panic!()
    };
    t.tensor_content.clear();
    t.double_val = vec![0.5];
    t.tensor_shape.as_mut().unwrap().dim[1].size = 1 << 40;
    let e = read_def(&def).unwrap_err().to_string();
    assert!(e.contains("too large"), "{e}");
}

/// Truncated, corrupted and garbage files give errors, never panics.
#[test]
fn bad_bytes_are_errors() {
    let read = |bytes: Vec<u8>, file: &str| read_model_bytes(Format::Pb, bytes, Path::new(file));
    let pb = std::fs::read(model_pb("se_atten")).unwrap();
    let mut cuts: Vec<usize> = (0..64).collect();
    cuts.extend((64..pb.len()).step_by(1499));
    cuts.push(pb.len() - 1);
    for &cut in &cuts {
        assert!(
            read(pb[..cut].to_vec(), "x.pb").is_err(),
            "a .pb truncated to {cut} bytes was read"
        );
    }
    let txt = std::fs::read(deeppot_pbtxt()).unwrap();
    for cut in (0..txt.len()).step_by(7919).chain([txt.len() - 2]) {
        assert!(
            read(txt[..cut].to_vec(), "x.pbtxt").is_err(),
            "a .pbtxt truncated to {cut} bytes was read"
        );
    }
    // Corrupted bytes: anything may come back but a panic.
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..300 {
        let mut b = pb.clone();
        for _ in 0..1 + next() % 8 {
            let i = (next() as usize) % b.len();
            b[i] = next() as u8;
        }
        let _ = read(b, "x.pb");
        let mut t = txt.clone();
        for _ in 0..1 + next() % 8 {
            let i = (next() as usize) % t.len();
            let alphabet = b"{}:\"\\0123 \nabz_";
            t[i] = alphabet[(next() as usize) % alphabet.len()];
        }
        let _ = read(t, "x.pbtxt");
    }
    for garbage in [
        &b""[..],
        b"\x00",
        b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff",
        b"node {",
        b"node { name: \"a\" op: \"Const\" attr { key: \"value\" value { tensor { dtype: DT_DOUBLE tensor_shape { dim { size: 1000000000000 } } double_val: 1 } } } }",
        b"hello world",
        b"\x0a\x80\x80\x80\x80\x10",
    ] {
        assert!(read(garbage.to_vec(), "x.pb").is_err(), "{garbage:?}");
        assert!(read(garbage.to_vec(), "x.pbtxt").is_err(), "{garbage:?}");
    }
}

/// A graph stripped of its training script (as DeePMD-kit < 2 wrote them) gives the same
/// model: the definition inferred from the graph alone reproduces the script-driven tree.
#[test]
fn graphs_without_training_script_infer_the_same_model() {
    for name in ["se_e2_a", "se_e2_a_tos", "se_e2_r", "se_e3"] {
        let mut def = graph(name);
        let full = read_def(&def).unwrap();
        def.node.retain(|n| n.name != "train_attr/training_script");
        let inferred = read_def(&def).unwrap();
        assert_eq!(full.get("model"), inferred.get("model"), "{name}");
    }
    let mut def = graph("se_atten");
    def.node.retain(|n| n.name != "train_attr/training_script");
    assert!(unsupported(read_def(&def)).contains("se_atten graph without training script"));
}

/// `tests/fixtures/pb`: graphs written by DeePMD-kit 3.2.0's `deserialize_to_file` with raw
/// training scripts (TensorFlow constructor defaults), pruned to their constants, against
/// DeePMD-kit's TensorFlow DeepPot on the full graphs (`make_variants.py`): float32 with
/// fparam/aparam, two-side exclusions, resnet_dt and a 12 -> 24 fitting layer; `se_a` one-side
/// with aparam as mask; se_atten strip mode with a type-embedding bias, one attention layer and
/// ln_eps 1e-4; `dpa1` one-side without attention layers.
#[test]
fn variant_graphs_match_tensorflow() {
    let dir = common::local_fixtures().join("pb");
    let text = std::fs::read_to_string(dir.join("variants_ref.json")).unwrap();
    let doc = dpc_formats::json::parse(&text).unwrap();
    let models = doc.get("models").unwrap().as_dict().unwrap();
    assert_eq!(models.len(), 4);
    for (name, m) in models {
        let pot = DeepPot::load(&dir.join(format!("{name}.pb"))).unwrap();
        // float32: TensorFlow and dpc round differently (1.6e-6 eV of 9.3 eV measured).
        let (atol, rtol) = if name.ends_with("f32") {
            (1e-5, 1e-6)
        } else {
            (ATOL, RTOL)
        };
        for c in m.get("configs").unwrap().as_list().unwrap() {
            let out = pot
                .compute(&common::Config::from_value(c).frame(), true)
                .unwrap();
            let exp = Expected::from_value(c.get("expected").unwrap());
            let label = format!("{name}.pb {}", c.get("name").unwrap().as_str().unwrap());
            assert_close(&label, &out, &exp, atol, rtol);
        }
    }
}
