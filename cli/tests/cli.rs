//! The `dpc` binary end to end, as a user runs it.

use std::path::PathBuf;
use std::process::Command;

fn dpc(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_dpc"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures")
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("dpc-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn numbers(v: &dpc_formats::Value, key: &str) -> Vec<f64> {
    v.get(key)
        .unwrap()
        .as_list()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

#[test]
fn eval_builtin_water_matches_deepmd_kit() {
    let (ok, out, err) = dpc(&["eval", "builtin:water"]);
    assert!(ok, "{err}");
    let v = dpc_formats::json::parse(&out).unwrap();
    // deeppot-testcase.yaml block 1: sum of atomic energies.
    let e = v.get("energy").unwrap().as_f64().unwrap();
    assert!((e - -929.7371700503966).abs() < 1e-10, "{e}");
    let f = numbers(&v, "force");
    assert!((f[0] - 6.277_522_211_496_972_5e-3).abs() < 1e-10);
    assert_eq!(numbers(&v, "atom_virial").len(), 54);
}

#[test]
fn eval_reads_a_list_of_frames_and_writes_a_file() {
    let dir = scratch("eval");
    let conf = dir.join("conf.json");
    std::fs::write(
        &conf,
        r#"[{"coord": [[0,0,0],[0.96,0,0],[-0.24,0.93,0]], "atype": [0,1,1], "box": null},
            {"coord": [0,0,0, 0.96,0,0, -0.24,0.93,0], "atom_types": [0,1,1],
             "cell": [[5,0,0],[0,5,0],[0,0,5]]}]"#,
    )
    .unwrap();
    let out = dir.join("out.json");
    let model = fixtures().join("upstream/deeppot_sea.yaml");
    let (ok, _, err) = dpc(&[
        "eval",
        model.to_str().unwrap(),
        "--input",
        conf.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let v = dpc_formats::json::parse(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let frames = v.as_list().unwrap();
    assert_eq!(frames.len(), 2);
    // In a 5 Å box (rcut 6) the molecule sees its periodic images: energies differ.
    let e0 = frames[0].get("energy").unwrap().as_f64().unwrap();
    let e1 = frames[1].get("energy").unwrap().as_f64().unwrap();
    assert!(e0.is_finite() && e1.is_finite() && e0 != e1);
}

#[test]
fn bad_inputs_exit_nonzero_with_a_message() {
    let dir = scratch("bad");
    let model = fixtures().join("models/se_e2_a/model.dp");
    let m = model.to_str().unwrap();
    let cases: [(&str, &str); 6] = [
        (
            r#"{"coord": [0,0,0, NaN,0,0], "atype": [0,0], "box": null}"#,
            "NaN",
        ),
        (
            r#"{"coord": [0,0,0, 2,0,0], "atype": [0,7], "box": null}"#,
            "type 7",
        ),
        (r#"{"coord": [], "atype": [], "box": null}"#, "empty"),
        (
            r#"{"coord": [0,0,0, 2,0,0], "atype": [0,1], "box": [1,0,0, 1,0,0, 0,0,1]}"#,
            "singular",
        ),
        (r#"{"coord": [0,0,0, 2,0], "atype": [0,1]}"#, "coordinates"),
        (r#"{"coord": [0,0,0"#, "JSON"),
    ];
    for (i, (json, word)) in cases.iter().enumerate() {
        let conf = dir.join(format!("c{i}.json"));
        std::fs::write(&conf, json).unwrap();
        let (ok, _, err) = dpc(&["eval", m, "--input", conf.to_str().unwrap()]);
        assert!(!ok, "case {i} succeeded");
        assert!(err.contains(word), "case {i}: {err}");
        assert!(!err.contains("panicked"), "case {i}: {err}");
    }
    // Broken model files.
    let truncated = dir.join("cut.dp");
    let bytes = std::fs::read(&model).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let not_hdf5 = dir.join("text.dp");
    std::fs::write(&not_hdf5, "hello").unwrap();
    let unknown = dir.join("model.onnx");
    std::fs::write(&unknown, "x").unwrap();
    for (p, word) in [
        (&truncated, "HDF5"),
        (&not_hdf5, "not an HDF5 file"),
        (&unknown, "unknown model extension"),
    ] {
        let (ok, _, err) = dpc(&["info", p.to_str().unwrap()]);
        assert!(!ok);
        assert!(err.contains(word), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    let (ok, _, err) = dpc(&["info", "/nonexistent/model.dp"]);
    assert!(!ok && err.contains("cannot read"), "{err}");
}

#[test]
fn info_and_emit_ir() {
    let (ok, out, err) = dpc(&[
        "info",
        fixtures()
            .join("models/se_atten/model.yaml")
            .to_str()
            .unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(
        out.contains("se_atten") && out.contains("Cu Au") && out.contains("sel          72"),
        "{out}"
    );
    let (ok, out, err) = dpc(&[
        "info",
        fixtures()
            .join("models/se_e2_a_tos/model.hlo")
            .to_str()
            .unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(
        out.contains(
            "export       stablehlo_atomic_virial: call_lower_with_fixed_do_atomic_virial"
        ),
        "{out}"
    );
    assert!(
        out.contains("platforms cpu")
            && out.contains("in  (f64[nf,nloc + nghost,3], i32[nf,nloc + nghost], i64[nf,nloc,80]"),
        "{out}"
    );
    let (ok, out, err) = dpc(&["compile", "builtin:water", "--emit-ir"]);
    assert!(ok, "{err}");
    assert!(
        out.starts_with("graph(coord: f64[nall,3], atype: i32[nall], nlist: i32[nloc,138])"),
        "{}",
        &out[..200]
    );
    assert!(out.contains("return atom_energy = %"));
    assert!(
        out.contains("= env_mat ") && out.contains("= env_mat_vjp "),
        "forces come from the VJP of the fused environment matrix"
    );
    let (ok, _, err) = dpc(&["compile", "builtin:water"]);
    assert!(!ok && err.contains("--emit-ir"), "{err}");
}

#[test]
fn test_command_reports_like_dp_test() {
    let model = fixtures().join("models/se_e2_a/model.dp");
    let sys = fixtures().join("data/valid");
    let (ok, out, err) = dpc(&[
        "test",
        "-m",
        model.to_str().unwrap(),
        "-s",
        sys.to_str().unwrap(),
        "-n",
        "4",
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("# number of test data : 4"), "{out}");
    // `dp --pt test` on model.pth and all 16 frames prints Energy MAE 2.195852e+00 eV.
    let (ok, out, _) = dpc(&[
        "test",
        "-m",
        model.to_str().unwrap(),
        "-s",
        sys.to_str().unwrap(),
    ]);
    assert!(ok);
    assert!(
        out.contains("Energy MAE         : 2.195852e+00 eV"),
        "{out}"
    );
    assert!(
        out.contains("Force  RMSE        : 5.704154e-01 eV/Å"),
        "{out}"
    );
}

#[test]
fn convert_round_trips_lose_nothing() {
    for src in [
        "models/se_e2_a_tos/model.hlo",
        "models/se_atten/model.pth",
        "models/se_e2_a/model.pb",
    ] {
        round_trip(&fixtures().join(src));
    }
}

fn round_trip(src: &std::path::Path) {
    let dir = scratch(&format!(
        "convert-{}",
        src.extension().unwrap().to_str().unwrap()
    ));
    let (a, b, c) = (dir.join("a.dp"), dir.join("b.yaml"), dir.join("c.dp"));
    for (from, to) in [
        (src, a.as_path()),
        (a.as_path(), b.as_path()),
        (b.as_path(), c.as_path()),
    ] {
        let (ok, _, err) = dpc(&["convert", from.to_str().unwrap(), to.to_str().unwrap()]);
        assert!(ok, "{err}");
    }
    let (ok, _, err) = dpc(&[
        "emit",
        c.to_str().unwrap(),
        "--format",
        "yaml",
        "-o",
        dir.join("d.yaml").to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    // TorchScript and torch.export carry the tree too (extra/model.json), and dpc's
    // SavedModel in a getter; each is read back from the one before.
    let (e, f, g) = (
        dir.join("e.pth"),
        dir.join("f.pte"),
        dir.join("g.savedmodel"),
    );
    for (from, to) in [(&c, &e), (&e, &f), (&f, &g)] {
        let (ok, _, err) = dpc(&["convert", from.to_str().unwrap(), to.to_str().unwrap()]);
        assert!(ok, "{err}");
    }
    let model = |p: &std::path::Path| {
        dpc_formats::read_model(p)
            .unwrap()
            .get("model")
            .unwrap()
            .clone()
    };
    let original = model(src);
    for p in [&a, &b, &c, &dir.join("d.yaml"), &e, &f, &g] {
        assert_eq!(
            model(p),
            original,
            "{} differs from the .hlo's model",
            p.display()
        );
    }
    // Compiled exports and dpc's runtime marker are not carried over.
    let a_tree = dpc_formats::read_model(&a).unwrap();
    assert!(a_tree.get("constants").is_none() && a_tree.get("@dpc_runtime").is_none());
    assert!(a_tree.get("@variables").unwrap().get("stablehlo").is_none());
    // Unreachable targets say why.
    let (ok, _, err) = dpc(&[
        "convert",
        a.to_str().unwrap(),
        dir.join("x.pt2").to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("AOTInductor"), "{err}");
}

/// `dpc emit --format pth` writes a TorchScript archive whose module has the methods
/// DeePMD-kit calls, and dpc evaluates it to the same numbers as its source. (DeePMD-kit
/// itself runs these files in tests/tests/interop.rs.)
#[test]
fn emit_pth_writes_torchscript_that_evaluates_like_its_source() {
    let dir = scratch("emit-pth");
    let pth = dir.join("water.pth");
    let (ok, out, err) = dpc(&[
        "emit",
        "builtin:water",
        "--format",
        "pth",
        "-o",
        pth.to_str().unwrap(),
    ]);
    assert!(ok && out.contains("-> pth"), "{err}");
    let bytes = std::fs::read(&pth).unwrap();
    let mut zip = dpc_formats::archive::Archive::open(bytes).unwrap();
    let code = String::from_utf8(zip.read("model/code/__torch__/dpc.py").unwrap()).unwrap();
    for m in [
        "def forward(",
        "def forward_lower(",
        "def forward_common_lower(",
        "def get_rcut(",
        "def get_type_map(",
        "def _graph_atomic_virial(",
    ] {
        assert!(code.contains(m), "no {m} in the module");
    }
    assert!(code.contains(r#"return ["O", "H"]"#), "type map");
    let conf = dir.join("c.json");
    std::fs::write(
        &conf,
        r#"{"coord": [0,0,0, 0.96,0,0, -0.24,0.93,0, 3,3,3, 3.96,3,3], "atype": [0,1,1,0,1],
            "box": [9,0,0, 0,9,0, 0,0,9]}"#,
    )
    .unwrap();
    let c = conf.to_str().unwrap();
    let (ok, a, err) = dpc(&["eval", "builtin:water", "--input", c]);
    assert!(ok, "{err}");
    let (ok, b, err) = dpc(&["eval", pth.to_str().unwrap(), "--input", c]);
    assert!(ok, "{err}");
    assert!(!a.is_empty() && a == b, "the .pth evaluates differently");
}

/// `dpc emit --format pb` writes a frozen TensorFlow graph with the placeholders, outputs and
/// DeePMD-kit ops its TensorFlow runtime feeds (DeePMD-kit runs it in tests/tests/interop.rs);
/// dpc reads it back to the same numbers, and descriptors without a TF lowering are refused.
#[test]
fn emit_pb_writes_a_deepmd_graph_and_refuses_what_it_cannot_lower() {
    let dir = scratch("emit-pb");
    let pb = dir.join("water.pb");
    let (ok, _, err) = dpc(&[
        "emit",
        "builtin:water",
        "--format",
        "pb",
        "-o",
        pb.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let gd = dpc_formats::tf::parse(&std::fs::read(&pb).unwrap(), false).unwrap();
    let ops: std::collections::HashMap<&str, &str> = gd
        .node
        .iter()
        .map(|n| (n.name.as_str(), n.op.as_str()))
        .collect();
    for (name, op) in [
        ("t_coord", "Placeholder"),
        ("t_mesh", "Placeholder"),
        ("ProdEnvMatA", "ProdEnvMatA"),
        ("ProdForceSeA", "ProdForceSeA"),
        ("ProdVirialSeA", "ProdVirialSeA"),
        ("o_energy", "Sum"),
        ("o_force", "Reshape"),
        ("model_attr/tmap", "Const"),
    ] {
        assert_eq!(ops.get(name), Some(&op), "{name}");
    }
    evaluates_like_builtin_water(&dir, &pb);
    // DPA-1 on the list's pair vectors: the mixed-type list op, the IR, DeePMD-kit's force op.
    let dpa1 = fixtures().join("models/se_atten/model.dp");
    let dpa1_pb = dir.join("dpa1.pb");
    let (ok, _, err) = dpc(&[
        "emit",
        dpa1.to_str().unwrap(),
        "--format",
        "pb",
        "-o",
        dpa1_pb.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let gd = dpc_formats::tf::parse(&std::fs::read(&dpa1_pb).unwrap(), false).unwrap();
    for op in [
        "ProdEnvMatAMix",
        "ProdForceSeA",
        "ProdVirialSeA",
        "BatchMatMulV2",
    ] {
        assert!(
            gd.node.iter().any(|n| n.op == op),
            "no {op} in the DPA-1 .pb"
        );
    }
    assert!(!gd.node.iter().any(|n| n.op == "ProdEnvMatA"));
    // Message passing has no TensorFlow form.
    let dpa3 = fixtures().join("models/dpa3/model.dp");
    let (ok, _, err) = dpc(&[
        "emit",
        dpa3.to_str().unwrap(),
        "--format",
        "pb",
        "-o",
        dir.join("x.pb").to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("passes messages"), "{err}");
}

#[test]
fn savedmodel_is_described_and_refused_for_evaluation() {
    let sm = fixtures().join("models/se_e2_a_tos/model.savedmodel");
    let (ok, out, err) = dpc(&["info", sm.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(
        out.contains(r#"get_type_map             ["Cu","Au"]"#)
            && out.contains("get_sel                  [50, 30]"),
        "{out}"
    );
    assert!(out.contains("not recoverable"), "{out}");
    let conf = scratch("sm").join("c.json");
    std::fs::write(&conf, r#"{"coord": [0,0,0, 2,0,0], "atype": [0,1]}"#).unwrap();
    let (ok, _, err) = dpc(&[
        "eval",
        sm.to_str().unwrap(),
        "--input",
        conf.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("cannot be recovered"), "{err}");
}

/// `dpc eval` of `model` prints what it prints for `builtin:water` (the model it was written
/// from) on a water molecule.
fn evaluates_like_builtin_water(dir: &std::path::Path, model: &std::path::Path) {
    let conf = dir.join("c.json");
    std::fs::write(
        &conf,
        r#"{"coord": [0,0,0, 0.96,0,0, -0.24,0.93,0], "atype": [0,1,1], "box": [9,0,0, 0,9,0, 0,0,9]}"#,
    )
    .unwrap();
    let c = conf.to_str().unwrap();
    let (ok, a, err) = dpc(&["eval", "builtin:water", "--input", c]);
    assert!(ok, "{err}");
    let (ok, b, err) = dpc(&["eval", model.to_str().unwrap(), "--input", c]);
    assert!(ok, "{err}");
    assert!(
        !a.is_empty() && a == b,
        "{} evaluates differently",
        model.display()
    );
}

/// `dpc emit --format savedmodel` writes a SavedModel directory whose function library has
/// what DeePMD-kit's C++ `DeepPotJAX` calls (LAMMPS runs it in tests/tests/interop.rs); dpc
/// reads it back to the same numbers, and refuses to overwrite what is not a SavedModel.
#[test]
fn emit_savedmodel_writes_deepmd_functions_and_reads_back() {
    let dir = scratch("emit-savedmodel");
    let sm = dir.join("water.savedmodel");
    let emit = |out: &std::path::Path| {
        dpc(&[
            "emit",
            "builtin:water",
            "--format",
            "savedmodel",
            "-o",
            out.to_str().unwrap(),
        ])
    };
    let (ok, _, err) = emit(&sm);
    assert!(ok, "{err}");
    let (ok, _, err) = emit(&sm);
    assert!(ok, "rewriting a SavedModel: {err}");
    let (ok, info, err) = dpc(&["info", sm.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(info.contains("get_rcut"), "{info}");
    let bytes = std::fs::read(sm.join("saved_model.pb")).unwrap();
    let text = String::from_utf8_lossy(&bytes);
    for f in [
        "__inference_call_lower_without_atomic_virial_0",
        "__inference_call_lower_with_atomic_virial_0",
        "__inference_get_type_map_0",
        "__inference_get_sel_0",
        // Python's `tf.saved_model.load`: the object graph's attributes.
        "call_atomic_virial",
        "FullArgSpec",
        "get_model_def_script",
    ] {
        assert!(text.contains(f), "no function {f}");
    }
    // The checkpoint of no variables Python's loader restores.
    let index = std::fs::read(sm.join("variables/variables.index")).unwrap();
    assert!(index.ends_with(&[0x57, 0xfb, 0x80, 0x8b, 0x24, 0x75, 0x47, 0xdb]));
    assert!(sm.join("variables/variables.data-00000-of-00001").is_file());
    evaluates_like_builtin_water(&dir, &sm);
    // A directory that is not a SavedModel is left alone.
    let other = dir.join("not-a-model");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("keep.txt"), "x").unwrap();
    let (ok, _, err) = emit(&other);
    assert!(!ok && err.contains("not a SavedModel directory"), "{err}");
    assert!(other.join("keep.txt").exists());
}

#[test]
fn emit_pte_writes_a_torch_export_program_and_reads_back() {
    let dir = scratch("emit-pte");
    let pte = dir.join("water.pte");
    let (ok, _, err) = dpc(&[
        "emit",
        "builtin:water",
        "--format",
        "pte",
        "-o",
        pte.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    // The PT2 archive torch.export.load reads, and DeePMD-kit's metadata.
    let bytes = std::fs::read(&pte).unwrap();
    let text = String::from_utf8_lossy(&bytes);
    for entry in [
        "model/archive_format",
        "model/.data/version",
        "model/models/model.json",
        "model/data/weights/model_weights_config.json",
        "model/extra/metadata.json",
        "torch.ops.aten.index_add.default",
        "\"lower_input_kind\":\"nlist\"",
    ] {
        assert!(text.contains(entry), "no {entry} in the .pte");
    }
    evaluates_like_builtin_water(&dir, &pte);
    // .pt2 is compiled code: refused, saying why.
    let pt2 = dir.join("water.pt2");
    let (ok, _, err) = dpc(&["convert", "builtin:water", pt2.to_str().unwrap()]);
    assert!(!ok && err.contains("AOTInductor"), "{err}");
    assert!(!pt2.exists());
}

#[test]
fn compile_writes_an_hlo_and_refuses_what_it_cannot_lower() {
    let dir = scratch("compile");
    let out = dir.join("water.xlo");
    let (ok, stdout, err) = dpc(&["compile", "builtin:water", "-o", out.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(stdout.contains("4 variants"), "{stdout}");
    // dpc reads back what it wrote, and `info` lists the four exports.
    let (ok, info, err) = dpc(&["info", out.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(info.contains("stablehlo_atomic_virial_no_ghost"), "{info}");
    let (ok, text, err) = dpc(&["compile", "builtin:water", "--emit-stablehlo"]);
    assert!(ok, "{err}");
    assert!(
        text.starts_with("module @dpc_call_common_lower"),
        "{}",
        &text[..80]
    );
    assert!(text.contains("stablehlo.dot_general") && text.contains("stablehlo.scatter"));

    let fail = |args: &[&str], why: &str| {
        let (ok, _, err) = dpc(args);
        assert!(!ok, "{args:?} should fail");
        assert!(err.contains(why), "{args:?}: {err}");
    };
    let o = out.to_str().unwrap();
    let (ok, _, err) = dpc(&[
        "compile",
        "builtin:water",
        "-o",
        o,
        "--compress",
        "--min-nbor-dist",
        "0.9",
    ]);
    assert!(ok, "compressed: {err}");
    fail(
        &["compile", "builtin:water", "-o", o, "--device", "tpu"],
        "use cpu, cuda or cpu,cuda",
    );
    let dp = dir.join("x.dp");
    fail(
        &["compile", "builtin:water", "-o", dp.to_str().unwrap()],
        "dpc convert",
    );
    let dpa2 = fixtures().join("models/dpa2/model.dp");
    fail(
        &["compile", dpa2.to_str().unwrap(), "-o", o, "--compress"],
        "DPA-2's repinit is one",
    );
    // DPA-1 in concat mode: DeePMD-kit's `dp compress` refuses it too, and the error says so.
    let dpa1 = fixtures().join("models/se_atten/model.dp");
    fail(
        &["compile", dpa1.to_str().unwrap(), "-o", o, "--compress"],
        "which DeePMD-kit cannot compress either",
    );
    // Strip mode with attention: DeePMD-kit would tabulate only the type embedding.
    let v2 = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/variants/se_atten_v2/model.dp");
    fail(
        &[
            "compile",
            v2.to_str().unwrap(),
            "-o",
            o,
            "--compress",
            "--min-nbor-dist",
            "0.9",
        ],
        "only the strip type embedding",
    );
    fail(&["compile", "builtin:water"], "nothing to do");
    // A device without a plugin, and a plugin that is not one.
    fail(
        &["eval", "builtin:water", "--device", "cuda"],
        "needs a PJRT plugin",
    );
}
