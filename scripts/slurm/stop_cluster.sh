#!/usr/bin/env bash
# Stop the single-node SLURM cluster started by scripts/slurm/start_cluster.sh.
#
# Stops exactly the processes whose PIDs start_cluster.sh wrote to $DEEPMIR_SLURM_STATE
# (default /tmp/deepmir-slurm/), and only while each PID still belongs to the daemon of that
# name: slurmd, then slurmctld, then munged. Jobs still in the queue are cancelled first (they
# could not finish without the daemons). Installed packages and slurm.conf stay, so the next
# start is quick. Running it when nothing is running does nothing.
set -uo pipefail

STATE_DIR=${DEEPMIR_SLURM_STATE:-/tmp/deepmir-slurm}
log() { echo "stop_cluster: $*" >&2; }

stop_one() {
    local name=$1 f="$STATE_DIR/$1.pid" pid i
    [ -s "$f" ] || return 0
    pid=$(cat "$f")
    if [ ! -r "/proc/$pid/comm" ] || [ "$(cat "/proc/$pid/comm")" != "$name" ]; then
        log "$name (PID $pid) is not running"
        rm -f "$f"
        return 0
    fi
    log "stopping $name (PID $pid)"
    kill -TERM "$pid" 2>/dev/null
    for i in $(seq 1 100); do
        [ -d "/proc/$pid" ] || break
        sleep 0.1
    done
    if [ -d "/proc/$pid" ]; then
        log "$name (PID $pid) ignored SIGTERM for 10 s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null
    fi
    rm -f "$f"
}

# Jobs cannot outlive this one-node cluster: a job whose slurmd is gone stays "RUNNING" in the
# saved state for ever. Cancel what is queued or running first, and give it a moment to end.
if [ -s "$STATE_DIR/slurmctld.pid" ] && command -v squeue >/dev/null 2>&1; then
    jobs=$(timeout 5 squeue -h -o '%i' 2>/dev/null | tr '\n' ' ' || true)
    if [ -n "${jobs// /}" ]; then
        log "cancelling jobs still queued or running: $jobs"
        # shellcheck disable=SC2086 - job ids are digits (and _ for array tasks)
        timeout 10 scancel $jobs 2>/dev/null || true
        for i in $(seq 1 50); do
            [ -z "$(timeout 5 squeue -h -o '%i' 2>/dev/null)" ] && break
            sleep 0.2
        done
    fi
fi
for d in slurmd slurmctld munged; do stop_one "$d"; done
exit 0
