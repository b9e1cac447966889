//! Convenience constructors on `Graph`: one method per op, plus a few compositions
//! (`sum_to`, `scalar`, `mean`) that model builders and autodiff share.

use std::sync::Arc;

use super::mlp::{DenseInput, RowNets};
use super::op::{Binary, Cmp, Op, Unary};
use super::tensor::Tensor;
use super::types::{DType, Dim, Shape};
use super::{Graph, GraphError, ValueId};

type R = Result<ValueId, GraphError>;

impl Graph {
    pub fn constant(&mut self, t: Tensor) -> ValueId {
        self.push(Op::Const(Arc::new(t)), &[])
            .expect("a constant always types")
    }

    /// A rank-0 constant of the given dtype.
    pub fn scalar(&mut self, v: f64, dtype: DType) -> ValueId {
        self.constant(Tensor::scalar(dtype, v))
    }

    /// A rank-0 constant of `like`'s dtype.
    pub fn scalar_like(&mut self, v: f64, like: ValueId) -> ValueId {
        let d = self.dtype(like);
        self.scalar(v, d)
    }

    pub fn unary(&mut self, u: Unary, x: ValueId) -> R {
        self.push(Op::Unary(u), &[x])
    }

    pub fn binary(&mut self, b: Binary, x: ValueId, y: ValueId) -> R {
        self.push(Op::Binary(b), &[x, y])
    }

    pub fn add(&mut self, x: ValueId, y: ValueId) -> R {
        if let Some(v) = self.abutting_pads(x, y)? {
            return Ok(v);
        }
        self.binary(Binary::Add, x, y)
    }

    /// `pad(a) + pad(b)` where the two pads place `a` and `b` side by side along one axis
    /// and fill it (autodiff's sum of the cotangents of two slices that split a value):
    /// `concat(a, b)`, one pass instead of three. The sum's zeros from the pads would turn a
    /// `-0.0` of `a` or `b` into `0.0`; the concatenation keeps it.
    fn abutting_pads(&mut self, x: ValueId, y: ValueId) -> Result<Option<ValueId>, GraphError> {
        let pad = |g: &Graph, v: ValueId| match g.node(v).op {
            Op::Pad { axis, before, size } => Some((axis, before, size, g.node(v).args[0])),
            _ => None,
        };
        let (Some(px), Some(py)) = (pad(self, x), pad(self, y)) else {
            return Ok(None);
        };
        if self.ty(x) != self.ty(y) || px.0 != py.0 || px.2 != py.2 {
            return Ok(None);
        }
        let axis = px.0;
        let (first, second) = if px.1 == Dim::fixed(0) {
            (px, py)
        } else {
            (py, px)
        };
        let len = |g: &Graph, v: ValueId| g.shape(v)[axis];
        let (l1, l2) = (len(self, first.3), len(self, second.3));
        let fits =
            first.1 == Dim::fixed(0) && second.1 == l1 && l1.checked_add(l2) == Some(first.2);
        if !fits {
            return Ok(None);
        }
        self.concat(&[first.3, second.3], axis).map(Some)
    }

    pub fn sub(&mut self, x: ValueId, y: ValueId) -> R {
        self.binary(Binary::Sub, x, y)
    }

    pub fn mul(&mut self, x: ValueId, y: ValueId) -> R {
        self.binary(Binary::Mul, x, y)
    }

    pub fn div(&mut self, x: ValueId, y: ValueId) -> R {
        self.binary(Binary::Div, x, y)
    }

    pub fn maximum(&mut self, x: ValueId, y: ValueId) -> R {
        self.binary(Binary::Max, x, y)
    }

    pub fn minimum(&mut self, x: ValueId, y: ValueId) -> R {
        self.binary(Binary::Min, x, y)
    }

    pub fn and(&mut self, x: ValueId, y: ValueId) -> R {
        self.binary(Binary::And, x, y)
    }

    pub fn or(&mut self, x: ValueId, y: ValueId) -> R {
        self.binary(Binary::Or, x, y)
    }

    pub fn not(&mut self, x: ValueId) -> R {
        self.unary(Unary::Not, x)
    }

    pub fn neg(&mut self, x: ValueId) -> R {
        self.unary(Unary::Neg, x)
    }

    pub fn exp(&mut self, x: ValueId) -> R {
        self.unary(Unary::Exp, x)
    }

    pub fn log(&mut self, x: ValueId) -> R {
        self.unary(Unary::Log, x)
    }

    pub fn tanh(&mut self, x: ValueId) -> R {
        self.unary(Unary::Tanh, x)
    }

