#!/usr/bin/env bash
# Prepares .devcheck/ (git-ignored through .git/info/exclude) for tests/device/gpu_check.py on a
# GPU machine: dpc's .pth and `--device cuda` .hlo of three fixture models, DeePMD-kit's own
# .pth/.hlo where they exist, and the reference numbers. Then, on the GPU machine, from the
# repository root:  cd .devcheck && python3 gpu_check.py . se_e2_a,se_atten,dpa3 10
# (needs torch, jax with CUDA, h5py, numpy; no DeePMD-kit).
set -euo pipefail
fixtures="${1:-../shared/fixtures}"
dpc="${DPC:-target/release/dpc}"
mkdir -p .devcheck
cp tests/device/gpu_check.py .devcheck/
for m in se_e2_a se_atten dpa3; do
    "$dpc" emit "$fixtures/models/$m/model.dp" --format pth -o ".devcheck/$m.pth"
    "$dpc" compile "$fixtures/models/$m/model.dp" -o ".devcheck/$m.hlo" --device cuda
    cp "$fixtures/reference/$m.json" .devcheck/
    cp "$fixtures/models/$m/model.pth" ".devcheck/$m.orig.pth"
    if [ -f "$fixtures/models/$m/model.hlo" ]; then
        cp "$fixtures/models/$m/model.hlo" ".devcheck/$m.orig.hlo"
    fi
done
