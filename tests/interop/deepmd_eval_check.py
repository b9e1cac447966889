"""Check that DeePMD-kit 3.2 loads a model file dpc wrote (`.hlo` from `dpc compile`: its JAX
backend; `.pth` from `dpc emit`: its PyTorch backend; `.pb` from `dpc emit`: its TensorFlow
backend; `.savedmodel` from `dpc emit`: its JAX backend's TensorFlow wrapper; `.pte` from
`dpc emit`: its pt_expt backend) and reproduces
the reference (the PyTorch original's numbers) to 1e-10.

usage: python deepmd_eval_check.py DPC_WRITTEN.{hlo,pth,pb,savedmodel,pte} REFERENCE.json [NAME] [--twin ORIG.pth]
       [--virtual-twin ORIG.pth]
       [--sorted-twin ORIG.pth] [--tol T]

REFERENCE.json is a fixture reference (`configs` at the top) or the variants' reference
file, from which NAME picks the model.

Per-atom virials of message-passing models (DPA-2, DPA-3) depend on the frame the extended
system is built in (the fixtures README): the reference holds those of DeePMD-kit's vesin
path. With `--twin`, the original `.pth` evaluated on the same path is the reference for them.

DPA-1 and se_e3_tebd models in `concat` mode read the type of atom 0 on padded neighbour
slots, so their numbers depend on the order of the atoms; DeePMD-kit's TensorFlow runtime
sorts atoms by type before its graph sees them. With `--sorted-twin`, the reference is the
original `.pth` evaluated by DeePMD-kit's PyTorch backend on the atoms sorted the same way.

Every configuration is evaluated alone (energy, force, virial, atom energy and atom virial:
the atomic-virial variants) and, where several share a type list, together as one batch of
frames (the exports' `nf` axis). Non-periodic configurations exercise the no-ghost variants. A `.pth` or `.pte` is run twice: with
DeePMD-kit's own neighbour list (`forward`) and, where vesin is installed, with vesin's
(`forward_common_lower`).
Prints `max |diff| X` and exits non-zero above 1e-10.
"""

import argparse
import json
import os
import sys

import numpy as np

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

from deepmd.infer import DeepPot  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("model")
ap.add_argument("reference")
ap.add_argument("name", nargs="?")
ap.add_argument("--twin")
ap.add_argument("--sorted-twin")
ap.add_argument(
    "--virtual-twin",
    help="also evaluate the first configuration with its second atom virtual (type -1) and "
    "compare with this model (DeePMD-kit's own) on the same input",
)
ap.add_argument("--tol", type=float, default=1e-10, help="1e-5 for float32 models")
args = ap.parse_args()
model = args.model
ref = json.load(open(args.reference))
if args.name:
    ref = ref[args.name]
fmt = model.rsplit(".", 1)[-1]
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


skipped = set()
sorted_twin = DeepPot(args.sorted_twin) if args.sorted_twin else None


def expected(c, kw):
    """The reference numbers of configuration `c`: the fixture's, or the sorted twin's."""
    if sorted_twin is None:
        return c["expected"]
    types = np.array(c["atom_types"])
    order = np.argsort(types, kind="stable")
    coord = np.array(c["coord"]).reshape(-1, 3)[order].reshape(1, -1)
    box = None if c["box"] is None else np.array(c["box"]).reshape(1, 9)
    kw = dict(kw)
    if "aparam" in kw:
        kw["aparam"] = kw["aparam"].reshape(1, len(types), -1)[:, order].reshape(1, -1)
    out = sorted_twin.eval(coord, box, list(types[order]), atomic=True, **kw)
    want = {}
    for k, v in zip(keys, out):
        v = np.asarray(v)
        if k in ("force", "atom_energy", "atom_virial"):
            v = v.reshape(len(types), -1)
            back = np.empty_like(v)
            back[order] = v
            v = back
        want[k] = v.ravel().tolist()
    return want


def usable(dp, c):
    """DeePMD-kit's TensorFlow runtime has no default fparam: such configurations are skipped."""
    if fmt == "pb" and dp.get_dim_fparam() > 0 and c.get("fparam") is None:
        skipped.add(c["name"])
        return False
    return True


