#!/usr/bin/env bash
# A throw-away single-node SLURM cluster on localhost, for tests/test_slurm.py.
#
#   SLURM_CONF=$(.ci/start_slurm.sh) && export SLURM_CONF   # install if needed, start, wait for idle
#   .ci/start_slurm.sh --no-install                          # start only if the daemons are installed
#   .ci/start_slurm.sh --stop "$SLURM_CONF"                   # stop its daemons (by pid) and remove it
#
# Prints the path of its slurm.conf (and nothing else) on stdout; progress and errors go to
# stderr. Exit status is non-zero when SLURM cannot be started here (the tests then skip).
# Everything lives in a temporary folder: config, state, spool, logs and pid files; the ports
# are chosen free, so two such clusters on one machine do not meet. MaxArraySize is set low (3:
# array task ids 0-2) so that tests/test_slurm.py sees a study split into several arrays.
set -euo pipefail

log() { echo "start_slurm: $*" >&2; }

if [[ "${1:-}" == "--stop" ]]; then
    conf=${2:?usage: start_slurm.sh --stop SLURM_CONF}
    dir=$(dirname "$conf")
    [[ -f "$dir/.cstbatch-slurm" ]] || { log "$dir is not a folder made by this script"; exit 1; }
    for name in slurmd slurmctld; do
        if [[ -s "$dir/$name.pid" ]]; then
            pid=$(cat "$dir/$name.pid")
            kill "$pid" 2>/dev/null || true
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -9 "$pid" 2>/dev/null || true
        fi
    done
    rm -rf "$dir"
    exit 0
fi

install=1
[[ "${1:-}" == "--no-install" ]] && install=0

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null; then
    if [[ $install == 0 ]]; then log "slurmctld/slurmd/sbatch not installed"; exit 1; fi
    if [[ $(id -u) != 0 ]] || ! command -v apt-get >/dev/null; then
        log "SLURM is not installed and cannot be installed here (needs root and apt-get)"; exit 1
    fi
    log "installing Debian's slurm packages"
    export DEBIAN_FRONTEND=noninteractive
    { apt-get update -q && apt-get install -y -q --no-install-recommends slurmctld slurmd slurm-client; } >&2 \
        || { log "apt-get install failed"; exit 1; }
fi
PATH=$PATH:/usr/sbin:/sbin

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

dir=$(mktemp -d /tmp/cstbatch-slurm.XXXXXX)
chmod 755 "$dir"
touch "$dir/.cstbatch-slurm"
mkdir -p "$dir/state" "$dir/spool"
cpus=$(nproc)
mem_mb=$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.7}' /proc/meminfo)
ctld_port=$(free_port)
slurmd_port=$(free_port)
while [[ $slurmd_port == "$ctld_port" ]]; do slurmd_port=$(free_port); done
user=$(id -un)
conf="$dir/slurm.conf"
cat > "$conf" <<EOF
ClusterName=cstbatch-test
SlurmctldHost=localhost
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=$user
SlurmdUser=$user
AuthType=auth/none
CredType=cred/none
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
SchedulerType=sched/backfill
SchedulerParameters=sched_min_interval=0,batch_sched_delay=0
ReturnToService=2
MinJobAge=600
MaxArraySize=3
DefMemPerCPU=1000
SlurmdTimeout=60
InactiveLimit=0
KillWait=5
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
PlugStackConfig=$dir/plugstack.conf
NodeName=localhost CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
: > "$dir/plugstack.conf"
export SLURM_CONF=$conf

fail() {
    log "$1"; tail -n 20 "$dir/slurmctld.log" "$dir/slurmd.log" >&2 2>/dev/null || true
    "$0" --stop "$conf" || true
    exit 1
}

slurmctld -c -f "$conf" >&2 || fail "slurmctld did not start"
slurmd -f "$conf" -N localhost >&2 || fail "slurmd did not start"
for _ in $(seq 120); do
    state=$(sinfo -h -n localhost -o %t 2>/dev/null || true)
    if [[ "$state" == idle* ]]; then
        log "node idle ($cpus CPUs, $mem_mb MB), SLURM_CONF=$conf"
        echo "$conf"
        exit 0
    fi
    sleep 0.5
done
fail "the node did not become idle within 60 s (state: ${state:-none})"