    pub fn sqrt(&mut self, x: ValueId) -> R {
        self.unary(Unary::Sqrt, x)
    }

    pub fn recip(&mut self, x: ValueId) -> R {
        self.unary(Unary::Recip, x)
    }

    pub fn sigmoid(&mut self, x: ValueId) -> R {
        self.unary(Unary::Sigmoid, x)
    }

    /// Softmax over the last axis as one op.
    pub fn softmax(&mut self, x: ValueId) -> R {
        self.push(Op::Softmax, &[x])
    }

    /// A fused activation (`Op::Act`).
    pub fn act(&mut self, f: super::op::ActFn, x: ValueId) -> R {
        self.push(Op::Act(f), &[x])
    }

    pub fn floor(&mut self, x: ValueId) -> R {
        self.unary(Unary::Floor, x)
    }

    /// `x * c` for a float constant `c`.
    pub fn scale(&mut self, x: ValueId, c: f64) -> R {
        let s = self.scalar_like(c, x);
        self.mul(x, s)
    }

    /// `x + c` for a float constant `c`.
    pub fn add_scalar(&mut self, x: ValueId, c: f64) -> R {
        let s = self.scalar_like(c, x);
        self.add(x, s)
    }

    pub fn cmp(&mut self, c: Cmp, x: ValueId, y: ValueId) -> R {
        self.push(Op::Compare(c), &[x, y])
    }

    pub fn select(&mut self, c: ValueId, x: ValueId, y: ValueId) -> R {
        self.push(Op::Select, &[c, x, y])
    }

    pub fn cast(&mut self, x: ValueId, d: DType) -> R {
        if self.dtype(x) == d {
            return Ok(x);
        }
        // float32 -> float64 -> float32 is the identity: give back the float32 value.
        if let (Op::Cast(DType::F64), DType::F32) = (&self.node(x).op, d) {
            let inner = self.node(x).args[0];
            if self.dtype(inner) == DType::F32 {
                return Ok(inner);
            }
        }
        self.push(Op::Cast(d), &[x])
    }

    /// `sum_j Net(rr[:, j, 0])^T rr[:, j, :]` as one fused op (see `Op::EmbedContract`);
    /// with `centre`, only for centres of type `centre.0`, whose types are `centre.1`.
    pub fn embed_contract(
        &mut self,
        rr: ValueId,
        net: Arc<super::mlp::Mlp>,
        table: Option<Arc<super::table::Table>>,
        centre: Option<(i32, ValueId)>,
    ) -> R {
        self.embed_op(rr, net, table, centre, false)
    }

    /// `EmbedContract` with a per-row factor on channels `split..` (see `Embed::factor`):
    /// those channels contract with `Net(rr[:, j, 0]) * u[idx[:, j]]`. `table` is required.
    pub fn embed_contract_factor(
        &mut self,
        rr: ValueId,
        (net, table): (Arc<super::mlp::Mlp>, Arc<super::table::Table>),
        (split, idx, u): (usize, ValueId, ValueId),
    ) -> R {
        check_table(&net, &table)?;
        let e = super::mlp::Embed {
            net,
            centre_type: None,
            table: Some(table),
            ones: false,
            factor: Some(split),
            shift: false,
        };
        self.push(Op::EmbedContract(e), &[rr, idx, u])
    }

    /// `EmbedContract` with a per-row shift of the network's first layer (see
    /// `Embed::shift`): row `j` goes through `net` with `u[idx[:, j]]` added to its first
    /// layer's pre-activation.
    pub fn embed_contract_shift(
        &mut self,
        rr: ValueId,
        net: Arc<super::mlp::Mlp>,
        (idx, u): (ValueId, ValueId),
    ) -> R {
        let e = super::mlp::Embed {
            net,
            centre_type: None,
            table: None,
            ones: false,
            factor: None,
            shift: true,
        };
        self.push(Op::EmbedContract(e), &[rr, idx, u])
    }

    /// `sum_j Net(rr[:, j, 0])` (`rr [n, s, 1]`) as one fused op, `[n, m, 1]`: the
    /// contraction with a channel of ones (see `Embed::ones`).
    pub fn embed_sum(
        &mut self,
        rr: ValueId,
        net: Arc<super::mlp::Mlp>,
        table: Option<Arc<super::table::Table>>,
    ) -> R {
        self.embed_op(rr, net, table, None, true)
    }

