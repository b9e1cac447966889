//! `dpc test -m MODEL -s SYSTEM [-n N]`: errors on a deepmd/npy system, reported like `dp test`.
//!
//! A system directory holds `type.raw` (one type per atom), optionally `type_map.raw` (type
//! names, mapped onto the model's type map by name) and `nopbc` (non-periodic), and `set.*/`
//! directories with `coord.npy`, `box.npy`, `energy.npy`, `force.npy` and optionally
//! `virial.npy`, `fparam.npy`, `aparam.npy`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use dpc_formats::NdArray;
use dpc_runtime::Frame;

use crate::source::read_tree;

#[derive(clap::Args)]
pub struct Args {
    /// Model file or built-in model.
    #[arg(short, long)]
    model: String,
    /// deepmd/npy system directory.
    #[arg(short, long)]
    system: PathBuf,
    /// Test at most this many frames (default: all).
    #[arg(short = 'n', long)]
    numb_test: Option<usize>,
    #[command(flatten)]
    build: crate::build_args::BuildArgs,
    #[command(flatten)]
    device: crate::device_args::DeviceArgs,
}

fn load_npy(p: &Path) -> Result<Option<NdArray>> {
    if !p.exists() {
        return Ok(None);
    }
    let bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
    Ok(Some(
        dpc_formats::npy::read(&bytes).with_context(|| p.display().to_string())?,
    ))
}

fn read_words(p: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
    Ok(text.split_whitespace().map(String::from).collect())
}

/// Running sums for MAE and RMSE.
#[derive(Default)]
struct Err2 {
    abs: f64,
    sq: f64,
    n: usize,
}

impl Err2 {
    fn add(&mut self, d: f64) {
        self.abs += d.abs();
        self.sq += d * d;
        self.n += 1;
    }

    fn mae(&self) -> f64 {
        self.abs / self.n.max(1) as f64
    }

    fn rmse(&self) -> f64 {
        (self.sq / self.n.max(1) as f64).sqrt()
    }
}

fn det3(c: &[f64]) -> f64 {
    c[0] * (c[4] * c[8] - c[5] * c[7]) - c[1] * (c[3] * c[8] - c[5] * c[6])
        + c[2] * (c[3] * c[7] - c[4] * c[6])
}

/// Python's `f"{x:e}"`.
fn sci(x: f64) -> String {
    let s = format!("{x:.6e}");
    let (m, e) = s.split_once('e').unwrap();
    let e: i32 = e.parse().unwrap();
    format!("{m}e{}{:02}", if e < 0 { '-' } else { '+' }, e.abs())
}

