//! The fused row-network kernels (`Op::Dense` and its VJP): a fitting network run on blocks
//! of rows, bias, activation and residual applied in the block's scratch, so only the
//! network's input and output go through memory. With a type, only that type's rows are
//! gathered and computed (DeePMD-kit runs every type's network on every atom and masks).
//! The VJP re-runs the block forward, keeping the activations, and back-propagates.

use dpc_compiler::graph::{Data, Dense, Tensor};
use rayon::prelude::*;

use super::embed::{backward, forward, layers, sized, Scratch};
use super::real::Real;
use super::ExecError;

type R<T> = Result<T, ExecError>;

/// Rows per block: the activations of a 240-wide network stay within L2.
const ROWS_PER_BLOCK: usize = 64;

/// The rows an op computes (`None`: all).
fn selected(e: &Dense, types: Option<&Tensor>, n: usize) -> R<Option<Vec<usize>>> {
    let Some(t) = e.centre_type else {
        return Ok(None);
    };
    match types.map(|x| &x.data) {
        Some(Data::I32(v)) if v.len() == n => Ok(Some(
            v.iter()
                .enumerate()
                .filter(|(_, &x)| x == t)
                .map(|(i, _)| i)
                .collect(),
        )),
        _ => Err(ExecError::Type(
            "dense needs the rows' types (i32 [n])".into(),
        )),
    }
}

/// `x`'s rows `rows` (or all) as one block-major list of row indices.
fn row_list(sel: Option<Vec<usize>>, n: usize) -> Vec<usize> {
    sel.unwrap_or_else(|| (0..n).collect())
}

fn dense_t<T: Real>(e: &Dense, x: &[T], rows: &[usize], n: usize) -> R<Vec<T>> {
    let net = layers::<T>(&e.net, false)?;
    let (d, m) = (e.net.n_in(), e.net.n_out());
    let mut out = vec![T::default(); n * m];
    let blocks: Vec<(&[usize], Vec<T>)> = rows
        .par_chunks(ROWS_PER_BLOCK)
        .map_init(
            || Scratch::new(net.len()),
            |sc, idx| {
                sc.x0.clear();
                for &i in idx {
                    sc.x0.extend_from_slice(&x[i * d..(i + 1) * d]);
                }
                forward(&net, sc, false);
                (idx, sc.h[net.len() - 1][..idx.len() * m].to_vec())
            },
        )
        .collect();
    for (idx, y) in blocks {
        for (&i, yr) in idx.iter().zip(y.chunks_exact(m)) {
            out[i * m..(i + 1) * m].copy_from_slice(yr);
        }
    }
    Ok(out)
}

fn dense_vjp_t<T: Real>(e: &Dense, x: &[T], gy: &[T], rows: &[usize], n: usize) -> R<Vec<T>> {
    let net = layers::<T>(&e.net, true)?;
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
                forward(&net, sc, true);
                let dh = sized(&mut sc.dh, idx.len() * m);
                for (&i, r) in idx.iter().zip(dh.chunks_exact_mut(m)) {
                    r.copy_from_slice(&gy[i * m..(i + 1) * m]);
                }
                backward(&net, sc, idx.len());
                (idx, sc.dh[..idx.len() * d].to_vec())
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

fn dims(e: &Dense, x: &Tensor) -> R<usize> {
    match x.shape.as_slice() {
        &[n, d] if d == e.net.n_in() => Ok(n),
        other => Err(ExecError::Shape(format!(
            "dense of x {other:?} (want [n, {}])",
            e.net.n_in()
        ))),
    }
}

/// `Op::Dense`.
pub fn dense(e: &Dense, x: &Tensor, types: Option<&Tensor>) -> R<Tensor> {
    let n = dims(e, x)?;
    let rows = row_list(selected(e, types, n)?, n);
    let data = match &x.data {
        Data::F64(v) => f64::wrap(dense_t(e, v, &rows, n)?),
        Data::F32(v) => f32::wrap(dense_t(e, v, &rows, n)?),
        _ => return Err(ExecError::Type("dense of non-floats".into())),
    };
    Ok(Tensor {
        shape: vec![n, e.net.n_out()],
        data,
    })
}

/// `Op::DenseVjp`.
pub fn dense_vjp(e: &Dense, x: &Tensor, gy: &Tensor, types: Option<&Tensor>) -> R<Tensor> {
    let n = dims(e, x)?;
    if gy.shape != [n, e.net.n_out()] {
        return Err(ExecError::Shape(format!(
            "dense_vjp cotangent {:?} for x {:?}",
            gy.shape, x.shape
        )));
    }
    let rows = row_list(selected(e, types, n)?, n);
    let data = match (&x.data, &gy.data) {
        (Data::F64(v), Data::F64(g)) => f64::wrap(dense_vjp_t(e, v, g, &rows, n)?),
        (Data::F32(v), Data::F32(g)) => f32::wrap(dense_vjp_t(e, v, g, &rows, n)?),
        _ => return Err(ExecError::Type("dense_vjp dtypes".into())),
    };
    Ok(Tensor {
        shape: x.shape.clone(),
        data,
    })
}
