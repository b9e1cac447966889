//! DeePMD-kit's exported entry point, `call_common_lower(extended_coord, extended_atype,
//! nlist, mapping, fparam, aparam)`, written around the IR graph
//! (`deepmd/jax/utils/serialization.py: deserialize_to_file`, `.hlo` branch).
//!
//! The export is shape-polymorphic in `nf`, `nloc` and `nghost`, as DeePMD-kit's is. The
//! graph computes one system; the `nf` frames are laid end to end as one system (locals of
//! every frame first, then every frame's ghosts, so the graph's `atype[:nloc]` are the
//! centres) with the neighbour indices moved to match, and the results are put back per
//! frame. Frames share no neighbours, so this is exact. Forces and virials are the graph's,
//! i.e. the IR's autodiff; nothing here differentiates.

use super::ops::{lower_graph, Dims};
use super::text::{Elem, Func, Size, Val};
use crate::build::{build_graph, io, BuildOptions};
use crate::graph::{verify::verify, DType, GraphError};
use crate::model::Model;

/// Which of the four functions of a `.hlo` file to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Variant {
    /// Per-atom virials with DeePMD-kit's correction (`stablehlo_atomic_virial*`).
    pub atomic_virial: bool,
    /// Extended systems with ghost atoms (`nloc + nghost`); without, `nall == nloc`
    /// (`*_no_ghost`).
    pub ghosts: bool,
}

impl Variant {
    /// The four, in the order of the `@variables` keys DeePMD-kit writes.
    pub const ALL: [(&'static str, Variant); 4] = [
        (
            "stablehlo",
            Variant {
                atomic_virial: false,
                ghosts: true,
            },
        ),
        (
            "stablehlo_atomic_virial",
            Variant {
                atomic_virial: true,
                ghosts: true,
            },
        ),
        (
            "stablehlo_no_ghost",
            Variant {
                atomic_virial: false,
                ghosts: false,
            },
        ),
        (
            "stablehlo_atomic_virial_no_ghost",
            Variant {
                atomic_virial: true,
                ghosts: false,
            },
        ),
    ];
}

/// dtype of an argument or result, as `jax.export` records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortType {
    F64,
    I32,
    I64,
}

/// An argument or result of the exported function: its name (the pytree key for results),
/// dtype and shape in `jax.export`'s symbolic syntax (`"nf"`, `"nloc + nghost"`, `"3"`).
#[derive(Debug, Clone, PartialEq)]
pub struct Port {
    pub name: String,
    pub dtype: PortType,
    pub shape: Vec<String>,
}

/// A written export: the module text and its signature.
#[derive(Debug, Clone)]
pub struct Export {
    pub mlir: String,
    /// In call order: coord, atype, nlist, mapping, then fparam and aparam where the model
    /// takes them.
    pub args: Vec<Port>,
    /// In the order of the module's results (the sorted keys of DeePMD-kit's dict).
    pub results: Vec<Port>,
}

/// Options of the lowering beyond the variant.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LowerOptions {
    /// `--precision float32`: the networks in float32.
    pub precision: Option<DType>,
    /// Fixed sizes instead of symbolic ones, for compilers that take static shapes only
    /// (PJRT plugins).
    pub sizes: Option<StaticSizes>,
    /// `--compress`: the embedding networks as tables (evaluated with elementary ops).
    pub compress: Option<crate::build::Compress>,
    /// `main` takes the platform's index first, as `jax.export` requires of a module
    /// exported for several platforms (the module is the same on each, so it is unused).
    pub platform_index: bool,
}

/// Frames, centres and extended atoms per frame of a static-shape module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StaticSizes {
    pub nf: usize,
    pub nloc: usize,
    pub nall: usize,
}

