//! Writing one StableHLO function as MLIR text: SSA names, tensor types, and one helper per
//! operation form we use.
//!
//! A dimension is either known when the module is written (`Size::Fixed`) or held at run
//! time in a `tensor<1xi32>` value (`Size::Var`), so the same helpers write a
//! shape-polymorphic export (JAX refines it when called) and a module with static shapes.
//! Each helper picks the static op (`reshape`, `slice`, ...) when every size is fixed and the
//! dynamic one (`dynamic_reshape`, `real_dynamic_slice`, ...) otherwise.

use std::fmt::Write;

use crate::graph::DType;

/// Element types of StableHLO values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Elem {
    F32,
    F64,
    I32,
    I64,
    I1,
}

impl Elem {
    pub fn name(self) -> &'static str {
        match self {
            Elem::F32 => "f32",
            Elem::F64 => "f64",
            Elem::I32 => "i32",
            Elem::I64 => "i64",
            Elem::I1 => "i1",
        }
    }

    pub fn of(d: DType) -> Elem {
        match d {
            DType::F32 => Elem::F32,
            DType::F64 => Elem::F64,
            DType::I32 => Elem::I32,
            DType::Bool => Elem::I1,
        }
    }

    pub fn is_float(self) -> bool {
        matches!(self, Elem::F32 | Elem::F64)
    }

    /// A literal of this type in MLIR's syntax (floats by their bits, so exactly).
    fn literal(self, v: f64) -> String {
        match self {
            Elem::F32 => format!("0x{:08X}", (v as f32).to_bits()),
            Elem::F64 => format!("0x{:016X}", v.to_bits()),
            Elem::I1 => (v != 0.0).to_string(),
            Elem::I32 | Elem::I64 => format!("{}", v as i64),
        }
    }
}

/// One dimension of a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Size {
    Fixed(i64),
    /// The name of a `tensor<1xi32>` holding the size.
    Var(String),
}

/// An SSA value with its type.
#[derive(Debug, Clone, PartialEq)]
pub struct Val {
    pub name: String,
    pub elem: Elem,
    pub shape: Vec<Size>,
}

impl Val {
    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    pub fn ty(&self) -> String {
        tensor_type(self.elem, &self.shape)
    }
}

pub fn tensor_type(elem: Elem, shape: &[Size]) -> String {
    let mut s = String::from("tensor<");
    for d in shape {
        match d {
            Size::Fixed(n) => write!(s, "{n}x").unwrap(),
            Size::Var(_) => s.push_str("?x"),
        }
    }
    s.push_str(elem.name());
    s.push('>');
    s
}

/// The sizes as numbers, if every one is fixed.
fn fixed(shape: &[Size]) -> Option<Vec<i64>> {
    shape
        .iter()
        .map(|d| match d {
            Size::Fixed(n) => Some(*n),
            Size::Var(_) => None,
        })
        .collect()
}

/// `rank` sizes: `at` on `axis`, `other(i)` elsewhere.
fn on_axis(rank: usize, axis: usize, at: &Size, other: impl Fn(usize) -> Size) -> Vec<Size> {
    (0..rank)
        .map(|i| if i == axis { at.clone() } else { other(i) })
        .collect()
}

