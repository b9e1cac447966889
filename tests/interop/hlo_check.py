"""Check that DeePMD-kit 3.2's JAX backend loads a `.hlo` written by `dpc compile` and
reproduces the reference (the PyTorch original's numbers) to 1e-10.

usage: python hlo_check.py DPC_WRITTEN.hlo REFERENCE.json [NAME]

REFERENCE.json is a fixture reference (`configs` at the top) or the variants' reference
file, from which NAME picks the model.

Every configuration is evaluated alone (energy, force, virial, atom energy and atom virial:
the atomic-virial variants) and, where several share a type list, together as one batch of
frames (the exports' `nf` axis). Non-periodic configurations exercise the no-ghost variants.
Prints `max |diff| X` and exits non-zero above 1e-10.
"""

import json
import os
import sys

import numpy as np

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

from deepmd.infer import DeepPot  # noqa: E402

hlo, ref_path = sys.argv[1:3]
ref = json.load(open(ref_path))
if len(sys.argv) > 3:
    ref = ref[sys.argv[3]]
dp = DeepPot(hlo)
worst = {}


def check(name, got, want):
    d = float(np.abs(np.asarray(got).ravel() - np.asarray(want).ravel()).max())
    worst[name] = max(worst.get(name, 0.0), d)


keys = ["energy", "force", "virial", "atom_energy", "atom_virial"]


def params(cs):
    """fparam/aparam of configurations, stacked as frames (None where absent)."""
    kw = {}
    for k in ("fparam", "aparam"):
        if cs[0].get(k) is not None:
            kw[k] = np.array([c[k] for c in cs]).reshape(len(cs), -1)
    return kw


for c in ref["configs"]:
    box = None if c["box"] is None else np.array(c["box"]).reshape(1, 9)
    kw = params([c])
    out = dp.eval(np.array(c["coord"]).reshape(1, -1), box, c["atom_types"], atomic=True, **kw)
    for k, v in zip(keys, out):
        want = c["expected"].get(k)
        jax_split = ref.get("descriptor") in ("dpa2", "dpa3")
        if k == "atom_virial" and jax_split and c["per_format"]["hlo"].get(k) is not None:
            # Message-passing models: DeePMD-kit's JAX backend splits the virial over atoms
            # its own way in periodic cells (the fixtures README); its own .hlo's numbers
            # are the reference for a .hlo.
            want = c["per_format"]["hlo"][k]
        if want is not None:
            check(k, v, want)
    e, f, v = dp.eval(np.array(c["coord"]).reshape(1, -1), box, c["atom_types"], **kw)
    check("energy", e, c["expected"]["energy"])
    check("force", f, c["expected"]["force"])
    check("virial", v, c["expected"]["virial"])

# Batches: configurations with the same types and periodicity, evaluated as nf frames.
groups = {}
for c in ref["configs"]:
    groups.setdefault((tuple(c["atom_types"]), c["box"] is None, c.get("fparam") is None), []).append(c)
batched = 0
for (types, open_, _), cs in groups.items():
    if len(cs) < 2:
        continue
    coord = np.array([c["coord"] for c in cs])
    box = None if open_ else np.array([c["box"] for c in cs])
    e, f, v = dp.eval(coord, box, list(types), **params(cs))
    for i, c in enumerate(cs):
        check("energy", e[i], c["expected"]["energy"])
        check("force", f[i], c["expected"]["force"])
        check("virial", v[i], c["expected"]["virial"])
    batched += len(cs)

tot = max(worst.values())
print(
    f"max |diff| {tot:.3e} ("
    + ", ".join(f"{k} {x:.1e}" for k, x in worst.items())
    + f"; {len(ref['configs'])} configs, {batched} also in batches)"
)
sys.exit(0 if tot < 1e-10 else 1)
