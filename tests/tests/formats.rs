//! The `.dp` and `.yaml` codecs against files DeePMD-kit wrote: read, compare, write, re-read.

mod common;

use dpc_formats::{read_model, write_model, Value};

/// Two trees are equal, arrays bit for bit (NaN-safe), ignoring the top-level metadata keys
/// that differ between two saves of one model (`time`, `software`, `version`).
fn assert_same_tree(a: &Value, b: &Value, path: &str) {
    match (a, b) {
        (Value::Dict(x), Value::Dict(y)) => {
            let skip = |k: &str| path.is_empty() && matches!(k, "time" | "software" | "version");
            let kx: Vec<_> = x.keys().filter(|k| !skip(k)).collect();
            let mut ky: Vec<_> = y.keys().filter(|k| !skip(k)).collect();
            let mut kx_sorted = kx.clone();
            kx_sorted.sort();
            ky.sort();
            assert_eq!(kx_sorted, ky, "keys differ at {path}");
            for k in kx {
                assert_same_tree(&x[k], &y[k], &format!("{path}/{k}"));
            }
        }
        (Value::List(x), Value::List(y)) => {
            assert_eq!(x.len(), y.len(), "list length differs at {path}");
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                assert_same_tree(p, q, &format!("{path}[{i}]"));
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            assert_eq!(x.shape, y.shape, "shape differs at {path}");
            assert_eq!(x.dtype, y.dtype, "dtype differs at {path}");
            assert!(x.bytes == y.bytes, "array bytes differ at {path}");
        }
        // A 0-d variable is a float in YAML and a 0-d dataset in HDF5.
        (Value::Array(x), Value::Float(f)) | (Value::Float(f), Value::Array(x)) if x.len() == 1 => {
            assert_eq!(
                x.get_f64(0).to_bits(),
                f.to_bits(),
                "scalar differs at {path}"
            )
        }
        (Value::Float(x), Value::Float(y)) => {
            assert_eq!(x.to_bits(), y.to_bits(), "float differs at {path}")
        }
        _ => assert_eq!(a, b, "values differ at {path}"),
    }
}

#[test]
fn dp_and_yaml_twins_hold_the_same_tree() {
    for name in common::MODELS
        .iter()
        .chain(&["dpa2", "dpa3", "se_e2_a_big"])
    {
        let dir = common::fixtures().join("models").join(name);
        let dp = read_model(&dir.join("model.dp")).unwrap();
        let yaml_path = dir.join("model.yaml");
        if yaml_path.exists() {
            let yaml = read_model(&yaml_path).unwrap();
            assert_same_tree(&dp, &yaml, "");
        }
        assert!(
            dp.get("model").and_then(|m| m.get("descriptor")).is_some(),
            "{name}"
        );
    }
}

#[test]
fn write_then_read_is_lossless_in_both_containers() {
    let dir = common::scratch("formats-roundtrip");
    for name in common::MODELS {
        let src = common::model_file(name, "model.dp");
        let tree = read_model(&src).unwrap();
        for ext in ["dp", "yaml"] {
            let out = dir.join(format!("{name}.{ext}"));
            write_model(&out, &tree).unwrap();
            let back = read_model(&out).unwrap();
            assert_same_tree(&tree, &back, "");
        }
    }
    let hlo = common::fixtures().join("models/se_e2_a_tos/model.hlo");
    let tree = read_model(&hlo).unwrap();
    let mut blobs = 0;
    tree.for_each_leaf_array(&mut |v| blobs += matches!(v, Value::Bytes(_)) as usize);
    assert_eq!(
        blobs, 4,
        "the .hlo container carries four StableHLO exports"
    );
    let out = dir.join("copy.dp");
    write_model(&out, &tree).unwrap();
    assert_same_tree(&tree, &read_model(&out).unwrap(), "");
}

#[test]
fn upstream_yaml_reads() {
    let tree = read_model(&common::fixtures().join("upstream/deeppot_sea.yaml")).unwrap();
    let davg = tree
        .get("model")
        .unwrap()
        .get("descriptor")
        .unwrap()
        .get("@variables")
        .unwrap()
        .get("davg")
        .unwrap();
    assert_eq!(davg.as_array().unwrap().shape, vec![2, 138, 4]);
}

/// `.hlo` and `.pte` files hold the same model as their `.dp` twin, bit for bit, and
/// evaluate to DeePMD-kit's reference.
#[test]
fn framework_containers_hold_the_dp_twin() {
    for name in common::MODELS {
        let dir = common::fixtures().join("models").join(name);
        let twin = read_model(&dir.join("model.dp")).unwrap();
        for ext in ["hlo", "pte"] {
            let path = dir.join(format!("model.{ext}"));
            if !path.exists() {
                continue; // se_e2_a (type_one_side false) cannot be exported by DeePMD-kit
            }
            let tree = read_model(&path).unwrap();
            assert_same_tree(
                tree.get("model").unwrap(),
                twin.get("model").unwrap(),
                "model",
            );
            let pot = dpc_runtime::DeepPot::from_tree(tree).unwrap();
            for c in common::reference(name) {
                let out = pot
                    .compute(
                        &dpc_runtime::Frame::new(&c.coord, &c.atype, c.cell.as_deref()),
                        true,
                    )
                    .unwrap();
                common::assert_close(
                    &format!("{name}.{ext} {}", c.name),
                    &out,
                    &c.expected,
                    1e-10,
                    1e-12,
                );
            }
        }
    }
}

/// The TensorFlow graphs parse (binary with prost, text with our parser) and expose their
/// constants; the text and binary forms of one graph agree.
#[test]
fn tensorflow_graphs_parse() {
    use dpc_formats::tf;
    let pbtxt = std::fs::read(common::fixtures().join("upstream/deeppot.pbtxt")).unwrap();
    let g = tf::Graph::new(tf::parse(&pbtxt, true).unwrap());
    // An old TF-trained graph: no training script, but the type map and the statistics.
    assert!(g.string("train_attr/training_script").is_none());
    assert_eq!(g.string("model_attr/tmap").as_deref(), Some("O H"));
    let avg = g.array("descrpt_attr/t_avg").unwrap().unwrap();
    assert_eq!(avg.shape.len(), 2);
    // Re-encode as binary and parse back: same graph.
    use prost::Message;
    let bin = g.def.encode_to_vec();
    assert_eq!(tf::parse(&bin, false).unwrap(), g.def);
    // DeePMD-kit cannot write a .pb of a message-passing model (DPA-2/DPA-3 have none).
    for name in common::MODELS.iter().filter(|&&n| !n.starts_with("dpa")) {
        let bytes = std::fs::read(common::model_file(name, "model.pb")).unwrap();
        let g = tf::Graph::new(tf::parse(&bytes, false).unwrap());
        assert!(g.string("train_attr/training_script").is_some(), "{name}");
        assert!(g.names().count() > 50, "{name}");
    }
    assert!(tf::parse(b"\xff\xff\xff", false).is_err());
}
