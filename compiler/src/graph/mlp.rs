//! A dense network carried by a fused op (`Op::EmbedContract`): the weights and the layer
//! rules of DeePMD-kit's `EmbeddingNet`, so a kernel can run the whole network per block of
//! rows without the intermediates going to memory.

use std::sync::Arc;

use super::tensor::Tensor;
use super::types::DType;

/// A fused network's activation. The fused kernels run `Linear` and `Tanh` (their
/// derivatives come from the layer's output); the others are DeePMD-kit's tabulated
/// activations (`dp compress`), carried by an embedding network that has a table, whose
/// kernel evaluates them only off the table, in float64 (`Act::eval`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Act {
    Linear,
    Tanh,
    Relu,
    Relu6,
    /// PyTorch's: `x` above 20, else `ln(1 + e^x)`.
    Softplus,
    Sigmoid,
    Silu,
    /// The tanh approximation (DeePMD-kit's `gelu` and `gelu_tf`).
    Gelu,
}

impl Act {
    /// Whether the fused kernels run it (elsewhere than off a table).
    pub fn kernel_native(self) -> bool {
        matches!(self, Act::Linear | Act::Tanh)
    }

    /// Where its derivative jumps.
    pub fn kinks(self) -> Option<&'static [f64]> {
        match self {
            Act::Relu => Some(&[0.0]),
            Act::Relu6 => Some(&[0.0, 6.0]),
            _ => None,
        }
    }

    /// `(f(x), f'(x), f''(x))` in float64. At a kink (relu's 0, relu6's 0 and 6) the
    /// one-sided values of the side PyTorch's gradient takes.
    pub fn eval(self, x: f64) -> (f64, f64, f64) {
        let sigmoid = |v: f64| 1.0 / (1.0 + (-v).exp());
        match self {
            Act::Linear => (x, 1.0, 0.0),
            Act::Tanh => {
                let t = x.tanh();
                let g = 1.0 - t * t;
                (t, g, -2.0 * t * g)
            }
            Act::Relu if x > 0.0 => (x, 1.0, 0.0),
            Act::Relu => (0.0, 0.0, 0.0),
            Act::Relu6 if x > 0.0 && x < 6.0 => (x, 1.0, 0.0),
            Act::Relu6 => (x.clamp(0.0, 6.0), 0.0, 0.0),
            Act::Softplus if x > 20.0 => (x, 1.0, 0.0),
            Act::Softplus => {
                let s = sigmoid(x);
                (x.exp().ln_1p(), s, s * (1.0 - s))
            }
            Act::Sigmoid => {
                let s = sigmoid(x);
                let d = s * (1.0 - s);
                (s, d, d * (1.0 - 2.0 * s))
            }
            Act::Silu => {
                let s = sigmoid(x);
                let d = s * (1.0 - s);
                (x * s, s + x * d, d * (2.0 + x * (1.0 - 2.0 * s)))
            }
            Act::Gelu => {
                const A: f64 = 0.044715;
                let c = (2.0 / std::f64::consts::PI).sqrt();
                let u = c * (x + A * x * x * x);
                let (du, ddu) = (c * (1.0 + 3.0 * A * x * x), 6.0 * c * A * x);
                let t = u.tanh();
                let g = 1.0 - t * t;
                let f = 0.5 * x * (1.0 + t);
                let df = 0.5 * (1.0 + t) + 0.5 * x * g * du;
                let ddf = g * du + 0.5 * x * (g * ddu - 2.0 * t * g * du * du);
                (f, df, ddf)
            }
        }
    }
}

/// How a layer adds its input back (DeePMD-kit's `resnet`/timestep rules).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Residual {
    None,
    /// `y += x` (out == in).
    Same,
    /// `y += [x, x]` (out == 2 in).
    Doubled,
}

/// `y = act(x W + b) * idt + residual(x)`.
#[derive(Debug, Clone, PartialEq)]
pub struct MlpLayer {
    /// `[in, out]`, in the network's dtype.
    pub w: Arc<Tensor>,
    /// `[out]`.
    pub b: Option<Arc<Tensor>>,
    /// `[out]`.
    pub idt: Option<Arc<Tensor>>,
    pub act: Act,
    pub residual: Residual,
}

impl MlpLayer {
    pub fn n_in(&self) -> usize {
        self.w.shape[0]
    }

