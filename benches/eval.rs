//! Evaluation time of the fixture models on the fcc Cu/Au benchmark system (energy and
//! forces; plain, compressed and float32), and of the tanh kernels. `cargo bench -p dpc-benches`; the fixture directory is
//! `../shared/fixtures` or `DPC_FIXTURES`. Ratios against DeePMD-kit come from
//! `benches/compare_deepmd.py`, which runs both on the same machine.

use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use dpc_compiler::build::{BuildOptions, Compress};
use dpc_compiler::graph::DType;
use dpc_runtime::{DeepPot, Frame};

fn fixtures() -> PathBuf {
    std::env::var("DPC_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures"))
}

/// `n^3` fcc cells of 4 atoms (a = 3.70 A), every fourth atom type 1, small deterministic
/// displacements: the shape of `shared/fixtures/gen/bench.py`'s system.
fn fcc(n: usize) -> (Vec<f64>, Vec<i32>, [f64; 9]) {
    let a = 3.70;
    let basis = [
        [0.0, 0.0, 0.0],
        [0.5, 0.5, 0.0],
        [0.5, 0.0, 0.5],
        [0.0, 0.5, 0.5],
    ];
    let mut coord = Vec::new();
    let mut k = 0u64;
    for i in 0..n {
        for j in 0..n {
            for l in 0..n {
                for b in basis {
                    for (d, c) in [i, j, l].iter().enumerate() {
                        k = k
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        let u = (k >> 11) as f64 / (1u64 << 53) as f64 - 0.5;
                        coord.push((*c as f64 + b[d]) * a + 0.16 * u);
                    }
                }
            }
        }
    }
    let natoms = coord.len() / 3;
    let atype = (0..natoms).map(|i| i32::from(i % 4 == 1)).collect();
    let l = n as f64 * a;
    (coord, atype, [l, 0.0, 0.0, 0.0, l, 0.0, 0.0, 0.0, l])
}

/// The fixture models on 864 atoms, as built with `opts` (plain, `--compress`, float32).
fn models_with(c: &mut Criterion, group_name: &str, opts: BuildOptions) {
    let (coord, atype, cell) = fcc(6); // 864 atoms
    let mut group = c.benchmark_group(group_name);
    group.sample_size(10);
    group.throughput(Throughput::Elements(atype.len() as u64));
    for m in ["se_e2_a", "se_e2_a_tos", "se_e2_r", "se_e3", "se_e2_a_big"] {
        let path = fixtures().join(format!("models/{m}/model.dp"));
        let Ok(pot) = dpc_formats::read_model(&path)
            .map_err(|e| e.to_string())
            .and_then(|t| DeepPot::from_tree_opts(t, opts).map_err(|e| e.to_string()))
        else {
            eprintln!("skipping {m}: {} not readable", path.display());
            continue;
        };
        let frame = Frame::new(&coord, &atype, Some(&cell));
        group.bench_with_input(BenchmarkId::from_parameter(m), &frame, |b, f| {
            b.iter(|| pot.compute(f, false).unwrap())
        });
    }
    group.finish();
}

fn models(c: &mut Criterion) {
    models_with(c, "evaluate_864_atoms", BuildOptions::default());
    let compress = BuildOptions {
        compress: Some(Compress::default()),
        ..BuildOptions::default()
    };
    models_with(c, "evaluate_864_atoms_compressed", compress);
    let f32 = BuildOptions {
        precision: Some(DType::F32),
        ..BuildOptions::default()
    };
    models_with(c, "evaluate_864_atoms_float32", f32);
}

fn tanh(c: &mut Criterion) {
    let mut v: Vec<f64> = (0..65536).map(|i| (i as f64) * 1e-4 - 3.0).collect();
    let mut group = c.benchmark_group("tanh");
    group.throughput(Throughput::Elements(v.len() as u64));
    group.bench_function("fastmath", |b| {
        b.iter(|| dpc_runtime::cpu::fastmath::tanh_in_place(&mut v))
    });
    group.bench_function("libm", |b| {
        b.iter(|| v.iter_mut().for_each(|x| *x = x.tanh()))
    });
    let mut v32: Vec<f32> = v.iter().map(|&x| x as f32).collect();
    group.bench_function("fastmath_f32", |b| {
        b.iter(|| dpc_runtime::cpu::fastmath::tanh_in_place_f32(&mut v32))
    });
    group.finish();
}

/// The packed GEMM on the shapes that dominate se_e2_a_big: the fitting's first layer
/// (64-row blocks, `[1600, 240]`) forward and transposed (its VJP), and the embedding's
/// last layer on a block of stacked values and tangents.
fn gemm(c: &mut Criterion) {
    use dpc_runtime::cpu::gemm::PackedB;
    let mut group = c.benchmark_group("gemm");
    for &(name, m, k, n, transpose) in &[
        ("fitting_layer1", 64, 1600, 240, false),
        ("fitting_layer1_vjp", 64, 240, 1600, true),
        ("embedding_layer3", 1024, 50, 100, false),
    ] {
        let w: Vec<f64> = (0..k * n)
            .map(|i| ((i * 7919) % 1000) as f64 * 1e-3 - 0.5)
            .collect();
        let b = PackedB::new(&w, k, n, transpose);
        let a: Vec<f64> = (0..m * k)
            .map(|i| ((i * 104729) % 997) as f64 * 1e-3)
            .collect();
        let mut out = vec![0.0; m * n];
        group.throughput(Throughput::Elements((2 * m * k * n) as u64));
        group.bench_function(name, |bch| {
            bch.iter(|| b.gemm(m, &a, k, &mut out, n, false))
        });
    }
    group.finish();
}

criterion_group!(benches, models, tanh, gemm);
criterion_main!(benches);
