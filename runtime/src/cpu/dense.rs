//! The fused row-network kernels (`Op::Dense` and its VJP): a fitting network run on blocks
//! of rows, bias, activation and residual applied in the block's scratch, so only the
//! network's input and output go through memory. With networks by type, each type's rows
//! are gathered and go through that type's network (DeePMD-kit runs every type's network
//! on every atom and masks), all into one output.
//! The VJP re-runs the block forward, keeping the activations, and back-propagates.

use dpc_compiler::graph::{Data, Dense, DenseInput, Mlp, RowNets, Tensor};
use rayon::prelude::*;

use super::axis_product::{foldable, product_rows, product_rows_vjp, product_width};
use super::embed::row_types;
use super::net::{acts_width, backward, forward, layers, sized, Layer, Packs, Scratch};
use super::real::Real;
use super::ExecError;

type R<T> = Result<T, ExecError>;

/// Rows per block: the activations of a 240-wide network stay within L2.
const ROWS_PER_BLOCK: usize = 64;

/// A network and the rows it takes.
type Group<'a> = (&'a Mlp, Vec<usize>);

/// Each network of `e` with the rows it takes (all, or its type's), and whether they are
/// all `n` rows (else the others are zero).
fn row_groups<'a>(e: &'a Dense, types: Option<&Tensor>, n: usize) -> R<(Vec<Group<'a>>, bool)> {
    let nets = match &e.nets {
        RowNets::All(net) => return Ok((vec![(&**net, (0..n).collect())], true)),
        RowNets::ByType(nets) => nets,
    };
    let tv = row_types(types, n, "dense")?;
    let mut rows: Vec<Vec<usize>> = vec![Vec::new(); nets.len()];
    let mut covered = 0;
    for (i, &t) in tv.iter().enumerate() {
        if let Some(r) = usize::try_from(t)
            .ok()
            .filter(|&t| nets.get(t).is_some_and(Option::is_some))
        {
            rows[r].push(i);
            covered += 1;
        }
    }
    let groups = nets
        .iter()
        .zip(rows)
        .filter_map(|(net, r)| net.as_deref().map(|net| (net, r)))
        .filter(|(_, r)| !r.is_empty())
        .collect();
    Ok((groups, covered == n))
}

/// The groups' layers, and their blocks of rows as (group, rows) work items.
type Work<'a, T> = (Vec<Vec<Layer<'a, T>>>, Vec<(usize, &'a [usize])>);

fn work<'a, T: Real>(
    groups: &'a [Group<'a>],
    backward: bool,
    packs: &'a Packs,
    fold: Option<(usize, usize)>,
) -> R<Work<'a, T>> {
    let nets = groups
        .iter()
        .map(|(net, _)| layers::<T>(net, backward, packs, fold))
        .collect::<R<Vec<_>>>()?;
    let blocks = groups
        .iter()
        .enumerate()
        .flat_map(|(k, (_, rows))| rows.chunks(ROWS_PER_BLOCK).map(move |b| (k, b)))
        .collect();
    Ok((nets, blocks))
}

/// The distinct rows of `x` among `idx` (a row bit for bit equal to the one before it,
/// like an atom's padding slots, shares its evaluation) into `x0`, and each row's position
/// among them into `map`.
fn distinct_rows<T: Real>(x: &[T], d: usize, idx: &[usize], x0: &mut Vec<T>, map: &mut Vec<usize>) {
    x0.clear();
    map.clear();
    let same = |a: &[T], b: &[T]| {
        a.iter()
            .zip(b)
            .all(|(u, v)| u.to_f64().to_bits() == v.to_f64().to_bits())
    };
    let mut prev: Option<&[T]> = None;
    for &i in idx {
        let row = &x[i * d..(i + 1) * d];
        if !prev.is_some_and(|p| same(p, row)) {
            x0.extend_from_slice(row);
            prev = Some(row);
        }
        map.push(x0.len() / d.max(1) - 1);
    }
}

