//! Every VJP rule against central finite differences, through the CPU executor.

use dpc_compiler::graph::autodiff::vjp;
use dpc_compiler::graph::verify::verify;
use dpc_compiler::graph::{Bindings, Cmp, DType, Dim, Graph, Tensor, TensorType, ValueId};
use dpc_runtime::cpu::run_once;

/// Build `f(x)` (x: f64 of `shape`), reduce it to a scalar with fixed random weights, and
/// compare the autodiff gradient with finite differences at a random point.
fn check(name: &str, shape: &[usize], f: impl Fn(&mut Graph, ValueId) -> ValueId) {
    let mut g = Graph::new();
    let x = g.input(
        "x",
        TensorType::new(DType::F64, shape.iter().map(|&n| Dim::fixed(n)).collect()),
    );
    let y = f(&mut g, x);
    let ys = g.shape(y).to_vec();
    let n: usize = ys.iter().map(|d| d.factor).product();
    let w = g.constant(Tensor::f64(
        ys.iter().map(|d| d.factor).collect(),
        (0..n)
            .map(|i| ((i * 7 + 3) % 11) as f64 / 5.0 - 1.0)
            .collect(),
    ));
    let yw = g.mul(y, w).unwrap();
    let axes: Vec<usize> = (0..ys.len()).collect();
    let s = g.sum(yw, &axes, false).unwrap();
    let one = g.scalar(1.0, DType::F64);
    let dx = vjp(&mut g, s, one, &[x]).unwrap()[0].expect("depends on x");
    g.set_output("s", s);
    g.set_output("dx", dx);
    verify(&g).unwrap_or_else(|e| panic!("{name}: {e}"));
    let len: usize = shape.iter().product();
    let x0: Vec<f64> = (0..len)
        .map(|i| ((i * 13 + 5) % 17) as f64 / 9.0 - 0.8)
        .collect();
    let run = |v: &[f64]| {
        run_once(
            &g,
            vec![Tensor::f64(shape.to_vec(), v.to_vec())],
            Bindings::default(),
        )
        .unwrap()
    };
    let out = run(&x0);
    let grad = out[1].as_f64().unwrap().to_vec();
    let h = 1e-6;
    for i in 0..len {
        let mut p = x0.clone();
        p[i] += h;
        let mut m = x0.clone();
        m[i] -= h;
        let fd = (run(&p)[0].get_f64(0) - run(&m)[0].get_f64(0)) / (2.0 * h);
        assert!(
            (fd - grad[i]).abs() < 1e-6 * (1.0 + fd.abs()),
            "{name}: d/dx[{i}] autodiff {} vs fd {fd}",
            grad[i]
        );
    }
}

fn c(g: &mut Graph, shape: &[usize], seed: usize) -> ValueId {
    let n: usize = shape.iter().product();
    g.constant(Tensor::f64(
        shape.to_vec(),
        (0..n)
            .map(|i| ((i * 5 + seed) % 7) as f64 / 3.0 - 0.9)
            .collect(),
    ))
}

#[test]
fn elementwise_rules() {
    check("tanh", &[2, 3], |g, x| g.tanh(x).unwrap());
    check("exp", &[2, 3], |g, x| g.exp(x).unwrap());
    check("sigmoid", &[4], |g, x| g.sigmoid(x).unwrap());
    check("softmax", &[3, 5], |g, x| g.softmax(x).unwrap());
    check("neg", &[4], |g, x| g.neg(x).unwrap());
    check("log", &[2, 3], |g, x| {
        let e = g.exp(x).unwrap();
        g.log(e).unwrap()
    });
    check("sqrt+recip", &[2, 3], |g, x| {
        let sq = g.mul(x, x).unwrap();
        let s = g.add_scalar(sq, 0.5).unwrap();
        let r = g.sqrt(s).unwrap();
        g.recip(r).unwrap()
    });
    check("mul/div broadcast", &[2, 3], |g, x| {
        let b = c(g, &[3], 1);
        let m = g.mul(x, b).unwrap();
        let d = c(g, &[2, 1], 2);
        let d = g.add_scalar(d, 3.0).unwrap();
        g.div(m, d).unwrap()
    });
    check("x/x broadcast both ways", &[3, 1], |g, x| {
        let t = g.reshape(x, vec![Dim::ONE, Dim::fixed(3)]).unwrap();
        let a = g.add(x, t).unwrap(); // [3, 3]
        let s = g.sub(t, x).unwrap();
        g.mul(a, s).unwrap()
    });
    check("max/min", &[6], |g, x| {
        let k = c(g, &[6], 3);
        let a = g.maximum(x, k).unwrap();
        let b = g.minimum(x, k).unwrap();
        g.mul(a, b).unwrap()
    });
    check("select", &[2, 3], |g, x| {
        let z = g.scalar(0.0, DType::F64);
        let pos = g.cmp(Cmp::Gt, x, z).unwrap();
        let sq = g.mul(x, x).unwrap();
        g.select(pos, sq, x).unwrap()
    });
}

