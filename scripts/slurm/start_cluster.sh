#!/usr/bin/env bash
# Start a single-node SLURM cluster on this machine, for DEEPMIR's tests and benchmarks.
#
#   bash scripts/slurm/start_cluster.sh      # as root, on Debian 12; no stdin needed
#
# Takes about 15 s the first time (apt-get) and about 2 s when the packages are installed.
#
# - Installs munge, slurmctld, slurmd and slurm-client with apt-get if they are missing.
#   No slurmdbd/MariaDB: DEEPMIR's worker (pipelines/slurm.py) does not need `sacct`; it reads
#   finished jobs from `scontrol show job` (kept for MinJobAge seconds) and from pydra's cache.
# - Writes /etc/slurm/slurm.conf for one node (this host, 127.0.0.1; proctrack/linuxproc,
#   task/none, cons_tres with CR_Core_Memory, DefMemPerCPU, fast scheduler parameters,
#   RealMemory below what `slurmd -C` reports). An existing slurm.conf not written by this
#   script is kept as slurm.conf.deepmir-backup.
# - Starts munged (as user munge), slurmctld and slurmd in the foreground mode of each daemon,
#   detached, and writes their PIDs to $DEEPMIR_SLURM_STATE (default /tmp/deepmir-slurm/).
# - Waits until `sinfo` shows the node idle and both `srun` and `sbatch` run a trivial job.
#
# Idempotent: if the daemons it started are alive and the cluster answers, it does nothing.
# If a SLURM cluster not started by this script already answers, it uses that one unchanged.
# scripts/slurm/stop_cluster.sh stops exactly the processes listed in the state folder.
set -euo pipefail

STATE_DIR=${DEEPMIR_SLURM_STATE:-/tmp/deepmir-slurm}
CONF=/etc/slurm/slurm.conf
MARK="# Written by DEEPMIR scripts/slurm/start_cluster.sh (single-node test cluster)"
DAEMONS=(munged slurmctld slurmd)

log() { echo "start_cluster: $*" >&2; }
die() { echo "start_cluster: error: $*" >&2; exit 1; }

pid_alive() {  # pid_alive NAME: true if STATE_DIR/NAME.pid names a live process called NAME
    local f="$STATE_DIR/$1.pid" pid
    [ -s "$f" ] || return 1
    pid=$(cat "$f")
    [ -r "/proc/$pid/comm" ] && [ "$(cat "/proc/$pid/comm")" = "$1" ]
}

node_state() { timeout 10 sinfo -h -N -o '%T' 2>/dev/null | head -n1 || true; }

cluster_answers() {
    command -v sinfo >/dev/null 2>&1 || return 1
    case "$(node_state)" in idle*|mixed*|allocated*|completing*) return 0 ;; *) return 1 ;; esac
}

# ---- already running? -------------------------------------------------------------------
all_alive=1
for d in "${DAEMONS[@]}"; do pid_alive "$d" || all_alive=0; done
if [ "$all_alive" = 1 ] && cluster_answers; then
    log "cluster already running (PIDs in $STATE_DIR); nothing to do"
    exit 0
fi
if [ "$all_alive" = 0 ] && [ -e "$CONF" ] && ! grep -qxF "$MARK" "$CONF" && cluster_answers; then
    log "a SLURM cluster not started by this script already answers; using it as it is"
    exit 0
fi

[ "$(id -u)" = 0 ] || die "run as root: this installs packages and starts system daemons"

# ---- install -----------------------------------------------------------------------------
missing=()
for p in munge slurmctld slurmd slurm-client; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    made_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        # Keep the packages' own service units from starting daemons during the install;
        # this script starts them itself and tracks their PIDs.
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        made_policy=1
    fi
    trap '[ "$made_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d' EXIT
    apt-get update -qq </dev/null >/dev/null
    apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null >/dev/null
    if [ "$made_policy" = 1 ]; then rm -f /usr/sbin/policy-rc.d; made_policy=0; fi
fi

mkdir -p "$STATE_DIR"
chmod 755 "$STATE_DIR"

# ---- munge -------------------------------------------------------------------------------
mkdir -p /etc/munge /run/munge /var/lib/munge /var/log/munge
if [ ! -s /etc/munge/munge.key ]; then
    log "creating /etc/munge/munge.key"
    if command -v mungekey >/dev/null 2>&1; then
        mungekey --create --keyfile=/etc/munge/munge.key --force
    else
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
    fi
fi
chown munge:munge /etc/munge /etc/munge/munge.key /run/munge /var/lib/munge /var/log/munge
chmod 700 /etc/munge; chmod 400 /etc/munge/munge.key; chmod 755 /run/munge
chmod 700 /var/lib/munge /var/log/munge

start_daemon() {  # start_daemon NAME CMD...: run detached, record the PID (exec chain keeps it)
    local name=$1; shift
    setsid nohup "$@" >>"$STATE_DIR/$name.stdout" 2>&1 </dev/null &
    echo $! > "$STATE_DIR/$name.pid"
    local i
    for i in $(seq 1 50); do  # the exec chain reaches the daemon within a moment
        pid_alive "$name" && return 0
        sleep 0.1
    done
    die "$name did not start; see $STATE_DIR/$name.stdout and $STATE_DIR/$name.log"
}

