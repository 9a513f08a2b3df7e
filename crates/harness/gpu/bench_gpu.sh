#!/usr/bin/env bash
# Times training steps on a GPU machine that has no Rust toolchain, in one call: `harness bench`
# through Vulkan for VGG-like (k = 0.25, 0.5, 1.0, 1.5; binary dropout and Sparse VD) and
# LeNet-5 Sparse VD, then the PyTorch reference (crates/runner/benches/pytorch_reference.py) on
# CUDA, and joins them into performance_gpu.csv (crates/harness/gpu/performance_gpu.py).
#
#   crates/harness/gpu/bench_gpu.sh BINARY COMMIT OUT_DIR [TCH_BINARY]
#
# BINARY      `cargo build --release -p harness --features vulkan`, may be .xz-compressed
# COMMIT      the commit the binaries were built from (recorded in every row)
# TCH_BINARY  optional: `scripts/build_tch.sh`'s build against the machine's PyTorch version,
#             benched with --device tch after the Vulkan benches, libtorch loaded from the
#             machine's PyTorch
# The working tree that travels to the GPU machine must stay under the device tool's 64 MiB with
# the binaries: the committed model files (results/**/model.safetensors, ~50 MB) do not fit
# beside them; delete them from the working copy for the call and `git checkout` them after.
# Vulkan: the loader packages (.deb) in .gl/ are unpacked when the machine has no libvulkan;
# NVIDIA's driver supplies the ICD. Each bench has its own time limit, so that one slow bench
# leaves the others their time.
set -uo pipefail
binary=$1 commit=$2 out=$3 tch_binary=${4:-}
if ! ldconfig -p | grep -q libvulkan.so.1; then
    for deb in .gl/*.deb; do dpkg -x "$deb" /; done
    ldconfig
fi
icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
[ -f "$icd" ] && export VK_DRIVER_FILES=$icd
unpack() { # FILE NAME: FILE, unpacked to /tmp/NAME when .xz; prints the path
    case $1 in *.xz)
        python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$1" "/tmp/$2"
        chmod +x "/tmp/$2" && echo "/tmp/$2" ;;
    *) chmod +x "$1" && echo "$1" ;;
    esac
}
binary=$(unpack "$binary" harness)
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >"$out/gpu.csv" 2>&1
export HARNESS_COMMIT=$commit
bench() { # FILE VARIANT LIMIT_S [BINARY DEVICE]
    timeout "$3" "${4:-$binary}" bench "$1" --variant "$2" --device "${5:-vulkan}" --steps 20 \
        --warmup 5 --csv "$out/ours.csv" 2>&1 | tee -a "$out/bench.log"
}
bench experiments/vgg_cifar10.toml sparse_vd_k1.0 120
bench experiments/vgg_cifar10.toml bd_k1.0 90
bench experiments/lenet5.toml sparse_vd 60
PYTHONUNBUFFERED=1 timeout 150 python3 crates/runner/benches/pytorch_reference.py --device cuda \
    --nets lenet5,vgglike_k0.25,vgglike_k0.5,vgglike_k1.0,vgglike_k1.5 --steps 30 \
    >"$out/pytorch_reference.jsonl" 2>"$out/pytorch_reference.err"
cat "$out/pytorch_reference.jsonl"
for k in 0.25 0.5 1.5; do
    bench experiments/vgg_cifar10.toml "sparse_vd_k$k" 60
    bench experiments/vgg_cifar10.toml "bd_k$k" 45
done
if [ -n "$tch_binary" ]; then
    tch_binary=$(unpack "$tch_binary" harness-tch)
    export LD_LIBRARY_PATH=$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
    bench experiments/vgg_cifar10.toml sparse_vd_k1.0 60 "$tch_binary" tch
    bench experiments/vgg_cifar10.toml bd_k1.0 45 "$tch_binary" tch
    bench experiments/lenet5.toml sparse_vd 45 "$tch_binary" tch
fi
python3 crates/harness/gpu/performance_gpu.py "$out/ours.csv" "$out/pytorch_reference.jsonl" \
    >"$out/performance_gpu.csv"
cat "$out/performance_gpu.csv"
