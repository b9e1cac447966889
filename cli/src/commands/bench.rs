//! `dpc bench MODEL [--atoms N] [--reps R] [--no-atomic-virial]`: time evaluation on the
//! fcc Cu/Au system of `shared/fixtures/gen/bench.py` (a = 3.70 Å, n x n x n cubic cells of
//! 4 atoms, 25% of the atoms type 1, Gaussian displacements of 0.08 Å; our own RNG, so the
//! displacements differ from numpy's but the system is statistically the same).

use std::time::Instant;

use anyhow::{bail, Result};
use dpc_runtime::Frame;

use crate::source::read_tree;

#[derive(clap::Args)]
pub struct Args {
    /// Model file or built-in model.
    model: String,
    /// Approximate number of atoms (rounded to 4 n^3).
    #[arg(long, default_value_t = 2048)]
    atoms: usize,
    /// Timed evaluations (after one warm-up).
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Compute per-atom virials too (DeePMD-kit's `atomic=True`).
    #[arg(long)]
    atomic_virial: bool,
    /// Also report where the time goes, per graph op kind.
    #[arg(long)]
    profile: bool,
    /// Threads to compute with (default: DPC_NUM_THREADS, OMP_NUM_THREADS or all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Time this configuration (dpc eval's JSON; the first frame) instead of the fcc system.
    #[arg(long, value_name = "CONF.json")]
    input: Option<std::path::PathBuf>,
    #[command(flatten)]
    build: crate::build_args::BuildArgs,
    #[command(flatten)]
    device: crate::device_args::DeviceArgs,
}

/// SplitMix64: deterministic, good enough for displacements.
struct Rng(u64);

impl Rng {
    fn next_f64(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E3779B97F4A7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box-Muller).
    fn normal(&mut self) -> f64 {
        let u1 = self.next_f64().max(1e-300);
        let u2 = self.next_f64();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

/// The benchmark system: coordinates, types and the cubic box.
pub fn fcc_system(n: usize, seed: u64) -> (Vec<f64>, Vec<i32>, [f64; 9]) {
    let a = 3.70;
    let basis = [
        [0.0, 0.0, 0.0],
        [0.5, 0.5, 0.0],
        [0.5, 0.0, 0.5],
        [0.0, 0.5, 0.5],
    ];
    let mut rng = Rng(seed);
    let mut coord = Vec::with_capacity(4 * n * n * n * 3);
    for i in 0..n {
        for j in 0..n {
            for k in 0..n {
                for b in basis {
                    for (d, c) in [i, j, k].iter().enumerate() {
                        coord.push((*c as f64 + b[d]) * a + 0.08 * rng.normal());
                    }
                }
            }
        }
    }
    let natoms = coord.len() / 3;
    let mut atype = vec![0i32; natoms];
    // A quarter of the atoms, chosen by a partial Fisher-Yates shuffle.
    let mut idx: Vec<usize> = (0..natoms).collect();
    for s in 0..natoms / 4 {
        let r = s + (rng.next_f64() * (natoms - s) as f64) as usize;
        idx.swap(s, r.min(natoms - 1));
        atype[idx[s]] = 1;
    }
    let l = n as f64 * a;
    (coord, atype, [l, 0.0, 0.0, 0.0, l, 0.0, 0.0, 0.0, l])
}

/// Peak resident memory of this process (Linux), in MiB.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<f64>().ok()? / 1024.0)
}

pub fn run(a: Args) -> Result<String> {
    if a.reps == 0 {
        bail!("--reps must be at least 1");
    }
    let n = ((a.atoms as f64 / 4.0).cbrt().round() as usize).max(1);
    let given = match &a.input {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", p.display()))?;
            let (frames, _) = crate::conf::parse_frames(&text)?;
            Some(
                frames
                    .into_iter()
                    .next()
                    .ok_or_else(|| anyhow::anyhow!("no frame in {}", p.display()))?,
            )
        }
        None => None,
    };
    let (coord, atype, cell) = match &given {
        Some(f) => (f.coord.clone(), f.atype.clone(), f.cell.clone()),
        None => {
            let (c, t, b) = fcc_system(n, 7);
            (c, t, Some(b.to_vec()))
        }
    };
    let natoms = atype.len();
    let threads = dpc_runtime::threads::init(a.threads);
    if a.threads.is_some_and(|t| t != threads) {
        bail!("could not set up {} threads", a.threads.unwrap());
    }
    let (tree, _) = read_tree(&a.model)?;
    let pot = a.device.attach(a.build.load(tree)?)?;
    if given.is_none() && pot.model().ntypes() < 2 {
        bail!(
            "the benchmark system has two atom types; this model has {}",
            pot.model().ntypes()
        );
    }
    let mut frame = Frame::new(&coord, &atype, cell.as_deref());
    if let Some(f) = &given {
        frame.fparam = f.fparam.as_deref();
        frame.aparam = f.aparam.as_deref();
    }
    let system = match &a.input {
        Some(p) => p.display().to_string(),
        None => format!("fcc {n}x{n}x{n}, box {:.2} Å", n as f64 * 3.70),
    };
    eprintln!(
        "dpc bench: {natoms} atoms ({system}), model {}, {threads} thread(s)",
        a.model
    );
    let t0 = Instant::now();
    let first = pot.compute(&frame, a.atomic_virial)?;
    eprintln!("  warm-up      {:.1} ms", t0.elapsed().as_secs_f64() * 1e3);
    let mut times = Vec::with_capacity(a.reps);
    for r in 0..a.reps {
        let t = Instant::now();
        pot.compute(&frame, a.atomic_virial)?;
        times.push(t.elapsed().as_secs_f64());
        eprintln!("  run {}/{}     {:.1} ms", r + 1, a.reps, times[r] * 1e3);
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let mut out = String::new();
    outln!(out, "atoms         {natoms}");
    outln!(out, "energy        {:.12} eV", first.energy);
    outln!(
        out,
        "median        {:.2} ms per evaluation (min {:.2}, max {:.2}, n={})",
        median * 1e3,
        times[0] * 1e3,
        times[times.len() - 1] * 1e3,
        a.reps
    );
    outln!(out, "throughput    {:.0} atoms/s", natoms as f64 / median);
    outln!(
        out,
        "per atom      {:.3} µs/step/atom",
        median * 1e6 / natoms as f64
    );
    if let Some(m) = peak_rss_mib() {
        outln!(out, "peak memory   {m:.0} MiB");
    }
    if a.profile {
        // Each node's least time over a few profiled evaluations.
        let runs = a.reps.clamp(1, 5);
        let mut profs = Vec::with_capacity(runs);
        for _ in 0..runs {
            let mut prof = dpc_runtime::cpu::Profile::new();
            pot.compute_profiled(&frame, a.atomic_virial, &mut prof)?;
            profs.push(prof);
        }
        let prof = dpc_runtime::cpu::Profile::least(&profs);
        let total = prof.total();
        let mut rows: Vec<_> = prof.kinds.iter().collect();
        rows.sort_by(|a, b| b.1 .0.total_cmp(&a.1 .0));
        outln!(
            out,
            "profile       one evaluation (each node's least time of {runs}), {:.1} ms in graph ops:",
            total * 1e3
        );
        for (op, (t, n)) in rows.iter().take(12) {
            outln!(
                out,
                "  {op:<14} {:>8.1} ms {:>5.1}%  ({n} nodes)",
                t * 1e3,
                100.0 * t / total
            );
        }
        let mut nodes = prof.nodes.clone();
        nodes.sort_by(|a, b| b.3.total_cmp(&a.3));
        outln!(out, "slowest nodes (node, op, output shape):");
        for (id, op, shape, t) in nodes.iter().take(
            std::env::var("DPC_PROFILE_NODES")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(10),
        ) {
            outln!(out, "  %{id:<6} {op:<14} {:>8.1} ms  {shape:?}", t * 1e3);
        }
    }
    Ok(out)
}
