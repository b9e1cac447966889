//! Running a model through a PJRT plugin (`--pjrt-plugin`, `DPC_PJRT_PLUGIN`): the model is
//! lowered to StableHLO (`compiler::lower::stablehlo`, DeePMD-kit's `call_common_lower`)
//! with static shapes, compiled by the plugin for its device (cpu or cuda), and run there.
//!
//! PJRT compiles static shapes only, so sizes are rounded up to buckets and padded with
//! virtual atoms (type -1, in no neighbour list, masked out of the energy): a compiled
//! executable serves every system whose sizes fall in its bucket, and an MD run recompiles
//! only when its atom counts leave the bucket. Executables are cached per bucket.

mod client;
mod ffi;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

pub use client::{Compiled, Elem, HostArray, PjrtError, Plugin};

use dpc_compiler::lower::stablehlo::{export, LowerOptions, StaticSizes, Variant};
use dpc_compiler::model::Model;

use crate::deep_pot::{EvalError, ExtendedOutput};
use crate::nlist::Extended;

/// The device a plugin drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    Cpu,
    Cuda,
}

impl Device {
    pub fn parse(s: &str) -> Result<Device, String> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" | "gpu" => Ok(Device::Cuda),
            other => Err(format!("unknown device `{other}` (use cpu or cuda)")),
        }
    }
}

/// Sizes are padded up to these: multiples of 16 up to 64, then of a sixteenth of the next
/// power of two (under 12.5% padding).
fn bucket(n: usize) -> usize {
    if n == 0 {
        return 0;
    }
    let step = if n <= 64 {
        16
    } else {
        (n.next_power_of_two() / 16).max(16)
    };
    n.div_ceil(step) * step
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    sizes: StaticSizes,
    atomic: bool,
}

/// A model compiled by a PJRT plugin.
pub struct PjrtModel {
    plugin: Plugin,
    model: Model,
    lower: LowerOptions,
    cache: Mutex<HashMap<Key, Compiled>>,
}

fn dev_err(e: impl std::fmt::Display) -> EvalError {
    EvalError::Device(e.to_string())
}

