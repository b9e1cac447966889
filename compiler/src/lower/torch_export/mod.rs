//! The IR as a torch.export program (`.pte`, a PT2 archive) for DeePMD-kit's `pt_expt`
//! backend, written without PyTorch: `models/model.json` (the ExportedProgram: ATen nodes),
//! the weights as raw bytes, and DeePMD-kit's `extra/metadata.json`.
//!
//! DeePMD-kit exports its lower interface: its Python builds the extended system and the
//! neighbour list (nearest `sum(sel)` within rcut, split by type unless the model mixes
//! types) and calls `module(extended_coord, extended_atype, nlist, mapping, fparam, aparam,
//! charge_spin)`; it folds the ghosts' forces and virials back itself. The graph computes
//! one system, so the `nf` frames are laid end to end (every frame's locals, then every
//! frame's ghosts; the neighbour indices moved to match) as for `.hlo`, and the results
//! put back per frame. Forces and virials are the IR's autodiff, written out as nodes, as
//! DeePMD-kit's own exports carry their backward pass.

mod json;
mod ops;
mod program;

use std::collections::HashMap;

use dpc_formats::Value;

use crate::build::{build_graph, io, BuildOptions};
use crate::graph::{verify::verify, GraphError};
use crate::lower::model_def_script::model_def_script;
use crate::model::Model;
use json::{obj, s, J};
use program::{dtype, Expr, Program, A, T};