impl Port {
    /// The port as a value named `name`: numeric sizes fixed, symbolic ones from `bind`.
    fn val(&self, name: String, bind: impl Fn(&str) -> Size) -> Val {
        Val {
            name,
            elem: match self.dtype {
                PortType::F64 => Elem::F64,
                PortType::I32 => Elem::I32,
                PortType::I64 => Elem::I64,
            },
            shape: self
                .shape
                .iter()
                .map(|s| s.parse().map_or_else(|_| bind(s), Size::Fixed))
                .collect(),
        }
    }
}

/// Whether a DPA-1 block with attention layers computes in float32 (its own precision, or
/// `--precision float32`).
fn float32_attention(d: &crate::model::Descriptor, precision: Option<DType>) -> bool {
    use crate::model::Descriptor as D;
    let f32 = |own: DType| precision.unwrap_or(own) == DType::F32;
    match d {
        D::Hybrid(list) => list.iter().any(|d| float32_attention(d, precision)),
        D::Dpa1(a) => !a.attention.is_empty() && f32(a.dtype),
        D::Dpa2(a) => !a.repinit.attention.is_empty() && f32(a.repinit.dtype),
        _ => false,
    }
}

fn port(name: &str, dtype: PortType, shape: &[&str]) -> Port {
    Port {
        name: name.into(),
        dtype,
        shape: shape.iter().map(|s| s.to_string()).collect(),
    }
}

