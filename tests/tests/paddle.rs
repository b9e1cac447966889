//! DeePMD-kit Paddle models (`<stem>.json` PIR program + `<stem>.pdiparams`) read into the
//! serialization tree: the tree against the `.yaml` each model was exported from, and the
//! evaluation against the `.yaml`'s and against DeePMD-kit 3.2.0's own numbers
//! (`tests/fixtures/paddle`: models.zip, reference.json, README.md).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::{assert_close, floats, Expected};
use dpc_formats::archive::Archive;
use dpc_formats::{paddle, read_model, FormatError, NdArray, Value};
use dpc_runtime::{DeepPot, Frame, Output};

const MODELS: [&str; 9] = [
    "act_linear__custom_silu_5.0",
    "v_excl_atom",
    "v_f32_fparam",
    "v_misc",
    "dpa1_concat",
    "dpa1_strip",
    "dpa1_strip_temp",
    "dpa1_noattn_f32",
    "se_atten_v2",
];

/// models.zip extracted to a scratch directory; the forward_lower program gets its own copy
/// of the `.pdiparams` (DeePMD-kit writes one identical file per program).
fn extract(tag: &str) -> PathBuf {
    let zip = std::fs::read(common::local_fixtures().join("paddle/models.zip")).unwrap();
    let mut a = Archive::open(zip).unwrap();
    let dir = common::scratch(&format!("paddle-{tag}"));
    for n in a.names().to_vec() {
        std::fs::write(dir.join(&n), a.read(&n).unwrap()).unwrap();
    }
    for stem in ["v_excl_atom", "se_atten_v2", "frozen_dpa1_strip"] {
        std::fs::copy(
            dir.join(format!("{stem}.pdiparams")),
            dir.join(format!("{stem}.forward_lower.pdiparams")),
        )
        .unwrap();
    }
    dir
}

fn arrays(v: &Value, path: &str, out: &mut BTreeMap<String, NdArray>) {
    match v {
        Value::Array(a) => {
            out.insert(path.to_string(), a.clone());
        }
        Value::Dict(d) => d
            .iter()
            .for_each(|(k, x)| arrays(x, &format!("{path}/{k}"), out)),
        Value::List(l) => l
            .iter()
            .enumerate()
            .for_each(|(i, x)| arrays(x, &format!("{path}[{i}]"), out)),
        _ => {}
    }
}

/// Every difference of two trees, dict order ignored: (path, ours, theirs).
fn diff(a: &Value, b: &Value, path: &str, out: &mut Vec<(String, String, String)>) {
    match (a, b) {
        (Value::Dict(x), Value::Dict(y)) => {
            for k in x.keys().chain(y.keys().filter(|k| !x.contains_key(*k))) {
                let p = format!("{path}/{k}");
                match (x.get(k), y.get(k)) {
                    (Some(p1), Some(p2)) => diff(p1, p2, &p, out),
                    (p1, p2) => out.push((p, format!("{p1:?}"), format!("{p2:?}"))),
                }
            }
        }
        (Value::List(x), Value::List(y)) if x.len() == y.len() => {
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                diff(p, q, &format!("{path}[{i}]"), out);
            }
        }
        (Value::Array(x), Value::Array(y)) if x != y => {
            out.push((path.to_string(), "array".into(), "another array".into()));
        }
        _ if a != b => out.push((path.to_string(), format!("{a:?}"), format!("{b:?}"))),
        _ => {}
    }
}

fn keys(v: &Value) -> Vec<&str> {
    v.as_dict().unwrap().keys().map(String::as_str).collect()
}

const LAYER_KEYS: [&str; 9] = [
    "@class",
    "@version",
    "bias",
    "use_timestep",
    "activation_function",
    "resnet",
    "precision",
    "trainable",
    "@variables",
];

const EMBEDDING_NET_KEYS: [&str; 9] = [
    "@class",
    "@version",
    "in_dim",
    "neuron",
    "activation_function",
    "resnet_dt",
    "bias",
    "precision",
    "layers",
];