/// The `.pte` file of `model` (whose serialization tree is `tree`).
pub fn pte_archive(tree: &Value, model: &Model) -> Result<Vec<u8>, GraphError> {
    let g = build_graph(
        model,
        BuildOptions {
            atomic_virial: true,
            unfused: true,
            flat_frames: true,
            ..Default::default()
        },
    )?;
    verify(&g).map_err(|e| GraphError(format!("the built graph fails verification: {e}")))?;
    let (nfp, nap) = (model.dim_fparam() as i64, model.dim_aparam() as i64);
    let nnei = Expr::int(model.nnei() as i64);
    let (nf, nall, nloc) = (Expr::sym("s_nf"), Expr::sym("s_nall"), Expr::sym("s_nloc"));
    let tl = nf.mul(&nloc);
    let ta = nf.mul(&nall);
    let ng = nall.sub(&nloc);

    let mut p = Program::default();
    let ec = p.input(
        "extended_coord",
        dtype::F64,
        vec![nf.clone(), nall.clone(), Expr::int(3)],
    );
    let ea = p.input("extended_atype", dtype::I64, vec![nf.clone(), nall.clone()]);
    let nl = p.input(
        "nlist",
        dtype::I64,
        vec![nf.clone(), nloc.clone(), nnei.clone()],
    );
    let mp = p.input("mapping", dtype::I64, vec![nf.clone(), nall.clone()]);
    let fparam = if nfp > 0 {
        Some(p.input("fparam", dtype::F64, vec![nf.clone(), Expr::int(nfp)]))
    } else {
        p.none_input("fparam");
        None
    };
    let aparam = if nap > 0 {
        Some(p.input(
            "aparam",
            dtype::F64,
            vec![nf.clone(), nloc.clone(), Expr::int(nap)],
        ))
    } else {
        p.none_input("aparam");
        None
    };
    p.none_input("charge_spin");
    p.define("s_nf", &ec, 0);
    p.define("s_nall", &ec, 1);
    p.define("s_nloc", &nl, 1);

    let fr = Frames {
        nf: nf.clone(),
        nall: nall.clone(),
        nloc: nloc.clone(),
        tl: tl.clone(),
        ng: ng.clone(),
    };
    // Where atom j of frame f sits in the flat system, and each frame's first local.
    let (pos, first) = fr.positions(&mut p);

    let mut inputs: HashMap<String, T> = HashMap::new();
    for spec in &g.inputs {
        let want = ops::code(spec.ty.dtype);
        let v = match spec.name.as_str() {
            io::COORD => fr.flatten(&mut p, &ec),
            // Type -1 (virtual atoms; frames padded to a common nall) is the graph's to
            // mask, as with `flat_frames` it does.
            io::ATYPE => fr.flatten(&mut p, &ea),
            io::NLIST => fr.nlist(&mut p, &nl, &pos),
            io::MAPPING => {
                let m = p.call(
                    "add.Tensor",
                    vec![("self", A::T(mp.clone())), ("other", A::T(first.clone()))],
                    vec![],
                    dtype::I64,
                    mp.shape.clone(),
                );
                fr.flatten(&mut p, &m)
            }
            io::PAD_ATOM => {
                // Each centre's frame's extended atom 0, its first local.
                let sz = p.sizes(&[Expr::int(-1), nloc.clone()]);
                let e = p.call(
                    "expand.default",
                    vec![("self", A::T(first.clone())), ("size", sz)],
                    vec![],
                    dtype::I64,
                    vec![nf.clone(), nloc.clone()],
                );
                reshape(&mut p, &e, vec![tl.clone()])
            }
            io::FPARAM => {
                let fp = fparam.clone().ok_or_else(|| {
                    GraphError(
                        "writing a .pte: the graph reads fparam, the model takes none".into(),
                    )
                })?;
                let u = p.call(
                    "unsqueeze.default",
                    vec![("self", A::T(fp)), ("dim", A::Int(1))],
                    vec![],
                    dtype::F64,
                    vec![nf.clone(), Expr::int(1), Expr::int(nfp)],
                );
                let sz = p.sizes(&[Expr::int(-1), nloc.clone(), Expr::int(-1)]);
                let e = p.call(
                    "expand.default",
                    vec![("self", A::T(u)), ("size", sz)],
                    vec![],
                    dtype::F64,
                    vec![nf.clone(), nloc.clone(), Expr::int(nfp)],
                );
                reshape(&mut p, &e, vec![tl.clone(), Expr::int(nfp)])
            }
            io::APARAM => {
                let ap = aparam.clone().ok_or_else(|| {
                    GraphError(
                        "writing a .pte: the graph reads aparam, the model takes none".into(),
                    )
                })?;
                reshape(&mut p, &ap, vec![tl.clone(), Expr::int(nap)])
            }
            io::CENTRE_WEIGHT => {
                let sz = p.sizes(std::slice::from_ref(&tl));
                p.call(
                    "ones.default",
                    vec![("size", sz)],
                    vec![("dtype", A::Dtype(dtype::F64))],
                    dtype::F64,
                    vec![tl.clone()],
                )
            }
            other => {
                return Err(GraphError(format!(
                    "writing a .pte: unknown graph input {other}"
                )))
            }
        };
        inputs.insert(spec.name.clone(), cast(&mut p, v, want));
    }
    let sizes = ops::Sizes {
        nloc: tl.clone(),
        nall: ta.clone(),
    };
    let out = ops::lower_graph(&mut p, &sizes, &g, &inputs)?;
    let get = |n: &str| {
        out.get(n)
            .cloned()
            .ok_or_else(|| GraphError(format!("lowering: the graph has no output {n}")))
    };

    // Results, per frame.
    let ae = cast(&mut p, get(io::ATOM_ENERGY)?, dtype::F64);
    let energy = reshape(&mut p, &ae, vec![nf.clone(), nloc.clone(), Expr::int(1)]);
    let energy_redu = sum(&mut p, &energy, 1, vec![nf.clone(), Expr::int(1)]);
    let per_atom = |p: &mut Program, name: &str, width: i64| -> Result<T, GraphError> {
        let v = cast(p, get(name)?, dtype::F64);
        let v = fr.unflatten(p, &v, &pos, width);
        Ok(reshape(
            p,
            &v,
            vec![nf.clone(), nall.clone(), Expr::int(1), Expr::int(width)],
        ))
    };
    let force = per_atom(&mut p, io::FORCE, 3)?;
    let virial = per_atom(&mut p, io::VIRIAL, 9)?;
    let virial_redu = sum(
        &mut p,
        &virial,
        1,
        vec![nf.clone(), Expr::int(1), Expr::int(9)],
    );
    let ea_loc = slice(&mut p, &ea, 1, &Expr::int(0), &nloc);
    let real = p.call(
        "ge.Scalar",
        vec![("self", A::T(ea_loc.clone())), ("other", A::Int(0))],
        vec![],
        dtype::BOOL,
        vec![nf.clone(), nloc.clone()],
    );
    // DeePMD-kit's mask: a real centre whose type is not excluded.
    let mut real = real;
    for &t in &model.atom_exclude_types {
        let keep = p.call(
            "ne.Scalar",
            vec![("self", A::T(ea_loc.clone())), ("other", A::Int(t as i64))],
            vec![],
            dtype::BOOL,
            real.shape.clone(),
        );
        real = p.call(
            "logical_and.default",
            vec![("self", A::T(real)), ("other", A::T(keep))],
            vec![],
            dtype::BOOL,
            vec![nf.clone(), nloc.clone()],
        );
    }
    let mask = cast(&mut p, real, dtype::I32);
    let outputs = [
        ("energy", energy),
        ("mask", mask),
        ("energy_redu", energy_redu),
        ("energy_derv_r", force),
        ("energy_derv_c", virial),
        ("energy_derv_c_redu", virial_redu),
    ];
    let keys: Vec<&str> = outputs.iter().map(|o| o.0).collect();
    let (program, weights_config, weights) = p.finish(&outputs);

    let tree_json = dpc_formats::json::write_tree(tree)
        .map_err(|e| GraphError(format!("writing extra/model.json: {e}")))?;
    let mut files: Vec<(String, Vec<u8>)> = vec![
        ("archive_format".into(), b"pt2".to_vec()),
        ("archive_version".into(), b"0".to_vec()),
        ("byteorder".into(), b"little".to_vec()),
        (".data/version".into(), b"6\n".to_vec()),
        ("models/model.json".into(), program.into_bytes()),
        (
            "data/weights/model_weights_config.json".into(),
            weights_config.into_bytes(),
        ),
        (
            "data/constants/model_constants_config.json".into(),
            b"{\"config\":{}}".to_vec(),
        ),
        // Required, and empty: no example inputs.
        ("data/sample_inputs/model.pt".into(), Vec::new()),
        (
            "extra/metadata.json".into(),
            metadata(model, &keys).text().into_bytes(),
        ),
        (
            "extra/model_def_script.json".into(),
            model_def_script(tree, model, "the serialized model is extra/model.json").into_bytes(),
        ),
        ("extra/model.json".into(), tree_json.into_bytes()),
    ];
    files.extend(
        weights
            .into_iter()
            .map(|(n, b)| (format!("data/weights/{n}"), b)),
    );
    dpc_formats::archive::write("model", &files)
        .map_err(|e| GraphError(format!("writing the .pte archive: {e}")))
}

