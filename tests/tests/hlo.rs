//! `dpc compile -o X.hlo`: the `.hlo` container and its `jax.export` blobs, the lowered
//! module's text, and the frame flattening the lowering relies on (checked in dpc's own CPU
//! executor against DeePMD-kit's numbers). DeePMD-kit itself loading and running the files is
//! in `interop.rs` (it needs DeePMD-kit installed).

mod common;

use std::collections::HashSet;
use std::path::Path;

use dpc_compiler::build::{build_graph, io, BuildOptions};
use dpc_compiler::graph::{Bindings, Tensor};
use dpc_compiler::lower::hlo_file::{hlo_tree, HloOptions, Platform};
use dpc_compiler::lower::stablehlo::{export, LowerOptions, Variant};
use dpc_compiler::model::Model;
use dpc_formats::{jax_export, read_model, read_model_bytes, Format, Value};
use dpc_runtime::cpu::Executor;
use dpc_runtime::nlist::{self, Cell};
use dpc_runtime::{DeepPot, Frame};

const CPU: HloOptions = HloOptions {
    platform: Platform::Cpu,
    precision: None,
    compress: None,
};

fn fixture_model(name: &str) -> (Value, Model) {
    let tree = read_model(&common::model_file(name, "model.dp")).unwrap();
    let model = Model::from_tree(&tree).unwrap();
    (tree, model)
}

#[test]
fn hlo_file_has_the_four_exports_and_round_trips() {
    for name in common::MODELS {
        let (tree, model) = fixture_model(name);
        let bytes = dpc_formats::dp::write(&hlo_tree(&tree, &model, CPU).unwrap()).unwrap();
        let back = read_model_bytes(Format::Hlo, bytes, Path::new("x.hlo")).unwrap();
        let vars = back.get("@variables").unwrap().as_dict().unwrap();
        for (key, variant) in Variant::ALL {
            let Some(Value::Bytes(blob)) = vars.get(key) else {
                panic!("{name}: no blob {key}");
            };
            let info = jax_export::info(blob).unwrap();
            assert_eq!(info.platforms, ["cpu"], "{name} {key}");
            assert!(!info.module_is_bytecode && info.module_bytes > 1000);
            assert_eq!(info.calling_convention_version, 10);
            let nall = if variant.ghosts {
                "nloc + nghost"
            } else {
                "nloc"
            };
            let shapes: Vec<String> = info.inputs.iter().map(|a| a.to_string()).collect();
            let nnei = model.nnei();
            assert_eq!(
                shapes,
                [
                    format!("f64[nf,{nall},3]"),
                    format!("i32[nf,{nall}]"),
                    format!("i64[nf,nloc,{nnei}]"),
                    format!("i64[nf,{nall}]"),
                ],
                "{name} {key}"
            );
            let outs: Vec<String> = info.outputs.iter().map(|a| a.to_string()).collect();
            assert_eq!(
                outs,
                [
                    "f64[nf,nloc,1]".to_string(),
                    format!("f64[nf,{nall},1,9]"),
                    "f64[nf,1,9]".into(),
                    format!("f64[nf,{nall},1,3]"),
                    "f64[nf,1]".into(),
                    "i32[nf,nloc]".into(),
                ]
            );
        }
        let c = back.get("constants").unwrap();
        assert_eq!(c.get("rcut").unwrap().as_f64(), Some(model.rcut()));
        let sel: Vec<i64> = c
            .get("sel")
            .unwrap()
            .as_list()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        assert_eq!(
            sel,
            model.sel().iter().map(|&s| s as i64).collect::<Vec<_>>()
        );
        // The model inside the container is still the model.
        let pot = DeepPot::from_tree(back).unwrap();
        let cfg = &common::reference(name)[0];
        let out = pot
            .compute(
                &Frame::new(&cfg.coord, &cfg.atype, cfg.cell.as_deref()),
                true,
            )
            .unwrap();
        common::assert_close(name, &out, &cfg.expected, 1e-10, 1e-12);
    }
}

/// Every SSA value of the function is defined once, before any use.
#[test]
fn stablehlo_values_are_defined_before_use() {
    for name in common::MODELS {
        let (_, model) = fixture_model(name);
        let variant = Variant {
            atomic_virial: true,
            ghosts: true,
        };
        let text = export(&model, variant, LowerOptions::default())
            .unwrap()
            .mlir;
        let mut defined: HashSet<String> = (0..4).map(|i| format!("%arg{i}")).collect();
        let mut uses = 0;
        for line in text.lines() {
            let (def, rest) = match line.trim_start().split_once(" = ") {
                Some((d, r)) if d.starts_with("%v") => (Some(d), r),
                _ => (None, line),
            };
            for tok in rest.split(|c: char| !(c.is_alphanumeric() || c == '%' || c == '#')) {
                if tok.starts_with("%v") || tok.starts_with("%arg") {
                    let base = tok.split('#').next().unwrap();
                    assert!(
                        defined.contains(base),
                        "{name}: {base} used before definition"
                    );
                    uses += 1;
                }
            }
            if let Some(d) = def {
                let base = d.split(':').next().unwrap().to_string();
                assert!(defined.insert(base.clone()), "{name}: {base} defined twice");
            }
        }
        assert!(uses > 100, "{name}: {uses} uses");
        assert!(text.contains("func.func public @main("));
        let returns = text
            .lines()
            .filter(|l| l.trim_start().starts_with("return "))
            .count();
        assert_eq!(returns, 1);
    }
}