const COLLECTION_KEYS: [&str; 6] = [
    "@class",
    "@version",
    "ndim",
    "ntypes",
    "network_type",
    "networks",
];

fn first<'a>(v: &'a Value, k: &str) -> &'a Value {
    &v.get(k).unwrap().as_list().unwrap()[0]
}

/// The key order of DeePMD-kit 3.2.0's Paddle backend `serialize()` (deepmd/pd), printed from
/// `BaseModel.deserialize(tree).serialize()` there.
fn assert_paddle_key_order(model: &Value) {
    let desc = model.get("descriptor").unwrap();
    let fit = model.get("fitting").unwrap();
    let fit_net = first(fit.get("nets").unwrap(), "networks");
    let cases: [(&Value, &[&str]); 7] = [
        (
            model,
            &[
                "type_map",
                "atom_exclude_types",
                "pair_exclude_types",
                "rcond",
                "preset_out_bias",
                "@variables",
                "@class",
                "@version",
                "type",
                "descriptor",
                "fitting",
            ],
        ),
        (desc.get("embeddings").unwrap(), &COLLECTION_KEYS),
        (
            first(desc.get("embeddings").unwrap(), "networks"),
            &EMBEDDING_NET_KEYS,
        ),
        (
            first(first(desc.get("embeddings").unwrap(), "networks"), "layers"),
            &LAYER_KEYS,
        ),
        (
            fit,
            &[
                "@class",
                "@version",
                "var_name",
                "ntypes",
                "dim_descrpt",
                "neuron",
                "resnet_dt",
                "numb_fparam",
                "numb_aparam",
                "dim_case_embd",
                "default_fparam",
                "activation_function",
                "precision",
                "mixed_types",
                "nets",
                "rcond",
                "exclude_types",
                "@variables",
                "type_map",
                "tot_ener_zero",
                "trainable",
                "layer_name",
                "use_aparam_as_mask",
                "spin",
                "type",
                "dim_out",
                "atom_ener",
            ],
        ),
        (
            fit_net,
            &[
                "@class",
                "@version",
                "in_dim",
                "out_dim",
                "neuron",
                "activation_function",
                "resnet_dt",
                "precision",
                "bias_out",
                "layers",
            ],
        ),
        (
            fit.get("@variables").unwrap(),
            &[
                "bias_atom_e",
                "case_embd",
                "fparam_avg",
                "fparam_inv_std",
                "aparam_avg",
                "aparam_inv_std",
            ],
        ),
    ];
    for (v, want) in cases {
        assert_eq!(keys(v), want);
    }
    assert_eq!(keys(fit.get("nets").unwrap()), COLLECTION_KEYS);
    assert_eq!(
        keys(desc.get("env_mat").unwrap()),
        ["rcut", "rcut_smth", "protection", "use_exp_switch"]
    );
    match desc.get("type").unwrap().as_str().unwrap() {
        "se_e2_a" => assert_eq!(
            keys(desc),
            [
                "@class",
                "type",
                "@version",
                "rcut",
                "rcut_smth",
                "sel",
                "neuron",
                "axis_neuron",
                "resnet_dt",
                "set_davg_zero",
                "activation_function",
                "precision",
                "embeddings",
                "env_mat",
                "exclude_types",
                "env_protection",
                "@variables",
                "type_map",
                "trainable",
                "type_one_side",
                "spin",
            ]
        ),
        t @ ("dpa1" | "se_atten_v2") => assert_se_atten_key_order(desc, t == "se_atten_v2"),
        t => panic!("descriptor {t}"),
    }
}

