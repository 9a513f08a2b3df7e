#!/usr/bin/env bash
# Builds the harness with the `tch` feature (burn-tch) against a pip-installed PyTorch, with no
# libtorch download, and checks the binary with LeNet-300-100 Sparse VD training steps on
# libtorch's CPU device. TORCH_VERSION (default 2.11.0, the GPU machine's PyTorch) picks the
# version; VENV (default /opt/torch-venv) is where it is installed. burn-tch 0.22 expects libtorch
# 2.9, so the version check is bypassed (the build and the steps below are the check).
set -euo pipefail
cd "$(dirname "$0")/.."
version=${TORCH_VERSION:-2.11.0}
venv=${VENV:-/opt/torch-venv}
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
if ! "$venv/bin/python" -c "import sys, torch; sys.exit(torch.__version__.split('+')[0] != '$version')" 2>/dev/null; then
    "$venv/bin/pip" install -q "torch==$version"
fi
PATH=$venv/bin:$PATH LIBTORCH_USE_PYTORCH=1 LIBTORCH_BYPASS_VERSION_CHECK=1 \
    cargo build --release -p harness --features tch
lib=$("$venv/bin/python" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))' 2>/dev/null)
LD_LIBRARY_PATH=$lib target/release/harness bench experiments/lenet300.toml --variant sparse_vd \
    --device tch-cpu --steps 5 --warmup 1