    fn embed_op(
        &mut self,
        rr: ValueId,
        net: Arc<super::mlp::Mlp>,
        table: Option<Arc<super::table::Table>>,
        centre: Option<(i32, ValueId)>,
        ones: bool,
    ) -> R {
        if let Some(t) = &table {
            check_table(&net, t)?;
        }
        let e = super::mlp::Embed {
            net,
            centre_type: centre.map(|c| c.0),
            table,
            ones,
            factor: None,
            shift: false,
        };
        match centre {
            Some((_, types)) => self.push(Op::EmbedContract(e), &[rr, types]),
            None => self.push(Op::EmbedContract(e), &[rr]),
        }
    }

    /// `net` on the rows of `x [n, d]`, or only on rows of type `centre.0` (zero elsewhere).
    pub fn dense(
        &mut self,
        x: ValueId,
        net: Arc<super::mlp::Mlp>,
        centre: Option<(i32, ValueId)>,
    ) -> R {
        match centre {
            None => self.dense_op(x, RowNets::All(net), None, DenseInput::Rows),
            Some((t, types)) => {
                let t = usize::try_from(t)
                    .map_err(|_| GraphError(format!("dense of negative type {t}")))?;
                let mut nets = vec![None; t + 1];
                nets[t] = Some(net);
                self.dense_op(x, RowNets::ByType(nets), Some(types), DenseInput::Rows)
            }
        }
    }

    /// A network on each row of `x` (`Op::Dense`): one for every row, or each row's type's
    /// (`types`, `i32 [n]`, with `RowNets::ByType`); a one-output network's op returns its
    /// gradient too, and the value is the output column.
    pub fn dense_op(
        &mut self,
        x: ValueId,
        nets: RowNets,
        types: Option<ValueId>,
        input: DenseInput,
    ) -> R {
        // A one-output network (an energy fitting) returns its gradient too.
        let grad = nets.first().is_some_and(|n| n.n_out() == 1);
        let e = super::mlp::Dense { nets, grad, input };
        let full = match types {
            Some(types) => self.push(Op::Dense(e), &[x, types])?,
            None => self.push(Op::Dense(e), &[x])?,
        };
        if grad {
            self.slice_n(full, 1, 0, 1)
        } else {
            Ok(full)
        }
    }

    /// `(gr, axis)` where `x` is `reshape(gr gr[:, :axis]^T, [n, m * axis])` for `gr [n, m,
    /// c]` as `se_e2_a` builds its descriptor: what `DenseInput::AxisProduct` forms itself.
    pub fn axis_product_of(&self, x: ValueId) -> Option<(ValueId, usize)> {
        let Op::Reshape(_) = &self.node(x).op else {
            return None;
        };
        let dm = self.node(x).args[0];
        let (Op::MatMul, [gr, t]) = (&self.node(dm).op, self.node(dm).args.as_slice()) else {
            return None;
        };
        let (Op::Transpose(perm), [g1]) = (&self.node(*t).op, self.node(*t).args.as_slice()) else {
            return None;
        };
        let shape = self.shape(*gr);
        if perm != &[0, 2, 1]
            || shape.len() != 3
            || shape[1].sym.is_some()
            || shape[2].sym.is_some()
        {
            return None;
        }
        let m = shape[1].factor;
        let axis = if g1 == gr {
            m
        } else {
            match (&self.node(*g1).op, self.node(*g1).args.as_slice()) {
                (
                    Op::Slice {
                        axis: 1,
                        start,
                        end,
                    },
                    [src],
                ) if src == gr && *start == Dim::fixed(0) && end.sym.is_none() => end.factor,
                _ => return None,
            }
        };
        let want = [shape[0], Dim::fixed(m * axis)];
        (self.shape(x) == want.as_slice() && axis > 0).then_some((*gr, axis))
    }

    pub fn matmul(&mut self, x: ValueId, y: ValueId) -> R {
        self.push(Op::MatMul, &[x, y])
    }

    pub fn reshape(&mut self, x: ValueId, to: Shape) -> R {
        if self.shape(x) == to.as_slice() {
            return Ok(x);
        }
        self.push(Op::Reshape(to), &[x])
    }

    pub fn transpose(&mut self, x: ValueId, perm: Vec<usize>) -> R {
        if perm.iter().enumerate().all(|(i, &p)| i == p) {
            return Ok(x);
        }
        self.push(Op::Transpose(perm), &[x])
    }

    /// Swap the last two axes.
    pub fn transpose_last2(&mut self, x: ValueId) -> R {
        let r = self.ty(x).rank();
        let mut perm: Vec<usize> = (0..r).collect();
        perm.swap(r - 2, r - 1);
        self.transpose(x, perm)
    }