fn assert_se_atten_key_order(desc: &Value, v2: bool) {
    let strip = desc.get("embeddings_strip").is_some();
    let mut want = vec![
        "@class",
        "type",
        "@version",
        "rcut",
        "rcut_smth",
        "sel",
        "ntypes",
        "neuron",
        "axis_neuron",
        "tebd_dim",
        "tebd_input_mode",
        "set_davg_zero",
        "attn",
        "attn_layer",
        "attn_dotr",
        "attn_mask",
        "activation_function",
        "resnet_dt",
        "scaling_factor",
        "normalize",
        "temperature",
        "trainable_ln",
        "ln_eps",
        "smooth_type_embedding",
        "type_one_side",
        "concat_output_tebd",
        "use_econf_tebd",
        "use_tebd_bias",
        "type_map",
        "precision",
        "embeddings",
        "embeddings_strip",
        "attention_layers",
        "env_mat",
        "type_embedding",
        "exclude_types",
        "env_protection",
        "@variables",
        "trainable",
        "spin",
    ];
    // se_atten_v2 has no tebd_input_mode / smooth_type_embedding (always strip, smooth) and
    // its embeddings_strip follows embeddings; DPA-1 appends embeddings_strip in strip mode.
    want.retain(|&k| k != "embeddings_strip");
    if v2 {
        want.retain(|&k| k != "tebd_input_mode" && k != "smooth_type_embedding");
        let at = want.iter().position(|&k| k == "embeddings").unwrap() + 1;
        want.insert(at, "embeddings_strip");
    } else if strip {
        want.push("embeddings_strip");
    }
    assert_eq!(keys(desc), want);
    if strip {
        let c = desc.get("embeddings_strip").unwrap();
        assert_eq!(keys(c), COLLECTION_KEYS);
        assert_eq!(keys(first(c, "networks")), EMBEDDING_NET_KEYS);
        assert_eq!(keys(first(first(c, "networks"), "layers")), LAYER_KEYS);
    }
    let tebd = desc.get("type_embedding").unwrap();
    assert_eq!(
        keys(tebd),
        [
            "@class",
            "@version",
            "ntypes",
            "neuron",
            "resnet_dt",
            "precision",
            "activation_function",
            "trainable",
            "padding",
            "use_econf_tebd",
            "use_tebd_bias",
            "type_map",
            "embedding",
        ]
    );
    assert_eq!(keys(tebd.get("embedding").unwrap()), EMBEDDING_NET_KEYS);
    let attn = desc.get("attention_layers").unwrap();
    assert_eq!(
        keys(attn),
        [
            "@class",
            "@version",
            "layer_num",
            "nnei",
            "embed_dim",
            "hidden_dim",
            "dotr",
            "do_mask",
            "scaling_factor",
            "normalize",
            "temperature",
            "trainable_ln",
            "ln_eps",
            "precision",
            "attention_layers",
        ]
    );
    for layer in attn.get("attention_layers").unwrap().as_list().unwrap() {
        assert_eq!(
            keys(layer),
            [
                "nnei",
                "embed_dim",
                "hidden_dim",
                "dotr",
                "do_mask",
                "scaling_factor",
                "normalize",
                "temperature",
                "trainable_ln",
                "ln_eps",
                "precision",
                "attention_layer",
                "attn_layer_norm",
            ]
        );
        let gated = layer.get("attention_layer").unwrap();
        assert_eq!(
            keys(gated),
            [
                "nnei",
                "embed_dim",
                "hidden_dim",
                "num_heads",
                "dotr",
                "do_mask",
                "scaling_factor",
                "normalize",
                "temperature",
                "bias",
                "smooth",
                "precision",
                "in_proj",
                "out_proj",
            ]
        );
        assert_eq!(keys(gated.get("in_proj").unwrap()), LAYER_KEYS);
        assert_eq!(
            keys(layer.get("attn_layer_norm").unwrap()),
            [
                "@class",
                "@version",
                "eps",
                "trainable",
                "precision",
                "@variables"
            ]
        );
    }
}