if ! pid_alive munged; then
    if [ -S /run/munge/munge.socket.2 ] && munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
        log "a munged not started by this script is already running; using it"
    else
        rm -f /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock
        log "starting munged"
        start_daemon munged setpriv --reuid=munge --regid=munge --init-groups \
            /usr/sbin/munged --foreground
    fi
fi
for i in $(seq 1 50); do
    munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 && break
    [ "$i" = 50 ] && die "munge does not answer; see $STATE_DIR/munged.stdout"
    sleep 0.1
done

# ---- slurm.conf --------------------------------------------------------------------------
host=$(hostname -s)
read -r cpus real_mem < <(slurmd -C | awk '
    { for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] } }
    END { print v["CPUs"], v["RealMemory"] }')
[ -n "$cpus" ] && [ -n "$real_mem" ] || die "could not read CPUs/RealMemory from 'slurmd -C'"
mem=$(( real_mem * 9 / 10 ))            # below what slurmd detects, else the node is drained
def_mem=$(( mem / cpus ))               # without it every job asks for the whole node's memory

new_conf=$(cat <<CONF
$MARK
ClusterName=deepmir
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
SwitchType=switch/none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$def_mem
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_min_interval=100000
ReturnToService=2
# No accounting daemon: finished jobs stay visible to 'scontrol show job' for MinJobAge s.
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge=900
StateSaveLocation=$STATE_DIR/ctld
SlurmdSpoolDir=$STATE_DIR/spool
SlurmctldPidFile=$STATE_DIR/ctld/slurmctld.pidfile
SlurmdPidFile=$STATE_DIR/spool/slurmd.pidfile
SlurmctldLogFile=$STATE_DIR/slurmctld.log
SlurmdLogFile=$STATE_DIR/slurmd.log
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=main Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
)
mkdir -p /etc/slurm "$STATE_DIR/ctld" "$STATE_DIR/spool"
if [ -e "$CONF" ] && ! grep -qxF "$MARK" "$CONF"; then
    log "keeping the existing $CONF as $CONF.deepmir-backup"
    cp -p "$CONF" "$CONF.deepmir-backup"
fi
if [ "$(cat "$CONF" 2>/dev/null || true)" != "$new_conf" ]; then
    printf '%s\n' "$new_conf" > "$CONF.tmp.$$"
    mv "$CONF.tmp.$$" "$CONF"
fi

# ---- daemons -----------------------------------------------------------------------------
if ! pid_alive slurmctld; then
    log "starting slurmctld"
    start_daemon slurmctld /usr/sbin/slurmctld -D -f "$CONF"
fi
for i in $(seq 1 100); do
    timeout 5 scontrol ping 2>/dev/null | grep -q "is UP" && break
    pid_alive slurmctld || die "slurmctld exited; see $STATE_DIR/slurmctld.log"
    [ "$i" = 100 ] && die "slurmctld does not answer; see $STATE_DIR/slurmctld.log"
    sleep 0.2
done
if ! pid_alive slurmd; then
    log "starting slurmd"
    start_daemon slurmd /usr/sbin/slurmd -D -f "$CONF"
fi
for i in $(seq 1 150); do
    state=$(node_state)
    case "$state" in idle*|mixed*|allocated*) break ;; esac
    case "$state" in down*|drain*) scontrol update NodeName="$host" State=RESUME >/dev/null 2>&1 || true ;; esac
    pid_alive slurmd || die "slurmd exited; see $STATE_DIR/slurmd.log"
    [ "$i" = 150 ] && die "node '$host' is '$state', not idle; see $STATE_DIR/slurmd.log"
    sleep 0.2
done

# ---- smoke test --------------------------------------------------------------------------
out=$(cd "$STATE_DIR" && timeout 60 srun -N1 -n1 -t 1 echo srun-ok 2>&1) \
    || die "srun failed: $out"
[ "$out" = srun-ok ] || die "srun printed '$out', expected 'srun-ok'"
# `sbatch --wait` would work too, but it polls every few seconds: poll scontrol instead.
jobid=$(cd "$STATE_DIR" && sbatch --parsable -t 1 -o /dev/null --wrap true) \
    || die "sbatch of a trivial job failed"
jobid=${jobid%%;*}
case "$jobid" in ''|*[!0-9]*) die "sbatch printed '$jobid', not a job id" ;; esac
for i in $(seq 1 300); do
    job_state=$(scontrol show job -o "$jobid" 2>/dev/null | grep -o 'JobState=[A-Z_]*' || true)
    case "$job_state" in
        JobState=COMPLETED) break ;;
        JobState=PENDING|JobState=RUNNING|JobState=CONFIGURING|JobState=COMPLETING|"") ;;
        *) die "trivial batch job $jobid ended as ${job_state#JobState=}; see $STATE_DIR/slurmd.log" ;;
    esac
    [ "$i" = 300 ] && die "trivial batch job $jobid did not finish within 60 s"
    sleep 0.2
done
log "cluster '$host' is up: $cpus CPUs, ${mem} MB; PIDs in $STATE_DIR"
