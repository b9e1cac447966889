//! Models run through a PJRT plugin (StableHLO compiled by the plugin, static shapes padded
//! to buckets) against DeePMD-kit's numbers: every fixture model, from its `.dp` and from the
//! `.xlo` `dpc compile` writes, and variants with fparam/aparam, exclusions and DPA-1.
//! Needs a plugin: `DPC_TEST_PJRT_PLUGIN=/path/libpjrt_cpu.so` (docs/pjrt.md); skipped without one,
//! except in CI (`DPC_REQUIRE_PJRT=1`).

mod common;

use std::path::{Path, PathBuf};

use dpc_compiler::lower::hlo_file::{hlo_tree, HloOptions, Platform};
use dpc_compiler::model::Model;
use dpc_formats::{read_model, read_model_bytes, Format, Value};
use dpc_runtime::pjrt::Device;
use dpc_runtime::{DeepPot, Frame};

fn plugin() -> Option<PathBuf> {
    match std::env::var_os("DPC_TEST_PJRT_PLUGIN") {
        Some(p) => Some(PathBuf::from(p)),
        None => {
            assert!(
                std::env::var("DPC_REQUIRE_PJRT").is_err(),
                "DPC_REQUIRE_PJRT is set but DPC_TEST_PJRT_PLUGIN is not"
            );
            eprintln!("SKIPPED: set DPC_TEST_PJRT_PLUGIN to a PJRT CPU plugin (docs/pjrt.md)");
            None
        }
    }
}

fn on_pjrt(tree: Value, plugin: &Path) -> DeepPot {
    let mut pot = DeepPot::from_tree(tree).unwrap();
    pot.use_pjrt(plugin, Device::Cpu).unwrap();
    assert!(pot.backend().contains("PJRT"), "{}", pot.backend());
    pot
}

#[test]
fn fixtures_through_pjrt_match_deepmd_kit() {
    let Some(plugin) = plugin() else { return };
    for name in common::MODELS {
        let src = common::model_file(name, "model.dp");
        let tree = read_model(&src).unwrap();
        // The .xlo dpc compile writes, read back: what `dpc eval model.xlo` runs.
        let model = Model::from_tree(&tree).unwrap();
        let opts = HloOptions {
            platform: Platform::Cpu,
            precision: None,
            compress: None,
        };
        let xlo = dpc_formats::dp::write(&hlo_tree(&tree, &model, opts).unwrap()).unwrap();
        let xlo = read_model_bytes(Format::Hlo, xlo, Path::new("model.xlo")).unwrap();
        for (label, t) in [("dp", tree), ("xlo", xlo)] {
            let pot = on_pjrt(t, &plugin);
            for c in common::reference(name) {
                let out = pot
                    .compute(&Frame::new(&c.coord, &c.atype, c.cell.as_deref()), true)
                    .unwrap();
                common::assert_close(
                    &format!("{name}.{label} on PJRT, {}", c.name),
                    &out,
                    &c.expected,
                    1e-10,
                    1e-12,
                );
            }
        }
    }
}

#[test]
fn variants_through_pjrt_match_deepmd_kit() {
    let Some(plugin) = plugin() else { return };
    let dir = common::local_fixtures().join("variants");
    let doc = common::variants_doc();
    for name in [
        "se_e2_a_fparam_aparam",
        "se_e2_a_excl",
        "se_e2_a_tos_pairexcl",
        "dpa1_concat_tos_t",
        "dpa1_strip_smooth",
        "se_e3_3types",
    ] {
        let entry = doc.get(name).unwrap();
        let tree = read_model(&dir.join(entry.get("model").unwrap().as_str().unwrap())).unwrap();
        let pot = on_pjrt(tree, &plugin);
        for c in entry.get("configs").unwrap().as_list().unwrap() {
            let out = pot
                .compute(&common::Config::from_value(c).frame(), true)
                .unwrap();
            let want = common::Expected::from_value(c.get("expected").unwrap());
            common::assert_close(&format!("{name} on PJRT"), &out, &want, 1e-10, 1e-12);
        }
    }
}

#[test]
fn a_missing_or_wrong_plugin_is_a_clear_error() {
    let tree = read_model(&common::fixtures().join("models/se_e2_r/model.dp")).unwrap();
    let mut pot = DeepPot::from_tree(tree).unwrap();
    let e = pot
        .use_pjrt(Path::new("/nonexistent/plugin.so"), Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(e.contains("cannot load the plugin"), "{e}");
    // A shared library that is not a PJRT plugin.
    let libc = [
        "/lib/x86_64-linux-gnu/libc.so.6",
        "/lib/aarch64-linux-gnu/libc.so.6",
        "/usr/lib/libc.so.6",
    ]
    .iter()
    .map(Path::new)
    .find(|p| p.exists());
    if let Some(libc) = libc {
        let e = pot.use_pjrt(libc, Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("not a PJRT plugin"), "{e}");
    }
    if let Some(plugin) = plugin() {
        let e = pot.use_pjrt(&plugin, Device::Cuda).unwrap_err().to_string();
        assert!(e.contains("not `cuda`"), "{e}");
    }
}

/// `--compress` through PJRT: the tables lowered with elementary ops, still within 1e-10 of
/// DeePMD-kit's uncompressed numbers on the fixture models (the tables' own error is 1e-11).
#[test]
fn compressed_models_through_pjrt_match_deepmd_kit() {
    use dpc_compiler::build::{BuildOptions, Compress};
    let Some(plugin) = plugin() else { return };
    for name in ["se_e2_a", "se_e3"] {
        let tree = read_model(&common::model_file(name, "model.dp")).unwrap();
        let opts = BuildOptions {
            compress: Some(Compress::default()),
            ..BuildOptions::default()
        };
        let mut pot = DeepPot::from_tree_opts(tree, opts).unwrap();
        pot.use_pjrt(&plugin, Device::Cpu).unwrap();
        for c in common::reference(name) {
            let out = pot
                .compute(&Frame::new(&c.coord, &c.atype, c.cell.as_deref()), true)
                .unwrap();
            common::assert_close(
                &format!("{name} compressed on PJRT, {}", c.name),
                &out,
                &c.expected,
                1e-10,
                1e-12,
            );
        }
    }
}
