#!/usr/bin/env bash
# Fetch the pure-Python wheels the H200 machine lacks into .whl/ (ignored by git, carried by the device tool):
#
#   bash benchmarks/fetch_wheels.sh            # then: device run with carry [".whl"], command
#                                              #   "bash benchmarks/device_check.sh" (it installs .whl/*.whl)
#
# diffusers (the end-to-end peer) with importlib-metadata (its one need missing there; the rest -- filelock,
# huggingface-hub, numpy, regex, requests, safetensors, Pillow -- are in the machine's image, see
# /work/.library/device/KINDS.md) and liger-kernel (the Triton peer of the norm / RoPE benchmarks; torch and triton
# are there). One version of each; versions match what CI tests against. About 7.5 MB.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl diffusers==0.42.1 liger-kernel==0.8.5 importlib-metadata
ls -la .whl