/// What the Paddle files cannot hold (docs/formats.md): `trainable` (exported as true) and
/// the spelling of equivalent activations. Everything else must be equal.
fn unrecoverable(model: &str) -> Vec<(String, &'static str, &'static str)> {
    let mut out = Vec::new();
    match model {
        "v_f32_fparam" => {
            out.push((
                "/model/descriptor/trainable".into(),
                "Bool(true)",
                "Bool(false)",
            ));
            for n in 0..2 {
                for l in 0..3 {
                    out.push((
                        format!("/model/descriptor/embeddings/networks[{n}]/layers[{l}]/trainable"),
                        "Bool(true)",
                        "Bool(false)",
                    ));
                }
            }
        }
        "act_linear__custom_silu_5.0" => {
            let (ours, theirs) = ("Str(\"silut:5.0\")", "Str(\"custom_silu:5.0\")");
            out.push(("/model/fitting/activation_function".into(), ours, theirs));
            for n in 0..2 {
                let net = format!("/model/fitting/nets/networks[{n}]");
                out.push((format!("{net}/activation_function"), ours, theirs));
                for l in 0..2 {
                    out.push((
                        format!("{net}/layers[{l}]/activation_function"),
                        ours,
                        theirs,
                    ));
                }
            }
        }
        // Without attention layers their width has no effect and is not in the program.
        "dpa1_noattn_f32" => {
            for path in ["attn", "attention_layers/hidden_dim"] {
                out.push((format!("/model/descriptor/{path}"), "Int(128)", "Int(6)"));
            }
        }
        _ => {}
    }
    out
}

#[test]
fn trees_equal_their_source_yaml() {
    let dir = extract("tree");
    for name in MODELS {
        let ours =
            read_model(&dir.join(format!("{name}.json"))).unwrap_or_else(|e| panic!("{name}: {e}"));
        let src = read_model(&dir.join(format!("{name}.yaml"))).unwrap();
        assert_eq!(
            keys(&ours),
            ["backend", "model", "model_def_script", "@variables"]
        );
        assert_eq!(ours.get("backend"), Some(&Value::Str("Paddle".into())));
        // min_nbor_dist (v_misc) comes back from its float32 copy.
        assert_eq!(ours.get("@variables"), src.get("@variables"), "{name}");
        let (mut a, mut b) = (BTreeMap::new(), BTreeMap::new());
        arrays(ours.get("model").unwrap(), "", &mut a);
        arrays(src.get("model").unwrap(), "", &mut b);
        assert!(
            a.len() > 15 && a == b,
            "{name}: arrays differ from the source"
        );
        let mut d = Vec::new();
        diff(
            ours.get("model").unwrap(),
            src.get("model").unwrap(),
            "/model",
            &mut d,
        );
        let mut got: Vec<(String, &str, &str)> = d
            .iter()
            .map(|(p, x, y)| (p.clone(), x.as_str(), y.as_str()))
            .collect();
        let mut want = unrecoverable(name);
        got.sort();
        want.sort();
        assert_eq!(got, want, "{name}: unexpected differences");
        assert_paddle_key_order(ours.get("model").unwrap());
        // The synthesized model_def_script names the same model.
        let script = ours.get("model_def_script").unwrap();
        let src_script = src.get("model_def_script").unwrap();
        assert_eq!(script.get("type_map"), src_script.get("type_map"));
        let (sd, td) = (
            script.get("descriptor").unwrap(),
            src_script.get("descriptor").unwrap(),
        );
        for k in ["type", "sel", "rcut", "rcut_smth", "neuron", "axis_neuron"] {
            assert_eq!(
                sd.get(k),
                td.get(k),
                "{name}: model_def_script descriptor {k}"
            );
        }
        let (sf, tf) = (
            script.get("fitting_net").unwrap(),
            src_script.get("fitting_net").unwrap(),
        );
        for k in ["type", "neuron", "resnet_dt", "precision"] {
            assert_eq!(
                sf.get(k),
                tf.get(k),
                "{name}: model_def_script fitting_net {k}"
            );
        }
    }
}