fn list(v: impl IntoIterator<Item = impl std::fmt::Display>) -> String {
    v.into_iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The body of one function being written.
#[derive(Default)]
pub struct Func {
    pub body: String,
    next: usize,
}

impl Func {
    fn fresh(&mut self) -> String {
        self.next += 1;
        format!("%v{}", self.next)
    }

    /// Append `%new = rhs` and return `%new` typed `elem[shape]`.
    pub fn emit(&mut self, elem: Elem, shape: Vec<Size>, rhs: &str) -> Val {
        let name = self.fresh();
        writeln!(self.body, "    {name} = {rhs}").unwrap();
        Val { name, elem, shape }
    }

    /// `stablehlo.constant` from raw little-endian element bytes.
    pub fn constant_bytes(&mut self, elem: Elem, shape: &[i64], bytes: &[u8]) -> Val {
        let shape: Vec<Size> = shape.iter().map(|&n| Size::Fixed(n)).collect();
        let ty = tensor_type(elem, &shape);
        let mut hex = String::with_capacity(2 * bytes.len() + 4);
        hex.push_str("0x");
        for b in bytes {
            write!(hex, "{b:02X}").unwrap();
        }
        let rhs = format!("stablehlo.constant dense<\"{hex}\"> : {ty}");
        self.emit(elem, shape, &rhs)
    }

    /// A rank-0 constant.
    pub fn scalar(&mut self, elem: Elem, v: f64) -> Val {
        let rhs = format!(
            "stablehlo.constant dense<{}> : tensor<{}>",
            elem.literal(v),
            elem.name()
        );
        self.emit(elem, vec![], &rhs)
    }

    /// `tensor<1xi32>` holding a size (a constant for a fixed one).
    pub fn size_value(&mut self, s: &Size) -> String {
        match s {
            Size::Var(v) => v.clone(),
            Size::Fixed(n) => {
                let rhs = format!("stablehlo.constant dense<{n}> : tensor<1xi32>");
                self.emit(Elem::I32, vec![Size::Fixed(1)], &rhs).name
            }
        }
    }

    /// A shape as a `tensor<rank x i32>` operand of the dynamic ops.
    pub fn shape_value(&mut self, shape: &[Size]) -> String {
        if let Some(dims) = fixed(shape) {
            let rhs = format!(
                "stablehlo.constant dense<[{}]> : tensor<{}xi32>",
                list(dims),
                shape.len()
            );
            return self
                .emit(Elem::I32, vec![Size::Fixed(shape.len() as i64)], &rhs)
                .name;
        }
        let parts: Vec<String> = shape.iter().map(|d| self.size_value(d)).collect();
        if parts.len() == 1 {
            return parts[0].clone();
        }
        let tys = list(parts.iter().map(|_| "tensor<1xi32>"));
        let rhs = format!(
            "stablehlo.concatenate {}, dim = 0 : ({tys}) -> tensor<{}xi32>",
            list(&parts),
            parts.len()
        );
        self.emit(Elem::I32, vec![Size::Fixed(parts.len() as i64)], &rhs)
            .name
    }

    /// The size of `x`'s axis `axis`.
    pub fn dim_size(&mut self, x: &Val, axis: usize) -> Size {
        if let Size::Fixed(n) = x.shape[axis] {
            return Size::Fixed(n);
        }
        let rhs = format!(
            "stablehlo.get_dimension_size {}, dim = {axis} : ({}) -> tensor<i32>",
            x.name,
            x.ty()
        );
        let s = self.emit(Elem::I32, vec![], &rhs);
        Size::Var(self.reshape_raw(&s, vec![Size::Fixed(1)]).name)
    }

    fn size_arith(&mut self, op: &str, a: &Size, b: &Size, f: fn(i64, i64) -> i64) -> Size {
        if let (Size::Fixed(x), Size::Fixed(y)) = (a, b) {
            return Size::Fixed(f(*x, *y));
        }
        let (x, y) = (self.size_value(a), self.size_value(b));
        let rhs = format!("stablehlo.{op} {x}, {y} : tensor<1xi32>");
        Size::Var(self.emit(Elem::I32, vec![Size::Fixed(1)], &rhs).name)
    }

    pub fn size_mul(&mut self, a: &Size, b: &Size) -> Size {
        match (a, b) {
            (Size::Fixed(1), s) | (s, Size::Fixed(1)) => s.clone(),
            _ => self.size_arith("multiply", a, b, |x, y| x * y),
        }
    }

    pub fn size_add(&mut self, a: &Size, b: &Size) -> Size {
        match (a, b) {
            (Size::Fixed(0), s) | (s, Size::Fixed(0)) => s.clone(),
            _ => self.size_arith("add", a, b, |x, y| x + y),
        }
    }

    pub fn size_sub(&mut self, a: &Size, b: &Size) -> Size {
        match b {
            Size::Fixed(0) => a.clone(),
            _ => self.size_arith("subtract", a, b, |x, y| x - y),
        }
    }

    /// A rank-0 tensor of `elem` holding a size.
    pub fn size_scalar(&mut self, s: &Size, elem: Elem) -> Val {
        match s {
            Size::Fixed(n) => self.scalar(elem, *n as f64),
            Size::Var(v) => {
                let one = Val {
                    name: v.clone(),
                    elem: Elem::I32,
                    shape: vec![Size::Fixed(1)],
                };
                let r = self.reshape_raw(&one, vec![]);
                self.convert(&r, elem)
            }
        }
    }

    /// `x` with the same elements in `shape` (no checks).
    pub fn reshape_raw(&mut self, x: &Val, shape: Vec<Size>) -> Val {
        let ty = tensor_type(x.elem, &shape);
        let rhs = if fixed(&shape).is_some() {
            format!("stablehlo.reshape {} : ({}) -> {ty}", x.name, x.ty())
        } else {
            let s = self.shape_value(&shape);
            format!(
                "stablehlo.dynamic_reshape {}, {s} : ({}, tensor<{}xi32>) -> {ty}",
                x.name,
                x.ty(),
                shape.len()
            )
        };
        self.emit(x.elem, shape, &rhs)
    }

    pub fn convert(&mut self, x: &Val, elem: Elem) -> Val {
        if x.elem == elem {
            return x.clone();
        }
        let ty = tensor_type(elem, &x.shape);
        let rhs = format!("stablehlo.convert {} : ({}) -> {ty}", x.name, x.ty());
        self.emit(elem, x.shape.clone(), &rhs)
    }

    /// `x` placed in `shape`, axis `i` of `x` becoming axis `dims[i]`.
    pub fn broadcast_in_dim(&mut self, x: &Val, shape: Vec<Size>, dims: &[usize]) -> Val {
        let ty = tensor_type(x.elem, &shape);
        let rhs = if fixed(&shape).is_some() {
            format!(
                "stablehlo.broadcast_in_dim {}, dims = [{}] : ({}) -> {ty}",
                x.name,
                list(dims),
                x.ty()
            )
        } else {
            let s = self.shape_value(&shape);
            format!(
                "stablehlo.dynamic_broadcast_in_dim {}, {s}, dims = [{}] : ({}, tensor<{}xi32>) -> {ty}",
                x.name,
                list(dims),
                x.ty(),
                shape.len()
            )
        };
        self.emit(x.elem, shape, &rhs)
    }

    /// numpy broadcasting of `x` to `shape` (trailing axes aligned).
    pub fn broadcast_to(&mut self, x: &Val, shape: Vec<Size>) -> Val {
        if x.shape == shape {
            return x.clone();
        }
        let off = shape.len() - x.rank();
        let dims: Vec<usize> = (off..shape.len()).collect();
        self.broadcast_in_dim(x, shape, &dims)
    }

    /// A constant `v` of `elem` filling `shape`.
    pub fn splat(&mut self, elem: Elem, v: f64, shape: &[Size]) -> Val {
        let s = self.scalar(elem, v);
        self.broadcast_to(&s, shape.to_vec())
    }

    /// An elementwise op over operands of one shape (`stablehlo.add`, ...).
    pub fn elementwise(&mut self, op: &str, args: &[&Val], elem: Elem) -> Val {
        let shape = args[0].shape.clone();
        let names = list(args.iter().map(|a| a.name.as_str()));
        let ty = tensor_type(elem, &shape);
        let rhs = if args.len() == 2 && args[0].elem == elem && args[1].elem == elem {
            format!("stablehlo.{op} {names} : {ty}")
        } else {
            let tys = list(args.iter().map(|a| a.ty()));
            format!("\"stablehlo.{op}\"({names}) : ({tys}) -> {ty}")
        };
        self.emit(elem, shape, &rhs)
    }

    /// `stablehlo.compare` (`dir`: LT, LE, GT, GE, EQ, NE) of two same-shaped values.
    pub fn compare(&mut self, dir: &str, a: &Val, b: &Val) -> Val {
        let kind = if a.elem.is_float() { "FLOAT" } else { "SIGNED" };
        let ty = tensor_type(Elem::I1, &a.shape);
        let rhs = format!(
            "stablehlo.compare {dir}, {}, {}, {kind} : ({}, {}) -> {ty}",
            a.name,
            b.name,
            a.ty(),
            b.ty()
        );
        self.emit(Elem::I1, a.shape.clone(), &rhs)
    }

    pub fn select(&mut self, c: &Val, a: &Val, b: &Val) -> Val {
        let ty = a.ty();
        let rhs = format!(
            "\"stablehlo.select\"({}, {}, {}) : ({}, {ty}, {ty}) -> {ty}",
            c.name,
            a.name,
            b.name,
            c.ty()
        );
        self.emit(a.elem, a.shape.clone(), &rhs)
    }

    pub fn transpose(&mut self, x: &Val, perm: &[usize]) -> Val {
        let shape: Vec<Size> = perm.iter().map(|&p| x.shape[p].clone()).collect();
        let ty = tensor_type(x.elem, &shape);
        let rhs = format!(
            "stablehlo.transpose {}, dims = [{}] : ({}) -> {ty}",
            x.name,
            list(perm),
            x.ty()
        );
        self.emit(x.elem, shape, &rhs)
    }

    /// `x[start..end]` along `axis`.
    pub fn slice(&mut self, x: &Val, axis: usize, start: &Size, end: &Size) -> Val {
        let mut shape = x.shape.clone();
        shape[axis] = self.size_sub(end, start);
        let ty = tensor_type(x.elem, &shape);
        let st = on_axis(x.rank(), axis, start, |_| Size::Fixed(0));
        let lim = on_axis(x.rank(), axis, end, |i| x.shape[i].clone());
        let r = x.rank();
        let rhs = if let (Some(s0), Some(l0), Some(_)) = (fixed(&st), fixed(&lim), fixed(&x.shape))
        {
            format!(
                "\"stablehlo.slice\"({}) {{start_indices = array<i64: {}>, limit_indices = array<i64: {}>, strides = array<i64: {}>}} : ({}) -> {ty}",
                x.name,
                list(s0),
                list(l0),
                list(vec![1; r]),
                x.ty()
            )
        } else {
            let (s, l) = (self.shape_value(&st), self.shape_value(&lim));
            let one = self.shape_value(&vec![Size::Fixed(1); r]);
            format!(
                "stablehlo.real_dynamic_slice {}, {s}, {l}, {one} : ({}, tensor<{r}xi32>, tensor<{r}xi32>, tensor<{r}xi32>) -> {ty}",
                x.name,
                x.ty()
            )
        };
        self.emit(x.elem, shape, &rhs)
    }

    /// `x` at offset `before` in zeros of length `size` along `axis`.
    pub fn pad(&mut self, x: &Val, axis: usize, before: &Size, size: &Size) -> Val {
        let len = x.shape[axis].clone();
        let used = self.size_add(before, &len);
        let after = self.size_sub(size, &used);
        let zero = self.scalar(x.elem, 0.0);
        let mut shape = x.shape.clone();
        shape[axis] = size.clone();
        let ty = tensor_type(x.elem, &shape);
        let low = on_axis(x.rank(), axis, before, |_| Size::Fixed(0));
        let high = on_axis(x.rank(), axis, &after, |_| Size::Fixed(0));
        let rhs = if let (Some(l0), Some(h0)) = (fixed(&low), fixed(&high)) {
            format!(
                "\"stablehlo.pad\"({}, {}) {{edge_padding_low = array<i64: {}>, edge_padding_high = array<i64: {}>, interior_padding = array<i64: {}>}} : ({}, {}) -> {ty}",
                x.name,
                zero.name,
                list(l0),
                list(h0),
                list(vec![0; x.rank()]),
                x.ty(),
                zero.ty()
            )
        } else {
            let (l, h) = (self.shape_value(&low), self.shape_value(&high));
            let i = self.shape_value(&vec![Size::Fixed(0); x.rank()]);
            let r = x.rank();
            format!(
                "stablehlo.dynamic_pad {}, {}, {l}, {h}, {i} : ({}, {}, tensor<{r}xi32>, tensor<{r}xi32>, tensor<{r}xi32>) -> {ty}",
                x.name,
                zero.name,
                x.ty(),
                zero.ty()
            )
        };
        self.emit(x.elem, shape, &rhs)
    }

    pub fn concat(&mut self, xs: &[&Val], axis: usize) -> Val {
        if xs.len() == 1 {
            return xs[0].clone();
        }
        let mut shape = xs[0].shape.clone();
        let mut total = Size::Fixed(0);
        for x in xs {
            total = self.size_add(&total, &x.shape[axis]);
        }
        shape[axis] = total;
        let ty = tensor_type(xs[0].elem, &shape);
        let rhs = format!(
            "stablehlo.concatenate {}, dim = {axis} : ({}) -> {ty}",
            list(xs.iter().map(|x| x.name.as_str())),
            list(xs.iter().map(|x| x.ty()))
        );
        self.emit(xs[0].elem, shape, &rhs)
    }

    /// Sum (`add`) or maximum (`maximum`) over `axes`; the reduced axes are dropped.
    pub fn reduce(&mut self, x: &Val, axes: &[usize], op: &str) -> Val {
        let init = if op == "maximum" {
            f64::NEG_INFINITY
        } else {
            0.0
        };
        let init = self.scalar(x.elem, init);
        let shape: Vec<Size> = (0..x.rank())
            .filter(|i| !axes.contains(i))
            .map(|i| x.shape[i].clone())
            .collect();
        let ty = tensor_type(x.elem, &shape);
        let rhs = format!(
            "stablehlo.reduce({} init: {}) applies stablehlo.{op} across dimensions = [{}] : ({}, {}) -> {ty}",
            x.name,
            init.name,
            list(axes),
            x.ty(),
            init.ty()
        );
        self.emit(x.elem, shape, &rhs)
    }

    /// `a [..., m, k] . b [k, n] | [..., k, n]` (leading axes of `b`, if any, are batch axes
    /// shared with `a`).
    pub fn matmul(&mut self, a: &Val, b: &Val) -> Val {
        let (ra, rb) = (a.rank(), b.rank());
        let nb = rb - 2;
        let mut shape: Vec<Size> = a.shape[..ra - 1].to_vec();
        shape.push(b.shape[rb - 1].clone());
        let ty = tensor_type(a.elem, &shape);
        let batch = list(0..nb);
        let rhs = format!(
            "stablehlo.dot_general {}, {}, batching_dims = [{batch}] x [{batch}], contracting_dims = [{}] x [{}], precision = [HIGHEST, HIGHEST] : ({}, {}) -> {ty}",
            a.name,
            b.name,
            ra - 1,
            nb,
            a.ty(),
            b.ty()
        );
        self.emit(a.elem, shape, &rhs)
    }

    /// Rows of `table` picked by `idx` (i32, any shape): `idx.shape ++ table.shape[1..]`.
    pub fn gather_rows(&mut self, table: &Val, idx: &Val) -> Val {
        let ir = idx.rank();
        let rest = &table.shape[1..];
        let mut shape = idx.shape.clone();
        shape.extend_from_slice(rest);
        let ty = tensor_type(table.elem, &shape);
        let offset = list(ir..ir + rest.len());
        let dnums = format!(
            "#stablehlo.gather<offset_dims = [{offset}], collapsed_slice_dims = [0], start_index_map = [0], index_vector_dim = {ir}>"
        );
        let mut sizes = vec![Size::Fixed(1)];
        sizes.extend_from_slice(rest);
        let rhs = if let Some(s) = fixed(&sizes) {
            let s = list(s);
            format!(
                "\"stablehlo.gather\"({}, {}) {{dimension_numbers = {dnums}, slice_sizes = array<i64: {s}>, indices_are_sorted = false}} : ({}, {}) -> {ty}",
                table.name,
                idx.name,
                table.ty(),
                idx.ty()
            )
        } else {
            let s = self.shape_value(&sizes);
            format!(
                "\"stablehlo.dynamic_gather\"({}, {}, {s}) {{dimension_numbers = {dnums}, indices_are_sorted = false}} : ({}, {}, tensor<{}xi32>) -> {ty}",
                table.name,
                idx.name,
                table.ty(),
                idx.ty(),
                sizes.len()
            )
        };
        self.emit(table.elem, shape, &rhs)
    }

    /// Zeros of `[rows] ++ upd.shape[idx.rank..]` with each `upd` row added at its index.
    pub fn scatter_add_rows(&mut self, idx: &Val, upd: &Val, rows: &Size) -> Val {
        let ir = idx.rank();
        let rest = &upd.shape[ir..];
        let mut shape = vec![rows.clone()];
        shape.extend_from_slice(rest);
        let zero = self.scalar(upd.elem, 0.0);
        let base = self.broadcast_in_dim(&zero, shape.clone(), &[]);
        let ty = tensor_type(upd.elem, &shape);
        let e = upd.elem.name();
        let window = list(ir..ir + rest.len());
        let rhs = format!(
            "\"stablehlo.scatter\"({}, {}, {}) ({{\n    ^bb0(%p: tensor<{e}>, %q: tensor<{e}>):\n      %r = stablehlo.add %p, %q : tensor<{e}>\n      stablehlo.return %r : tensor<{e}>\n    }}) {{scatter_dimension_numbers = #stablehlo.scatter<update_window_dims = [{window}], inserted_window_dims = [0], scatter_dims_to_operand_dims = [0], index_vector_dim = {ir}>, indices_are_sorted = false, unique_indices = false}} : ({ty}, {}, {}) -> {ty}",
            base.name,
            idx.name,
            upd.name,
            idx.ty(),
            upd.ty()
        );
        self.emit(upd.elem, shape, &rhs)
    }

    /// `i32` counting along `axis` of `shape`.
    pub fn iota(&mut self, shape: Vec<Size>, axis: usize) -> Val {
        let ty = tensor_type(Elem::I32, &shape);
        let rhs = if fixed(&shape).is_some() {
            format!("stablehlo.iota dim = {axis} : {ty}")
        } else {
            let s = self.shape_value(&shape);
            format!(
                "stablehlo.dynamic_iota {s}, dim = {axis} : (tensor<{}xi32>) -> {ty}",
                shape.len()
            )
        };
        self.emit(Elem::I32, shape, &rhs)
    }

    /// `val` reordered along `axis` by ascending `key` (both i32, one shape), ties kept in
    /// order (a stable sort).
    pub fn sort_by_key(&mut self, key: &Val, val: &Val, axis: usize) -> Val {
        let name = self.fresh();
        let t = key.ty();
        writeln!(
            self.body,
            "    {name}:2 = \"stablehlo.sort\"({}, {}) ({{\n    ^bb0(%ka: tensor<i32>, %kb: tensor<i32>, %xa: tensor<i32>, %xb: tensor<i32>):\n      %lt = stablehlo.compare LT, %ka, %kb, SIGNED : (tensor<i32>, tensor<i32>) -> tensor<i1>\n      stablehlo.return %lt : tensor<i1>\n    }}) {{dimension = {axis} : i64, is_stable = true}} : ({t}, {t}) -> ({t}, {t})",
            key.name, val.name
        )
        .unwrap();
        Val {
            name: format!("{name}#1"),
            elem: val.elem,
            shape: val.shape.clone(),
        }
    }
}
