//! The `.hlo`/`.xlo` container DeePMD-kit's JAX backend loads
//! (`deepmd/jax/utils/serialization.py: deserialize_to_file`, `deepmd/jax/infer/deep_eval.py`):
//! the model's serialization tree, plus under `@variables` the four exports of
//! `call_common_lower` (with and without atomic virial, with and without ghosts) and under
//! `constants` what DeePMD-kit's `HLO` class is constructed from.

use dpc_formats::jax_export::{self, ArrayType, Exported, Tree};
use dpc_formats::{Dict, Value};

use super::stablehlo::{export, LowerOptions, Port, PortType, Variant};
use crate::graph::{DType, GraphError};
use crate::model::Model;

/// Where the executable is meant to run (`jax.export`'s platform names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Platform {
    Cpu,
    Cuda,
    /// One module for both (`main` takes the platform index JAX passes, and ignores it).
    CpuAndCuda,
}

impl Platform {
    pub fn name(self) -> &'static str {
        match self {
            Platform::Cpu => "cpu",
            Platform::Cuda => "cuda",
            Platform::CpuAndCuda => "cpu and cuda",
        }
    }

    /// `jax.export`'s platform list.
    pub fn platforms(self) -> Vec<String> {
        match self {
            Platform::Cpu => vec!["cpu".into()],
            Platform::Cuda => vec!["cuda".into()],
            Platform::CpuAndCuda => vec!["cpu".into(), "cuda".into()],
        }
    }

    /// `cpu`, `cuda` (or `gpu`), or both (`cpu,cuda` or `all`).
    pub fn parse(s: &str) -> Option<Platform> {
        match s.to_ascii_lowercase().replace(' ', "").as_str() {
            "cpu" => Some(Platform::Cpu),
            "cuda" | "gpu" => Some(Platform::Cuda),
            "cpu,cuda" | "cuda,cpu" | "all" => Some(Platform::CpuAndCuda),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct HloOptions {
    pub platform: Platform,
    pub precision: Option<DType>,
    /// Tabulated embedding networks (`--compress`).
    pub compress: Option<crate::build::Compress>,
}

fn array_type(p: &Port) -> ArrayType {
    ArrayType {
        dtype: match p.dtype {
            PortType::F64 => "f64",
            PortType::I32 => "i32",
            PortType::I64 => "i64",
        },
        shape: p.shape.clone(),
    }
}

/// One serialized export of `model` (a blob of `@variables`).
pub fn serialized_export(
    model: &Model,
    variant: Variant,
    opts: HloOptions,
) -> Result<Vec<u8>, GraphError> {
    let e = export(
        model,
        variant,
        LowerOptions {
            precision: opts.precision,
            sizes: None,
            compress: opts.compress,
            platform_index: opts.platform == Platform::CpuAndCuda,
        },
    )?;
    let has = |n: &str| e.args.iter().any(|p| p.name == n);
    let leaf_or_none = |b: bool| if b { Tree::Leaf } else { Tree::None };
    let in_tree = Tree::Tuple(vec![
        Tree::Tuple(vec![
            Tree::Leaf,
            Tree::Leaf,
            Tree::Leaf,
            Tree::Leaf,
            leaf_or_none(has("fparam")),
            leaf_or_none(has("aparam")),
        ]),
        Tree::Dict(vec![]),
    ]);
    let out_tree = Tree::Dict(
        e.results
            .iter()
            .map(|p| (p.name.clone(), Tree::Leaf))
            .collect(),
    );
    jax_export::write(&Exported {
        function_name: "dpc_call_common_lower".into(),
        in_tree,
        inputs: e.args.iter().map(array_type).collect(),
        out_tree,
        outputs: e.results.iter().map(array_type).collect(),
        platforms: opts.platform.platforms(),
        module: e.mlir.into_bytes(),
        shape_polymorphic: true,
    })
    .map_err(GraphError)
}

/// The `.hlo` tree: `source` (the model's serialization tree) with the exports and
/// constants added.
pub fn hlo_tree(source: &Value, model: &Model, opts: HloOptions) -> Result<Value, GraphError> {
    let Value::Dict(top) = source else {
        return Err(GraphError("the model tree is not a dict".into()));
    };
    let mut top = top.clone();
    let mut vars = match top.shift_remove("@variables") {
        Some(Value::Dict(d)) => d,
        _ => Dict::new(),
    };
    for (key, variant) in Variant::ALL {
        vars.insert(
            key.to_string(),
            Value::Bytes(serialized_export(model, variant, opts)?),
        );
    }
    top.insert("@variables".into(), Value::Dict(vars));
    top.insert("constants".into(), Value::Dict(constants(model)));
    Ok(Value::Dict(top))
}

/// The keyword arguments of DeePMD-kit's `HLO(...)` besides the exports.
fn constants(m: &Model) -> Dict {
    let ints = |v: Vec<usize>| Value::List(v.into_iter().map(|x| Value::Int(x as i64)).collect());
    let mut c = Dict::new();
    c.insert(
        "type_map".into(),
        Value::List(m.type_map.iter().map(|s| Value::Str(s.clone())).collect()),
    );
    c.insert("rcut".into(), Value::Float(m.rcut()));
    c.insert("numb_dos".into(), Value::Int(0));
    c.insert("dim_fparam".into(), Value::Int(m.dim_fparam() as i64));
    c.insert("dim_aparam".into(), Value::Int(m.dim_aparam() as i64));
    c.insert(
        "sel_type".into(),
        ints(
            (0..m.ntypes())
                .filter(|t| !m.fitting.exclude_types.contains(t))
                .collect(),
        ),
    );
    c.insert("is_aparam_nall".into(), Value::Bool(false));
    c.insert(
        "model_output_type".into(),
        Value::List(vec![Value::Str("energy".into()), Value::Str("mask".into())]),
    );
    c.insert("mixed_types".into(), Value::Bool(m.mixed_types()));
    c.insert(
        "min_nbor_dist".into(),
        m.min_nbor_dist.map_or(Value::Null, Value::Float),
    );
    c.insert("sel".into(), ints(m.sel()));
    c.insert(
        "has_default_fparam".into(),
        Value::Bool(m.fitting.default_fparam.is_some()),
    );
    c.insert(
        "default_fparam".into(),
        m.fitting.default_fparam.as_ref().map_or(Value::Null, |v| {
            Value::List(v.iter().map(|&x| Value::Float(x)).collect())
        }),
    );
    c.insert("var_name".into(), Value::Null);
    c.insert("task_dim".into(), Value::Null);
    c.insert("intensive".into(), Value::Bool(false));
    c
}