/// DeePMD-kit's `metadata.json`: what its `pt_expt` runtime reads instead of the model.
fn metadata(model: &Model, keys: &[&str]) -> J {
    let ints = |v: Vec<usize>| J::Arr(v.into_iter().map(|x| J::Int(x as i64)).collect());
    let default_fparam = model.default_fparam();
    let output = |name: &str, reducible: bool, derivable: bool| {
        obj([
            ("name", s(name)),
            ("shape", J::Arr(vec![J::Int(1)])),
            ("reducible", J::Bool(reducible)),
            ("r_differentiable", J::Bool(derivable)),
            ("c_differentiable", J::Bool(derivable)),
            ("atomic", J::Bool(true)),
            ("category", J::Int(0)),
            ("r_hessian", J::Bool(false)),
            ("magnetic", J::Bool(false)),
            ("intensive", J::Bool(false)),
        ])
    };
    obj([
        (
            "type_map",
            J::Arr(model.type_map.iter().map(|t| s(t)).collect()),
        ),
        ("rcut", J::Float(model.rcut())),
        ("sel", ints(model.sel())),
        ("nnei", J::Int(model.nnei() as i64)),
        ("dim_fparam", J::Int(model.dim_fparam() as i64)),
        ("dim_aparam", J::Int(model.dim_aparam() as i64)),
        ("dim_chg_spin", J::Int(0)),
        ("mixed_types", J::Bool(model.mixed_types())),
        ("has_default_fparam", J::Bool(default_fparam.is_some())),
        (
            "default_fparam",
            match default_fparam {
                Some(d) => J::Arr(d.iter().map(|&x| J::Float(x)).collect()),
                None => J::Null,
            },
        ),
        ("has_chg_spin_ebd", J::Bool(false)),
        ("has_default_chg_spin", J::Bool(false)),
        ("default_chg_spin", J::Null),
        ("chg_spin_table_ranges", J::Null),
        (
            "fitting_output_defs",
            J::Arr(vec![
                output("energy", true, true),
                output("mask", false, false),
            ]),
        ),
        ("sel_type", ints(model.sel_type())),
        ("is_spin", J::Bool(false)),
        ("has_comm_artifact", J::Bool(false)),
        (
            "has_message_passing",
            J::Bool(model.descriptor.has_message_passing()),
        ),
        ("lower_input_kind", s("nlist")),
        ("graph_edge_dtype", s("float64")),
        (
            "pair_exclude_types",
            J::Arr(
                model
                    .pair_exclude_types
                    .iter()
                    .map(|&(a, b)| J::Arr(vec![J::Int(a as i64), J::Int(b as i64)]))
                    .collect(),
            ),
        ),
        ("do_atomic_virial", J::Bool(true)),
        ("output_keys", J::Arr(keys.iter().map(|k| s(k)).collect())),
    ])
}

