"""Joins `harness bench --csv` rows with the PyTorch reference's JSON lines into
performance_gpu.csv: bench,backend,ours_ms,pytorch_ms,ratio,device,commit (medians in ms per
training step; ratio = ours / PyTorch's). Written by crates/harness/gpu/bench_gpu.sh.

Usage: python3 performance_gpu.py OURS_CSV PYTORCH_JSONL > performance_gpu.csv
"""
import csv
import json
import sys


def main():
    ours_csv, pytorch_jsonl = sys.argv[1:3]
    pytorch = {}
    with open(pytorch_jsonl) as f:
        for line in f:
            line = line.strip()
            if line.startswith("{"):
                row = json.loads(line)
                pytorch[row["bench"].removeprefix("step_")] = row["median_ms"]
    out = csv.writer(sys.stdout, lineterminator="\n")
    out.writerow(["bench", "backend", "ours_ms", "pytorch_ms", "ratio", "device", "commit"])
    with open(ours_csv) as f:
        for row in csv.DictReader(f):
            ours = float(row["median_ms"])
            theirs = pytorch.get(row["bench"])
            ratio = f"{ours / theirs:.2f}" if theirs else ""
            out.writerow([row["bench"], row["backend"], f"{ours:.2f}",
                          "" if theirs is None else f"{theirs:.2f}", ratio, row["device"],
                          row["commit"]])


if __name__ == "__main__":
    main()