#[test]
fn forward_lower_program_gives_the_same_tree() {
    let dir = extract("lower");
    for (stem, excluded) in [("v_excl_atom", 1), ("se_atten_v2", 2)] {
        let full = read_model(&dir.join(format!("{stem}.json"))).unwrap();
        let lower = read_model(&dir.join(format!("{stem}.forward_lower.json"))).unwrap();
        assert_eq!(full, lower, "{stem}");
        // The model-level atom exclusion is found under its second-trace scope name too.
        let excl = lower
            .get("model")
            .unwrap()
            .get("atom_exclude_types")
            .unwrap();
        assert_eq!(excl, &Value::List(vec![Value::Int(excluded)]), "{stem}");
    }
}

/// `dp --pd freeze` of a training checkpoint holding dpa1_strip's model (make_checkpoint.py):
/// its programs differ from `dp convert-backend`'s (the model is rebuilt from its
/// `model_def_script`, tensors get other names, `forward_lower` takes the unread `comm_dict`
/// inputs), the tree is the same.
#[test]
fn frozen_programs_give_the_same_tree() {
    let dir = extract("frozen");
    let converted = read_model(&dir.join("dpa1_strip.json")).unwrap();
    for stem in ["frozen_dpa1_strip", "frozen_dpa1_strip.forward_lower"] {
        let frozen = read_model(&dir.join(format!("{stem}.json"))).unwrap();
        assert_eq!(frozen, converted, "{stem}");
    }
    // Only those communication inputs are let through (and only while unread).
    let json = std::fs::read(dir.join("frozen_dpa1_strip.forward_lower.json")).unwrap();
    let params = std::fs::read(dir.join("frozen_dpa1_strip.pdiparams")).unwrap();
    assert!(paddle::read(&json, &params).is_ok());
    let text = std::str::from_utf8(&json).unwrap();
    assert!(text.contains("\"D\":\"send_list\""));
    let e = err(
        &edit(&json, "\"D\":\"send_list\"", "\"D\":\"sendlist\""),
        &params,
    );
    assert!(e.to_string().contains("sendlist"), "{e}");
}

struct Config {
    name: String,
    coord: Vec<f64>,
    atype: Vec<i32>,
    cell: Option<Vec<f64>>,
    fparam: Option<Vec<f64>>,
    aparam: Option<Vec<f64>>,
    expected: Expected,
    /// Paddle's inference predictor on the `.json` itself (periodic configurations).
    paddle: Option<Expected>,
}

fn configs(model: &str) -> Vec<Config> {
    let text =
        std::fs::read_to_string(common::local_fixtures().join("paddle/reference.json")).unwrap();
    let doc = dpc_formats::json::parse(&text).unwrap();
    let m = doc.get("models").unwrap().get(model).unwrap();
    let opt = |c: &Value, k: &str| c.get(k).filter(|v| !v.is_null()).map(floats);
    m.get("configs")
        .unwrap()
        .as_list()
        .unwrap()
        .iter()
        .map(|c| Config {
            name: c.get("name").unwrap().as_str().unwrap().to_string(),
            coord: floats(c.get("coord").unwrap()),
            atype: floats(c.get("atom_types").unwrap())
                .iter()
                .map(|&t| t as i32)
                .collect(),
            cell: opt(c, "box"),
            fparam: opt(c, "fparam"),
            aparam: opt(c, "aparam"),
            expected: Expected::from_value(c.get("expected").unwrap()),
            paddle: c.get("paddle").map(Expected::from_value),
        })
        .collect()
}

fn eval(pot: &DeepPot, c: &Config) -> Output {
    let frame = Frame {
        coord: &c.coord,
        atype: &c.atype,
        cell: c.cell.as_deref(),
        fparam: c.fparam.as_deref(),
        aparam: c.aparam.as_deref(),
    };
    pot.compute(&frame, true).unwrap()
}

fn as_expected(o: &Output) -> Expected {
    Expected {
        energy: o.energy,
        force: o.force.clone(),
        virial: o.virial.to_vec(),
        atom_energy: o.atom_energy.clone(),
        atom_virial: o.atom_virial.clone().unwrap(),
    }
}

