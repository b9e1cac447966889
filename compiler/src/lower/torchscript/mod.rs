//! The IR as a TorchScript module (`.pth`) that DeePMD-kit's PyTorch backend loads: the
//! methods its `DeepPot` and C++ `DeepPotPT` call (`forward`, `forward_lower`, `get_rcut`,
//! `get_type_map`, ...), written as TorchScript source around two lowered graphs (with and
//! without DeePMD-kit's per-atom virial correction).
//!
//! `forward` builds the extended system and neighbour list as DeePMD-kit's
//! `extend_input_and_build_neighbor_list` does (wrap into the cell, periodic images ordered
//! by shift length, the `sum(sel)` nearest neighbours, split by type for per-type
//! descriptors); `forward_lower` takes them from the caller and formats the list as
//! `format_nlist` does. Forces and virials are the IR's autodiff, so the module needs no
//! `torch.autograd`. The serialization tree goes in `extra/model.json`, so dpc reads the
//! file back losslessly.

pub(crate) mod ops;

use dpc_formats::json::{python_float_repr, write_string};
use dpc_formats::torchscript_write::{Archive, Attr};
use dpc_formats::{DType as FDType, Value};

use crate::build::{build_graph, BuildOptions};
use crate::graph::{verify::verify, DType, GraphError, Tensor};
use crate::lower::model_def_script::model_def_script;
use crate::model::Model;

const TEMPLATE: &str = include_str!("model.py");

fn py_float(x: f64) -> String {
    python_float_repr(x, "float(\"nan\")", "float(\"inf\")")
}

fn py_bool(b: bool) -> &'static str {
    if b {
        "True"
    } else {
        "False"
    }
}

fn py_ints(v: &[usize]) -> String {
    let items: Vec<String> = v.iter().map(|i| i.to_string()).collect();
    format!("annotate(List[int], [{}])", items.join(", "))
}

