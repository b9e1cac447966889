"""On a GPU (prepared by tests/device/prepare.sh; torch, jax with CUDA, h5py; no DeePMD-kit):

1. dpc's emitted .pth (TorchScript, `forward`) and dpc's `compile --device cuda` .hlo (JAX
   export, on the extended system the .pth module builds) against DeePMD-kit's reference
   numbers (per-atom virials of message-passing models in periodic cells are skipped for the
   .pth: they depend on the frame, see docs/formats.md);
2. timings on a 2048-atom Cu/Au fcc system: dpc's .pth against DeePMD-kit's own .pth where
   that loads without DeePMD-kit's op library, and dpc's .hlo against DeePMD-kit's own .hlo
   where one exists and was exported for CUDA.

usage: python3 gpu_check.py DIR MODEL[,MODEL...] [REPS]
"""
import json
import os
import sys
import time

import h5py
import jax
import numpy as np
import torch

jax.config.update("jax_enable_x64", True)
from jax import export

d = sys.argv[1]
models = sys.argv[2].split(",")
dev = "cuda" if torch.cuda.is_available() else "cpu"
print("torch", torch.__version__, "jax", jax.__version__, "device", dev, jax.devices(), flush=True)

def diff(a, b):
    return float(np.abs(np.asarray(a, dtype=np.float64).ravel() - np.asarray(b, dtype=np.float64).ravel()).max())

def tt(x, dt=torch.float64):
    return torch.tensor(np.asarray(x), dtype=dt, device=dev)

for name in models:
    ref = json.load(open(f"{d}/{name}.json"))
    m = torch.jit.load(f"{d}/{name}.pth", map_location=dev)
    mc = torch.jit.load(f"{d}/{name}.pth", map_location="cpu")
    mp = m.has_message_passing()
    w = {}
    wh = {}
    f = h5py.File(f"{d}/{name}.hlo")
    tree = json.loads(f.attrs["json"])
    blob = lambda k: export.deserialize(bytearray(bytes(f[tree["@variables"][k]][()])))
    exps = {True: blob("stablehlo_atomic_virial"), False: blob("stablehlo_atomic_virial_no_ghost")}
    for c in ref["configs"]:
        n = len(c["atom_types"])
        coord = tt(c["coord"]).reshape(1, n, 3)
        at = tt(c["atom_types"], torch.long).reshape(1, n)
        box = None if c["box"] is None else tt(c["box"]).reshape(1, 3, 3)
        o = m.forward(coord, at, box, None, None, True, None)
        e = c["expected"]
        for k, got in [("energy", o["energy"]), ("force", o["force"]), ("virial", o["virial"]), ("atom_energy", o["atom_energy"])] + ([] if (mp and box is not None) else [("atom_virial", o["atom_virial"])]):
            w[k] = max(w.get(k, 0.0), diff(got.cpu().numpy(), e[k]))
        # The .hlo on the extended system and list the .pth module builds (on the CPU).
        cc, tc = coord[0].cpu(), at[0].cpu().to(torch.int32)
        if box is None:
            ec, et, mpg = cc, tc, torch.arange(n, dtype=torch.int32)
        else:
            ec, et, mpg = mc._extend(cc, tc, box[0].cpu())
        nl = mc._neighbours(ec, et, n)
        r = exps[box is not None].call(ec.numpy()[None], et.numpy()[None].astype(np.int32), nl.numpy()[None].astype(np.int64), mpg.numpy()[None].astype(np.int64), None, None)
        fe = np.zeros((n, 3))
        np.add.at(fe, mpg.numpy(), np.asarray(r["energy_derv_r"])[0, :, 0, :])
        for k, got in [("energy", np.asarray(r["energy_redu"])), ("force", fe), ("virial", np.asarray(r["energy_derv_c_redu"])), ("atom_energy", np.asarray(r["energy"]))]:
            wh[k] = max(wh.get(k, 0.0), diff(got, e[k]))
        hlo_dev = str(jax.devices()[0])
    print(f"{name}: dpc .pth on {dev}: max |diff| {max(w.values()):.2e} {w}", flush=True)
    print(f"{name}: dpc .hlo (cuda export) on {hlo_dev}: max |diff| {max(wh.values()):.2e} {wh}", flush=True)