    pub fn broadcast(&mut self, x: ValueId, to: Shape) -> R {
        if self.shape(x) == to.as_slice() {
            return Ok(x);
        }
        self.push(Op::Broadcast(to), &[x])
    }

    pub fn slice(&mut self, x: ValueId, axis: usize, start: Dim, end: Dim) -> R {
        if start == Dim::fixed(0) && self.shape(x).get(axis) == Some(&end) {
            return Ok(x);
        }
        self.push(Op::Slice { axis, start, end }, &[x])
    }

    /// `x[.., a..b, ..]` with constant bounds.
    pub fn slice_n(&mut self, x: ValueId, axis: usize, a: usize, b: usize) -> R {
        self.slice(x, axis, Dim::fixed(a), Dim::fixed(b))
    }

    /// Place `x` at offset `before` within zeros of length `size` along `axis`.
    pub fn pad(&mut self, x: ValueId, axis: usize, before: Dim, size: Dim) -> R {
        self.push(Op::Pad { axis, before, size }, &[x])
    }

    pub fn concat(&mut self, xs: &[ValueId], axis: usize) -> R {
        if xs.len() == 1 {
            return Ok(xs[0]);
        }
        self.push(Op::Concat { axis }, xs)
    }

    pub fn sum(&mut self, x: ValueId, axes: &[usize], keepdims: bool) -> R {
        if axes.is_empty() {
            return Ok(x);
        }
        self.push(
            Op::ReduceSum {
                axes: axes.to_vec(),
                keepdims,
            },
            &[x],
        )
    }

    /// Mean over axes of constant size.
    pub fn mean(&mut self, x: ValueId, axes: &[usize], keepdims: bool) -> R {
        let shape = self.shape(x).to_vec();
        let mut n = 1usize;
        for &a in axes {
            match shape[a].sym {
                None => n *= shape[a].factor,
                Some(_) => return Err(GraphError("mean over a symbolic axis".into())),
            }
        }
        let s = self.sum(x, axes, keepdims)?;
        self.scale(s, 1.0 / n as f64)
    }

    pub fn reduce_max(&mut self, x: ValueId, axes: &[usize], keepdims: bool) -> R {
        self.push(
            Op::ReduceMax {
                axes: axes.to_vec(),
                keepdims,
            },
            &[x],
        )
    }

    pub fn gather(&mut self, table: ValueId, idx: ValueId) -> R {
        self.push(Op::Gather, &[table, idx])
    }

    pub fn scatter_add(&mut self, idx: ValueId, upd: ValueId, rows: Dim) -> R {
        self.push(Op::ScatterAdd { rows }, &[idx, upd])
    }

    pub fn stop_gradient(&mut self, x: ValueId) -> R {
        self.push(Op::StopGradient, &[x])
    }

    /// Sum `x` down to `shape` (the inverse of numpy broadcasting; used by VJPs).
    pub fn sum_to(&mut self, x: ValueId, shape: &[Dim]) -> R {
        let xs = self.shape(x).to_vec();
        if xs == shape {
            return Ok(x);
        }
        let lead = xs.len() - shape.len();
        let mut axes: Vec<usize> = (0..lead).collect();
        for (i, d) in shape.iter().enumerate() {
            if d.is_one() && !xs[lead + i].is_one() {
                axes.push(lead + i);
            }
        }
        let s = self.sum(x, &axes, true)?;
        // The summed leading axes have size 1 now; the remaining shape is `shape`.
        self.reshape(s, shape.to_vec())
    }

    /// Insert a unit axis at `axis`.
    pub fn expand_dims(&mut self, x: ValueId, axis: usize) -> R {
        let mut s = self.shape(x).to_vec();
        s.insert(axis, Dim::ONE);
        self.reshape(x, s)
    }
}

