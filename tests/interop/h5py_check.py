"""Check that .dp files written by dpc read back in h5py exactly as DeePMD-kit reads them.

usage: python h5py_check.py ORIGINAL.dp DPC_WRITTEN.dp [DPC_WRITTEN.yaml]

Loads both files the way deepmd/dpmodel/utils/serialization.py:load_dp_model does
(json.loads of the root attribute `json`, then f[path][()] for each variable) and compares
the trees: same keys (ignoring time/software/version), equal scalars, bit-identical arrays.
With a YAML file, also loads it as DeePMD-kit does (yaml.safe_load + np.ndarray dicts).
Exit status 0 on success; prints what differs otherwise.
"""

import json
import sys

import h5py
import numpy as np

SKIP = {"time", "software", "version"}


def traverse(obj, cb, is_var=False):
    if isinstance(obj, dict):
        if obj.get("@is_variable", False):
            return cb(obj)
        return {k: traverse(v, cb, is_var or k == "@variables") for k, v in obj.items()}
    if isinstance(obj, list):
        return [traverse(v, cb, is_var) for v in obj]
    if obj is None:
        return None
    return cb(obj) if is_var else obj


def load_dp(path):
    with h5py.File(path, "r") as f:
        assert h5py.check_string_dtype(f.attrs.get_id("json").dtype) is not None or isinstance(f.attrs["json"], str)
        tree = json.loads(f.attrs["json"])
        return traverse(tree, lambda x: f[x][()].copy())


def load_yaml(path):
    import yaml

    def conv(x):
        if isinstance(x, dict) and x.get("@class") == "np.ndarray":
            return np.asarray(x["value"], dtype=np.dtype(x["dtype"]))
        return x

    with open(path) as f:
        return traverse(yaml.safe_load(f), conv)


def compare(a, b, path, errors):
    if isinstance(a, dict):
        if not isinstance(b, dict):
            errors.append(f"{path}: dict vs {type(b).__name__}")
            return
        ka = {k for k in a if not (path == "" and k in SKIP)}
        kb = {k for k in b if not (path == "" and k in SKIP)}
        if ka != kb:
            errors.append(f"{path}: keys differ {sorted(ka ^ kb)}")
        for k in ka & kb:
            compare(a[k], b[k], f"{path}/{k}", errors)
    elif isinstance(a, list):
        if not isinstance(b, list) or len(a) != len(b):
            errors.append(f"{path}: list differs")
            return
        for i, (x, y) in enumerate(zip(a, b)):
            compare(x, y, f"{path}[{i}]", errors)
    elif isinstance(a, (np.ndarray, np.generic)) or isinstance(b, (np.ndarray, np.generic)):
        xa, xb = np.asarray(a), np.asarray(b)
        if xa.dtype.kind == "V" or xb.dtype.kind == "V":
            same = xa.tobytes() == xb.tobytes()
        else:
            same = xa.shape == xb.shape and xa.dtype == xb.dtype and xa.tobytes() == xb.tobytes()
        if not same:
            errors.append(f"{path}: array differs ({xa.dtype}{xa.shape} vs {xb.dtype}{xb.shape})")
    elif isinstance(a, float) and isinstance(b, float) and np.isnan(a) and np.isnan(b):
        pass
    elif a != b:
        errors.append(f"{path}: {a!r} != {b!r}")


def main():
    original = load_dp(sys.argv[1])
    errors = []
    compare(original, load_dp(sys.argv[2]), "", errors)
    if len(sys.argv) > 3:
        compare(original, load_yaml(sys.argv[3]), "", errors)
    if errors:
        print("\n".join(errors[:20]))
        sys.exit(1)
    print("ok")


main()