#[test]
fn one_file_for_cpu_and_cuda_takes_the_platform_index() {
    let (tree, model) = fixture_model("se_e2_r");
    let opts = HloOptions {
        platform: Platform::CpuAndCuda,
        ..CPU
    };
    let hlo = hlo_tree(&tree, &model, opts).unwrap();
    let Some(Value::Bytes(blob)) = hlo.get("@variables").unwrap().get("stablehlo") else {
        panic!("no blob");
    };
    let info = jax_export::info(blob).unwrap();
    assert_eq!(info.platforms, ["cpu", "cuda"]);
    assert_eq!(info.inputs.len(), 4, "the index is not an array argument");
    assert_eq!(Platform::parse("cpu,cuda"), Some(Platform::CpuAndCuda));
    assert_eq!(Platform::parse("tpu"), None);
}

#[test]
fn float32_export_runs_the_networks_in_float32_and_returns_float64() {
    let (_, model) = fixture_model("se_e2_a");
    let opts = LowerOptions {
        precision: Some(dpc_compiler::graph::DType::F32),
        ..Default::default()
    };
    let e = export(&model, Variant::ALL[0].1, opts).unwrap();
    assert!(e.mlir.contains("xf32>"));
    let sig = e.mlir.lines().find(|l| l.contains("@main(")).unwrap();
    assert!(!sig.contains("f32"), "{sig}");
}

/// DPA-1's attention in float32 is refused for StableHLO (DeePMD-kit's JAX runtime runs it
/// far from float32 DeePMD-kit; see `export`), by name; DPA-3 in float32 lowers.
#[test]
fn float32_attention_export_is_refused_by_name() {
    let opts = LowerOptions {
        precision: Some(dpc_compiler::graph::DType::F32),
        ..Default::default()
    };
    let (_, model) = fixture_model("se_atten");
    let err = export(&model, Variant::ALL[0].1, opts)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("DPA-1") && err.contains("float32"), "{err}");
    assert!(export(&model, Variant::ALL[0].1, LowerOptions::default()).is_ok());
    let (_, model) = fixture_model("dpa3");
    assert!(export(&model, Variant::ALL[0].1, opts)
        .unwrap()
        .mlir
        .contains("xf32>"));
}

/// A variant's model and configurations (fparam defaulted, as DeePMD-kit's caller does) with
/// DeePMD-kit's results.
fn variant(name: &str) -> (Model, Vec<(common::Config, common::Expected)>) {
    let doc = common::variants_doc();
    let entry = doc.get(name).unwrap();
    let file = common::local_fixtures()
        .join("variants")
        .join(entry.get("model").unwrap().as_str().unwrap());
    let model = Model::from_tree(&read_model(&file).unwrap()).unwrap();
    let cfgs = entry
        .get("configs")
        .unwrap()
        .as_list()
        .unwrap()
        .iter()
        .map(|c| {
            let mut cfg = common::Config::from_value(c);
            cfg.fparam = cfg.fparam.or_else(|| model.fitting.default_fparam.clone());
            let want = common::Expected::from_value(c.get("expected").unwrap());
            (cfg, want)
        })
        .collect();
    (model, cfgs)
}

