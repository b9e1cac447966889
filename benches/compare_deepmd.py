#!/usr/bin/env python3
"""dpc against DeePMD-kit on the same models, system and machine, in one run.

    python benches/compare_deepmd.py --dpc target/release/dpc [--fixtures ../shared/fixtures]
        [--models se_e2_a se_e2_r ...] [--atoms 2048] [--reps 5] [--dpc-reps 20] [--threads 2]
        [--rounds 1]

Run it with a Python that has DeePMD-kit 3.2 (`--install VENV` creates one: `pip install
"deepmd-kit[torch,jax,cpu]==3.2.0"`, about 7.5 GB). For each model it builds the fcc Cu/Au
system of shared/fixtures/gen/bench.py (numpy's generator, so DeePMD-kit and dpc see the same
atoms), times DeePMD-kit's DeepPot on every backend file the fixture has (median of --reps
calls after three warm-ups), keeps the backends whose energy agrees with the PyTorch one
(DeePMD-kit's TensorFlow runtime computes these models differently, see docs/formats.md),
times `dpc bench --input` on the same configuration (plain, `--compress` and `--precision
float32` where the model allows them; median of --dpc-reps evaluations after one warm-up:
the small models take 25 ms, so 5 of them are a tenth of a second, and one busy moment on a
shared host moved that median by a fifth), and prints the ratios as a Markdown table (the one in
docs/performance.md). Both sides use --threads threads.

Each side runs in its own child process, model by model: dpc's variants, then DeePMD-kit's
backends, then the next model. Earlier versions timed dpc for every model first and
DeePMD-kit after, and on a shared 2-core VM whose speed swung two- to threefold within
minutes a swing between the two halves moved every ratio. DeePMD-kit is never imported in
this process: with torch, TensorFlow and JAX loaded in the parent, dpc's runs on a 2-core VM
measured slower and noisier (se_e2_r: medians of 25.5 to 38.4 ms against 24.3 to 24.9 from a
plain Python parent), although the parent used no CPU while waiting. `--rounds N` repeats
the whole pass N times and reports, for each number, the median over the rounds.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

BACKENDS = ["pth", "pte", "hlo", "pb"]  # pb last: TensorFlow 1 mode turns eager off


def make_system(n, seed=7):
    import numpy as np

    rng = np.random.default_rng(seed)
    a = 3.70
    base = np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]) * a
    g = np.stack(np.meshgrid(np.arange(n), np.arange(n), np.arange(n), indexing="ij"), -1)
    g = g.reshape(-1, 3) * a
    pos = (g[:, None, :] + base[None]).reshape(-1, 3) + rng.normal(0, 0.08, size=(4 * n**3, 3))
    at = np.zeros(len(pos), dtype=int)
    at[rng.choice(len(pos), len(pos) // 4, replace=False)] = 1
    return pos, np.diag([n * a] * 3), at


def deepmd_child(path, conf, reps):
    """In a child process: time DeepPot.eval on `conf` and print the median and energy."""
    import numpy as np
    from deepmd.infer import DeepPot

    with open(conf) as f:
        c = json.load(f)
    coord = np.array(c["coord"]).reshape(1, -1)
    box = np.array(c["box"]).reshape(1, 9)
    at = np.array(c["atype"])
    dp = DeepPot(path)
    # TorchScript's profiling executor optimises after a few calls.
    for _ in range(3):
        e, _, _ = dp.eval(coord, box, at)
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        e, _, _ = dp.eval(coord, box, at)
        ts.append(time.perf_counter() - t0)
    print(json.dumps({"t": float(np.median(ts)), "e": float(e.reshape(-1)[0])}))


def time_deepmd(path, conf, reps):
    """DeePMD-kit's median seconds and energy on `conf`, from a child process; raises with
    the child's last error line when the backend cannot run the model."""
    out = subprocess.run(
        [sys.executable, __file__, "--deepmd-child", path, conf, str(reps)],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        tail = [l for l in out.stderr.splitlines() if l.strip()]
        raise RuntimeError(tail[-1][:200] if tail else f"exit status {out.returncode}")
    r = json.loads(out.stdout.strip().splitlines()[-1])
    return r["t"], r["e"]


def time_dpc(dpc, model, conf, reps, threads, extra=()):
    out = subprocess.run(
        [dpc, "bench", model, "--input", conf, "--reps", str(reps), "--threads", str(threads), *extra],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    fields = {l.split()[0]: l.split()[1] for l in out.splitlines() if l.strip()}
    return float(fields["median"]) / 1e3, float(fields["energy"])


def median(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


def time_model(a, m, conf, natoms):
    """One model's timings: dpc plain and its variants, then every DeePMD-kit backend the
    fixture has (seconds and energies)."""
    d = os.path.join(a.fixtures, "models", m)
    dpc_t, dpc_e = time_dpc(a.dpc, os.path.join(d, "model.dp"), conf, a.dpc_reps, a.threads)
    print(f"{m}: dpc {natoms / dpc_t:.0f} atoms/s (E {dpc_e:.10f})", flush=True)
    variants = {}
    for tag, extra in [("compress", ["--compress"]), ("float32", ["--precision", "float32"])]:
        try:
            t, e = time_dpc(a.dpc, os.path.join(d, "model.dp"), conf, a.dpc_reps, a.threads, extra)
        except subprocess.CalledProcessError:
            print(f"  dpc {tag}: not available for this model", flush=True)
            continue
        variants[tag] = (natoms / t, e)
        print(f"  dpc {tag}: {natoms / t:.0f} atoms/s (E {e:.10f})", flush=True)
    deepmd = {}
    for b in BACKENDS:
        path = os.path.join(d, f"model.{b}")
        if not os.path.exists(path):
            continue
        try:
            t, e = time_deepmd(path, conf, a.reps)
        except RuntimeError as ex:  # a backend that cannot run this model
            print(f"  DeePMD-kit {b}: failed: {ex}", flush=True)
            continue
        deepmd[b] = (t, e)
        print(f"  DeePMD-kit {b}: {natoms / t:.0f} atoms/s (E {e:.10f})", flush=True)
    return {"dpc": (dpc_t, dpc_e), "variants": variants, "deepmd": deepmd}


def install(venv):
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    pip = os.path.join(venv, "bin", "pip")
    subprocess.run([pip, "install", "deepmd-kit[torch,jax,cpu]==3.2.0", "h5py", "pyyaml"], check=True)
    print(f"installed; rerun with {os.path.join(venv, 'bin', 'python')}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dpc", default="target/release/dpc")
    p.add_argument("--fixtures", default=os.path.join(os.path.dirname(__file__), "../../shared/fixtures"))
    p.add_argument("--models", nargs="+", default=["se_e2_a", "se_e2_a_tos", "se_e2_r", "se_e3", "se_atten", "se_e2_a_big", "dpa2", "dpa3"])
    p.add_argument("--atoms", type=int, default=2048)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--dpc-reps", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=1, help="repeat the pass; medians over rounds")
    p.add_argument("--deepmd-child", nargs=3, metavar=("MODEL", "CONF", "REPS"), help=argparse.SUPPRESS)
    p.add_argument("--install", metavar="VENV", help="create a venv with DeePMD-kit 3.2.0 and exit")
    a = p.parse_args()
    if a.deepmd_child:
        path, conf, reps = a.deepmd_child
        deepmd_child(path, conf, int(reps))
        return
    if a.install:
        install(a.install)
        return
    # Thread settings must be in place before torch / TensorFlow / JAX load.
    for k in ["OMP_NUM_THREADS", "DP_INTRA_OP_PARALLELISM_THREADS", "TF_INTRA_OP_PARALLELISM_THREADS"]:
        os.environ[k] = str(a.threads)
    os.environ["DP_INTER_OP_PARALLELISM_THREADS"] = "1"
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    import importlib.util

    if importlib.util.find_spec("deepmd") is None:
        sys.exit("DeePMD-kit is not importable: run with its venv's python (see --install)")

    n = max(1, round((a.atoms / 4) ** (1 / 3)))
    coord, box, at = make_system(n)
    natoms = len(at)
    conf = os.path.join(tempfile.mkdtemp(), "conf.json")
    with open(conf, "w") as f:
        json.dump({"coord": coord.tolist(), "atype": at.tolist(), "box": box.reshape(-1).tolist()}, f)
    print(
        f"system: {natoms} atoms, fcc {n}x{n}x{n}; {a.threads} thread(s); "
        f"median of {a.reps} (DeePMD-kit) and {a.dpc_reps} (dpc)",
        flush=True,
    )

    # Per round and model: dpc's variants, then DeePMD-kit's backends (each in a child).
    runs = []
    for r in range(a.rounds):
        if a.rounds > 1:
            print(f"round {r + 1}/{a.rounds}", flush=True)
        runs.append({m: time_model(a, m, conf, natoms) for m in a.models})

    rows = []
    for m in a.models:
        per = [run[m] for run in runs]
        dpc_t = median([p["dpc"][0] for p in per])
        energy = per[0]["dpc"][1]
        variants = {}
        for tag in ["compress", "float32"]:
            got = [p["variants"][tag] for p in per if tag in p["variants"]]
            if got:
                variants[tag] = (median([g[0] for g in got]), got[0][1])
        theirs = {}
        for p in per:
            for b, (t, e) in p["deepmd"].items():
                theirs.setdefault(b, []).append((t, e))
        ref_e = theirs["pth"][0][1] if "pth" in theirs else None
        best = None
        for b, got in theirs.items():
            t, e = median([g[0] for g in got]), got[0][1]
            correct = ref_e is not None and abs(e - ref_e) <= 1e-6 * max(1.0, abs(ref_e))
            if correct and (best is None or t < best[1]):
                best = (b, t)
        if best is None:
            rows.append((m, natoms / dpc_t, energy, None, None, None, variants))
            continue
        rows.append((m, natoms / dpc_t, energy, best[0], natoms / best[1], ref_e, variants))

    print()
    print("| model | DeePMD-kit fastest correct | its atoms/s | dpc atoms/s | ratio | dpc --compress | ratio | dpc float32 | ratio | energy diff (plain / compress / float32, eV/atom) |")
    print("|---|---|---|---|---|---|---|---|---|---|")

    def cell(v, theirs):
        if v is None:
            return "n/a | "
        return f"{v[0]:.0f} | {v[0] / theirs:.2f}x" if theirs else f"{v[0]:.0f} | "

    for m, ours, energy, b, theirs, ref_e, variants in rows:
        if b is None:
            print(f"| {m} | none ran | | {ours:.0f} | | {cell(variants.get('compress'), None)} | {cell(variants.get('float32'), None)} | |")
            continue
        de = lambda e: f"{abs(e - ref_e) / natoms:.1e}" if e is not None else "n/a"
        c, f = variants.get("compress"), variants.get("float32")
        print(
            f"| {m} | {b} | {theirs:.0f} | {ours:.0f} | {ours / theirs:.2f}x | {cell(c, theirs)} | {cell(f, theirs)} | "
            f"{de(energy)} / {de(c[1] if c else None)} / {de(f[1] if f else None)} |"
        )


if __name__ == "__main__":
    main()