fn reshape(p: &mut Program, x: &T, shape: Vec<Expr>) -> T {
    let sz = p.sizes(&shape);
    p.call(
        "reshape.default",
        vec![("self", A::T(x.clone())), ("shape", sz)],
        vec![],
        x.dtype,
        shape,
    )
}

fn cast(p: &mut Program, x: T, to: i64) -> T {
    if x.dtype == to {
        return x;
    }
    let shape = x.shape.clone();
    p.call(
        "_to_copy.default",
        vec![("self", A::T(x))],
        vec![("dtype", A::Dtype(to))],
        to,
        shape,
    )
}

fn sum(p: &mut Program, x: &T, axis: i64, shape: Vec<Expr>) -> T {
    p.call(
        "sum.dim_IntList",
        vec![
            ("self", A::T(x.clone())),
            ("dim", A::Ints(vec![axis])),
            ("keepdim", A::Bool(false)),
        ],
        vec![],
        x.dtype,
        shape,
    )
}

fn slice(p: &mut Program, x: &T, axis: usize, start: &Expr, end: &Expr) -> T {
    let mut shape = x.shape.clone();
    shape[axis] = end.sub(start);
    let (b, e) = (p.size(start), p.size(end));
    p.call(
        "slice.Tensor",
        vec![
            ("self", A::T(x.clone())),
            ("dim", A::Int(axis as i64)),
            ("start", A::Sym(b)),
            ("end", A::Sym(e)),
        ],
        vec![],
        x.dtype,
        shape,
    )
}

/// The frames laid end to end: every frame's locals, then every frame's ghosts.
struct Frames {
    nf: Expr,
    nall: Expr,
    nloc: Expr,
    tl: Expr,
    ng: Expr,
}

impl Frames {
    /// `pos [nf, nall]`: where atom j of frame f sits in the flat system; `first [nf, 1]`:
    /// where frame f's locals start.
    fn positions(&self, p: &mut Program) -> (T, T) {
        let arange = |p: &mut Program, n: &Expr| {
            let end = p.size(n);
            p.call(
                "arange.default",
                vec![("end", A::Sym(end))],
                vec![("dtype", A::Dtype(dtype::I64))],
                dtype::I64,
                vec![n.clone()],
            )
        };
        let scaled = |p: &mut Program, x: &T, by: &Expr| {
            let k = p.size(by);
            p.call(
                "mul.Scalar",
                vec![("self", A::T(x.clone())), ("other", A::Sym(k))],
                vec![],
                dtype::I64,
                x.shape.clone(),
            )
        };
        let f = arange(p, &self.nf);
        let f = reshape(p, &f, vec![self.nf.clone(), Expr::int(1)]);
        let j = arange(p, &self.nall);
        let j = reshape(p, &j, vec![Expr::int(1), self.nall.clone()]);
        let first = scaled(p, &f, &self.nloc);
        let both = vec![self.nf.clone(), self.nall.clone()];
        let local = p.call(
            "add.Tensor",
            vec![("self", A::T(first.clone())), ("other", A::T(j.clone()))],
            vec![],
            dtype::I64,
            both.clone(),
        );
        // Ghost j of frame f: after every local, after frame f's predecessors' ghosts.
        let fg = scaled(p, &f, &self.ng);
        let shift = p.size(&self.tl.sub(&self.nloc));
        let js = p.call(
            "add.Scalar",
            vec![("self", A::T(j.clone())), ("other", A::Sym(shift))],
            vec![],
            dtype::I64,
            j.shape.clone(),
        );
        let ghost = p.call(
            "add.Tensor",
            vec![("self", A::T(fg)), ("other", A::T(js))],
            vec![],
            dtype::I64,
            both.clone(),
        );
        let n = p.size(&self.nloc);
        let is_local = p.call(
            "lt.Scalar",
            vec![("self", A::T(j)), ("other", A::Sym(n))],
            vec![],
            dtype::BOOL,
            vec![Expr::int(1), self.nall.clone()],
        );
        let pos = p.call(
            "where.self",
            vec![
                ("condition", A::T(is_local)),
                ("self", A::T(local)),
                ("other", A::T(ghost)),
            ],
            vec![],
            dtype::I64,
            both,
        );
        (pos, first)
    }

