//! What dpc refuses before mapping anything: program versions, model inputs, Layer scopes
//! and op kinds it was not checked on (an unknown op inside the model may compute something
//! the tree cannot say), with errors that name the descriptor or fitting.

use std::collections::BTreeMap;

use super::program::{root_class, root_scope, Program};
use super::{bad, unsupported};
use crate::tree::Value;
use crate::FormatError;

/// Op kinds seen inside the model's scopes in the programs dpc was checked on; an unknown
/// one may compute something the tree cannot say, so the model is refused.
const SCOPED_OPS: [&str; 58] = [
    "0.combine",
    "0.split",
    "1.add",
    "1.assign",
    "1.bitwise_not",
    "1.cast",
    "1.clip",
    "1.concat",
    "1.divide",
    "1.elementwise_pow",
    "1.equal",
    "1.expand",
    "1.eye",
    "1.floor_divide",
    "1.full",
    "1.full_batch_size_like",
    "1.full_int_array",
    "1.full_like",
    "1.full_with_tensor",
    "1.gather_nd",
    "1.gelu",
    "1.greater_equal",
    "1.if",
    "1.less_equal",
    "1.less_than",
    "1.logical_not",
    "1.logical_or",
    "1.masked_fill",
    "1.matmul",
    "1.maximum",
    "1.mean",
    "1.multiply",
    "1.not_equal",
    "1.numel",
    "1.p_norm",
    "1.pow",
    "1.relu",
    "1.relu6",
    "1.reshape",
    "1.scale",
    "1.shape64",
    "1.sigmoid",
    "1.silu",
    "1.slice",
    "1.softmax",
    "1.softplus",
    "1.split_with_num",
    "1.sqrt",
    "1.squeeze",
    "1.stack",
    "1.subtract",
    "1.sum",
    "1.take_along_axis",
    "1.tanh",
    "1.tile",
    "1.transpose",
    "1.unsqueeze",
    "1.where",
];

const INPUTS: [&str; 7] = [
    "coord", "atype", "box", "nlist", "mapping", "fparam", "aparam",
];

/// The `comm_dict` inputs of a frozen `forward_lower` (MPI message passing).
const COMM_INPUTS: [&str; 6] = [
    "send_list",
    "send_proc",
    "recv_proc",
    "send_num",
    "recv_num",
    "communicator",
];

fn component(class: &str) -> FormatError {
    let descriptor = match class {
        "DescrptSeTTebd" => "se_e3_tebd",
        "DescrptDPA2" => "dpa2",
        "DescrptDPA3" => "dpa3",
        c if c.starts_with("Descrpt") => c,
        c if c.contains("Fitting") => {
            return unsupported(format!(
                "fitting {c} is not supported yet (dpc reads energy models from Paddle)"
            ))
        }
        "PairExcludeMask" => {
            return unsupported(
                "model pair_exclude_types (DeePMD-kit 3.2 cannot export them to Paddle, so no such file could be checked)",
            )
        }
        c => return unsupported(format!("model component {c} (a Layer dpc does not read)")),
    };
    unsupported(format!(
        "descriptor {descriptor} is not supported yet (dpc reads se_e2_a, dpa1/se_atten and se_atten_v2 Paddle models)"
    ))
}

/// The descriptors dpc reads from Paddle programs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    SeA,
    Dpa1,
    SeAttenV2,
}

/// The model's components: descriptor kind and root scope, fitting root scope.
pub struct Components {
    pub kind: Kind,
    pub desc_root: String,
    pub fit_root: String,
}

/// Layer classes the se_atten family's scopes may hold below their root.
const SE_ATTEN_LAYERS: [&str; 12] = [
    "DescrptBlockSeAtten",
    "EN",
    "MLPLayer",
    "ActivationFn",
    "SiLUT",
    "NeighborGatedAttention",
    "NeighborGatedAttentionLayer",
    "GatedAttentionLayer",
    "LayerNorm",
    "TypeEmbedNet",
    "TypeEmbedNetConsistent",
    "PairExcludeMask",
];

/// Refuse what dpc was not checked on; return the descriptor and fitting root scopes.
pub fn check(prog: &Program) -> Result<Components, FormatError> {
    if !(1..=4).contains(&prog.version) {
        return Err(unsupported(format!(
            "PIR program version {} (dpc knows versions 1 to 4)",
            prog.version
        )));
    }
    let mut roots: BTreeMap<&str, String> = BTreeMap::new();
    for op in &prog.ops {
        if op.kind == "1.data" {
            let name = op.attr("name").and_then(Value::as_str).unwrap_or("");
            if name == "spin" {
                return Err(unsupported("spin models"));
            }
            // `dp --pd freeze` gives forward_lower the communication inputs of parallel
            // message passing too; a model that does not pass messages leaves them unread.
            let unread = op.outs.iter().all(|&v| prog.uses(v).is_empty());
            let known = INPUTS.contains(&name) || (COMM_INPUTS.contains(&name) && unread);
            if !known {
                return Err(unsupported(format!("a model input named `{name}`")));
            }
        }
        let Some(scope) = op.scope.as_deref() else {
            continue;
        };
        let class = root_class(scope);
        let allowed: &[&str] = match class {
            "DescrptSeA" => &["MLPLayer", "ActivationFn", "SiLUT", "PairExcludeMask"],
            "DescrptDPA1" | "DescrptSeAttenV2" => &SE_ATTEN_LAYERS,
            "EnergyFittingNet" => &["FN", "MLPLayer", "ActivationFn", "SiLUT", "AtomExcludeMask"],
            "AtomExcludeMask" => &[],
            other => return Err(component(other)),
        };
        let root = root_scope(scope);
        if roots.get(class).is_some_and(|r| *r != root) {
            return Err(unsupported(format!("{class} traced twice ({root})")));
        }
        let inner = scope.trim_start_matches('/').split('/').skip(1);
        for part in inner.filter(|p| !p.is_empty()) {
            if !allowed.contains(&root_class(part)) {
                return Err(unsupported(format!("the scope {scope} (layer {part})")));
            }
        }
        if !SCOPED_OPS.contains(&op.kind.as_str()) {
            return Err(unsupported(format!(
                "operation {} in {scope}, which dpc was not checked on",
                op.kind
            )));
        }
        roots.insert(class, root);
    }
    let mut found = Vec::new();
    for (class, kind) in [
        ("DescrptSeA", Kind::SeA),
        ("DescrptDPA1", Kind::Dpa1),
        ("DescrptSeAttenV2", Kind::SeAttenV2),
    ] {
        if let Some(root) = roots.remove(class) {
            found.push((kind, root));
        }
    }
    if found.len() > 1 {
        return Err(unsupported(format!(
            "{} descriptors in one program (a hybrid descriptor?)",
            found.len()
        )));
    }
    match (found.pop(), roots.remove("EnergyFittingNet")) {
        (Some((kind, desc_root)), Some(fit_root)) => Ok(Components {
            kind,
            desc_root,
            fit_root,
        }),
        _ => Err(bad(
            "no descriptor and energy fitting scopes: not a DeePMD-kit model program",
        )),
    }
}
