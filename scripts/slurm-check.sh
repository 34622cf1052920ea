#!/usr/bin/env bash
# Runs the documented Slurm array jobs for real and compares them with single runs.
#
# Starts a one-node Slurm cluster on this machine when none answers (Debian's slurmctld, slurmd
# and munge, installed when absent: needs root and apt), then runs the integration test
# `slurm::array_jobs_equal_single_runs` (tests/it/slurm.rs), which submits scripts/slurm/stats.sbatch
# (3 statistics shards, then `edit stats merge`) and scripts/slurm/eval.sbatch (4 evaluation
# shards, then `edit eval merge`) on tests/fixtures/fact-gpt2, waits for them, and compares the
# merged results with single runs: statistics to float rounding, counts exact; cases.jsonl and
# summary.json equal but for their times. docs/statistics.md and docs/evaluation.md show these
# job scripts verbatim (a test checks it).
#
# A cluster that already answers (`sinfo`) is used as it is and left running; one this script
# starts is left running too (a second run then takes seconds).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "slurm-check: $*" >&2; }

if ! command -v sbatch >/dev/null || ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        log "Slurm is not installed, and installing it needs root and apt-get (Debian packages slurmctld slurmd slurm-client munge)"
        exit 1
    fi
    log "installing slurmctld, slurmd, slurm-client and munge"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null ||
        { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null; }
fi

if ! sinfo -h >/dev/null 2>&1; then
    if [ "$(id -u)" != 0 ]; then
        log "no Slurm cluster answers, and starting one needs root"
        exit 1
    fi
    # munge: the credentials every Slurm daemon and client checks.
    if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        if [ ! -s /etc/munge/munge.key ]; then
            mungekey --create --keyfile=/etc/munge/munge.key 2>/dev/null || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
        fi
        chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
        mkdir -p /run/munge /var/lib/munge /var/log/munge && chown munge:munge /run/munge /var/lib/munge /var/log/munge
        runuser -u munge -- /usr/sbin/munged
        for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
    fi
    conf=/etc/slurm/slurm.conf
    if [ ! -e "$conf" ]; then
        # One node: this machine as `slurmd -C` sees it, one partition, no accounting, processes
        # tracked without cgroups (containers often have none to delegate).
        node=$(slurmd -C | head -1)
        cat >"$conf" <<EOF
# Written by edit's scripts/slurm-check.sh: a one-node cluster for testing array jobs.
ClusterName=edit-check
SlurmctldHost=$(hostname -s)
SlurmUser=root
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurmctld.log
SlurmdLogFile=/var/log/slurmd.log
$node State=UNKNOWN
PartitionName=check Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
        log "wrote $conf for node $(hostname -s)"
    fi
    mkdir -p /var/spool/slurmctld /var/spool/slurmd
    pgrep -x slurmctld >/dev/null || slurmctld
    pgrep -x slurmd >/dev/null || slurmd
    for _ in $(seq 100); do sinfo -h >/dev/null 2>&1 && break; sleep 0.2; done
fi
for _ in $(seq 150); do
    state=$(sinfo -h -o %T | head -1)
    case "$state" in idle* | mix* | alloc*) break ;; esac
    sleep 0.2
done
log "cluster: $(sinfo -h -o '%P %D %T %c' | head -1)"

started=$(date +%s)
cargo test --locked --test it slurm:: -- --ignored --nocapture
log "array jobs, merges and single runs took $(($(date +%s) - started)) s"