    pub fn n_out(&self) -> usize {
        self.w.shape[1]
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Mlp {
    pub dtype: DType,
    pub layers: Vec<MlpLayer>,
}

impl Mlp {
    pub fn n_in(&self) -> usize {
        self.layers.first().map_or(0, |l| l.n_in())
    }

    pub fn n_out(&self) -> usize {
        self.layers.last().map_or(0, |l| l.n_out())
    }

    /// Layer widths, input first.
    pub fn widths(&self) -> Vec<usize> {
        let mut w = vec![self.n_in()];
        w.extend(self.layers.iter().map(|l| l.n_out()));
        w
    }

    /// `check`, and every activation one the fused kernels run (`Act::kernel_native`): what
    /// a network without a table must be.
    pub fn check_native(&self) -> Result<(), String> {
        self.check()?;
        match self.layers.iter().find(|l| !l.act.kernel_native()) {
            Some(l) => Err(format!(
                "the fused kernels run tanh and linear layers only, not {:?} (a network \
                 with a compression table evaluates it off the table)",
                l.act
            )),
            None => Ok(()),
        }
    }

    /// Whether the weights are consistent: widths chain, vectors match, one dtype.
    pub fn check(&self) -> Result<(), String> {
        if self.layers.is_empty() {
            return Err("a fused network needs at least one layer".into());
        }
        let mut width = self.n_in();
        for (k, l) in self.layers.iter().enumerate() {
            let out = l.n_out();
            let vec_ok = |t: &Option<Arc<Tensor>>| {
                t.as_ref()
                    .is_none_or(|t| t.shape == [out] && t.dtype() == self.dtype)
            };
            let res_ok = match l.residual {
                Residual::None => true,
                Residual::Same => out == l.n_in(),
                Residual::Doubled => out == 2 * l.n_in(),
            };
            if l.w.shape.len() != 2
                || l.n_in() != width
                || l.w.dtype() != self.dtype
                || !vec_ok(&l.b)
                || !vec_ok(&l.idt)
                || !res_ok
            {
                return Err(format!("layer {k} of the fused network is inconsistent"));
            }
            width = out;
        }
        Ok(())
    }
}

/// The attributes of `Op::EmbedContract` and its VJP.
#[derive(Debug, Clone, PartialEq)]
pub struct Embed {
    pub net: Arc<Mlp>,
    /// Compute only for centres of this type; the op then takes the centres' types (`i32
    /// [n]`) as its last argument, and other centres get zeros (their work is skipped).
    pub centre_type: Option<i32>,
    /// The network tabulated (`dpc compile --compress`): kernels evaluate the table, and
    /// the network only for inputs off it.
    pub table: Option<Arc<super::table::Table>>,
    /// Contract with a channel of ones instead of `rr`'s channels: `out[i] = sum_j
    /// Net(rr[i, j, 0])`, `[n, m, 1]` for `rr [n, s, 1]` (se_e2_r's sum over neighbours).
    pub ones: bool,
    /// A per-row factor on part of the contraction: channels `split..c` of `rr` are
    /// contracted with `G_j * u[idx_j]` (elementwise, `u [k, m]` a table of rows, `idx_j` the
    /// row's index into it) instead of `G_j`. The op then takes `(idx i32 [n, s], u)` after
    /// `rr` (and the VJP's cotangent). This is DPA-1's strip-mode `G_j (1 + w_j U[t_j])`
    /// with `rr`'s channels twice, the second time scaled by `w` (DeePMD-kit's
    /// `tabulate_fusion_se_atten` takes the same factor per row). `u` takes no gradient.
    /// Tabulated networks only.
    pub factor: Option<usize>,
    /// A per-row shift of the first layer's pre-activation: row `j` enters the network as
    /// `z1_j = x_j W1 + u[idx_j] + b1` (`u [k, n1]`, `n1` the first layer's width) instead
    /// of `x_j W1 + b1`. The op then takes `(idx i32 [n, s], u)` after `rr` (and the VJP's
    /// cotangent). This is DeePMD-kit's concat-mode three-body block (`se_e3_tebd`, DPA-2's
    /// repinit): its first layer takes `[x_jk, T_j, T_k]`, and the type embeddings' part
    /// depends on the pair of types alone, so it is one row of `u` per type pair. `u`
    /// takes no gradient. Networks only (no table), without `factor`.
    pub shift: bool,
}

impl Embed {
    /// The op's arguments besides `rr` (and the VJP's cotangent): the factor's or the
    /// shift's index and rows, then the centres' types.
    pub fn extra_args(&self) -> usize {
        2 * usize::from(self.factor.is_some() || self.shift)
            + usize::from(self.centre_type.is_some())
    }
}

/// The attributes of `Op::Dense` and its VJP: a network on the rows of a matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct Dense {
    pub nets: RowNets,
    /// For a one-output network: the forward op also returns each row's gradient `dy/dx`
    /// (after the output column), computed in the same pass while the activations are in
    /// cache, and the VJP is `gy * dy/dx` without re-running the network.
    pub grad: bool,
    pub input: DenseInput,
}

/// What the network of a `Dense` op takes from each row of its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenseInput {
    /// `x [n, d]`: the row itself.
    Rows,
    /// `x [n, m, channels]`: `vec(x_i x_i[:axis]^T)`, `[m, axis]` (the network's input
    /// width is `m * axis`): DeePMD-kit's se_e2_a and se_atten descriptor from its `gr`,
    /// formed per block of rows in cache instead of written to memory and read back, and
    /// its gradient taken back to `gr` in the same pass. Only with `grad`.
    AxisProduct { axis: usize, channels: usize },
}