/// A `Dense` op's input as its network takes it.
#[derive(Clone, Copy)]
enum Input<'a, T> {
    /// `x [n, d]`: the rows themselves.
    Rows { x: &'a [T], d: usize },
    /// `x [n, m, c]` (rows of `w = m c`): rows `vec(x_i x_i[:axis]^T)`
    /// (`DenseInput::AxisProduct`).
    AxisProduct {
        x: &'a [T],
        w: usize,
        c: usize,
        axis: usize,
        /// The product in its folded layout (`fold_of`).
        fold: bool,
    },
}

/// `(m, axis)` of a `Dense` op whose networks take an axis product in its folded layout
/// (`axis_product::foldable`, every network's first layer `m axis` wide), else `None`.
pub(super) fn fold_of(e: &Dense) -> Option<(usize, usize)> {
    match e.input {
        DenseInput::AxisProduct { axis, channels } => {
            let m = e.x_width() / channels.max(1);
            let fits = e
                .nets
                .iter()
                .all(|(_, n)| n.layers.first().is_some_and(|l| l.n_in() == m * axis));
            (fits && foldable(channels, axis, m)).then_some((m, axis))
        }
        DenseInput::Rows => None,
    }
}

/// Per-thread buffers of `Input`: the distinct rows of `x`, `x[:axis]^T` of one row, the
/// sums of the product's transposed term, and the rows' gradients.
#[derive(Default)]
struct InputScratch<T> {
    src: Vec<T>,
    gt: Vec<T>,
    acc: Vec<T>,
    dx: Vec<T>,
}