/// A compression table fits its network: one row of `m` outputs each, in its dtype.
fn check_table(net: &super::mlp::Mlp, t: &super::table::Table) -> Result<(), GraphError> {
    if t.m != net.n_out() || t.coef.dtype() != net.dtype {
        return Err(GraphError(
            "embed_contract table does not match its network".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::{Dense, TensorType};

    /// A dense op with no network, or networks by type without the types, is an error.
    #[test]
    fn a_dense_op_without_its_networks_or_types_is_an_error() {
        let mut g = Graph::new();
        let x = g.input(
            "x",
            TensorType::new(DType::F64, vec![Dim::NLOC, Dim::fixed(3)]),
        );
        let t = g.input("t", TensorType::new(DType::I32, vec![Dim::NLOC]));
        let none = Dense {
            nets: RowNets::ByType(vec![None]),
            grad: false,
            input: DenseInput::Rows,
        };
        assert!(g.push(Op::Dense(none), &[x, t]).is_err());
        let net = Arc::new(super::super::Mlp {
            dtype: DType::F64,
            layers: vec![super::super::MlpLayer {
                w: Arc::new(Tensor::f64(vec![3, 1], vec![0.5; 3])),
                b: None,
                idt: None,
                act: super::super::Act::Linear,
                residual: super::super::Residual::None,
            }],
        });
        let typed = Dense {
            nets: RowNets::ByType(vec![Some(net.clone())]),
            grad: true,
            input: DenseInput::Rows,
        };
        assert!(g.push(Op::Dense(typed.clone()), &[x]).is_err());
        assert!(g.push(Op::Dense(typed), &[x, t]).is_ok());
        // An axis product needs x [n, m, c] with m * axis the network's input width.
        let product = Dense {
            nets: RowNets::All(net),
            grad: true,
            input: DenseInput::AxisProduct {
                axis: 2,
                channels: 4,
            },
        };
        assert!(g.push(Op::Dense(product), &[x]).is_err());
    }

    /// A first-layer shift needs an index per slot and rows as wide as the first layer,
    /// in rr's dtype, and takes no table; its rows take no gradient.
    #[test]
    fn a_shift_checks_its_index_and_rows() {
        use super::super::{Act, Mlp, MlpLayer, Residual};
        let mut g = Graph::new();
        let f64s = |d: Vec<Dim>| TensorType::new(DType::F64, d);
        let rr = g.input("rr", f64s(vec![Dim::NLOC, Dim::fixed(6), Dim::ONE]));
        let idx = g.input(
            "idx",
            TensorType::new(DType::I32, vec![Dim::NLOC, Dim::fixed(6)]),
        );
        let u2 = g.input("u2", f64s(vec![Dim::fixed(4), Dim::fixed(2)]));
        let u3 = g.input("u3", f64s(vec![Dim::fixed(4), Dim::fixed(3)]));
        let layer = |k: usize, n: usize| MlpLayer {
            w: Arc::new(Tensor::f64(vec![k, n], vec![0.5; k * n])),
            b: None,
            idt: None,
            act: Act::Tanh,
            residual: Residual::None,
        };
        let net = Arc::new(Mlp {
            dtype: DType::F64,
            layers: vec![layer(1, 2), layer(2, 4)],
        });
        assert!(g.embed_contract_shift(rr, net.clone(), (idx, u3)).is_err());
        assert!(g.embed_contract_shift(rr, net.clone(), (rr, u2)).is_err());
        let y = g.embed_contract_shift(rr, net, (idx, u2)).unwrap();
        assert_eq!(g.ty(y).shape, vec![Dim::NLOC, Dim::fixed(4), Dim::ONE]);
        // The gradient with respect to rr, not to the rows.
        let s = g.sum(y, &[0, 1, 2], false).unwrap();
        let seed = g.scalar(1.0, DType::F64);
        assert!(crate::graph::autodiff::vjp(&mut g, s, seed, &[rr]).is_ok());
        assert!(crate::graph::autodiff::vjp(&mut g, s, seed, &[u2]).is_err());
    }

    /// Two pads that place their values side by side and fill the axis add up to a
    /// concatenation; pads that overlap or leave a gap stay a sum.
    #[test]
    fn abutting_pads_add_up_to_a_concatenation() {
        let mut g = Graph::new();
        let f64s = |d: Vec<Dim>| TensorType::new(DType::F64, d);
        let a = g.input("a", f64s(vec![Dim::NLOC, Dim::fixed(2), Dim::fixed(3)]));
        let b = g.input("b", f64s(vec![Dim::NLOC, Dim::fixed(3), Dim::fixed(3)]));
        let pa = g.pad(a, 1, Dim::fixed(0), Dim::fixed(5)).unwrap();
        let pb = g.pad(b, 1, Dim::fixed(2), Dim::fixed(5)).unwrap();
        for (x, y) in [(pa, pb), (pb, pa)] {
            let s = g.add(x, y).unwrap();
            assert_eq!(g.node(s).op, Op::Concat { axis: 1 });
            assert_eq!(g.node(s).args, vec![a, b]);
        }
        let gap = g.pad(b, 1, Dim::fixed(1), Dim::fixed(5)).unwrap();
        let s = g.add(pa, gap).unwrap();
        assert!(matches!(g.node(s).op, Op::Binary(Binary::Add)));
    }
}