#[test]
fn evaluation_matches_the_source_yaml_and_deepmd_kit() {
    let dir = extract("eval");
    for name in MODELS {
        let paddle = DeepPot::load(&dir.join(format!("{name}.json"))).unwrap();
        let yaml = DeepPot::load(&dir.join(format!("{name}.yaml"))).unwrap();
        // A float32 model agrees with PyTorch's float32 evaluation to float32 rounding.
        let f32 = name.contains("f32");
        let (atol, rtol) = if f32 { (1e-5, 1e-6) } else { (1e-10, 1e-12) };
        let mut npaddle = 0;
        for c in configs(name) {
            let out = eval(&paddle, &c);
            let label = format!("{name} {}", c.name);
            assert_close(
                &format!("{label} vs .yaml"),
                &out,
                &as_expected(&eval(&yaml, &c)),
                1e-12,
                0.0,
            );
            assert_close(
                &format!("{label} vs DeePMD-kit"),
                &out,
                &c.expected,
                atol,
                rtol,
            );
            // Paddle's own run of the program rounds some of its constants to float32
            // (switch, 1/sel, attention scale): agreement to that rounding.
            if let Some(p) = &c.paddle {
                let (atol, rtol) = if f32 { (1e-4, 1e-5) } else { (2e-6, 1e-7) };
                assert_close(&format!("{label} vs Paddle"), &out, p, atol, rtol);
                npaddle += 1;
            }
        }
        assert_eq!(
            npaddle, 2,
            "{name}: Paddle's numbers for the periodic configurations"
        );
    }
}

fn err(json: &[u8], params: &[u8]) -> FormatError {
    match paddle::read(json, params) {
        Ok(_) => panic!("read a damaged model"),
        Err(e) => e,
    }
}

/// Replace the first occurrence of `from` (which must exist) in the program text.
fn edit(json: &[u8], from: &str, to: &str) -> Vec<u8> {
    let text = std::str::from_utf8(json).unwrap();
    assert!(text.contains(from), "{from}");
    text.replacen(from, to, 1).into_bytes()
}

/// Truncated, garbage, mismatched and bit-flipped copies of model `stem` (whose davg shape
/// is `stats_shape` in the program text): clean errors, never panics.
fn damage(dir: &Path, stem: &str, stats_shape: &str) {
    let json = std::fs::read(dir.join(format!("{stem}.json"))).unwrap();
    let params = std::fs::read(dir.join(format!("{stem}.pdiparams"))).unwrap();
    assert!(paddle::read(&json, &params).is_ok(), "{stem}");
    // Truncated or garbage program text.
    for cut in [0, 1, 100, json.len() / 2, json.len() - 1] {
        assert!(matches!(
            err(&json[..cut], &params),
            FormatError::Invalid(_)
        ));
    }
    for junk in [
        &b"\xff\xfe"[..],
        b"[]",
        b"{}",
        b"null",
        br#"{"base_code": {"magic": "pir", "version": 4}}"#,
    ] {
        assert!(matches!(err(junk, &params), FormatError::Invalid(_)));
    }
    // Truncated, extended or mismatched .pdiparams.
    for cut in (1..params.len()).step_by(params.len() / 40) {
        assert!(
            matches!(err(&json, &params[..cut]), FormatError::Invalid(_)),
            "cut {cut}"
        );
    }
    assert!(err(&json, &[]).to_string().contains("0 tensors"));
    let mut longer = params.clone();
    longer.extend_from_slice(&params[..64]);
    assert!(matches!(err(&json, &longer), FormatError::Invalid(_)));
    let other = std::fs::read(dir.join("v_misc.pdiparams")).unwrap();
    assert!(matches!(err(&json, &other), FormatError::Invalid(_)));
    // Wrong shapes, huge dims, renamed buffers.
    let e = err(
        &edit(
            &json,
            stats_shape,
            &stats_shape.replace(",4]", ",40000000000000]"),
        ),
        &params,
    );
    assert!(e.to_string().contains("40000000000000"), "{e}");
    let e = err(
        &edit(&json, stats_shape, &stats_shape.replace(",4]", ",-1]")),
        &params,
    );
    assert!(e.to_string().contains("dynamic"), "{e}");
    assert!(
        err(&edit(&json, "\"buffer_rcut\"", "\"buffer_rcux\""), &params)
            .to_string()
            .contains("buffer_rcut")
    );
    // Bit flips anywhere in the tensors: errors or trees, never a panic.
    let mut x = 0x9E3779B97F4A7C15u64;
    for _ in 0..40 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let mut p = params.clone();
        let i = (x % p.len() as u64) as usize;
        p[i] ^= 1 << (x >> 59);
        let _ = paddle::read(&json, &p);
    }
}

