"""Check that DeePMD-kit 3.2 itself loads and evaluates files written by dpc.

usage: python deepmd_check.py DPC_WRITTEN.dp DPC_WRITTEN.yaml REFERENCE.json WORKDIR

1. `dp convert-backend ours.dp WORKDIR/x.pth` and `ours.yaml -> WORKDIR/x.dp` succeed
   (`ours.dp -> x.yaml` is not tried: DeePMD-kit 3.2.0 fails on that for its own .dp files,
   whose 0-d `min_nbor_dist` loads as a numpy scalar that yaml.safe_dump cannot represent);
2. DeepPot(ours.dp) and DeepPot(ours.yaml) (DeePMD-kit's NumPy backend) reproduce the
   reference energies and atom energies of every configuration to 1e-10, and DeepPot(x.pth)
   (PyTorch, converted from our .dp) reproduces energies, forces and virials to 1e-10.
"""

import json
import os
import subprocess
import sys

import numpy as np

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

from deepmd.infer import DeepPot  # noqa: E402

ours_dp, ours_yaml, ref_path, work = sys.argv[1:5]
for src, dst in [(ours_dp, "x.pth"), (ours_yaml, "x.dp")]:
    subprocess.run(["dp", "convert-backend", src, os.path.join(work, dst)], check=True, capture_output=True)
ref = json.load(open(ref_path))
worst = 0.0
for model in (ours_dp, ours_yaml, os.path.join(work, "x.pth")):
    dp = DeepPot(model)
    for c in ref["configs"]:
        box = None if c["box"] is None else np.array(c["box"]).reshape(1, 9)
        e, f, v, ae, av = dp.eval(np.array(c["coord"]).reshape(1, -1), box, c["atom_types"], atomic=True)
        got = {"energy": e, "atom_energy": ae, "force": f, "virial": v}
        for k, arr in got.items():
            if k in ("force", "virial") and not model.endswith(".pth"):
                continue  # the NumPy backend returns no derivatives
            diff = np.abs(np.asarray(arr).ravel() - np.array(c["expected"][k]).ravel()).max()
            worst = max(worst, float(diff))
print(f"max |diff| {worst:.3e}")
sys.exit(0 if worst < 1e-10 else 1)