/// Which network each row of a `Dense` goes through.
#[derive(Debug, Clone, PartialEq)]
pub enum RowNets {
    /// One network for every row.
    All(Arc<Mlp>),
    /// `nets[t]` for the rows of type `t` (the op's last argument, `i32 [n]`): DeePMD-kit's
    /// per-type fitting networks as one op, so the types' outputs and gradients share one
    /// buffer instead of each zero-filling its own and a sum adding them. Rows of a type
    /// with no network are zero and cost nothing. The networks have the same input and
    /// output widths and dtype.
    ByType(Vec<Option<Arc<Mlp>>>),
}

impl RowNets {
    /// The networks, each with the type whose rows it takes (`None`: every row).
    pub fn iter(&self) -> impl Iterator<Item = (Option<i32>, &Arc<Mlp>)> {
        let (all, typed): (Option<&Arc<Mlp>>, &[Option<Arc<Mlp>>]) = match self {
            RowNets::All(n) => (Some(n), &[]),
            RowNets::ByType(v) => (None, v),
        };
        all.map(|n| (None, n)).into_iter().chain(
            typed
                .iter()
                .enumerate()
                .filter_map(|(t, n)| n.as_ref().map(|n| (Some(t as i32), n))),
        )
    }

    /// One of the networks: all have its widths and dtype (`check`).
    pub fn first(&self) -> Option<&Arc<Mlp>> {
        self.iter().next().map(|(_, n)| n)
    }

    pub fn by_type(&self) -> bool {
        matches!(self, RowNets::ByType(_))
    }

    /// Each network consistent, and all of one shape and dtype.
    pub fn check(&self) -> Result<(), String> {
        let first = self.first().ok_or("dense has no network")?;
        for (_, n) in self.iter() {
            n.check_native()?;
            if n.n_in() != first.n_in() || n.n_out() != first.n_out() || n.dtype != first.dtype {
                return Err("dense networks of different widths or dtypes".into());
            }
        }
        Ok(())
    }
}

impl Dense {
    /// One of the networks (all have its widths and dtype).
    pub fn net(&self) -> &Mlp {
        self.nets.first().expect("a dense op has a network")
    }

    /// Numbers per row of the op's input (the network's input width for `Rows`).
    pub fn x_width(&self) -> usize {
        self.x_dims().iter().product()
    }

    /// The op's input axes after the row axis: `[d]`, or `[m, channels]`.
    pub fn x_dims(&self) -> Vec<usize> {
        match self.input {
            DenseInput::Rows => vec![self.net().n_in()],
            DenseInput::AxisProduct { axis, channels } => {
                vec![self.net().n_in() / axis.max(1), channels]
            }
        }
    }

    /// Columns of the forward op's output.
    pub fn out_width(&self) -> usize {
        self.net().n_out() + if self.grad { self.x_width() } else { 0 }
    }
}

/// The attributes of `Op::EnvMat` and its VJP: DeePMD-kit's smooth environment matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct EnvSpec {
    pub rcut_smth: f64,
    pub rcut: f64,
    /// Added to r in the 1/r terms.
    pub protection: f64,
    /// `[1/r] * sw` only (se_e2_r) instead of `[1/r, x/r^2, y/r^2, z/r^2] * sw`.
    pub radial_only: bool,
    /// `[ntypes, nnei, ncomp]` in the op's dtype: rows are `(env - davg) / dstd`.
    pub davg: Arc<Tensor>,
    pub dstd: Arc<Tensor>,
}

impl EnvSpec {
    pub fn ncomp(&self) -> usize {
        if self.radial_only {
            1
        } else {
            4
        }
    }
}