#[test]
fn damaged_and_unsupported_files_are_clean_errors() {
    let dir = extract("bad");
    let json = std::fs::read(dir.join("v_f32_fparam.json")).unwrap();
    let params = std::fs::read(dir.join("v_f32_fparam.pdiparams")).unwrap();
    assert!(paddle::read(&json, &params).is_ok());

    // A program without its .pdiparams, and the old .pdmodel format.
    let alone = common::scratch("paddle-alone");
    std::fs::write(alone.join("m.json"), &json).unwrap();
    let e = read_model(&alone.join("m.json")).unwrap_err();
    assert!(
        matches!(e, FormatError::Io(_)) && e.to_string().contains("m.pdiparams"),
        "{e}"
    );
    std::fs::write(alone.join("m.pdmodel"), b"\x0a\x00").unwrap();
    let e = read_model(&alone.join("m.pdmodel"))
        .unwrap_err()
        .to_string();
    assert!(e.contains(".pdmodel") && e.contains("not supported"), "{e}");

    damage(&dir, "v_f32_fparam", "[2,16,4]");
    damage(&dir, "dpa1_strip", "[2,16,4]");

    // Refused, by name: other descriptors and fittings, spin, unknown ops and activations,
    // decomposed activations, unknown program versions.
    let cases = [
        ("\"/DescrptSeA/\"", "\"/DescrptDPA2/\"", "dpa2"),
        (
            "\"/EnergyFittingNet/\"",
            "\"/DipoleFittingNet/\"",
            "DipoleFittingNet",
        ),
        ("\"D\":\"aparam\"", "\"D\":\"spin\"", "spin"),
        ("\"#\":\"1.clip\"", "\"#\":\"1.hardtanh\"", "1.hardtanh"),
        ("\"#\":\"1.tanh\"", "\"#\":\"1.elu\"", "1.elu"),
        ("\"version\":4", "\"version\":7", "version 7"),
        (
            "\"/EnergyFittingNet/FN/MLPLayer/\"",
            "\"/EnergyFittingNet/FN/LayerNorm/\"",
            "LayerNorm",
        ),
    ];
    for (from, to, word) in cases {
        let Err(e) = paddle::read(&edit(&json, from, to), &params) else {
            panic!("{to}: read");
        };
        assert!(
            matches!(e, FormatError::Unsupported(_)) && e.to_string().contains(word),
            "{e}"
        );
    }

    // The se_atten family: other tebd descriptors, unknown layers and ops, parts missing.
    let json = std::fs::read(dir.join("dpa1_strip.json")).unwrap();
    let params = std::fs::read(dir.join("dpa1_strip.pdiparams")).unwrap();
    let gal =
        "/DescrptDPA1/DescrptBlockSeAtten/NeighborGatedAttention/NeighborGatedAttentionLayer/";
    let cases = [
        ("\"/DescrptDPA1/\"", "\"/DescrptSeTTebd/\"", "se_e3_tebd"),
        ("\"/DescrptDPA1/\"", "\"/DescrptDPA3/\"", "dpa3"),
        (
            "\"#\":\"1.softmax\"",
            "\"#\":\"1.sparsemax\"",
            "1.sparsemax",
        ),
        (
            &format!("\"{gal}LayerNorm/\""),
            &format!("\"{gal}RMSNorm/\""),
            "RMSNorm",
        ),
    ];
    for (from, to, word) in cases {
        let Err(e) = paddle::read(&edit(&json, from, to), &params) else {
            panic!("{to}: read");
        };
        assert!(
            matches!(e, FormatError::Unsupported(_)) && e.to_string().contains(word),
            "{e}"
        );
    }
    // A type embedding not made from eye(ntypes) (the 4th `eye`: the first three build the
    // model's cell and neighbour list), an attention without its softmax.
    let text = std::str::from_utf8(&json).unwrap();
    let (at, _) = text.match_indices("\"#\":\"1.eye\"").nth(3).unwrap();
    let no_eye = format!("{}\"#\":\"1.sum\"{}", &text[..at], &text[at + 11..]);
    let no_eye = no_eye.into_bytes();
    let e = err(&no_eye, &params).to_string();
    assert!(e.contains("eye(ntypes)"), "{e}");
    let e = err(
        &edit(&json, "\"#\":\"1.softmax\"", "\"#\":\"1.sigmoid\""),
        &params,
    );
    assert!(e.to_string().contains("softmax"), "{e}");
}

