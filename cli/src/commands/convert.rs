//! `dpc convert IN OUT` and `dpc emit MODEL --format FMT -o OUT`: write a model in another
//! format, through the serialization tree (lossless: weights are copied bit for bit).

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use dpc_compiler::lower::hlo_file::{hlo_tree, HloOptions, Platform};
use dpc_compiler::model::Model;
use dpc_formats::{Format, Value};

use crate::source::read_tree;

#[derive(clap::Args)]
pub struct ConvertArgs {
    /// Model to read (any supported format, or a built-in model).
    input: String,
    /// File to write; its extension picks the format.
    output: PathBuf,
}

#[derive(clap::Args)]
pub struct EmitArgs {
    /// Model to read (any supported format, or a built-in model).
    model: String,
    /// Target format: dp, yaml, hlo, xlo, pth, pte, pb (models without message passing),
    /// savedmodel (pt2: not reachable, it is compiled code).
    #[arg(long)]
    format: String,
    /// File to write.
    #[arg(short, long)]
    output: PathBuf,
}

pub fn convert(a: ConvertArgs) -> Result<String> {
    let format = Format::from_path(&a.output)?;
    write(&a.input, &a.output, format)
}

pub fn emit(a: EmitArgs) -> Result<String> {
    let format = match a.format.to_ascii_lowercase().as_str() {
        "dp" => Format::Dp,
        "yaml" | "yml" => Format::Yaml,
        "hlo" | "xlo" => Format::Hlo,
        "pth" => Format::Pth,
        "pb" => Format::Pb,
        "pte" => Format::Pte,
        "pt2" => bail!(PT2_UNREACHABLE),
        "savedmodel" => Format::SavedModel,
        "json" | "paddle" => Format::Paddle,
        other => {
            bail!("unknown format `{other}` (dp, yaml, pb, pth, pte, pt2, savedmodel, hlo, xlo)")
        }
    };
    write(&a.model, &a.output, format)
}

/// Why dpc writes no `.pt2`.
const PT2_UNREACHABLE: &str = "writing .pt2 is not supported: a .pt2 holds AOTInductor-compiled machine code that only PyTorch's compiler makes; write .pte (the same program, which DeePMD-kit's pt_expt backend runs) or .pth";

fn write(input: &str, output: &Path, format: Format) -> Result<String> {
    let (tree, from) = read_tree(input)?;
    let note = tf_note(&tree);
    let tree = hub_tree(tree);
    // Refuse to write something dpc could not read back as a model.
    let model = Model::from_tree(&tree)?;
    let bytes = match format {
        Format::Dp => dpc_formats::dp::write(&tree)?,
        Format::Yaml => dpc_formats::yaml::write(&tree)?.into_bytes(),
        // The tree plus its StableHLO exports for the CPU (`dpc compile` picks the device).
        Format::Hlo => {
            let opts = HloOptions {
                platform: Platform::Cpu,
                precision: None,
                compress: None,
            };
            dpc_formats::dp::write(&hlo_tree(&tree, &model, opts)?)?
        }
        // TorchScript generated from the IR, for DeePMD-kit's PyTorch backend.
        Format::Pth => dpc_compiler::lower::torchscript::pth_archive(&tree, &model)?,
        // A frozen TensorFlow graph on DeePMD-kit's ops, for its TF runtime and LAMMPS.
        Format::Pb => dpc_compiler::lower::tf_graph::pb_graph(&tree, &model)?,
        // A torch.export program (ATen nodes) for DeePMD-kit's pt_expt backend.
        Format::Pte if output.extension().is_some_and(|e| e.eq_ignore_ascii_case("pt2")) => {
            bail!(PT2_UNREACHABLE)
        }
        Format::Pte => dpc_compiler::lower::torch_export::pte_archive(&tree, &model)?,
        // A SavedModel directory for DeePMD-kit's C++ `DeepPotJAX` (LAMMPS).
        Format::SavedModel => {
            let pb = dpc_compiler::lower::tf_graph::savedmodel::saved_model(&tree, &model)?;
            dpc_formats::savedmodel::write_dir(output, &pb)?;
            return Ok(format!(
                "wrote {} ({} -> savedmodel, for DeePMD-kit's JAX backend: its DeepPot and LAMMPS plugin)\n{note}",
                output.display(),
                from
            ));
        }
        other => bail!(
            "writing .{} models is not supported (dpc writes .dp, .yaml, .hlo/.xlo, .pth, .pte, .pb and .savedmodel)",
            other.name()
        ),
    };
    std::fs::write(output, bytes)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", output.display()))?;
    Ok(format!(
        "wrote {} ({} -> {})\n{note}",
        output.display(),
        from,
        format.name()
    ))
}

/// What changes when a model leaves TensorFlow's runtime: the written tree is the model the
/// graph was built from, evaluated by every other backend without TF's `out_std` scaling.
fn tf_note(tree: &Value) -> String {
    if tree.get("@dpc_runtime").and_then(Value::as_str) != Some("tensorflow") {
        return String::new();
    }
    let std_is_one = tree
        .get("model")
        .and_then(|m| m.get("@variables"))
        .and_then(|v| v.get("out_std"))
        .and_then(Value::as_array)
        .is_none_or(|a| a.to_f64_vec().iter().all(|&x| x == 1.0));
    if std_is_one {
        return String::new();
    }
    "note: DeePMD-kit's TensorFlow runtime scales this .pb's atomic energies by out_std; the other \
     backends (and the file written) do not, so its predictions there differ (see docs/formats.md)\n"
        .to_string()
}

/// The model as DeePMD-kit's converters pass it between backends: exports compiled for
/// one runtime (`.hlo`'s StableHLO blobs and `constants`) are derived data and are dropped;
/// the writer's metadata names dpc.
fn hub_tree(tree: Value) -> Value {
    let Value::Dict(mut d) = tree else {
        return tree;
    };
    d.shift_remove("constants");
    d.shift_remove("@dpc_runtime");
    if let Some(Value::Dict(vars)) = d.get_mut("@variables") {
        vars.retain(|k, _| !k.starts_with("stablehlo"));
    }
    d.insert("software".into(), Value::Str("dpc".into()));
    d.insert(
        "version".into(),
        Value::Str(env!("CARGO_PKG_VERSION").into()),
    );
    d.insert("time".into(), Value::Str(utc_now()));
    Value::Dict(d)
}

/// The current UTC time as Python's `str(datetime.now(timezone.utc))` writes it.
fn utc_now() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + (month <= 2) as i64;
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}.{:06}+00:00",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        now.subsec_micros()
    )
}
