//! `dpc info MODEL`

use anyhow::Result;
use dpc_compiler::model::{Descriptor, Model};
use dpc_formats::Value;

use crate::source::read_tree;

#[derive(clap::Args)]
pub struct Args {
    /// Model file or built-in model.
    model: String,
}

/// Returns what to print on standard output.
pub fn run(a: Args) -> Result<String> {
    let mut out = String::new();
    if a.model.ends_with(".savedmodel") || a.model.ends_with(".savedmodel/") {
        return savedmodel_info(&a.model);
    }
    let (tree, format) = read_tree(&a.model)?;
    outln!(out, "model        {}", a.model);
    outln!(out, "format       {format}");
    for key in ["software", "version", "backend", "time"] {
        if let Some(v) = tree.get(key).and_then(Value::as_str) {
            outln!(out, "{key:<12} {v}");
        }
    }
    let m = tree.get("model").unwrap_or(&tree);
    if let Some(t) = m.get("type_map").and_then(Value::as_list) {
        let names: Vec<&str> = t.iter().filter_map(Value::as_str).collect();
        outln!(out, "type_map     {}", names.join(" "));
    }
    if let Some(kind) = m
        .get("descriptor")
        .and_then(|d| d.get("type"))
        .and_then(Value::as_str)
    {
        outln!(out, "descriptor   {kind}");
    }
    let model = Model::from_tree(&tree)?;
    let d = &model.descriptor;
    outln!(out, "evaluates as {}", d.name());
    outln!(
        out,
        "rcut         {} Å (smooth from {} Å)",
        d.rcut(),
        d.env().rcut_smth
    );
    let sel = model.sel();
    if d.mixed_types() {
        outln!(out, "sel          {} (all types together)", sel[0]);
    } else {
        outln!(out, "sel          {:?} (nnei {})", sel, model.nnei());
    }
    match d {
        Descriptor::SeA(s) => outln!(
            out,
            "embedding    type_one_side {}, axis_neuron {}",
            s.type_one_side,
            s.axis_neuron
        ),
        Descriptor::Dpa1(s) => outln!(
            out,
            "attention    {} layers, tebd {:?}, smooth {}",
            s.attention.len(),
            s.tebd_input,
            s.smooth_type_embedding
        ),
        _ => {}
    }
    outln!(out, "dim_descrpt  {}", d.dim_out());
    outln!(
        out,
        "precision    descriptor {}, fitting {}",
        d.dtype(),
        model.fitting.dtype
    );
    outln!(
        out,
        "dim_fparam   {}{}",
        model.dim_fparam(),
        if model.fitting.default_fparam.is_some() {
            " (has default)"
        } else {
            ""
        }
    );
    outln!(out, "dim_aparam   {}", model.dim_aparam());
    if let Some(m) = model.min_nbor_dist {
        outln!(out, "min_nbor     {m} Å");
    }
    if !model.pair_exclude_types.is_empty() || !model.atom_exclude_types.is_empty() {
        outln!(
            out,
            "exclusions   pairs {:?}, atoms {:?}",
            model.pair_exclude_types,
            model.atom_exclude_types
        );
    }
    let params = tree.get("model").unwrap_or(&tree).count_array_elements();
    outln!(out, "parameters   {params}");
    if let Some(vars) = tree.get("@variables").and_then(Value::as_dict) {
        for (k, v) in vars {
            let Value::Bytes(b) = v else { continue };
            match dpc_formats::jax_export::info(b) {
                Ok(x) => {
                    outln!(out, "export       {k}: {} ({} bytes of StableHLO {}), platforms {}, serialization v{}, calling convention v{}",
                        x.function_name, x.module_bytes, if x.module_is_bytecode { "bytecode" } else { "text" },
                        x.platforms.join(","), x.serialization_version, x.calling_convention_version);
                    let show = |v: &[dpc_formats::jax_export::Aval]| {
                        v.iter()
                            .map(|a| a.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    };
                    outln!(out, "               in  ({})", show(&x.inputs));
                    outln!(out, "               out ({})", show(&x.outputs));
                }
                Err(e) => outln!(
                    out,
                    "export       {k}: {} bytes, unreadable header ({e})",
                    b.len()
                ),
            }
        }
    }
    Ok(out)
}

/// A JAX SavedModel: its getters and compiled modules (its weights are not recoverable).
fn savedmodel_info(path: &str) -> Result<String> {
    let mut out = String::new();
    let info = dpc_formats::savedmodel::inspect(std::path::Path::new(path))?;
    outln!(out, "model        {path}");
    outln!(out, "format       savedmodel (JAX, via jax2tf)");
    for (k, v) in &info.attributes {
        if k == "get_model_def_script" {
            continue;
        }
        let shown = match v {
            Value::Array(a) => {
                let items: Vec<String> = (0..a.len())
                    .map(|i| {
                        a.get_i64(i)
                            .map_or_else(|| a.get_f64(i).to_string(), |v| v.to_string())
                    })
                    .collect();
                format!("[{}]", items.join(", "))
            }
            other => dpc_formats::json::write(other).unwrap_or_default(),
        };
        outln!(out, "{k:<24} {shown}");
    }
    if let Some(d) = info
        .model_def_script
        .as_ref()
        .and_then(|s| s.get("descriptor"))
        .and_then(|d| d.get("type"))
        .and_then(Value::as_str)
    {
        outln!(out, "descriptor   {d} (from get_model_def_script)");
    }
    for (size, platforms) in &info.modules {
        outln!(
            out,
            "xla module   {size} bytes of StableHLO, platforms {}",
            platforms.join(",")
        );
    }
    outln!(out, "weights      compiled into the XLA modules; not recoverable (evaluate or convert the .hlo/.dp/.pth it came from)");
    Ok(out)
}