// ---- DeePMD-kit's own Paddle test model (not in the repository) -----------------------

/// `deeppot_sea.json`/`.pdiparams` from DeePMD-kit's `source/tests/infer/`, looked for in
/// `$DPC_PADDLE_DIR`, else beside the shared fixtures' `upstream/`.
fn upstream_dir() -> PathBuf {
    std::env::var("DPC_PADDLE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| common::fixtures().join("upstream"))
}

fn testcase_expected(block: &Value) -> Expected {
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

fn check_upstream(program: &Path) {
    let tree = read_model(program).unwrap();
    let yaml = read_model(&common::fixtures().join("upstream/deeppot_sea.yaml")).unwrap();
    let (mut a, mut b) = (BTreeMap::new(), BTreeMap::new());
    arrays(tree.get("model").unwrap(), "", &mut a);
    arrays(yaml.get("model").unwrap(), "", &mut b);
    assert!(
        !a.is_empty() && a == b,
        "arrays differ from upstream/deeppot_sea.yaml"
    );
    let pot = DeepPot::from_tree(tree).unwrap();
    let text =
        std::fs::read_to_string(common::fixtures().join("upstream/deeppot-testcase.yaml")).unwrap();
    let doc = dpc_formats::yaml::read(&text).unwrap();
    for (i, block) in doc
        .get("results")
        .unwrap()
        .as_list()
        .unwrap()
        .iter()
        .enumerate()
    {
        let c = Config {
            name: format!("block {i}"),
            coord: floats(block.get("coord").unwrap()),
            atype: floats(block.get("atype").unwrap())
                .iter()
                .map(|&t| t as i32)
                .collect(),
            cell: block.get("box").filter(|v| !v.is_null()).map(floats),
            fparam: None,
            aparam: None,
            expected: testcase_expected(block),
            paddle: None,
        };
        let label = format!("{} {}", program.display(), c.name);
        assert_close(&label, &eval(&pot, &c), &c.expected, 1e-10, 1e-12);
    }
}

#[test]
#[ignore = "needs DeePMD-kit's deeppot_sea.json/.pdiparams (set DPC_PADDLE_DIR)"]
fn deepmd_kit_deeppot_sea_paddle_model() {
    let dir = upstream_dir();
    for stem in ["deeppot_sea", "deeppot_sea.forward_lower"] {
        let program = dir.join(format!("{stem}.json"));
        if !program.exists() || !dir.join(format!("{stem}.pdiparams")).exists() {
            eprintln!("skipped: {} is absent", program.display());
            return;
        }
        check_upstream(&program);
    }
}