/// Write one export of `model`'s `call_common_lower`.
pub fn export(model: &Model, variant: Variant, opts: LowerOptions) -> Result<Export, GraphError> {
    if float32_attention(&model.descriptor, opts.precision) {
        // DeePMD-kit's JAX runtime runs such an export up to 3e-4 eV/atom away from
        // DeePMD-kit's own float32 model on configurations where float32 costs that model
        // 1e-7 (dpc's CPU runtime, on the same graph, stays within 1e-7): refused until
        // the difference is found.
        return Err(GraphError(
            "StableHLO with se_atten/DPA-1 attention layers computing in float32 is not \
             supported (DeePMD-kit's JAX runtime runs it up to 3e-4 eV/atom off): export \
             it in float64, or evaluate float32 with dpc's own runtime"
                .into(),
        ));
    }
    let graph = build_graph(
        model,
        BuildOptions {
            atomic_virial: variant.atomic_virial,
            unfused: true,
            flat_frames: true,
            precision: opts.precision,
            compress: opts.compress,
        },
    )?;
    verify(&graph).map_err(|e| GraphError(format!("the built graph fails verification: {e}")))?;

    let nnei = model.nnei().to_string();
    let (dfp, dap) = (model.dim_fparam(), model.dim_aparam());
    let (nf_s, nloc_s, nall_s) = match opts.sizes {
        Some(s) => {
            if s.nall < s.nloc || s.nf == 0 || (!variant.ghosts && s.nall != s.nloc) {
                return Err(GraphError(format!("lowering: inconsistent sizes {s:?}")));
            }
            (s.nf.to_string(), s.nloc.to_string(), s.nall.to_string())
        }
        None => {
            let nall = if variant.ghosts {
                "nloc + nghost"
            } else {
                "nloc"
            };
            ("nf".to_string(), "nloc".to_string(), nall.to_string())
        }
    };
    let (nf_s, nloc_s, nall_s) = (nf_s.as_str(), nloc_s.as_str(), nall_s.as_str());
    let mut args = vec![
        port("coord", PortType::F64, &[nf_s, nall_s, "3"]),
        port("atype", PortType::I32, &[nf_s, nall_s]),
        port("nlist", PortType::I64, &[nf_s, nloc_s, &nnei]),
        port("mapping", PortType::I64, &[nf_s, nall_s]),
    ];
    if dfp > 0 {
        args.push(port("fparam", PortType::F64, &[nf_s, &dfp.to_string()]));
    }
    if dap > 0 {
        args.push(port(
            "aparam",
            PortType::F64,
            &[nf_s, nloc_s, &dap.to_string()],
        ));
    }
    let results = vec![
        port("energy", PortType::F64, &[nf_s, nloc_s, "1"]),
        port("energy_derv_c", PortType::F64, &[nf_s, nall_s, "1", "9"]),
        port("energy_derv_c_redu", PortType::F64, &[nf_s, "1", "9"]),
        port("energy_derv_r", PortType::F64, &[nf_s, nall_s, "1", "3"]),
        port("energy_redu", PortType::F64, &[nf_s, "1"]),
        port("mask", PortType::I32, &[nf_s, nloc_s]),
    ];

    let mut f = Func::default();
    // The arguments typed only (`?` for symbolic sizes) until their sizes are read.
    let unbound = |_: &str| Size::Var(String::new());
    let arg_vals: Vec<Val> = args
        .iter()
        .enumerate()
        .map(|(i, p)| p.val(format!("%arg{i}"), unbound))
        .collect();
    let mut signature = signature(&arg_vals, &results);
    if opts.platform_index {
        signature = format!(
            "%platform: tensor<i32> {{jax.global_constant = \"_platform_index\"}}, {signature}"
        );
    }

    // Sizes: frames, centres, extended atoms per frame; totals of the flattened system.
    let nf = f.dim_size(&arg_vals[0], 0);
    let nall = f.dim_size(&arg_vals[0], 1);
    let nloc = f.dim_size(&arg_vals[2], 1);
    let ng = f.size_sub(&nall, &nloc);
    let tl = f.size_mul(&nf, &nloc);
    let tg = f.size_mul(&nf, &ng);
    let ta = f.size_add(&tl, &tg);
    // The arguments again, their symbolic sizes now bound to values.
    let sized: Vec<Val> = args
        .iter()
        .zip(&arg_vals)
        .map(|(p, v)| {
            p.val(v.name.clone(), |s| match s {
                "nf" => nf.clone(),
                "nloc" => nloc.clone(),
                "nloc + nghost" => nall.clone(),
                other => unreachable!("symbolic size {other}"),
            })
        })
        .collect();
    let arg = |name: &str| {
        args.iter()
            .position(|p| p.name == name)
            .map(|i| sized[i].clone())
    };
    let (coord, atype, nlist) = (
        arg("coord").unwrap(),
        arg("atype").unwrap(),
        arg("nlist").unwrap(),
    );
    let fl = Flat {
        nf: nf.clone(),
        nloc: nloc.clone(),
        nall: nall.clone(),
        ng: ng.clone(),
        tl: tl.clone(),
        tg: tg.clone(),
        ta: ta.clone(),
        ghosts: variant.ghosts,
    };

    // Graph inputs.
    let g_coord = fl.flatten(&mut f, &coord);
    let g_atype = fl.flatten(&mut f, &atype);
    let mut g_nlist = fl.nlist(&mut f, &nlist);
    if !model.mixed_types() {
        // DeePMD-kit's callers pass one distance-sorted list; its lower splits it by type.
        g_nlist = distinguish_types(&mut f, &g_nlist, &g_atype, &model.sel());
    }
    let mut inputs = Vec::new();
    for spec in &graph.inputs {
        let v = match spec.name.as_str() {
            io::COORD => g_coord.clone(),
            io::ATYPE => g_atype.clone(),
            io::NLIST => g_nlist.clone(),
            io::FPARAM => {
                // [nf, dfp] -> every centre its frame's row.
                let fp = arg("fparam").expect("model has fparam");
                let shape = vec![nf.clone(), nloc.clone(), Size::Fixed(dfp as i64)];
                let b = f.broadcast_in_dim(&fp, shape, &[0, 2]);
                f.reshape_raw(&b, vec![tl.clone(), Size::Fixed(dfp as i64)])
            }
            io::APARAM => {
                let ap = arg("aparam").expect("model has aparam");
                f.reshape_raw(&ap, vec![tl.clone(), Size::Fixed(dap as i64)])
            }
            io::MAPPING => {
                // Per-frame owners -> owners in the flat system (frame f's locals start at
                // f * nloc), laid out like the coordinates.
                let m = arg("mapping").expect("every export takes the mapping");
                let m = f.convert(&m, Elem::I32);
                let fi = f.iota(m.shape.clone(), 0);
                let n = f.size_scalar(&nloc, Elem::I32);
                let n = f.broadcast_to(&n, m.shape.clone());
                let off = f.elementwise("multiply", &[&fi, &n], Elem::I32);
                let m = f.elementwise("add", &[&off, &m], Elem::I32);
                fl.flatten(&mut f, &m)
            }
            io::CENTRE_WEIGHT => f.splat(Elem::F64, 1.0, std::slice::from_ref(&tl)),
            io::PAD_ATOM => {
                // Each centre's frame's extended atom 0, which is that frame's first local.
                let fi = f.iota(vec![nf.clone(), nloc.clone()], 0);
                let n = f.size_scalar(&nloc, Elem::I32);
                let n = f.broadcast_to(&n, fi.shape.clone());
                let p = f.elementwise("multiply", &[&fi, &n], Elem::I32);
                f.reshape_raw(&p, vec![tl.clone()])
            }
            other => return Err(GraphError(format!("lowering: unknown graph input {other}"))),
        };
        inputs.push(v);
    }
    let mut dims = Dims::new(tl.clone(), ta.clone());
    let out = lower_graph(&mut f, &mut dims, &graph, &inputs)?;
    let get = |n: &str| {
        out.get(n)
            .cloned()
            .ok_or_else(|| GraphError(format!("lowering: the graph has no output {n}")))
    };

    // Results, per frame.
    let ae = f.convert(&get(io::ATOM_ENERGY)?, Elem::F64);
    let energy = f.reshape_raw(&ae, vec![nf.clone(), nloc.clone(), Size::Fixed(1)]);
    let energy_redu = f.reduce(&energy, &[1], "add");
    let force = f.convert(&get(io::FORCE)?, Elem::F64);
    let force = fl.unflatten(&mut f, &force);
    let force = f.reshape_raw(
        &force,
        vec![nf.clone(), nall.clone(), Size::Fixed(1), Size::Fixed(3)],
    );
    let virial = f.convert(&get(io::VIRIAL)?, Elem::F64);
    let virial = fl.unflatten(&mut f, &virial);
    let virial = f.reshape_raw(
        &virial,
        vec![nf.clone(), nall.clone(), Size::Fixed(1), Size::Fixed(9)],
    );
    let virial_redu = f.reduce(&virial, &[1], "add");
    let mask = atom_mask(&mut f, model, &atype, &nloc);

    let rets = [&energy, &virial, &virial_redu, &force, &energy_redu, &mask];
    let mut body = f.body;
    body.push_str(&format!(
        "    return {} : {}\n",
        rets.iter()
            .map(|v| v.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        rets.iter().map(|v| v.ty()).collect::<Vec<_>>().join(", ")
    ));
    let poly = if opts.sizes.is_none() {
        "jax.uses_shape_polymorphism = true, "
    } else {
        ""
    };
    let mlir = format!(
        "module @dpc_call_common_lower attributes {{{poly}mhlo.num_partitions = 1 : i32, mhlo.num_replicas = 1 : i32}} {{\n  func.func public @main({signature}) {{\n{body}  }}\n}}\n"
    );
    Ok(Export {
        mlir,
        args,
        results,
    })
}

/// `(%arg0: type, ...) -> (type {jax.result_info = ...}, ...)`.
fn signature(args: &[Val], results: &[Port]) -> String {
    let a: Vec<String> = args
        .iter()
        .map(|v| format!("{}: {}", v.name, v.ty()))
        .collect();
    let r: Vec<String> = results
        .iter()
        .map(|p| {
            let ty = p.val(String::new(), |_| Size::Var(String::new())).ty();
            format!("{ty} {{jax.result_info = \"result['{}']\"}}", p.name)
        })
        .collect();
    format!("{}) -> ({}", a.join(", "), r.join(", "))
}

/// The sizes of the flattened system and the moves in and out of it.
struct Flat {
    nf: Size,
    nloc: Size,
    nall: Size,
    ng: Size,
    tl: Size,
    tg: Size,
    ta: Size,
    ghosts: bool,
}

impl Flat {
    /// `[nf, nall, ...]` -> `[nf*nall, ...]`: every frame's locals, then every frame's ghosts.
    fn flatten(&self, f: &mut Func, x: &Val) -> Val {
        let rest = x.shape[2..].to_vec();
        let with = |lead: &Size| {
            let mut s = vec![lead.clone()];
            s.extend(rest.iter().cloned());
            s
        };
        if !self.ghosts {
            return f.reshape_raw(x, with(&self.tl));
        }
        let loc = f.slice(x, 1, &Size::Fixed(0), &self.nloc);
        let loc = f.reshape_raw(&loc, with(&self.tl));
        let gh = f.slice(x, 1, &self.nloc, &self.nall);
        let gh = f.reshape_raw(&gh, with(&self.tg));
        f.concat(&[&loc, &gh], 0)
    }

    /// The inverse of `flatten`.
    fn unflatten(&self, f: &mut Func, y: &Val) -> Val {
        let rest = y.shape[1..].to_vec();
        let with = |n: &Size| {
            let mut s = vec![self.nf.clone(), n.clone()];
            s.extend(rest.iter().cloned());
            s
        };
        if !self.ghosts {
            return f.reshape_raw(y, with(&self.nloc));
        }
        let loc = f.slice(y, 0, &Size::Fixed(0), &self.tl);
        let loc = f.reshape_raw(&loc, with(&self.nloc));
        let gh = f.slice(y, 0, &self.tl, &self.ta);
        let gh = f.reshape_raw(&gh, with(&self.ng));
        f.concat(&[&loc, &gh], 1)
    }

    /// `i64[nf, nloc, nnei]` per-frame indices -> `i32[nf*nloc, nnei]` into the flat system
    /// (-1 stays -1).
    fn nlist(&self, f: &mut Func, nl: &Val) -> Val {
        let n = f.convert(nl, Elem::I32);
        let shape = n.shape.clone();
        let fi = f.iota(shape.clone(), 0);
        let bc = |f: &mut Func, s: &Size| {
            let v = f.size_scalar(s, Elem::I32);
            f.broadcast_to(&v, shape.clone())
        };
        let nloc = bc(f, &self.nloc);
        let fl = f.elementwise("multiply", &[&fi, &nloc], Elem::I32);
        let loc = f.elementwise("add", &[&fl, &n], Elem::I32);
        let idx = if self.ghosts {
            let is_loc = f.compare("LT", &n, &nloc);
            let tl = bc(f, &self.tl);
            let ng = bc(f, &self.ng);
            let fg = f.elementwise("multiply", &[&fi, &ng], Elem::I32);
            let off = f.elementwise("subtract", &[&n, &nloc], Elem::I32);
            let gh = f.elementwise("add", &[&tl, &fg], Elem::I32);
            let gh = f.elementwise("add", &[&gh, &off], Elem::I32);
            f.select(&is_loc, &loc, &gh)
        } else {
            loc
        };
        let zero = f.splat(Elem::I32, 0.0, &shape);
        let valid = f.compare("GE", &n, &zero);
        let minus = f.splat(Elem::I32, -1.0, &shape);
        let idx = f.select(&valid, &idx, &minus);
        let mut out = vec![self.tl.clone()];
        out.extend(shape[2..].iter().cloned());
        f.reshape_raw(&idx, out)
    }
}

/// `nlist_distinguish_types` (`deepmd/dpmodel/utils/nlist.py`): per centre, the
/// neighbours of each type `t` in their order in `nl`, the first `sel[t]` of them, padded
/// with -1. `nl` is `i32[rows, nnei]` into `atype` (-1: none); neighbours of type -1
/// (virtual atoms) are dropped.
fn distinguish_types(f: &mut Func, nl: &Val, atype: &Val, sel: &[usize]) -> Val {
    let shape = nl.shape.clone();
    let rows = shape[0].clone();
    let nnei = match shape[1] {
        Size::Fixed(n) => n,
        Size::Var(_) => unreachable!("nnei is a constant of the model"),
    };
    let zero = f.splat(Elem::I32, 0.0, &shape);
    let valid = f.compare("GE", nl, &zero);
    let safe = f.select(&valid, nl, &zero);
    let t = f.gather_rows(atype, &safe);
    let real = f.compare("GE", &t, &zero);
    let valid = f.elementwise("and", &[&valid, &real], Elem::I1);
    let last = f.splat(Elem::I32, sel.len() as f64, &shape);
    // Sort key: the type, with empty slots after every type.
    let key = f.select(&valid, &t, &last);
    let sorted = f.sort_by_key(&key, nl, 1);
    let total = f.size_mul(&rows, &Size::Fixed(nnei));
    let flat = f.reshape_raw(&sorted, vec![total]);
    let mut start = f.splat(Elem::I32, 0.0, std::slice::from_ref(&rows));
    let mut blocks = Vec::new();
    for (ti, &st) in sel.iter().enumerate() {
        let this = f.splat(Elem::I32, ti as f64, &shape);
        let is_t = f.compare("EQ", &key, &this);
        let is_t = f.convert(&is_t, Elem::I32);
        let count = f.reduce(&is_t, &[1], "add");
        if st > 0 {
            let bshape = vec![rows.clone(), Size::Fixed(st as i64)];
            let j = f.iota(bshape.clone(), 1);
            let cnt = f.broadcast_in_dim(&count, bshape.clone(), &[0]);
            let beg = f.broadcast_in_dim(&start, bshape.clone(), &[0]);
            let ok = f.compare("LT", &j, &cnt);
            let pos = f.elementwise("add", &[&beg, &j], Elem::I32);
            let cap = f.splat(Elem::I32, (nnei - 1) as f64, &bshape);
            let pos = f.elementwise("minimum", &[&pos, &cap], Elem::I32);
            let row = f.iota(bshape.clone(), 0);
            let width = f.splat(Elem::I32, nnei as f64, &bshape);
            let row = f.elementwise("multiply", &[&row, &width], Elem::I32);
            let at = f.elementwise("add", &[&row, &pos], Elem::I32);
            let v = f.gather_rows(&flat, &at);
            let none = f.splat(Elem::I32, -1.0, &bshape);
            blocks.push(f.select(&ok, &v, &none));
        }
        start = f.elementwise("add", &[&start, &count], Elem::I32);
    }
    let refs: Vec<&Val> = blocks.iter().collect();
    f.concat(&refs, 1)
}

/// DeePMD-kit's `mask` result: 1 for a real centre (type >= 0) whose type is not excluded.
fn atom_mask(f: &mut Func, model: &Model, atype: &Val, nloc: &Size) -> Val {
    let loc = f.slice(atype, 1, &Size::Fixed(0), nloc);
    let zero = f.splat(Elem::I32, 0.0, &loc.shape);
    let real = f.compare("GE", &loc, &zero);
    let mut mask = f.convert(&real, Elem::I32);
    if !model.atom_exclude_types.is_empty() {
        let keep: Vec<u8> = (0..model.ntypes())
            .flat_map(|t| i32::from(!model.atom_exclude_types.contains(&t)).to_le_bytes())
            .collect();
        let table = f.constant_bytes(Elem::I32, &[model.ntypes() as i64], &keep);
        let t = f.elementwise("maximum", &[&loc, &zero], Elem::I32);
        let k = f.gather_rows(&table, &t);
        mask = f.elementwise("multiply", &[&mask, &k], Elem::I32);
    }
    mask
}