impl PjrtModel {
    pub fn new(
        plugin: &Path,
        device: Device,
        model: Model,
        lower: LowerOptions,
    ) -> Result<PjrtModel, EvalError> {
        let plugin = Plugin::load(plugin, device == Device::Cpu).map_err(dev_err)?;
        let want = match device {
            Device::Cpu => "cpu",
            Device::Cuda => "cuda",
        };
        let is = plugin.platform.to_ascii_lowercase();
        let matches = is == want || (device == Device::Cuda && (is == "gpu" || is == "cuda"));
        if !matches {
            return Err(EvalError::Device(format!(
                "the plugin runs on `{}`, not `{want}`",
                plugin.platform
            )));
        }
        Ok(PjrtModel {
            plugin,
            model,
            lower,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// The plugin's platform name and PJRT C API version.
    pub fn describe(&self) -> String {
        let (a, b) = self.plugin.api_version;
        format!("PJRT {} (C API {a}.{b})", self.plugin.platform)
    }

    /// Evaluate an extended system (DeePMD-kit's lower interface, one frame).
    pub fn evaluate_extended(
        &self,
        ext: &Extended,
        fparam: Option<&[f64]>,
        aparam: Option<&[f64]>,
        atomic: bool,
    ) -> Result<ExtendedOutput, EvalError> {
        let m = &self.model;
        let (nloc, nall, nnei) = (ext.nloc, ext.nall, ext.nnei);
        let nloc_b = bucket(nloc);
        let nall_b = nloc_b + bucket(nall - nloc);
        let sizes = StaticSizes {
            nf: 1,
            nloc: nloc_b,
            nall: nall_b,
        };
        // Extended atom k in the padded layout: locals, padding, ghosts, padding.
        let at = |k: usize| if k < nloc { k } else { nloc_b + k - nloc };
        let mut coord = vec![0.0; 3 * nall_b];
        let mut atype = vec![-1i32; nall_b];
        let mut mapping: Vec<i64> = (0..nall_b as i64).collect();
        for k in 0..nall {
            let p = at(k);
            coord[3 * p..3 * p + 3].copy_from_slice(&ext.coord[3 * k..3 * k + 3]);
            atype[p] = ext.atype[k];
            mapping[p] = ext.mapping[k] as i64;
        }
        let mut nl = vec![-1i64; nloc_b * nnei];
        for (s, &j) in ext.nlist.iter().enumerate() {
            if j >= 0 {
                nl[s] = at(j as usize) as i64;
            }
        }
        let (nf, nl_b, na_b) = (1i64, nloc_b as i64, nall_b as i64);
        let mut args = vec![
            HostArray::f64(vec![nf, na_b, 3], &coord),
            HostArray::i32(vec![nf, na_b], &atype),
            HostArray::i64(vec![nf, nl_b, nnei as i64], &nl),
            HostArray::i64(vec![nf, na_b], &mapping),
        ];
        let dfp = m.dim_fparam();
        if dfp > 0 {
            let fp = fparam.ok_or_else(|| EvalError::Input("the model needs fparam".into()))?;
            args.push(HostArray::f64(vec![nf, dfp as i64], fp));
        }
        let dap = m.dim_aparam();
        if dap > 0 {
            let ap = aparam.ok_or_else(|| EvalError::Input("the model needs aparam".into()))?;
            let mut padded = vec![0.0; nloc_b * dap];
            padded[..nloc * dap].copy_from_slice(ap);
            args.push(HostArray::f64(vec![nf, nl_b, dap as i64], &padded));
        }

        let key = Key { sizes, atomic };
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let std::collections::hash_map::Entry::Vacant(slot) = cache.entry(key) {
            let variant = Variant {
                atomic_virial: atomic,
                ghosts: nall_b > nloc_b,
            };
            let e = export(
                m,
                variant,
                LowerOptions {
                    sizes: Some(sizes),
                    ..self.lower
                },
            )
            .map_err(|e| EvalError::Graph(e.0))?;
            slot.insert(self.plugin.compile(&e.mlir).map_err(dev_err)?);
        }
        let exe = &cache[&key];
        use Elem::{F64, I32};
        let outs = self
            .plugin
            .execute(exe, &args, &[F64, F64, F64, F64, F64, I32])
            .map_err(dev_err)?;
        drop(cache);
        // energy, energy_derv_c, energy_derv_c_redu, energy_derv_r, energy_redu, mask
        let ae = outs[0].to_f64();
        let av = outs[1].to_f64();
        let vir = outs[2].to_f64();
        let force_p = outs[3].to_f64();
        let energy = outs[4].to_f64()[0];
        let mut force = vec![0.0; 3 * nall];
        let mut atom_virial = atomic.then(|| vec![0.0; 9 * nall]);
        for k in 0..nall {
            let p = at(k);
            force[3 * k..3 * k + 3].copy_from_slice(&force_p[3 * p..3 * p + 3]);
            if let Some(a) = atom_virial.as_mut() {
                a[9 * k..9 * k + 9].copy_from_slice(&av[9 * p..9 * p + 9]);
            }
        }
        let mut virial = [0.0; 9];
        virial.copy_from_slice(&vir[..9]);
        Ok(ExtendedOutput {
            energy,
            atom_energy: ae[..nloc].to_vec(),
            force,
            virial,
            atom_virial,
        })
    }
}

impl Drop for PjrtModel {
    fn drop(&mut self) {
        let cache = std::mem::take(self.cache.get_mut().unwrap_or_else(|p| p.into_inner()));
        for (_, c) in cache {
            self.plugin.release(c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::bucket;

    #[test]
    fn buckets_cover_and_pad_little() {
        for n in 1..5000 {
            let b = bucket(n);
            assert!(b >= n);
            assert!(b - n < 16.max(n / 8), "{n} -> {b}");
        }
        assert_eq!(bucket(0), 0);
        assert_eq!(bucket(17), 32);
    }
}