/// Through an f32 section the gradient is the f32 gradient cast back (finite differences are
/// too coarse in f32, so compare with the analytic derivative of tanh).
#[test]
fn cast_rule() {
    let mut g = Graph::new();
    let x = g.input("x", TensorType::new(DType::F64, vec![Dim::fixed(3)]));
    let f = g.cast(x, DType::F32).unwrap();
    let t = g.tanh(f).unwrap();
    let y = g.cast(t, DType::F64).unwrap();
    let s = g.sum(y, &[0], false).unwrap();
    let one = g.scalar(1.0, DType::F64);
    let dx = vjp(&mut g, s, one, &[x]).unwrap()[0].unwrap();
    assert_eq!(g.dtype(dx), DType::F64);
    g.set_output("dx", dx);
    let x0 = [0.3, -1.2, 2.0];
    let out = run_once(
        &g,
        vec![Tensor::f64(vec![3], x0.to_vec())],
        Bindings::default(),
    )
    .unwrap();
    for (i, &v) in x0.iter().enumerate() {
        let want = 1.0 - v.tanh().powi(2);
        assert!((out[0].get_f64(i) - want).abs() < 1e-6, "{i}");
    }
}

#[test]
fn layout_and_reduction_rules() {
    check("matmul shared", &[2, 3, 4], |g, x| {
        let w = c(g, &[4, 5], 1);
        g.matmul(x, w).unwrap()
    });
    check("matmul batched", &[2, 3, 4], |g, x| {
        let xt = g.transpose(x, vec![0, 2, 1]).unwrap();
        g.matmul(x, xt).unwrap()
    });
    check("reshape/transpose", &[2, 3, 4], |g, x| {
        let t = g.transpose(x, vec![2, 0, 1]).unwrap();
        g.reshape(t, vec![Dim::fixed(8), Dim::fixed(3)]).unwrap()
    });
    check("broadcast", &[3, 1], |g, x| {
        g.broadcast(x, vec![Dim::fixed(2), Dim::fixed(3), Dim::fixed(4)])
            .unwrap()
    });
    check("slice/pad/concat", &[4, 3], |g, x| {
        let a = g.slice_n(x, 0, 1, 3).unwrap();
        let b = g.pad(a, 1, Dim::ONE, Dim::fixed(5)).unwrap();
        let cc = g.slice_n(x, 1, 0, 2).unwrap();
        let cc = g.transpose(cc, vec![1, 0]).unwrap(); // [2, 4]
        let cc = g.slice_n(cc, 1, 0, 3).unwrap(); // [2, 3]
        let cc = g.pad(cc, 1, Dim::fixed(2), Dim::fixed(5)).unwrap();
        g.concat(&[b, cc, b], 0).unwrap()
    });
    check("reduce_sum/mean", &[2, 3, 4], |g, x| {
        let s = g.sum(x, &[1], true).unwrap();
        let m = g.mean(x, &[0, 2], false).unwrap();
        let sq = g.mul(s, s).unwrap();
        let m = g
            .reshape(m, vec![Dim::ONE, Dim::fixed(3), Dim::ONE])
            .unwrap();
        g.add(sq, m).unwrap()
    });
    check("softmax with stop_gradient max", &[2, 5], |g, x| {
        let m = g.reduce_max(x, &[1], true).unwrap();
        let m = g.stop_gradient(m).unwrap();
        let s = g.sub(x, m).unwrap();
        let e = g.exp(s).unwrap();
        let z = g.sum(e, &[1], true).unwrap();
        g.div(e, z).unwrap()
    });
    check("gather/scatter", &[4, 2], |g, x| {
        let idx = g.constant(Tensor::i32(vec![2, 3], vec![0, 3, 3, 1, 0, 2]));
        let gt = g.gather(x, idx).unwrap(); // [2, 3, 2]
        let sq = g.mul(gt, gt).unwrap();
        let back = g.scatter_add(idx, sq, Dim::fixed(5)).unwrap(); // [5, 2]
        g.tanh(back).unwrap()
    });
}

#[test]
fn verifier_reports_broken_graphs() {
    let mut g = Graph::new();
    let x = g.input(
        "x",
        TensorType::new(DType::F64, vec![Dim::NLOC, Dim::fixed(3)]),
    );
    let y = g.tanh(x).unwrap();
    g.set_output("y", y);
    assert!(verify(&g).is_ok());
    // A node whose recorded type disagrees with its op, and a use before definition.
    let mut bad = g.clone();
    bad.nodes[1].ty = TensorType::new(DType::F32, vec![Dim::NLOC, Dim::fixed(3)]);
    bad.nodes[0].args = vec![ValueId(1)];
    let e = verify(&bad).unwrap_err();
    assert!(e.contains("%1: tanh is typed f32[nloc,3]"), "{e}");
    assert!(
        e.contains("%0: argument %1 is not defined before use"),
        "{e}"
    );
    // Building ill-typed nodes fails at construction.
    let i = g.constant(Tensor::i32(vec![2], vec![0, 1]));
    assert!(g.add(x, i).is_err());
    assert!(g.tanh(i).is_err());
    let w = g.constant(Tensor::f64(vec![4, 2], vec![0.0; 8]));
    assert!(g.matmul(x, w).is_err());
}
