#!/usr/bin/env bash
# The GPU code path without a GPU: runs tests/generic_path.rs through Mesa's software Vulkan
# driver (lavapipe), which gives wgpu a Vulkan device on the CPU. FEATURE picks the build: `wgpu`
# (default: WGSL kernels) or `vulkan` (SPIR-V kernels, which lavapipe 22.3 and 25.0 crash on while
# compiling burn's matrix products).
# Not part of .ci/run (building burn a second time, with wgpu, would double CI's cold build);
# run it before submitting a change to the method code (crates/sparsevd, runner's train.rs and
# adam.rs). Installs mesa-vulkan-drivers with apt when the driver is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
lavapipe() { ls /usr/share/vulkan/icd.d/lvp_icd*.json 2>/dev/null | head -1; }
if [ -z "$(lavapipe)" ]; then
    apt-get update -qq && apt-get install -y -qq mesa-vulkan-drivers libvulkan1 >/dev/null
fi
export VK_ICD_FILENAMES=$(lavapipe) XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp}
# Kernel autotuning times every candidate kernel on first use; on a software driver that is
# minutes of CPU spent choosing among kernels that are all slow.
export CUBECL_AUTOTUNE_LEVEL=${CUBECL_AUTOTUNE_LEVEL:-minimal}
cargo test -p harness --features "${FEATURE:-wgpu}" --test generic_path -- --nocapture \
    --test-threads 1 "$@"
