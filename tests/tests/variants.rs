//! Models that exercise options the shared fixtures do not (exclusions, strip-mode and
//! smooth attention, se_atten_v2, activations, fparam/aparam with defaults, atom_ener,
//! float32, sel overflow), against DeePMD-kit 3.2.0's PyTorch numbers
//! (`tests/fixtures/variants`, made by `make_variants.py` there).

mod common;

use dpc_formats::Value;
use dpc_runtime::DeepPot;

fn doc() -> Value {
    common::variants_doc()
}

/// Check one variant; float32 models get a float32-sized tolerance.
fn check(name: &str) {
    let doc = doc();
    let entry = doc.get(name).unwrap_or_else(|| panic!("no variant {name}"));
    let pot = DeepPot::load(
        &common::local_fixtures()
            .join("variants")
            .join(entry.get("model").unwrap().as_str().unwrap()),
    )
    .unwrap();
    let (atol, rtol) = if name.ends_with("f32") {
        (1e-5, 1e-6)
    } else {
        (1e-10, 1e-12)
    };
    for c in entry.get("configs").unwrap().as_list().unwrap() {
        let cfg = common::Config::from_value(c);
        let out = pot.compute(&cfg.frame(), true).unwrap();
        let cname = c.get("name").unwrap().as_str().unwrap();
        let want = common::Expected::from_value(c.get("expected").unwrap());
        common::assert_close(&format!("{name} {cname}"), &out, &want, atol, rtol);
    }
}

macro_rules! variants {
    ($($name:ident),* $(,)?) => {
        $(#[test] fn $name() { check(stringify!($name)); })*

        #[test]
        fn every_variant_has_a_test() {
            let listed = [$(stringify!($name)),*];
            for k in doc().as_dict().unwrap().keys() {
                assert!(listed.contains(&k.as_str()), "variant {k} is not tested");
            }
        }
    };
}

variants!(
    se_e2_a_excl,
    se_e2_a_tos_pairexcl,
    se_e2_a_gelu_relu,
    se_e2_a_relu_emb,
    se_e2_a_gelu_emb,
    se_e2_r_excl,
    se_e3_3types,
    dpa1_strip_smooth,
    dpa1_strip_noattn_tos,
    dpa1_strip_noattn_smooth,
    dpa1_strip_noattn_10types,
    dpa1_strip_noattn_tos_9types,
    se_e3_tebd_strip_6types,
    dpa1_concat_tos_t,
    se_atten_v2,
    dpa1_noattn_silut,
    se_e2_a_fparam_aparam,
    se_e2_a_atom_ener,
    dpa1_atom_ener,
    se_e2_a_f32,
    se_e2_a_overflow,
    dpa1_overflow,
    dpa1_softplus,
    dpa3_avg_dynsel_excl,
    dpa3_incr_linear_heads,
    dpa3_sequential_split,
    dpa3_noangle_fparam,
    hybrid_se_a_se_r,
    hybrid_dpa1_dpa3,
    dpa2_all_updates,
    dpa2_nonsmooth_incr,
    dpa2_residual_tos,
    dpa2_strip_three_body,
    se_e3_tebd_strip,
    se_e3_tebd_concat,
);