def check_all(dp, twin=None):
    """Every configuration alone, then batches; returns how many were batched."""
    for c in ref["configs"]:
        if not usable(dp, c):
            continue
        box = None if c["box"] is None else np.array(c["box"]).reshape(1, 9)
        kw = params([c])
        coord = np.array(c["coord"]).reshape(1, -1)
        out = dp.eval(coord, box, c["atom_types"], atomic=True, **kw)
        same_path = twin.eval(coord, box, c["atom_types"], atomic=True, **kw) if twin else None
        exp = expected(c, kw)
        for k, v in zip(keys, out):
            want = exp.get(k)
            if k == "atom_virial" and same_path is not None:
                want = same_path[4]
            jax_split = fmt in ("hlo", "savedmodel") and ref.get("descriptor") in (
                "dpa2",
                "dpa3",
            )
            if k == "atom_virial" and jax_split and c["per_format"]["hlo"].get(k) is not None:
                # Message-passing models: DeePMD-kit's JAX backend splits the virial over
                # atoms its own way in periodic cells (the fixtures README); its own .hlo's
                # numbers are the reference for a .hlo, and for a .savedmodel, whose
                # `call` builds the extended system as DeePMD-kit's JAX export does.
                want = c["per_format"]["hlo"][k]
            if want is not None:
                check(k, v, want)
        e, f, v = dp.eval(coord, box, c["atom_types"], **kw)
        check("energy", e, exp["energy"])
        check("force", f, exp["force"])
        check("virial", v, exp["virial"])

    # Batches: configurations with the same types and periodicity, evaluated as nf frames.
    groups = {}
    for c in ref["configs"]:
        if not usable(dp, c):
            continue
        key = (tuple(c["atom_types"]), c["box"] is None, c.get("fparam") is None)
        groups.setdefault(key, []).append(c)
    batched = 0
    for (types, open_, _), cs in groups.items():
        if len(cs) < 2:
            continue
        coord = np.array([c["coord"] for c in cs])
        box = None if open_ else np.array([c["box"] for c in cs])
        e, f, v = dp.eval(coord, box, list(types), **params(cs))
        for i, c in enumerate(cs):
            exp = expected(c, params([c]))
            check("energy", e[i], exp["energy"])
            check("force", f[i], exp["force"])
            check("virial", v[i], exp["virial"])
        batched += len(cs)
    return batched


if fmt in ("pth", "pte"):
    # DeePMD-kit's own neighbour list, then vesin's where it is installed (for a .pth:
    # the module's `forward`, then `forward_common_lower` on an extended system DeePMD-kit
    # builds; a .pte always gets the extended system).
    from deepmd.pt_expt.utils.vesin_neighbor_list import (  # noqa: E402
        is_vesin_torch_available,
    )

    def twin(backend):
        return DeepPot(args.twin, nlist_backend=backend) if args.twin else None

    batched = check_all(DeepPot(model, nlist_backend="native"), twin("native"))
    paths = "native"
    if is_vesin_torch_available():
        check_all(DeepPot(model, nlist_backend="vesin"), twin("vesin"))
        paths += " and vesin neighbour lists"
else:
    batched = check_all(DeepPot(model))
    paths = "DeePMD-kit's neighbour list"

if args.virtual_twin:
    # A virtual atom (type -1) contributes nothing and feels no force; DeePMD-kit's own
    # model on the same input is the reference (the fixtures hold no such configuration).
    c = ref["configs"][0]
    types = list(c["atom_types"])
    types[1] = -1
    box = None if c["box"] is None else np.array(c["box"]).reshape(1, 9)
    coord = np.array(c["coord"]).reshape(1, -1)
    kw = params([c])
    got = DeepPot(model).eval(coord, box, types, atomic=True, **kw)
    want = DeepPot(args.virtual_twin).eval(coord, box, types, atomic=True, **kw)
    for k, g, w in zip(keys[:4], got, want):
        check("virtual " + k, g, w)

tot = max(worst.values())
print(
    f"max |diff| {tot:.3e} ("
    + ", ".join(f"{k} {x:.1e}" for k, x in worst.items())
    + f"; {len(ref['configs']) - len(skipped)} configs"
    + (f" ({len(skipped)} with default fparam skipped)" if skipped else "")
    + f", {batched} also in batches; {paths}"
    + ("; reference: the original on type-sorted atoms" if sorted_twin else "")
    + ")"
)
sys.exit(0 if tot < args.tol else 1)