/// A `.pth` archive of `model` (whose serialization tree is `tree`).
pub fn pth_archive(tree: &Value, model: &Model) -> Result<Vec<u8>, GraphError> {
    let mut consts = ops::Consts::default();
    let mut methods = String::new();
    for (name, atomic_virial) in [("_graph", false), ("_graph_atomic_virial", true)] {
        let g = build_graph(
            model,
            BuildOptions {
                atomic_virial,
                unfused: true,
                flat_frames: true,
                precision: None,
                compress: None,
            },
        )?;
        verify(&g).map_err(|e| GraphError(format!("the built graph fails verification: {e}")))?;
        methods.push_str(&ops::method(&g, name, &mut consts)?);
    }

    let rcut = model.rcut();
    let sel = model.sel();
    let (dfp, dap) = (model.dim_fparam(), model.dim_aparam());
    let default_fparam = model.default_fparam();
    let type_map = {
        let mut s = String::from("[");
        for (i, t) in model.type_map.iter().enumerate() {
            if i > 0 {
                s.push_str(", ");
            }
            write_string(t, &mut s);
        }
        s.push(']');
        s
    };
    // The serialized dialect's raise does not end a branch for the compiler's definedness
    // check, so the branch still assigns its result.
    let raise = |what: &str, shape: &str| {
        format!(
            "ops.prim.RaiseException(\"this model needs {what}\", \"builtins.RuntimeError\")\n      _0 = torch.zeros({shape}, dtype=7, layout=None, device=dev)"
        )
    };
    let fparam_default = if dfp == 0 {
        "_0 = torch.zeros([nf, 0], dtype=7, layout=None, device=dev)".to_string()
    } else if default_fparam.is_some() {
        "_0 = torch.tile(torch.unsqueeze(self.default_fparam, 0), [nf, 1])".to_string()
    } else {
        raise(&format!("fparam ({dfp} per frame)"), "[nf, 0]")
    };
    let aparam_default = if dap == 0 {
        "_0 = torch.zeros([nf, nloc, 0], dtype=7, layout=None, device=dev)".to_string()
    } else {
        raise(&format!("aparam ({dap} per atom)"), "[nf, nloc, 0]")
    };
    let mut buffers: Vec<String> = (0..consts.tensors.len()).map(|i| format!("c{i}")).collect();
    if default_fparam.is_some() {
        buffers.push("default_fparam".into());
    }
    let attrs_decl: String = buffers
        .iter()
        .map(|b| format!("  {b} : Tensor\n"))
        .collect();
    let subs: Vec<(&str, String)> = vec![
        (
            "BUFFERS",
            buffers
                .iter()
                .map(|b| format!("\"{b}\", "))
                .collect::<String>(),
        ),
        ("ATTRS", attrs_decl.trim_end().to_string()),
        ("RCUT", py_float(rcut)),
        ("TWO_RCUT", py_float(2.0 * rcut)),
        ("NSEL", model.nnei().to_string()),
        ("NNEI", model.nnei().to_string()),
        ("SEL", py_ints(&sel)),
        ("NTYPES", model.ntypes().to_string()),
        ("TYPE_MAP", type_map),
        ("DIM_FPARAM", dfp.to_string()),
        ("DIM_APARAM", dap.to_string()),
        ("FPARAM_DEFAULT", fparam_default),
        ("APARAM_DEFAULT", aparam_default),
        (
            "HAS_DEFAULT_FPARAM",
            py_bool(default_fparam.is_some()).to_string(),
        ),
        (
            "GET_DEFAULT_FPARAM",
            if default_fparam.is_some() {
                "return self.default_fparam".to_string()
            } else {
                "return None".to_string()
            },
        ),
        ("ATOM_EXCLUDE", py_ints(&model.atom_exclude_types)),
        ("MIXED_TYPES", py_bool(model.mixed_types()).to_string()),
        (
            "DISTINGUISH_TYPES",
            py_bool(!model.mixed_types()).to_string(),
        ),
        (
            "NEEDS_MAPPING",
            py_bool(model.descriptor.has_message_passing()).to_string(),
        ),
        (
            "MIN_NBOR_DIST",
            model.min_nbor_dist.map_or("None".to_string(), py_float),
        ),
    ];
    let mut code = TEMPLATE.to_string();
    for (k, v) in &subs {
        code = code.replace(&format!("{{{{{k}}}}}"), v);
    }
    if let Some(i) = code.find("{{") {
        let end = code[i..].find("}}").map_or(code.len(), |e| i + e + 2);
        return Err(GraphError(format!(
            "TorchScript template: unfilled {}",
            &code[i..end]
        )));
    }
    code.push_str(&methods);

    let mut attrs: Vec<(String, Attr)> = vec![
        ("training".into(), Attr::Bool(false)),
        (
            "model_def_script".into(),
            Attr::Str(model_def_script(
                tree,
                model,
                "the serialized model is extra/model.json",
            )),
        ),
    ];
    for (i, t) in consts.tensors.iter().enumerate() {
        attrs.push((format!("c{i}"), tensor_attr(t)));
    }
    if let Some(d) = default_fparam {
        attrs.push((
            "default_fparam".into(),
            tensor_attr(&Tensor::f64(vec![d.len()], d.to_vec())),
        ));
    }
    let mut ar = Archive::new("model");
    ar.code("__torch__/dpc.py", code);
    let json = dpc_formats::json::write_tree(tree)
        .map_err(|e| GraphError(format!("writing extra/model.json: {e}")))?;
    ar.extra("model.json", json.into_bytes());
    ar.finish("__torch__.dpc.Model", &attrs)
        .map_err(|e| GraphError(format!("writing the TorchScript archive: {e}")))
}

fn tensor_attr(t: &Tensor) -> Attr {
    let dtype = match t.dtype() {
        DType::F64 => FDType::F64,
        DType::F32 => FDType::F32,
        DType::I32 => FDType::I32,
        DType::Bool => FDType::Bool,
    };
    Attr::Tensor {
        dtype,
        shape: t.shape.clone(),
        bytes: t.to_le_bytes(),
    }
}
