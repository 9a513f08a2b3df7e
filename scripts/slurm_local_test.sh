#!/usr/bin/env bash
# `harness slurm` against a real one-node Slurm cluster on this machine: installs Debian's
# slurm-wlm and munge if missing, starts munged, slurmctld and slurmd on localhost with a minimal
# slurm.conf, submits tests/sweep_tiny.toml (two stages × two seeds) with --submit, waits for the
# jobs, checks that every run's model and per-epoch numbers equal those of a local sequential run
# (one thread each, as every array task gets), and stops the daemons. Needs root (apt, daemons).
#
#   scripts/slurm_local_test.sh            # builds the harness (dev profile) first
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    echo "== installing slurm-wlm and munge"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurm-wlm munge
fi

cargo build -p harness
harness="$repo/target/debug/harness"
work=$(mktemp -d /tmp/slurm-test.XXXXXX)
conf="$work/etc"
mkdir -p "$conf" "$work/spool/ctld" "$work/spool/d" "$work/log" "$work/munge"

host=$(hostname -s)
cat > "$conf/slurm.conf" <<EOF
ClusterName=harness-test
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$work/munge/munge.socket
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
SlurmctldPort=16817
SlurmdPort=16818
StateSaveLocation=$work/spool/ctld
SlurmdSpoolDir=$work/spool/d
SlurmctldPidFile=$work/slurmctld.pid
SlurmdPidFile=$work/slurmd.pid
SlurmctldLogFile=$work/log/slurmctld.log
SlurmdLogFile=$work/log/slurmd.log
NodeName=$host NodeAddr=127.0.0.1 CPUs=$(nproc) State=UNKNOWN
PartitionName=test Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
# slurmd (22.05) initialises a cgroup plugin at start even with the plugins above; it only
# needs to find one, and the jobs never use it.
printf 'CgroupPlugin=autodetect\nIgnoreSystemd=yes\n' > "$conf/cgroup.conf"
export SLURM_CONF="$conf/slurm.conf"

# munge: a key of our own, a socket of our own (a system munged, if any, is left alone).
socket="$work/munge/munge.socket"
mungekey --create --keyfile "$work/munge/munge.key" --force 2>/dev/null \
    || dd if=/dev/urandom of="$work/munge/munge.key" bs=1024 count=1 status=none
chmod 600 "$work/munge/munge.key"
pids=()
stop() {
    echo "== stopping the daemons"
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap stop EXIT
munged --foreground --force --key-file "$work/munge/munge.key" --socket "$socket" \
    --pid-file "$work/munge/munged.pid" --log-file "$work/munge/munged.log" --seed-file "$work/munge/seed" &
pids+=($!)
sleep 1

slurmctld -D -i -f "$conf/slurm.conf" >"$work/log/slurmctld.out" 2>&1 &
pids+=($!)
slurmd -D -f "$conf/slurm.conf" >"$work/log/slurmd.out" 2>&1 &
pids+=($!)
for _ in $(seq 60); do
    if sinfo -h -o "%T" 2>/dev/null | grep -qE "idle|mixed"; then break; fi
    sleep 1
done
sinfo || { cat "$work/log/"*; exit 1; }

echo "== local sequential run (one thread, as each array task)"
RAYON_NUM_THREADS=1 "$harness" tests/sweep_tiny.toml --results-dir "$work/local" \
    --figures-dir "$work/figures_local" >/dev/null

echo "== submitting to Slurm"
"$harness" slurm tests/sweep_tiny.toml --results-dir "$work/slurm" \
    --figures-dir "$work/figures_slurm" --cpus-per-task 1 --submit
for _ in $(seq 600); do
    [ -z "$(squeue -h -o %i)" ] && break
    sleep 1
done
if [ -n "$(squeue -h -o %i)" ]; then
    echo "jobs still queued after 10 minutes:"; squeue; exit 1
fi
echo "== comparing"
status=0
for run in dense/seed_1 dense/seed_2 sparse_vd/seed_1 sparse_vd/seed_2; do
    a="$work/local/sweep_tiny/$run" b="$work/slurm/sweep_tiny/$run"
    if [ ! -f "$b/summary.csv" ]; then
        echo "FAIL $run: no result from Slurm"; cat "$work/slurm/sweep_tiny/slurm/logs/"* || true
        status=1; continue
    fi
    # epochs.csv without its timing columns (seconds, steps_per_second).
    strip() { python3 -c 'import csv,sys
r=list(csv.reader(open(sys.argv[1]))); keep=[i for i,h in enumerate(r[0]) if h not in ("seconds","steps_per_second")]
print("\n".join(",".join(row[i] for i in keep) for row in r))' "$1"; }
    if cmp -s "$a/model.safetensors" "$b/model.safetensors" \
        && [ "$(strip "$a/epochs.csv")" = "$(strip "$b/epochs.csv")" ]; then
        echo "ok   $run: identical to the local run"
    else
        echo "FAIL $run: differs from the local run"; status=1
    fi
done
if [ -f "$work/slurm/sweep_tiny/comparison.md" ] && grep -q "n = 2 of 2" "$work/slurm/sweep_tiny/comparison.md"; then
    echo "ok   the report job wrote the comparison over both seeds"
else
    echo "FAIL no comparison from the report job"; status=1
fi
[ $status -eq 0 ] && rm -rf "$work" && echo "== Slurm test passed"
exit $status
