"""Compare this tree with an earlier commit on this machine: the criterion benches of both, in
alternated rounds, and a 1-epoch run of each LeNet Sparse VD variant, whose saved models must be
byte-identical. Writes results/performance_before_after.md. Optional tooling for refactors that
must not change speed or numbers (issue 34); never run by the tests. Run it on an otherwise idle
machine.

Run from the repository root:  python3 crates/runner/benches/before_after.py BASE [--rounds 3]
"""
import argparse
import datetime
import filecmp
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[3]
BYTE_IDENTICAL = ["lenet300", "lenet5"]


def run(cmd, cwd, env, capture=False):
    return subprocess.run(cmd, cwd=cwd, env=env, check=True, capture_output=capture, text=True)


def git(*args):
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True,
                          text=True).stdout.strip()


def bench_executable(tree, env):
    """Build the runner's benches in `tree` and return the executable's path."""
    out = run(["cargo", "bench", "-p", "runner", "--bench", "training", "--no-run",
               "--message-format=json"], tree, env, capture=True).stdout
    for line in out.splitlines():
        msg = json.loads(line)
        if msg.get("reason") == "compiler-artifact" and msg.get("executable") and \
                msg["target"]["name"] == "training":
            return msg["executable"]
    raise SystemExit(f"{tree}: no bench executable in cargo's output")


def harness_executable(tree, env):
    run(["cargo", "build", "--release", "-p", "harness"], tree, env)
    return str(pathlib.Path(env["CARGO_TARGET_DIR"]) / "release" / "harness")


def medians(criterion_home):
    """{bench: median ms} of one criterion run."""
    found = {}
    for estimates in pathlib.Path(criterion_home).glob("*/new/estimates.json"):
        found[estimates.parent.parent.name] = \
            json.loads(estimates.read_text())["median"]["point_estimate"] / 1e6
    return found


def committed_models_where_the_base_reads_them(base_tree):
    """The sparse inference benches of commits before seed sweeps read results/<net>/sparse_vd/;
    give them the committed seed-1 models there, so that both commits time the same models."""
    for net in ["lenet300", "lenet5"]:
        source = ROOT / "results" / net / "sparse_vd" / "seed_1"
        target = base_tree / "results" / net / "sparse_vd"
        if source.is_dir() and not (target / "model.safetensors").exists():
            for f in source.iterdir():
                if f.is_file():
                    shutil.copy(f, target / f.name)


def one_epoch_model(harness, tree, net, out, env):
    """Train the Sparse VD variant of `net` for one epoch, seed 1; the saved model's path."""
    experiment = tree / "experiments" / f"{net}.toml"
    cmd = [harness, "run", str(experiment), "--variant", "sparse_vd", "--epochs", "1",
           "--results-dir", str(out), "--figures-dir", str(out / "figures"), "--no-figures",
           "--data-dir", str(ROOT / "data")]
    if "seeds" in experiment.read_text():
        cmd += ["--seed", "1"]
    run(cmd, tree, env, capture=True)
    found = list((out / net / "sparse_vd").rglob("model.safetensors"))
    if len(found) != 1:
        raise SystemExit(f"{net}: expected one saved model under {out}, found {found}")
    return found[0]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("base", help="the earlier commit")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    env = dict(os.environ, RAYON_NUM_THREADS="2",
               CARGO_TARGET_DIR=str(ROOT / "target"))
    labels = {"before": git("rev-parse", "--short=12", args.base),
              "after": git("describe", "--always", "--dirty", "--abbrev=12")}
    work = pathlib.Path(tempfile.mkdtemp(prefix="before_after_"))
    base_tree = work / "tree"
    git("worktree", "add", "--detach", str(base_tree), args.base)
    try:
        committed_models_where_the_base_reads_them(base_tree)
        trees = {"before": base_tree, "after": ROOT}
        benches = {k: bench_executable(t, env) for k, t in trees.items()}
        harnesses = {}
        for k, tree in trees.items():
            harnesses[k] = harness_executable(tree, env)
            # The next build overwrites target/release/harness.
            kept = work / f"harness-{k}"
            shutil.copy(harnesses[k], kept)
            harnesses[k] = str(kept)
        identical = {}
        for net in BYTE_IDENTICAL:
            models = {k: one_epoch_model(harnesses[k], trees[k], net, work / f"run-{k}", env)
                      for k in trees}
            identical[net] = filecmp.cmp(models["before"], models["after"], shallow=False)
        # The machine's speed drifts over minutes: the two commits alternate within each round.
        rounds = []
        for r in range(args.rounds):
            this_round = {}
            for k in ["before", "after"]:
                home = work / f"criterion-{k}-{r}"
                run([benches[k], "--bench"], trees[k] / "crates" / "runner",
                    dict(env, CRITERION_HOME=str(home)))
                this_round[k] = medians(home)
            rounds.append(this_round)
    finally:
        git("worktree", "remove", "--force", str(base_tree))
    names = sorted(set(rounds[0]["before"]) & set(rounds[0]["after"]))
    lines = [
        "# Performance before and after a refactor",
        "",
        "Written by `crates/runner/benches/before_after.py`: the criterion benches of two commits",
        "(`cargo bench -p runner --bench training`), built with the same toolchain into the same",
        f"target folder and run on the same machine, 2 threads, in {args.rounds} rounds, each round",
        "running the earlier commit's benches and then this one's. Median milliseconds per call;",
        "each round has its own ratio (after / before) and the summary is their median.",
        "",
        f"- before: {labels['before']}; after: {labels['after']}",
        f"- machine: {cpu_name()}, {os.cpu_count()} logical CPUs",
        f"- date: {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}",
        "",
        "## The same numbers",
        "",
        "A 1-epoch run (seed 1, full data) of each LeNet Sparse VD variant with both commits' release",
        "harness; the saved models compared byte by byte:",
        "",
    ]
    lines += [f"- {net}: {'byte-identical' if same else 'DIFFERENT'}"
              for net, same in identical.items()]
    lines += ["", "## Speed", "",
              "| bench | " + " | ".join(f"round {r + 1} before / after ms" for r in range(args.rounds))
              + " | after / before (median of rounds) |",
              "|---|" + "---|" * (args.rounds + 1)]
    for name in names:
        cells, ratios = [], []
        for rnd in rounds:
            before, after = rnd["before"][name], rnd["after"][name]
            cells.append(f"{before:.2f} / {after:.2f}")
            ratios.append(after / before)
        lines.append(f"| {name} | " + " | ".join(cells) + f" | **{statistics.median(ratios):.2f}** |")
    text = "\n".join(lines) + "\n"
    (ROOT / "results" / "performance_before_after.md").write_text(text)
    print(text)
    shutil.rmtree(work, ignore_errors=True)


def cpu_name():
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


if __name__ == "__main__":
    main()