    /// `[nf, nall, rest]` -> `[nf*nall, rest]`, flat order.
    fn flatten(&self, p: &mut Program, x: &T) -> T {
        let rest = x.shape[2..].to_vec();
        let with = |lead: Expr| {
            let mut s = vec![lead];
            s.extend(rest.iter().cloned());
            s
        };
        let loc = slice(p, x, 1, &Expr::int(0), &self.nloc);
        let loc = reshape(p, &loc, with(self.tl.clone()));
        let gh = slice(p, x, 1, &self.nloc, &self.nall);
        let gh = reshape(p, &gh, with(self.nf.mul(&self.ng)));
        p.call(
            "cat.default",
            vec![("tensors", A::Ts(vec![loc, gh])), ("dim", A::Int(0))],
            vec![],
            x.dtype,
            with(self.nf.mul(&self.nall)),
        )
    }

    /// `[nf*nall, width]` in flat order -> `[nf, nall, width]`.
    fn unflatten(&self, p: &mut Program, y: &T, pos: &T, width: i64) -> T {
        let n = self.nf.mul(&self.nall);
        let flat = reshape(p, pos, vec![n.clone()]);
        let rows = p.call(
            "index_select.default",
            vec![
                ("self", A::T(y.clone())),
                ("dim", A::Int(0)),
                ("index", A::T(flat)),
            ],
            vec![],
            y.dtype,
            vec![n, Expr::int(width)],
        );
        reshape(
            p,
            &rows,
            vec![self.nf.clone(), self.nall.clone(), Expr::int(width)],
        )
    }

    /// Per-frame neighbour indices `i64[nf, nloc, nnei]` -> `i32[nf*nloc, nnei]` into the
    /// flat system (-1 stays -1).
    fn nlist(&self, p: &mut Program, nl: &T, pos: &T) -> T {
        let valid = p.call(
            "ge.Scalar",
            vec![("self", A::T(nl.clone())), ("other", A::Int(0))],
            vec![],
            dtype::BOOL,
            nl.shape.clone(),
        );
        let safe = p.call(
            "clamp_min.default",
            vec![("self", A::T(nl.clone())), ("min", A::Int(0))],
            vec![],
            dtype::I64,
            nl.shape.clone(),
        );
        let cols = self.nloc.mul(&nl.shape[2]);
        let flat = reshape(p, &safe, vec![self.nf.clone(), cols.clone()]);
        let moved = p.call(
            "gather.default",
            vec![
                ("self", A::T(pos.clone())),
                ("dim", A::Int(1)),
                ("index", A::T(flat)),
            ],
            vec![],
            dtype::I64,
            vec![self.nf.clone(), cols],
        );
        let moved = reshape(p, &moved, nl.shape.clone());
        let idx = p.call(
            "where.ScalarOther",
            vec![
                ("condition", A::T(valid)),
                ("self", A::T(moved)),
                ("other", A::Int(-1)),
            ],
            vec![],
            dtype::I64,
            nl.shape.clone(),
        );
        let idx = reshape(p, &idx, vec![self.tl.clone(), nl.shape[2].clone()]);
        cast(p, idx, dtype::I32)
    }
}