/// Several frames laid end to end as one system, the way the StableHLO lowering runs the
/// graph (locals of every frame, then every frame's ghosts, one virtual atom appended to each
/// frame), give each frame's own energies and forces.
fn check_flat_frames(name: &str) {
    let (model, cfgs) = variant(name);
    let graph = build_graph(
        &model,
        BuildOptions {
            unfused: true,
            flat_frames: true,
            ..Default::default()
        },
    )
    .unwrap();
    let exts: Vec<nlist::Extended> = cfgs
        .iter()
        .map(|(c, _)| {
            let cell = c.cell.as_deref().map(|b| Cell::new(b).unwrap());
            nlist::build(
                &c.coord,
                &c.atype,
                cell.as_ref(),
                model.rcut(),
                &model.sel(),
                model.mixed_types(),
            )
            .unwrap()
        })
        .collect();
    // Each frame gets one more local atom, virtual (type -1), in no list: it must change
    // nothing. Frame f's locals are its real atoms, then the virtual one.
    let nloc_f = |f: usize| exts[f].nloc + 1;
    let tl: usize = (0..exts.len()).map(nloc_f).sum();
    let ta: usize = tl + exts.iter().map(|e| e.nall - e.nloc).sum::<usize>();
    let mut loc_off = Vec::new();
    let mut gh_off = Vec::new();
    let (mut l, mut g) = (0, tl);
    for (f, e) in exts.iter().enumerate() {
        loc_off.push(l);
        gh_off.push(g);
        l += nloc_f(f);
        g += e.nall - e.nloc;
    }
    let place = |f: usize, k: usize| {
        if k < exts[f].nloc {
            loc_off[f] + k
        } else {
            gh_off[f] + k - exts[f].nloc
        }
    };
    let mut coord = vec![0.5; 3 * ta];
    let mut atype = vec![-1i32; ta];
    for (f, e) in exts.iter().enumerate() {
        for k in 0..e.nall {
            let p = place(f, k);
            coord[3 * p..3 * p + 3].copy_from_slice(&e.coord[3 * k..3 * k + 3]);
            atype[p] = e.atype[k];
        }
    }
    let nnei = model.nnei();
    let mut nl = Vec::with_capacity(tl * nnei);
    let (mut fparam, mut aparam, mut pad) = (Vec::new(), Vec::new(), Vec::new());
    let nap = model.dim_aparam();
    for (f, (e, (c, _))) in exts.iter().zip(&cfgs).enumerate() {
        nl.extend(e.nlist.iter().map(|&j| {
            if j < 0 {
                -1
            } else {
                place(f, j as usize) as i32
            }
        }));
        nl.extend(std::iter::repeat_n(-1, nnei));
        for i in 0..nloc_f(f) {
            if let Some(fp) = &c.fparam {
                fparam.extend(fp);
            }
            if let Some(ap) = &c.aparam {
                if i < e.nloc {
                    aparam.extend(&ap[i * nap..(i + 1) * nap]);
                } else {
                    aparam.extend(std::iter::repeat_n(0.0, nap));
                }
            }
            pad.push(loc_off[f] as i32);
        }
    }
    let inputs: Vec<Tensor> = graph
        .inputs
        .iter()
        .map(|s| match s.name.as_str() {
            io::COORD => Tensor::f64(vec![ta, 3], coord.clone()),
            io::ATYPE => Tensor::i32(vec![ta], atype.clone()),
            io::NLIST => Tensor::i32(vec![tl, nnei], nl.clone()),
            io::FPARAM => Tensor::f64(vec![tl, model.dim_fparam()], fparam.clone()),
            io::APARAM => Tensor::f64(vec![tl, model.dim_aparam()], aparam.clone()),
            io::PAD_ATOM => Tensor::i32(vec![tl], pad.clone()),
            other => panic!("input {other}"),
        })
        .collect();
    let exec = Executor::new(graph);
    let out = exec.run(inputs, Bindings { nloc: tl, nall: ta }).unwrap();
    let ae = out[exec.output_index(io::ATOM_ENERGY).unwrap()]
        .as_f64()
        .unwrap()
        .to_vec();
    let force = out[exec.output_index(io::FORCE).unwrap()]
        .as_f64()
        .unwrap()
        .to_vec();
    for (f, (e, (c, want))) in exts.iter().zip(&cfgs).enumerate() {
        let n = c.atype.len();
        let mine = &ae[loc_off[f]..loc_off[f] + nloc_f(f)];
        assert_eq!(
            mine[n], 0.0,
            "{name} frame {f}: the virtual atom has energy"
        );
        let (w, _) = common::worst(&mine[..n], &want.atom_energy, 1e-10, 1e-12);
        assert!(w <= 1.0, "{name} frame {f}: atom energies off ({w}x)");
        let total: f64 = mine.iter().sum();
        assert!(
            (total - want.energy).abs() < 1e-9,
            "{name} frame {f}: energy"
        );
        // Forces on the frame's atoms: the ghosts' folded back onto their owners.
        let mut fr = vec![0.0; 3 * n];
        for k in 0..e.nall {
            let p = place(f, k);
            let o = e.mapping[k];
            for a in 0..3 {
                fr[3 * o + a] += force[3 * p + a];
            }
        }
        let (w, _) = common::worst(&fr[..3 * n], &want.force, 1e-10, 1e-12);
        assert!(w <= 1.0, "{name} frame {f}: forces off ({w}x)");
    }
}

#[test]
fn flat_frames_fparam_aparam() {
    check_flat_frames("se_e2_a_fparam_aparam");
}

#[test]
fn flat_frames_dpa1_concat_pad_atom() {
    check_flat_frames("dpa1_concat_tos_t");
}

#[test]
fn flat_frames_atom_exclusion() {
    check_flat_frames("se_e2_a_excl");
}