# Timing, 2048 atoms (fcc 8x8x8, a=3.615, random Cu/Au, jittered), energy+forces+virial.
rng = np.random.default_rng(1)
a = 3.615
base = np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
cells = np.array([[i, j, k] for i in range(8) for j in range(8) for k in range(8)])
xyz = ((cells[:, None, :] + base[None]) * a).reshape(-1, 3) + rng.normal(0, 0.05, (2048, 3))
types = rng.integers(0, 2, 2048)
box = np.eye(3) * 8 * a
reps = int(sys.argv[3]) if len(sys.argv) > 3 else 10
for name in models:
    for label, path in [("deepmd .pth", f"{d}/{name}.orig.pth"), ("dpc .pth", f"{d}/{name}.pth")]:
        try:
            m = torch.jit.load(path, map_location=dev)
            args = (tt(xyz).reshape(1, -1, 3), tt(types, torch.long).reshape(1, -1), tt(box).reshape(1, 3, 3))
            for _ in range(2):
                o = m.forward(*args)
            if dev == "cuda":
                torch.cuda.synchronize()
            ts = []
            for _ in range(reps):
                t0 = time.perf_counter()
                o = m.forward(*args)
                float(o["energy"].sum())
                ts.append(time.perf_counter() - t0)
            med = sorted(ts)[len(ts) // 2]
            print(f"{name}: {label} on {dev}: {2048 / med:,.0f} atoms/s (median of {reps}, {med*1e3:.1f} ms), energy {float(o['energy'].sum()):.10f}", flush=True)
        except Exception as ex:
            print(f"{name}: {label}: failed: {str(ex)[:300]}", flush=True)

# JAX: dpc's .hlo against DeePMD-kit's own .hlo, on the extended system and list the .pth
# module builds (same inputs for both).
for name in models:
    try:
        m = torch.jit.load(f"{d}/{name}.pth", map_location=dev)
        n = len(types)
        ec, et, mpg = m._extend(tt(xyz), tt(types, torch.int32), tt(box))
        nl = m._neighbours(ec, et, n)
        args = (ec.cpu().numpy()[None], et.cpu().numpy()[None].astype(np.int32), nl.cpu().numpy()[None].astype(np.int64), mpg.cpu().numpy()[None].astype(np.int64), None, None)
        args = tuple(None if a is None else jax.device_put(a) for a in args)
        for label, path in [("deepmd .hlo", f"{d}/{name}.orig.hlo"), ("dpc .hlo", f"{d}/{name}.hlo")]:
            if not os.path.exists(path):
                continue
            try:
                f = h5py.File(path)
                tree = json.loads(f.attrs["json"])
                exp = export.deserialize(bytearray(bytes(f[tree["@variables"]["stablehlo"]][()])))
                call = jax.jit(exp.call)
                r = call(*args)
                jax.block_until_ready(r)
                ts = []
                for _ in range(reps):
                    t0 = time.perf_counter()
                    r = call(*args)
                    jax.block_until_ready(r)
                    ts.append(time.perf_counter() - t0)
                med = sorted(ts)[len(ts) // 2]
                print(f"{name}: {label} on {jax.devices()[0]}: {n / med:,.0f} atoms/s (median of {reps}, {med*1e3:.1f} ms; nall {ec.shape[0]}), energy {float(np.asarray(r['energy_redu']).sum()):.10f}", flush=True)
            except Exception as ex:
                print(f"{name}: {label}: failed: {str(ex)[:300]}", flush=True)
    except Exception as ex:
        print(f"{name}: hlo timing failed: {str(ex)[:400]}", flush=True)