impl<'a, T: Real> Input<'a, T> {
    fn new(e: &Dense, x: &'a [T]) -> Input<'a, T> {
        match e.input {
            DenseInput::Rows => Input::Rows {
                x,
                d: e.net().n_in(),
            },
            DenseInput::AxisProduct { axis, channels } => Input::AxisProduct {
                x,
                w: e.x_width(),
                c: channels,
                axis,
                fold: fold_of(e).is_some(),
            },
        }
    }

    /// Numbers per row of the network input.
    fn net_width(&self) -> usize {
        match *self {
            Input::Rows { d, .. } => d,
            Input::AxisProduct {
                w, c, axis, fold, ..
            } => product_width(w / c, axis, fold),
        }
    }

    /// Numbers per row of `x`.
    fn width(&self) -> usize {
        match *self {
            Input::Rows { d, .. } => d,
            Input::AxisProduct { w, .. } => w,
        }
    }

    /// The network input of `idx`'s distinct rows into `x0` (each row's position among
    /// them into `map`), and their count.
    fn gather(
        &self,
        idx: &[usize],
        x0: &mut Vec<T>,
        sc: &mut InputScratch<T>,
        map: &mut Vec<usize>,
    ) -> usize {
        match *self {
            Input::Rows { x, d } => {
                distinct_rows(x, d, idx, x0, map);
                x0.len() / d.max(1)
            }
            Input::AxisProduct {
                x,
                w,
                c,
                axis,
                fold,
            } => {
                distinct_rows(x, w, idx, &mut sc.src, map);
                let nu = sc.src.len() / w;
                let gt = sized(&mut sc.gt, c * axis);
                let x0 = sized(x0, nu * self.net_width());
                product_rows(&sc.src, w, c, axis, fold, gt, x0);
                nu
            }
        }
    }

    /// The gradients with respect to the distinct rows of `x` (`gather`'s) from those
    /// with respect to the network input, `dd [nu, n_in]`.
    fn grad<'b>(&self, dd: &'b [T], sc: &'b mut InputScratch<T>) -> &'b [T] {
        match *self {
            Input::Rows { .. } => dd,
            Input::AxisProduct {
                w, c, axis, fold, ..
            } => {
                let d = self.net_width();
                let InputScratch { src, gt, acc, dx } = sc;
                let nu = src.len() / w;
                let (gt, acc) = (sized(gt, c * axis), sized(acc, c * axis));
                let dx = sized(dx, nu * w);
                product_rows_vjp(src, &dd[..nu * d], w, (c, axis, fold), gt, acc, dx);
                dx
            }
        }
    }
}

fn dense_t<T: Real>(
    e: &Dense,
    x: &[T],
    types: Option<&Tensor>,
    n: usize,
    packs: &Packs,
) -> R<Vec<T>> {
    let (d, w) = (e.net().n_in(), e.out_width());
    let (groups, all) = row_groups(e, types, n)?;
    // Where every row is written by one block, the buffer is not zeroed first; rows no
    // network takes are zero.
    let zeroed = d == 0 || !all;
    let mut out: Vec<T> = if zeroed {
        vec![T::default(); n * w]
    } else {
        Vec::with_capacity(n * w)
    };
    if d > 0 {
        let rows = DisjointRows::new(out.as_mut_ptr(), n, w);
        dense_rows(e, x, &groups, packs, &rows)?;
    }
    if !zeroed {
        // SAFETY: the groups hold each of the `n` rows once, and each block wrote its
        // rows' `w` elements.
        unsafe { out.set_len(n * w) };
    }
    Ok(out)
}

/// The groups' rows of `Dense`'s output, written through `out_rows`.
fn dense_rows<T: Real>(
    e: &Dense,
    x: &[T],
    groups: &[Group<'_>],
    packs: &Packs,
    out_rows: &DisjointRows<T>,
) -> R<()> {
    let m = e.net().n_out();
    let input = Input::new(e, x);
    let (xw, d) = (input.width(), input.net_width());
    let (nets, blocks) = work::<T>(groups, e.grad, packs, fold_of(e))?;
    let depth = nets.iter().map(Vec::len).max().unwrap_or(0);
    blocks.par_iter().for_each_init(
        || (Scratch::new(depth), Vec::new(), InputScratch::default()),
        |(sc, map, isc), &(k, idx)| {
            let net = &nets[k];
            let nu = input.gather(idx, &mut sc.x0, isc, map);
            let acts = e.grad.then(|| sized(&mut sc.acts, nu * acts_width(net)));
            forward(net, &sc.x0, None, &mut sc.h, acts);
            if !e.grad {
                let y = &sc.h[net.len() - 1][..nu * m];
                for (&i, &u) in idx.iter().zip(map.iter()) {
                    // SAFETY: the groups list each row once, so blocks write disjoint rows.
                    unsafe { out_rows.write(i, &y[u * m..(u + 1) * m], &[]) };
                }
                return;
            }
            // [y, dy/dx] per row: back-propagate a cotangent of one (m == 1).
            let (h, g) = (&sc.h, &mut sc.g);
            sized(&mut g.dh, nu).fill(T::ONE);
            backward(net, &sc.acts, nu, g);
            let y = &h[net.len() - 1];
            let dx = input.grad(&g.dh[..nu * d], isc);
            for (&i, &u) in idx.iter().zip(map.iter()) {
                // SAFETY: as above.
                unsafe { out_rows.write(i, &y[u..u + 1], &dx[u * xw..(u + 1) * xw]) };
            }
        },
    );
    Ok(())
}

/// Rows of a row-major buffer (possibly not yet written) handed to parallel blocks that
/// each write their own rows.
struct DisjointRows<T> {
    ptr: *mut T,
    rows: usize,
    width: usize,
}

// SAFETY: only `write` reaches the buffer, and its callers write disjoint rows.
unsafe impl<T: Send> Sync for DisjointRows<T> {}

impl<T: Copy> DisjointRows<T> {
    /// `rows` rows of `width` at `ptr` (an allocation of at least `rows * width`).
    fn new(ptr: *mut T, rows: usize, width: usize) -> DisjointRows<T> {
        DisjointRows { ptr, rows, width }
    }

    /// Row `i` set to `a` then `b` (`a.len() + b.len()` must be the width).
    ///
    /// # Safety
    /// No other block writes row `i` meanwhile, and the allocation outlives the call.
    unsafe fn write(&self, i: usize, a: &[T], b: &[T]) {
        assert!(
            i < self.rows && a.len() + b.len() == self.width,
            "row {i} of {}",
            self.rows
        );
        // SAFETY: in bounds (above); exclusivity is the caller's. Writes through the raw
        // pointer, so the row need not have been initialized.
        unsafe {
            let row = self.ptr.add(i * self.width);
            std::ptr::copy_nonoverlapping(a.as_ptr(), row, a.len());
            std::ptr::copy_nonoverlapping(b.as_ptr(), row.add(a.len()), b.len());
        }
    }
}

/// The VJP from the gradient the forward op returned: `dx = g[:, 0] * y[:, 1:]` (`gy` of
/// width `gw`: the forward op's, or its first column alone).
fn dense_vjp_grad<T: Real>(e: &Dense, y: &[T], gy: &[T], n: usize, gw: usize) -> Vec<T> {
    let (d, w) = (e.x_width(), e.out_width());
    // Every element is written below, so the buffer is not zeroed first.
    assert!(
        y.len() == n * w && gy.len() == n * gw && w == d + 1,
        "dense_vjp sizes"
    );
    let mut dx: Vec<T> = Vec::with_capacity(n * d);
    dx.spare_capacity_mut()[..n * d]
        .par_chunks_mut(d.max(1))
        .zip(y.par_chunks(w))
        .zip(gy.par_chunks(gw))
        .for_each(|((o, yr), gr)| {
            let s = gr[0];
            for (v, &g) in o.iter_mut().zip(&yr[1..]) {
                v.write(s * g);
            }
        });
    // SAFETY: the loop wrote all `n * d` elements (`n` rows of `y` and `gy`, `d` each).
    unsafe { dx.set_len(n * d) };
    dx
}

fn dense_vjp_t<T: Real>(
    e: &Dense,
    (x, gy): (&[T], &[T]),
    types: Option<&Tensor>,
    n: usize,
    packs: &Packs,
) -> R<Vec<T>> {
    let (d, m) = (e.net().n_in(), e.net().n_out());
    let (groups, _) = row_groups(e, types, n)?;
    let (nets, work) = work::<T>(&groups, true, packs, None)?;
    let depth = nets.iter().map(Vec::len).max().unwrap_or(0);
    let mut dx = vec![T::default(); n * d];
    let blocks: Vec<(&[usize], Vec<T>)> = work
        .par_iter()
        .map_init(
            || Scratch::new(depth),
            |sc, &(k, idx)| {
                let net = &nets[k];
                sc.x0.clear();
                for &i in idx {
                    sc.x0.extend_from_slice(&x[i * d..(i + 1) * d]);
                }
                let nr = idx.len();
                let acts = sized(&mut sc.acts, nr * acts_width(net));
                forward(net, &sc.x0, None, &mut sc.h, Some(acts));
                let dh = sized(&mut sc.g.dh, nr * m);
                for (&i, r) in idx.iter().zip(dh.chunks_exact_mut(m)) {
                    r.copy_from_slice(&gy[i * m..(i + 1) * m]);
                }
                backward(net, &sc.acts, nr, &mut sc.g);
                (idx, sc.g.dh[..nr * d].to_vec())
            },
        )
        .collect();
    for (idx, g) in blocks {
        for (&i, gr) in idx.iter().zip(g.chunks_exact(d)) {
            dx[i * d..(i + 1) * d].copy_from_slice(gr);
        }
    }
    Ok(dx)
}

/// The row count of `x`, checked to be `[n, dims..]`.
fn rows_of(x: &Tensor, dims: &[usize]) -> R<usize> {
    match x.shape.split_first() {
        Some((&n, rest)) if rest == dims => Ok(n),
        _ => Err(ExecError::Shape(format!(
            "dense of {:?} (want [n, {dims:?}])",
            x.shape
        ))),
    }
}

/// `Op::Dense`.
pub fn dense(e: &Dense, x: &Tensor, types: Option<&Tensor>, packs: &Packs) -> R<Tensor> {
    let n = rows_of(x, &e.x_dims())?;
    let data = match &x.data {
        Data::F64(v) => f64::wrap(dense_t(e, v, types, n, packs)?),
        Data::F32(v) => f32::wrap(dense_t(e, v, types, n, packs)?),
        _ => return Err(ExecError::Type("dense of non-floats".into())),
    };
    Ok(Tensor {
        shape: vec![n, e.out_width()],
        data,
    })
}

/// `Op::DenseVjp`; with `grad`, `x` is the forward op's output, and the cotangent may be
/// its first column alone (all the VJP reads).
pub fn dense_vjp(
    e: &Dense,
    x: &Tensor,
    gy: &Tensor,
    types: Option<&Tensor>,
    packs: &Packs,
) -> R<Tensor> {
    let n = rows_of(
        x,
        &if e.grad {
            vec![e.out_width()]
        } else {
            e.x_dims()
        },
    )?;
    let gw = match gy.shape.as_slice() {
        &[gn, gw] if gn == n && (gw == e.out_width() || (e.grad && gw == 1)) => gw,
        _ => {
            return Err(ExecError::Shape(format!(
                "dense_vjp cotangent {:?} for x {:?}",
                gy.shape, x.shape
            )))
        }
    };
    if !e.grad && e.input != DenseInput::Rows {
        return Err(ExecError::Type(
            "dense_vjp of an axis product without its gradient".into(),
        ));
    }
    let data = match (&x.data, &gy.data, e.grad) {
        // Rows of other types hold zeros in the forward output, so they get zero.
        (Data::F64(v), Data::F64(g), true) => f64::wrap(dense_vjp_grad(e, v, g, n, gw)),
        (Data::F32(v), Data::F32(g), true) => f32::wrap(dense_vjp_grad(e, v, g, n, gw)),
        (Data::F64(v), Data::F64(g), false) => f64::wrap(dense_vjp_t(e, (v, g), types, n, packs)?),
        (Data::F32(v), Data::F32(g), false) => f32::wrap(dense_vjp_t(e, (v, g), types, n, packs)?),
        _ => return Err(ExecError::Type("dense_vjp dtypes".into())),
    };
    let mut shape = vec![n];
    shape.extend(e.x_dims());
    Ok(Tensor { shape, data })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use dpc_compiler::graph::{Act, DType, Mlp, MlpLayer, Residual};

    use super::*;

    fn net(widths: &[usize]) -> Arc<Mlp> {
        net_seeded(widths, 0)
    }

    /// A network whose weights differ with `seed`.
    fn net_seeded(widths: &[usize], seed: usize) -> Arc<Mlp> {
        let layers = widths
            .windows(2)
            .enumerate()
            .map(|(l, w)| {
                let v = |n: usize, k: usize| {
                    (0..n)
                        .map(|i| ((i * 31 + k * 7 + l + 13 * seed) as f64 * 0.37).sin() * 0.5)
                        .collect()
                };
                MlpLayer {
                    w: Arc::new(Tensor::f64(vec![w[0], w[1]], v(w[0] * w[1], 1))),
                    b: Some(Arc::new(Tensor::f64(vec![w[1]], v(w[1], 2)))),
                    idt: None,
                    act: Act::Tanh,
                    residual: if w[1] == 2 * w[0] {
                        Residual::Doubled
                    } else {
                        Residual::None
                    },
                }
            })
            .collect();
        Arc::new(Mlp {
            dtype: DType::F64,
            layers,
        })
    }

    /// Repeated rows (runs of padding, and a repeat that is not consecutive) give every row
    /// the bits it gets on its own.
    #[test]
    fn rows_sharing_an_evaluation_get_their_own_numbers() {
        for (widths, grad) in [(vec![3usize, 6, 12], false), (vec![3, 5, 1], true)] {
            let mlp = net(&widths);
            let e = Dense {
                nets: RowNets::All(mlp),
                grad,
                input: DenseInput::Rows,
            };
            let base = [[0.1, -0.2, 0.3], [0.5, 0.5, -0.5], [0.0, 0.0, 0.0]];
            let order = [0usize, 2, 2, 2, 1, 0, 2, 2, 1, 1];
            let x: Vec<f64> = order.iter().flat_map(|&r| base[r]).collect();
            let n = order.len();
            let all = Tensor::f64(vec![n, 3], x);
            let y = dense(&e, &all, None, &Packs::default()).unwrap();
            let w = e.out_width();
            for (i, &r) in order.iter().enumerate() {
                let one = Tensor::f64(vec![1, 3], base[r].to_vec());
                let yo = dense(&e, &one, None, &Packs::default()).unwrap();
                assert_eq!(
                    &y.as_f64().unwrap()[i * w..(i + 1) * w],
                    yo.as_f64().unwrap(),
                    "row {i}"
                );
            }
        }
    }

    /// Networks by type: each row gets what its type's network alone gives it, bit for bit,
    /// in the forward op (with and without the gradient) and the VJP; rows of a type without
    /// a network (and of a type past the list) are zero. More rows than one block, types
    /// interleaved.
    #[test]
    fn rows_by_type_get_their_own_network() {
        let n = 150;
        let types: Vec<i32> = (0..n).map(|i| [0, 2, 0, 1, 2, 3][i % 6]).collect();
        let x: Vec<f64> = (0..n * 3).map(|i| ((i * 17) as f64 * 0.11).cos()).collect();
        let (xt, tt) = (
            Tensor::f64(vec![n, 3], x.clone()),
            Tensor::i32(vec![n], types.clone()),
        );
        let gy: Vec<f64> = (0..n * 4).map(|i| ((i * 5) as f64 * 0.3).sin()).collect();
        for (widths, grad) in [(vec![3usize, 6, 4], false), (vec![3, 5, 5, 1], true)] {
            let nets = vec![
                Some(net_seeded(&widths, 1)),
                None,
                Some(net_seeded(&widths, 2)),
            ];
            let e = Dense {
                nets: RowNets::ByType(nets.clone()),
                grad,
                input: DenseInput::Rows,
            };
            let w = e.out_width();
            let y = dense(&e, &xt, Some(&tt), &Packs::default()).unwrap();
            let y = y.as_f64().unwrap();
            let m = widths[widths.len() - 1];
            let gw = if grad { w } else { m };
            let gt = Tensor::f64(vec![n, gw], gy[..n * gw].to_vec());
            let first = if grad {
                Tensor::f64(vec![n, w], y.to_vec())
            } else {
                xt.clone()
            };
            let dx = dense_vjp(&e, &first, &gt, Some(&tt), &Packs::default()).unwrap();
            let dx = dx.as_f64().unwrap();
            for i in 0..n {
                let (yr, dr) = (&y[i * w..(i + 1) * w], &dx[i * 3..(i + 1) * 3]);
                match nets.get(types[i] as usize).cloned().flatten() {
                    None => {
                        assert!(yr.iter().chain(dr).all(|&v| v == 0.0), "row {i}");
                    }
                    Some(net) => {
                        let one = Dense {
                            nets: RowNets::All(net),
                            grad,
                            input: DenseInput::Rows,
                        };
                        let xo = Tensor::f64(vec![1, 3], x[i * 3..(i + 1) * 3].to_vec());
                        let yo = dense(&one, &xo, None, &Packs::default()).unwrap();
                        assert_eq!(yr, yo.as_f64().unwrap(), "row {i}");
                        let go = Tensor::f64(vec![1, gw], gy[i * gw..(i + 1) * gw].to_vec());
                        let fo = if grad { yo } else { xo };
                        let d1 = dense_vjp(&one, &fo, &go, None, &Packs::default()).unwrap();
                        assert_eq!(dr, d1.as_f64().unwrap(), "row {i}");
                    }
                }
            }
            assert!(y.iter().any(|&v| v != 0.0) && dx.iter().any(|&v| v != 0.0));
        }
    }

    /// Types that are not `i32 [n]` are an error, not a panic.
    #[test]
    fn rows_by_type_need_their_types() {
        let e = Dense {
            nets: RowNets::ByType(vec![Some(net(&[3, 4]))]),
            grad: false,
            input: DenseInput::Rows,
        };
        let x = Tensor::f64(vec![2, 3], vec![0.1; 6]);
        for t in [
            None,
            Some(Tensor::i32(vec![1], vec![0])),
            Some(Tensor::f64(vec![2], vec![0.0; 2])),
        ] {
            assert!(dense(&e, &x, t.as_ref(), &Packs::default()).is_err());
        }
    }

    /// The axis product formed in the kernel gives what the network gives on the explicit
    /// descriptor `vec(g g[:axis]^T)`, and its gradient is the chain rule through it
    /// (written out here term by term), for networks by type and rows that repeat.
    #[test]
    fn an_axis_product_is_the_descriptor_and_its_gradient() {
        // Any shape, and the shapes with their own kernels (which take the product folded).
        for (m, c, axis) in [(6, 3, 2), (9, 4, 4), (20, 4, 8), (16, 4, 16)] {
            axis_product_case(70, m, c, axis);
        }
    }

    fn axis_product_case(n: usize, m: usize, c: usize, axis: usize) {
        let widths = [m * axis, 5, 5, 1];
        let nets = vec![Some(net_seeded(&widths, 3)), Some(net_seeded(&widths, 4))];
        let types: Vec<i32> = (0..n).map(|i| (i % 3 == 0) as i32).collect();
        let tt = Tensor::i32(vec![n], types);
        let mut g: Vec<f64> = (0..n * m * c)
            .map(|i| ((i * 7) as f64 * 0.23).sin())
            .collect();
        // A row equal to the one before shares its evaluation.
        let (a, b) = g.split_at_mut(5 * m * c);
        b[..m * c].copy_from_slice(&a[4 * m * c..]);
        let d: Vec<f64> = g
            .chunks_exact(m * c)
            .flat_map(|gi| {
                let gi = gi.to_vec();
                (0..m).flat_map(move |p| {
                    let gi = gi.clone();
                    (0..axis)
                        .map(move |q| (0..c).fold(0.0, |s, k| s + gi[p * c + k] * gi[q * c + k]))
                })
            })
            .collect();
        let rows = Dense {
            nets: RowNets::ByType(nets.clone()),
            grad: true,
            input: DenseInput::Rows,
        };
        let prod = Dense {
            nets: RowNets::ByType(nets),
            grad: true,
            input: DenseInput::AxisProduct { axis, channels: c },
        };
        let y_rows = dense(
            &rows,
            &Tensor::f64(vec![n, m * axis], d),
            Some(&tt),
            &Packs::default(),
        )
        .unwrap();
        let y_prod = dense(
            &prod,
            &Tensor::f64(vec![n, m, c], g.clone()),
            Some(&tt),
            &Packs::default(),
        )
        .unwrap();
        // The executor's packs (the folded first layer packed once) give the same bits.
        let mut packs = Packs::default();
        if let RowNets::ByType(nets) = &prod.nets {
            for n in nets.iter().flatten() {
                packs.add(n, true, fold_of(&prod));
            }
        }
        let x_prod = Tensor::f64(vec![n, m, c], g.clone());
        assert_eq!(dense(&prod, &x_prod, Some(&tt), &packs).unwrap(), y_prod);
        assert_eq!(fold_of(&prod).is_some(), c == 4 && axis >= 4);
        let (yr, yp) = (y_rows.as_f64().unwrap(), y_prod.as_f64().unwrap());
        let (wr, wp) = (1 + m * axis, 1 + m * c);
        assert_eq!((rows.out_width(), prod.out_width()), (wr, wp));
        for i in 0..n {
            // Folded, the first layer sums the head's symmetric pairs in another order.
            let (a, b) = (yr[i * wr], yp[i * wp]);
            assert!(
                (a - b).abs() <= 1e-14 * (1.0 + a.abs()),
                "row {i}: {a} vs {b}"
            );
            let dd = &yr[i * wr + 1..(i + 1) * wr];
            let gi = &g[i * m * c..(i + 1) * m * c];
            for p in 0..m {
                for k in 0..c {
                    let mut want = 0.0;
                    for q in 0..axis {
                        want += dd[p * axis + q] * gi[q * c + k];
                    }
                    if p < axis {
                        for r in 0..m {
                            want += dd[r * axis + p] * gi[r * c + k];
                        }
                    }
                    let got = yp[i * wp + 1 + p * c + k];
                    assert!(
                        (got - want).abs() <= 1e-14 * (1.0 + want.abs()),
                        "row {i} ({p}, {k}): {got} vs {want}"
                    );
                }
            }
        }
        // The VJP scales the gradient by the output's cotangent, in x's shape.
        let gy = Tensor::f64(vec![n, 1], (0..n).map(|i| 0.5 + i as f64).collect());
        let dx = dense_vjp(&prod, &y_prod, &gy, Some(&tt), &Packs::default()).unwrap();
        assert_eq!(dx.shape, vec![n, m, c]);
        let dxv = dx.as_f64().unwrap();
        for i in 0..n {
            for j in 0..m * c {
                assert_eq!(dxv[i * m * c + j], (0.5 + i as f64) * yp[i * wp + 1 + j]);
            }
        }
    }
}
