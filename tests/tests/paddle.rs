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

const MODELS: [&str; 4] = [
    "act_linear__custom_silu_5.0",
    "v_excl_atom",
    "v_f32_fparam",
    "v_misc",
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
    std::fs::copy(
        dir.join("v_excl_atom.pdiparams"),
        dir.join("v_excl_atom.forward_lower.pdiparams"),
    )
    .unwrap();
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

/// The key order of DeePMD-kit 3.2.0's Paddle backend `serialize()` (deepmd/pd), printed from
/// `BaseModel.deserialize(tree).serialize()` there.
fn assert_paddle_key_order(model: &Value) {
    let desc = model.get("descriptor").unwrap();
    let fit = model.get("fitting").unwrap();
    let first = |v: &Value, k: &str| v.get(k).unwrap().as_list().unwrap()[0].clone();
    let emb_net = first(desc.get("embeddings").unwrap(), "networks");
    let fit_net = first(fit.get("nets").unwrap(), "networks");
    let layer = first(&emb_net, "layers");
    let cases: [(&Value, &[&str]); 9] = [
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
        (
            desc,
            &[
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
            ],
        ),
        (
            desc.get("embeddings").unwrap(),
            &[
                "@class",
                "@version",
                "ndim",
                "ntypes",
                "network_type",
                "networks",
            ],
        ),
        (
            &emb_net,
            &[
                "@class",
                "@version",
                "in_dim",
                "neuron",
                "activation_function",
                "resnet_dt",
                "bias",
                "precision",
                "layers",
            ],
        ),
        (
            &layer,
            &[
                "@class",
                "@version",
                "bias",
                "use_timestep",
                "activation_function",
                "resnet",
                "precision",
                "trainable",
                "@variables",
            ],
        ),
        (
            desc.get("env_mat").unwrap(),
            &["rcut", "rcut_smth", "protection", "use_exp_switch"],
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
            &fit_net,
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
            a.len() > 20 && a == b,
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
    let full = read_model(&dir.join("v_excl_atom.json")).unwrap();
    let lower = read_model(&dir.join("v_excl_atom.forward_lower.json")).unwrap();
    assert_eq!(full, lower);
    // The model-level atom exclusion is found under its second-trace scope name too.
    let excl = lower
        .get("model")
        .unwrap()
        .get("atom_exclude_types")
        .unwrap();
    assert_eq!(excl, &Value::List(vec![Value::Int(1)]));
}

struct Config {
    name: String,
    coord: Vec<f64>,
    atype: Vec<i32>,
    cell: Option<Vec<f64>>,
    fparam: Option<Vec<f64>>,
    aparam: Option<Vec<f64>>,
    expected: Expected,
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
        let (atol, rtol) = if name.contains("f32") {
            (1e-5, 1e-6)
        } else {
            (1e-10, 1e-12)
        };
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
        }
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
    let e = err(&edit(&json, "[2,16,4]", "[2,16,40000000000000]"), &params);
    assert!(e.to_string().contains("40000000000000"), "{e}");
    let e = err(&edit(&json, "[2,16,4]", "[2,16,-1]"), &params);
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

    // Refused, by name: other descriptors and fittings, spin, unknown ops and activations,
    // decomposed activations, unknown program versions.
    let cases = [
        ("\"/DescrptSeA/\"", "\"/DescrptDPA1/\"", "dpa1"),
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
