"""Run the criterion benches and the PyTorch reference on this machine, 2 threads each, and write
results/performance.md with the measured medians, the ratio ours / PyTorch, the machine and the
commit. Optional tooling: needs PyTorch (python3 -m pip install torch) and is never run by the
tests.

Run from the repository root:  python3 crates/runner/benches/side_by_side.py [--python PY]
"""
import argparse
import datetime
import json
import os
import pathlib
import platform
import shutil
import statistics
import subprocess

ROOT = pathlib.Path(__file__).resolve().parents[3]
# Where criterion writes its estimates: under cargo's target folder, wherever CARGO_TARGET_DIR
# puts it.
CRITERION = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "criterion"
STEPS = ["step_lenet300_sparse_vd", "step_lenet5_sparse_vd", "step_vgglike_k0.25_sparse_vd",
         "step_vgglike_k0.25_binary_dropout"]
# Criterion's filter (a regular expression) for the compared steps, and PyTorch's nets.
STEP_FILTER = "step_lenet|step_vgglike_k0.25"
TORCH_NETS = "lenet300,lenet5,vgglike_k0.25"
ROUNDS = 3


def criterion_median_ms(name):
    path = CRITERION / name / "new" / "estimates.json"
    return json.loads(path.read_text())["median"]["point_estimate"] / 1e6


def inference_medians():
    """{(net, batch): (dense ms, sparse ms)} of the last inference benches run."""
    medians = {}
    for net in ["lenet300", "lenet5"]:
        for batch in [1, 100]:
            try:
                dense = criterion_median_ms(f"infer_{net}_dense_masked_batch{batch}_10000_images")
                sparse = criterion_median_ms(f"infer_{net}_sparse_batch{batch}_10000_images")
            except FileNotFoundError:
                continue  # no committed model for this net yet
            medians[(net, batch)] = (dense, sparse)
    return medians


def cpu_model():
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--python", default="python3", help="interpreter that has torch")
    args = parser.parse_args()
    env = dict(os.environ, RAYON_NUM_THREADS="2")
    # The commit the benches are built from, taken before they are: editing the tree while
    # they run must not relabel them.
    commit = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=12"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()
    # Only this run's benches: criterion keeps the folders of benches that no longer exist.
    shutil.rmtree(CRITERION, ignore_errors=True)
    bench = ["cargo", "bench", "-p", "runner", "--bench", "training"]
    subprocess.run(bench, cwd=ROOT, env=env, check=True)
    # The machine's speed drifts by tens of percent over minutes, so the compared steps run in
    # alternated rounds, ours right before PyTorch, and each round gives its own ratio.
    rounds = []
    for _ in range(ROUNDS):
        subprocess.run(bench + ["--", STEP_FILTER], cwd=ROOT, env=env, check=True)
        ours = {name: criterion_median_ms(name) for name in STEPS}
        out = subprocess.run(
            [args.python, str(ROOT / "crates/runner/benches/pytorch_reference.py"), "--threads", "2",
             "--nets", TORCH_NETS],
            cwd=ROOT, check=True, capture_output=True, text=True,
        ).stdout
        torch = {row["bench"]: row for row in map(json.loads, out.strip().splitlines())}
        rounds.append((ours, torch))
    # Dense and sparse inference, likewise in alternated rounds: each pair runs back to back.
    inference_rounds = []
    for _ in range(ROUNDS):
        subprocess.run(bench + ["--", "infer_"], cwd=ROOT, env=env, check=True)
        inference_rounds.append(inference_medians())
    all_benches = sorted(p.name for p in (CRITERION).iterdir() if (p / "new").is_dir())
    lines = [
        "# Performance: training step against PyTorch, and the benches",
        "",
        "Written by `crates/runner/benches/side_by_side.py` from one run of `cargo bench -p runner` and",
        "`pytorch_reference.py` on the same machine, 2 threads each (`RAYON_NUM_THREADS=2`,",
        "`torch.set_num_threads(2)`). Median milliseconds per call. This machine's speed drifts by",
        f"tens of percent between minutes, so the two compared steps ran in {ROUNDS} alternated rounds",
        "(ours, then PyTorch right after); each round has its own ratio, and the summary is their median.",
        "",
        f"- machine: {cpu_model()}, {os.cpu_count()} logical CPUs",
        f"- commit: {commit}; PyTorch {next(iter(rounds[0][1].values()))['torch']}",
        f"- date: {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}",
        "",
        "## One training step, batch 100 (forward, N·CE + β·KL, backward, Adam)",
        "",
        "Sparse VD steps, and VGG-like's binary-dropout pretraining step (mean CE + l2).",
        "",
        "| bench | round | ours (burn flex) ms | PyTorch eager ms | ours / PyTorch |",
        "|---|---|---|---|---|",
    ]
    for name in STEPS:
        ratios = []
        for i, (ours, torch) in enumerate(rounds, start=1):
            ref = torch[name]["median_ms"]
            ratios.append(ours[name] / ref)
            lines.append(f"| {name} | {i} | {ours[name]:.2f} | {ref:.2f} | {ours[name] / ref:.2f} |")
        lines.append(f"| {name} | median of rounds | | | **{statistics.median(ratios):.2f}** |")
    sizes = subprocess.run(
        ["cargo", "test", "--release", "-p", "harness", "--test", "sparse_inference", "--", "--nocapture"],
        cwd=ROOT, env=env, check=True, capture_output=True, text=True,
    ).stdout
    lines += [
        "",
        "## Sparse inference: the committed Sparse VD models on the 10,000 test images",
        "",
        "Dense masked = removed weights zeroed once, burn flex (2 threads). Sparse = only the kept",
        "weights, `sparse_inference::SparseNet` (CSR rows per output unit for dense layers, kept taps per",
        "output channel for convolutions; batch 1: one image after another on one thread; batch 100:",
        "batches spread over 2 threads, each in groups of 8 images side by side, one weight applied",
        "to 8 images per vector operation). Same predictions on all 10,000 images",
        "(tests/sparse_inference.rs). The benches ran in alternated rounds, each dense bench right",
        "before its sparse one; the speed-up is the median of the rounds' ratios. Sizes: float32",
        "weights and biases of the dense model against the sparse model's values, indices and",
        "biases, as printed by that test:",
        "",
    ]
    lines += [f"- {line.strip()}" for line in sizes.splitlines() if " B, sparse " in line]
    lines += [
        "",
        "| net | batch | round | dense masked ms | sparse ms | speed-up |",
        "|---|---|---|---|---|---|",
    ]
    for key in inference_rounds[0]:
        net, batch = key
        ratios = []
        for i, medians in enumerate(inference_rounds, start=1):
            dense, sparse = medians[key]
            ratios.append(dense / sparse)
            lines.append(f"| {net} | {batch} | {i} | {dense:.1f} | {sparse:.1f} | {dense / sparse:.1f}x |")
        lines.append(f"| {net} | {batch} | median of rounds | | | **{statistics.median(ratios):.1f}x** |")
    lines += ["", "## Every criterion bench", "", "| bench | median ms |", "|---|---|"]
    lines += [f"| {name} | {criterion_median_ms(name):.2f} |" for name in all_benches]
    (ROOT / "results" / "performance.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
