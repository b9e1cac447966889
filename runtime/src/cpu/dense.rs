//! The fused row-network kernels (`Op::Dense` and its VJP): a fitting network run on blocks
//! of rows, bias, activation and residual applied in the block's scratch, so only the
//! network's input and output go through memory. With a type, only that type's rows are
//! gathered and computed (DeePMD-kit runs every type's network on every atom and masks).
//! The VJP re-runs the block forward, keeping the activations, and back-propagates.

use dpc_compiler::graph::{Data, Dense, Tensor};
use rayon::prelude::*;

use super::embed::selected;
use super::net::{acts_width, backward, forward, layers, sized, Packs, Scratch};
use super::real::Real;
use super::ExecError;

type R<T> = Result<T, ExecError>;

/// Rows per block: the activations of a 240-wide network stay within L2.
const ROWS_PER_BLOCK: usize = 64;

/// `x`'s rows `rows` (or all) as one block-major list of row indices.
fn row_list(sel: Option<Vec<usize>>, n: usize) -> Vec<usize> {
    sel.unwrap_or_else(|| (0..n).collect())
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

fn dense_t<T: Real>(e: &Dense, x: &[T], rows: &[usize], n: usize, packs: &Packs) -> R<Vec<T>> {
    let net = layers::<T>(&e.net, e.grad, packs)?;
    let (d, m, w) = (e.net.n_in(), e.net.n_out(), e.out_width());
    let mut out = vec![T::default(); n * w];
    if d == 0 {
        return Ok(out);
    }
    // Each block writes its rows of `out` in place (`rows` holds each row once).
    let out_rows = DisjointRows::new(&mut out, w);
    rows.par_chunks(ROWS_PER_BLOCK).for_each_init(
        || (Scratch::new(net.len()), Vec::new()),
        |(sc, map), idx| {
            distinct_rows(x, d, idx, &mut sc.x0, map);
            let nu = sc.x0.len() / d;
            let acts = e.grad.then(|| sized(&mut sc.acts, nu * acts_width(&net)));
            forward(&net, &sc.x0, &mut sc.h, acts);
            if !e.grad {
                let y = &sc.h[net.len() - 1][..nu * m];
                for (&i, &u) in idx.iter().zip(map.iter()) {
                    // SAFETY: `rows` lists each row once, so blocks write disjoint rows.
                    unsafe { out_rows.row(i) }.copy_from_slice(&y[u * m..(u + 1) * m]);
                }
                return;
            }
            // [y, dy/dx] per row: back-propagate a cotangent of one (m == 1).
            let (h, g) = (&sc.h, &mut sc.g);
            sized(&mut g.dh, nu).fill(T::ONE);
            backward(&net, &sc.acts, nu, g);
            let y = &h[net.len() - 1];
            for (&i, &u) in idx.iter().zip(map.iter()) {
                // SAFETY: as above.
                let o = unsafe { out_rows.row(i) };
                o[0] = y[u];
                o[1..].copy_from_slice(&g.dh[u * d..(u + 1) * d]);
            }
        },
    );
    Ok(out)
}

/// Rows of a row-major buffer handed to parallel blocks that each write their own rows.
struct DisjointRows<T> {
    ptr: *mut T,
    rows: usize,
    width: usize,
}

// SAFETY: only `row` reaches the buffer, and its callers write disjoint rows.
unsafe impl<T: Send> Sync for DisjointRows<T> {}

impl<T> DisjointRows<T> {
    fn new(buf: &mut [T], width: usize) -> DisjointRows<T> {
        DisjointRows {
            ptr: buf.as_mut_ptr(),
            rows: buf.len() / width.max(1),
            width,
        }
    }

    /// Row `i`.
    ///
    /// # Safety
    /// No two live references to the same row: each row is taken by one block at a time.
    #[allow(clippy::mut_from_ref)]
    unsafe fn row(&self, i: usize) -> &mut [T] {
        assert!(i < self.rows, "row {i} of {}", self.rows);
        // SAFETY: in bounds (above); exclusivity is the caller's.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(i * self.width), self.width) }
    }
}

/// The VJP from the gradient the forward op returned: `dx = g[:, 0] * y[:, 1:]` (`gy` of
/// width `gw`: the forward op's, or its first column alone).
fn dense_vjp_grad<T: Real>(e: &Dense, y: &[T], gy: &[T], n: usize, gw: usize) -> Vec<T> {
    let (d, w) = (e.net.n_in(), e.out_width());
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
    rows: &[usize],
    n: usize,
    packs: &Packs,
) -> R<Vec<T>> {
    let net = layers::<T>(&e.net, true, packs)?;
    let (d, m) = (e.net.n_in(), e.net.n_out());
    let mut dx = vec![T::default(); n * d];
    let blocks: Vec<(&[usize], Vec<T>)> = rows
        .par_chunks(ROWS_PER_BLOCK)
        .map_init(
            || Scratch::new(net.len()),
            |sc, idx| {
                sc.x0.clear();
                for &i in idx {
                    sc.x0.extend_from_slice(&x[i * d..(i + 1) * d]);
                }
                let nr = idx.len();
                let acts = sized(&mut sc.acts, nr * acts_width(&net));
                forward(&net, &sc.x0, &mut sc.h, Some(acts));
                let dh = sized(&mut sc.g.dh, nr * m);
                for (&i, r) in idx.iter().zip(dh.chunks_exact_mut(m)) {
                    r.copy_from_slice(&gy[i * m..(i + 1) * m]);
                }
                backward(&net, &sc.acts, nr, &mut sc.g);
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

fn dims(x: &Tensor, width: usize) -> R<usize> {
    match x.shape.as_slice() {
        &[n, d] if d == width => Ok(n),
        other => Err(ExecError::Shape(format!(
            "dense of {other:?} (want [n, {width}])"
        ))),
    }
}

/// `Op::Dense`.
pub fn dense(e: &Dense, x: &Tensor, types: Option<&Tensor>, packs: &Packs) -> R<Tensor> {
    let n = dims(x, e.net.n_in())?;
    let rows = row_list(selected(e.centre_type, types, n, "dense")?, n);
    let data = match &x.data {
        Data::F64(v) => f64::wrap(dense_t(e, v, &rows, n, packs)?),
        Data::F32(v) => f32::wrap(dense_t(e, v, &rows, n, packs)?),
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
    let n = dims(x, if e.grad { e.out_width() } else { e.net.n_in() })?;
    let gw = match gy.shape.as_slice() {
        &[gn, gw] if gn == n && (gw == e.out_width() || (e.grad && gw == 1)) => gw,
        _ => {
            return Err(ExecError::Shape(format!(
                "dense_vjp cotangent {:?} for x {:?}",
                gy.shape, x.shape
            )))
        }
    };
    let data = match (&x.data, &gy.data, e.grad) {
        // Rows of other types hold zeros in the forward output, so they get zero.
        (Data::F64(v), Data::F64(g), true) => f64::wrap(dense_vjp_grad(e, v, g, n, gw)),
        (Data::F32(v), Data::F32(g), true) => f32::wrap(dense_vjp_grad(e, v, g, n, gw)),
        (Data::F64(v), Data::F64(g), false) => {
            let rows = row_list(selected(e.centre_type, types, n, "dense")?, n);
            f64::wrap(dense_vjp_t(e, (v, g), &rows, n, packs)?)
        }
        (Data::F32(v), Data::F32(g), false) => {
            let rows = row_list(selected(e.centre_type, types, n, "dense")?, n);
            f32::wrap(dense_vjp_t(e, (v, g), &rows, n, packs)?)
        }
        _ => return Err(ExecError::Type("dense_vjp dtypes".into())),
    };
    Ok(Tensor {
        shape: vec![n, e.net.n_in()],
        data,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use dpc_compiler::graph::{Act, DType, Mlp, MlpLayer, Residual};

    use super::*;

    fn net(widths: &[usize]) -> Arc<Mlp> {
        let layers = widths
            .windows(2)
            .enumerate()
            .map(|(l, w)| {
                let v = |n: usize, k: usize| {
                    (0..n)
                        .map(|i| ((i * 31 + k * 7 + l) as f64 * 0.37).sin() * 0.5)
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
                net: mlp,
                centre_type: None,
                grad,
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
}