/// Returns what to print on standard output.
pub fn run(a: Args) -> Result<String> {
    let mut out = String::new();
    let (tree, _) = read_tree(&a.model)?;
    let pot = a.device.attach(a.build.load(tree)?)?;
    let model = pot.model();
    let sys = &a.system;
    if !sys.is_dir() {
        bail!("{} is not a deepmd/npy system directory", sys.display());
    }
    let raw_types: Vec<usize> = read_words(&sys.join("type.raw"))?
        .iter()
        .map(|w| {
            w.parse::<usize>()
                .with_context(|| format!("type.raw: `{w}` is not a type index"))
        })
        .collect::<Result<_>>()?;
    let natoms = raw_types.len();
    let atype: Vec<i32> = match sys.join("type_map.raw").exists() {
        true => {
            let names = read_words(&sys.join("type_map.raw"))?;
            raw_types
                .iter()
                .map(|&t| {
                    let name = names
                        .get(t)
                        .with_context(|| format!("type {t} has no name in type_map.raw"))?;
                    let idx = model.type_map.iter().position(|m| m == name);
                    idx.map(|i| i as i32).with_context(|| {
                        format!(
                            "element {name} is not in the model's type map {:?}",
                            model.type_map
                        )
                    })
                })
                .collect::<Result<_>>()?
        }
        false => raw_types.iter().map(|&t| t as i32).collect(),
    };
    let periodic = !sys.join("nopbc").exists();
    let mut sets: Vec<PathBuf> = std::fs::read_dir(sys)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_dir()
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("set."))
        })
        .collect();
    sets.sort();
    if sets.is_empty() {
        bail!("{} has no set.* directories", sys.display());
    }
    let (mut e, mut ea, mut f) = (Err2::default(), Err2::default(), Err2::default());
    let (mut v, mut va, mut st) = (Err2::default(), Err2::default(), Err2::default());
    let mut tested = 0usize;
    let limit = a.numb_test.unwrap_or(usize::MAX);
    'sets: for set in &sets {
        let need = |name: &str| -> Result<NdArray> {
            load_npy(&set.join(name))?.with_context(|| format!("{} lacks {name}", set.display()))
        };
        let coord = need("coord.npy")?.to_f64_vec();
        let nframes = coord.len() / (natoms * 3).max(1);
        if coord.len() != nframes * natoms * 3 {
            bail!(
                "{}: coord.npy does not hold whole frames of {natoms} atoms",
                set.display()
            );
        }
        let cell = if periodic {
            Some(need("box.npy")?.to_f64_vec())
        } else {
            None
        };
        let energy = load_npy(&set.join("energy.npy"))?.map(|x| x.to_f64_vec());
        let force = load_npy(&set.join("force.npy"))?.map(|x| x.to_f64_vec());
        let virial = load_npy(&set.join("virial.npy"))?.map(|x| x.to_f64_vec());
        let fparam = load_npy(&set.join("fparam.npy"))?.map(|x| x.to_f64_vec());
        let aparam = load_npy(&set.join("aparam.npy"))?.map(|x| x.to_f64_vec());
        let (nfp, nap) = (model.dim_fparam(), model.dim_aparam());
        for k in 0..nframes {
            if tested >= limit {
                break 'sets;
            }
            let frame = Frame {
                coord: &coord[k * natoms * 3..(k + 1) * natoms * 3],
                atype: &atype,
                cell: cell.as_ref().map(|c| &c[k * 9..k * 9 + 9]),
                fparam: fparam
                    .as_ref()
                    .filter(|_| nfp > 0)
                    .map(|p| &p[k * nfp..(k + 1) * nfp]),
                aparam: aparam
                    .as_ref()
                    .filter(|_| nap > 0)
                    .map(|p| &p[k * natoms * nap..(k + 1) * natoms * nap]),
            };
            let out = pot
                .compute(&frame, false)
                .with_context(|| format!("{} frame {k}", set.display()))?;
            if let Some(en) = &energy {
                e.add(out.energy - en[k]);
                ea.add((out.energy - en[k]) / natoms as f64);
            }
            if let Some(fr) = &force {
                for (p, r) in out
                    .force
                    .iter()
                    .zip(&fr[k * natoms * 3..(k + 1) * natoms * 3])
                {
                    f.add(p - r);
                }
            }
            if let Some(vr) = &virial {
                // Stress sigma = -virial / volume (periodic systems only), as dp test reports.
                let volume = frame.cell.map(|c| det3(c).abs());
                for (p, r) in out.virial.iter().zip(&vr[k * 9..k * 9 + 9]) {
                    v.add(p - r);
                    va.add((p - r) / natoms as f64);
                    if let Some(vol) = volume {
                        st.add(-(p - r) / vol);
                    }
                }
            }
            tested += 1;
        }
    }
    outln!(out, "# number of test data : {tested} ");
    if e.n > 0 {
        outln!(out, "Energy MAE         : {} eV", sci(e.mae()));
        outln!(out, "Energy RMSE        : {} eV", sci(e.rmse()));
        outln!(out, "Energy MAE/Natoms  : {} eV", sci(ea.mae()));
        outln!(out, "Energy RMSE/Natoms : {} eV", sci(ea.rmse()));
    }
    if f.n > 0 {
        outln!(out, "Force  MAE         : {} eV/Å", sci(f.mae()));
        outln!(out, "Force  RMSE        : {} eV/Å", sci(f.rmse()));
    }
    if v.n > 0 {
        outln!(out, "Virial MAE         : {} eV", sci(v.mae()));
        outln!(out, "Virial RMSE        : {} eV", sci(v.rmse()));
        outln!(out, "Virial MAE/Natoms  : {} eV", sci(va.mae()));
        outln!(out, "Virial RMSE/Natoms : {} eV", sci(va.rmse()));
    }
    if st.n > 0 {
        outln!(out, "Stress MAE         : {} eV/Å³", sci(st.mae()));
        outln!(out, "Stress RMSE        : {} eV/Å³", sci(st.rmse()));
    }
    Ok(out)
}
