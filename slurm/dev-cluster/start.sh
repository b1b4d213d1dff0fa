#!/usr/bin/env bash
# slurm/dev-cluster/start.sh -- the project's development Slurm cluster: Debian 12's REAL
# Slurm 22.05 (slurmctld, slurmd, munge, slurmdbd + MariaDB so `sacct` works) on this one
# host, as N emulated nodes x G FAKE GPUs. Used by the tests, CI and bench/.
# Idempotent: running it again while everything is up only re-checks (about 1 s); a changed
# config restarts the Slurm daemons. Stop with ./stop.sh (by pid file). See README.md.
#
#   --check   only report whether the cluster is up (exit 0) or not (exit 1); start nothing
#
# Must run as root. Needs only the Debian package mirror. No systemd needed (daemons are
# started directly, because policy-rc.d blocks service starts and PID 1 is not systemd).
#
# Knobs (environment):
#   SLURM_FAKE_NODES   number of emulated nodes node1..nodeN on this host   (default 2)
#   SLURM_FAKE_GPUS    fake GPUs per node, 0 = no GRES                      (default 8)
#   SLURM_FAKE_GPU_TYPE GPU type (default h100; both gpu:4 and gpu:h100:4 work; "" = none)
#   SLURM_FAKE_CPUS    CPUs advertised per node (can exceed real cores)     (default 16)
#   SLURM_FAKE_MEM_MB  RealMemory advertised per node, MB                   (default 64000)
#   SLURM_PARTITION    partition name                                       (default debug)
#   SLURM_WITH_DBD     1 = MariaDB + slurmdbd so that `sacct` works         (default 1)
#   SLURM_WAIT_S       max seconds to wait for nodes to become usable       (default 120)
#   SLURM_SMOKE        1 = run an srun smoke test after (re)starting daemons (default 1)
set -euo pipefail

NODES=${SLURM_FAKE_NODES:-2}
GPUS=${SLURM_FAKE_GPUS:-8}
GPU_TYPE=${SLURM_FAKE_GPU_TYPE-h100}  # set to "" for untyped GPUs
CPUS=${SLURM_FAKE_CPUS:-16}
MEM_MB=${SLURM_FAKE_MEM_MB:-64000}
PART=${SLURM_PARTITION:-debug}
WITH_DBD=${SLURM_WITH_DBD:-1}
WAIT_S=${SLURM_WAIT_S:-120}
SMOKE=${SLURM_SMOKE:-1}

CLUSTER=localcluster
CONF_DIR=/etc/slurm
FAKEGPU_DIR=/var/lib/slurm-fakegpu
PORT_BASE=17000            # slurmd of nodeI listens on PORT_BASE+I
DB_USER=slurm DB_PASS=slurmdbpass DB_NAME=slurm_acct_db

T_START=$(date +%s)
log() { printf '[dev-cluster %s +%ss] %s\n' "$(date +%H:%M:%S)" "$(( $(date +%s) - T_START ))" "$*" >&2; }
die() {
  log "ERROR: $*"
  for f in /var/log/slurm/slurmctld.log /var/log/slurm/slurmd-node1.log /var/log/slurm/slurmdbd.log; do
    [[ -f $f ]] && { echo "---- tail $f" >&2; grep -v -i pmix "$f" | tail -n 15 >&2 || true; }
  done
  exit 1
}
CHECK=0
for a in "$@"; do
  case $a in
    --check) CHECK=1 ;;
    *) echo "usage: $0 [--check]" >&2; exit 2 ;;
  esac
done


# pid_alive PIDFILE [COMM]: process from pidfile exists, is not a zombie (PID 1 here does
# not reap promptly, and `kill -0` succeeds on zombies) and, optionally, has that comm.
pid_alive() {
  local pf=$1 comm=${2:-} pid st
  [[ -s $pf ]] || return 1
  pid=$(<"$pf"); [[ $pid =~ ^[0-9]+$ ]] || return 1
  st=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1) || return 1
  [[ -n $st && $st != Z && $st != X ]] || return 1
  [[ -z $comm || $(cat "/proc/$pid/comm" 2>/dev/null) == "$comm" ]]
}

# stop_pidfile PIDFILE COMM: SIGTERM, wait, then SIGKILL (a slurmd stuck in its
# "Unable to register" back-off loop ignores SIGTERM for minutes).
stop_pidfile() {
  local pf=$1 comm=$2 pid i
  pid_alive "$pf" "$comm" || { rm -f "$pf"; return 0; }
  pid=$(<"$pf"); kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 1 50); do pid_alive "$pf" "$comm" || break; sleep 0.2; done
  if pid_alive "$pf" "$comm"; then log "$comm ($pid) ignored SIGTERM, sending SIGKILL"; kill -KILL "$pid" 2>/dev/null || true; sleep 0.5; fi
  rm -f "$pf"
}

wait_tcp() {  # wait_tcp PORT SECONDS
  local i
  for i in $(seq 1 $(( $2 * 5 ))); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.2
  done
  return 1
}

# is_up: every daemon alive by pid file, slurmctld answers, all nodes usable. Cheap (<1 s).
is_up() {
  local i n_ok
  pid_alive /run/munge/munged.pid munged || return 1
  # slurmdbd stays up when MariaDB dies under it; only a database ping tells.
  [[ $WITH_DBD == 1 ]] && { pid_alive /run/slurmdbd.pid slurmdbd &&
    mariadb-admin --connect-timeout=2 ping >/dev/null 2>&1 || return 1; }
  pid_alive /run/slurmctld.pid slurmctld || return 1
  for i in $(seq 1 "$NODES"); do pid_alive "/run/slurmd-node$i.pid" slurmd || return 1; done
  timeout 5 scontrol ping 2>/dev/null | grep -q 'is UP' || return 1
  n_ok=$(timeout 5 sinfo -h -N -p "$PART" -o '%N %t' 2>/dev/null | awk '$2 ~ /^(idle|mix|alloc|comp)$/' | wc -l)
  (( n_ok == NODES ))
}
if ((CHECK)); then
  if is_up; then echo "dev cluster is up"; exit 0; else echo "dev cluster is NOT up" >&2; exit 1; fi
fi
[[ $(id -u) -eq 0 ]] || die "must run as root"

# ---------------------------------------------------------------- 1. packages
PKGS=(slurmctld slurmd slurm-client munge)
[[ $WITH_DBD == 1 ]] && PKGS+=(slurmdbd mariadb-server)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  log "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  for try in 1 2 3; do
    if apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >"${TMPDIR:-/tmp}/slurm-dev-cluster-apt.log" 2>&1; then
      break
    fi
    ((try == 3)) && { tail -n 30 "${TMPDIR:-/tmp}/slurm-dev-cluster-apt.log" >&2; die "apt-get install failed"; }
    log "apt-get failed (try $try), retrying"; sleep 5
  done
  log "packages installed"
fi

# ---------------------------------------------------------------- 2. host name
# Safety net only: everything below talks to 127.0.0.1, but munge/slurm look the name up.
HOST=$(hostname)
[[ -n $HOST ]] || die "empty hostname"
if ! getent hosts "$HOST" >/dev/null; then
  log "hostname $HOST does not resolve; adding it to /etc/hosts"
  echo "127.0.0.1 $HOST" >>/etc/hosts
fi

# ---------------------------------------------------------------- 3. munge
if [[ ! -s /etc/munge/munge.key ]]; then
  log "creating munge key"
  mkdir -p /etc/munge
  mungekey --create --keyfile=/etc/munge/munge.key 2>/dev/null ||
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
fi
chown munge:munge /etc/munge /etc/munge/munge.key; chmod 0700 /etc/munge; chmod 0600 /etc/munge/munge.key
install -d -o munge -g munge -m 0755 /run/munge
install -d -o munge -g munge -m 0700 /var/log/munge /var/lib/munge
if ! pid_alive /run/munge/munged.pid munged; then
  log "starting munged"
  rm -f /run/munge/munged.pid /run/munge/munge.socket.2*
  runuser -u munge -- /usr/sbin/munged
fi
for i in $(seq 1 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.2; done
munge -n | unmunge >/dev/null 2>&1 || die "munge round-trip failed"

# ---------------------------------------------------------------- 4. config files
mkdir -p "$CONF_DIR" /var/spool/slurmctld /var/log/slurm "$FAKEGPU_DIR"
for i in $(seq 1 "$NODES"); do mkdir -p "/var/spool/slurmd/node$i"; done
# Fake GPU "device files": gres/gpu drops GPUs without File= ("Removing file-less GPU"),
# and rejects regular files ("is not a valid character or block device"); symlinks to
# /dev/null are char devices and need no mknod. With task/none nothing is constrained.
for ((g = 0; g < GPUS; g++)); do ln -sfn /dev/null "$FAKEGPU_DIR/nvidia$g"; done

# put_conf FILE MODE < content: replace FILE only when the content differs.
put_conf() {
  local f=$1 mode=$2 tmp
  tmp=$(mktemp "$f.XXXXXX")
  cat >"$tmp"; chmod "$mode" "$tmp"
  if [[ -f $f ]] && cmp -s "$tmp" "$f"; then rm -f "$tmp"; else mv -f "$tmp" "$f"; log "wrote $f"; fi
}
# Running daemons are restarted when the config they were started with (hash kept in
# /run) differs from the files on disk -- also after an interrupted earlier run.
conf_hash() { cat "$@" 2>/dev/null | sha256sum | cut -c1-16; }

if ((GPUS > 0)); then
  GRES="Gres=gpu:${GPU_TYPE:+$GPU_TYPE:}$GPUS"
else
  GRES=""
fi
if [[ $WITH_DBD == 1 ]]; then
  ACCT=$'AccountingStorageType=accounting_storage/slurmdbd\nAccountingStorageHost=localhost\nAccountingStoragePort=6819'
  # AllocTRES then carries gres/gpu=N (and gres/gpu:TYPE=N): the GPU-hour accounting reads it.
  # Fatal without slurmdbd, hence only here.
  ((GPUS > 0)) && ACCT+=$'\nAccountingStorageTRES=gres/gpu'"${GPU_TYPE:+,gres/gpu:$GPU_TYPE}"
else
  ACCT='AccountingStorageType=accounting_storage/none'
fi

gen_slurm_conf() {
cat <<EOF
# Generated by slurm/dev-cluster/start.sh: single-host DEV cluster with FAKE GPUs. Not for production.
ClusterName=$CLUSTER
# "localhost" is replaced by the real host name inside Slurm: config is hostname-independent
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire also sets how long a requeued job waits before it may start again (default
# 120 s; 10 keeps the requeue test short)
AuthInfo=cred_expire=10
SlurmctldPort=6817
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd/%n
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd-%n.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
SchedulerType=sched/backfill
# short periodic passes: requeued jobs / released dependencies start within seconds.
# batch_sched_delay=0: a new batch job is considered at slurmctld's next 1-s background pass
# (default: up to 3 s later); bf_interval=1: the backfill pass, a second 1-s chance. The
# seconds-scale replay benchmark (bench/bench_replay.py) pays this latency on every job.
SchedulerParameters=sched_interval=5,bf_interval=1,batch_sched_delay=0
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
# accept advertised CPUs/memory larger than the real machine
SlurmdParameters=config_overrides
ReturnToService=2
# cancel jobs whose dependency can never be satisfied (22.05: not SchedulerParameters)
DependencyParameters=kill_invalid_depend
# SIGTERM -> SIGKILL grace on cancel/timeout; short so cancel and TIMEOUT tests end fast
KillWait=2
# Any Epilog (here a no-op) makes slurmd report each job's end with an EPILOG_COMPLETE RPC,
# on which slurmctld runs its scheduler at once: a queued job takes the freed GPUs within
# milliseconds. Without one, the freed GPUs wait for the next 1-s scheduler or backfill pass.
Epilog=/bin/true
# finished jobs stay visible to squeue/scontrol this long (s); sacct keeps them forever
MinJobAge=600
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=/var/log/slurm/jobcomp.log
$ACCT
EOF
((GPUS > 0)) && echo "GresTypes=gpu"
for i in $(seq 1 "$NODES"); do
  echo "NodeName=node$i NodeHostname=node$i NodeAddr=127.0.0.1 Port=$((PORT_BASE + i)) CPUs=$CPUS Boards=1 SocketsPerBoard=1 CoresPerSocket=$CPUS ThreadsPerCore=1 RealMemory=$MEM_MB $GRES State=UNKNOWN"
done
echo "PartitionName=$PART Nodes=ALL Default=YES MaxTime=INFINITE State=UP"
}
gen_gres_conf() {
  echo "AutoDetect=off"
  ((GPUS > 0)) && echo "NodeName=node[1-$NODES] Name=gpu${GPU_TYPE:+ Type=$GPU_TYPE} File=$FAKEGPU_DIR/nvidia[0-$((GPUS - 1))]"
  true
}
put_conf "$CONF_DIR/slurm.conf" 0644 < <(gen_slurm_conf)
put_conf "$CONF_DIR/gres.conf" 0644 < <(gen_gres_conf)

# ---------------------------------------------------------------- 5. accounting (optional)
if [[ $WITH_DBD == 1 ]]; then
  put_conf "$CONF_DIR/slurmdbd.conf" 0600 <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=root
DebugLevel=info
LogFile=/var/log/slurm/slurmdbd.log
PidFile=/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StoragePort=3306
StorageUser=$DB_USER
StoragePass=$DB_PASS
StorageLoc=$DB_NAME
EOF
  DBD_HASH=$(conf_hash "$CONF_DIR/slurmdbd.conf")

  if ! mariadb-admin --connect-timeout=2 ping >/dev/null 2>&1; then
    log "starting mariadb"
    /etc/init.d/mariadb start >/dev/null || die "mariadb did not start"
  fi
  mariadb -e "CREATE DATABASE IF NOT EXISTS $DB_NAME;
              CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
              GRANT ALL ON $DB_NAME.* TO '$DB_USER'@'localhost'; FLUSH PRIVILEGES;" || die "mariadb setup failed"

  if [[ $(cat /run/slurm-dev-cluster-dbd.hash 2>/dev/null) != "$DBD_HASH $(cat /run/slurmdbd.pid 2>/dev/null)" ]]; then
    stop_pidfile /run/slurmdbd.pid slurmdbd
  fi
  if ! pid_alive /run/slurmdbd.pid slurmdbd; then
    log "starting slurmdbd"
    /usr/sbin/slurmdbd
  fi
  wait_tcp 6819 60 || die "slurmdbd not listening on 6819"
  echo "$DBD_HASH $(cat /run/slurmdbd.pid)" >/run/slurm-dev-cluster-dbd.hash
fi

# ---------------------------------------------------------------- 6. slurmctld + slurmd
STARTED=0
SLURM_HASH=$(conf_hash "$CONF_DIR/slurm.conf" "$CONF_DIR/gres.conf")
# the hash file also names the slurmctld PID, so a daemon started by hand is replaced too
if [[ $(cat /run/slurm-dev-cluster.hash 2>/dev/null) != "$SLURM_HASH $(cat /run/slurmctld.pid 2>/dev/null)" ]]; then
  for pf in /run/slurmd-*.pid; do [[ -e $pf ]] && stop_pidfile "$pf" slurmd; done
  stop_pidfile /run/slurmctld.pid slurmctld
  rm -f /run/slurm-dev-cluster.hash
fi
# slurmd of nodes that are no longer configured
for pf in /run/slurmd-node*.pid; do
  [[ -e $pf ]] || continue
  n=${pf#/run/slurmd-node}; n=${n%.pid}
  [[ $n =~ ^[0-9]+$ ]] && ((n > NODES)) && stop_pidfile "$pf" slurmd
done

if ! pid_alive /run/slurmctld.pid slurmctld; then
  log "starting slurmctld"
  /usr/sbin/slurmctld
  STARTED=1
fi
# slurmctld must answer BEFORE slurmd starts: otherwise slurmd backs off exponentially
# ("Unable to register ... connect failure", up to minutes between retries).
ok=0
for i in $(seq 1 150); do
  timeout 5 scontrol ping 2>/dev/null | grep -q 'is UP' && { ok=1; break; }
  pid_alive /run/slurmctld.pid slurmctld || die "slurmctld exited"
  sleep 0.2
done
((ok)) || die "slurmctld does not answer"
echo "$SLURM_HASH $(cat /run/slurmctld.pid)" >/run/slurm-dev-cluster.hash

for i in $(seq 1 "$NODES"); do
  if ! pid_alive "/run/slurmd-node$i.pid" slurmd; then
    log "starting slurmd for node$i (port $((PORT_BASE + i)))"
    /usr/sbin/slurmd -N "node$i"
    STARTED=1
  fi
done

# ---------------------------------------------------------------- 7. wait for nodes
ready=0; resumed=0
deadline=$(( $(date +%s) + WAIT_S ))
while (( $(date +%s) < deadline )); do
  states=$(timeout 10 sinfo -h -N -p "$PART" -o '%N %t' 2>/dev/null || true)
  n_ok=$(awk '$2 ~ /^(idle|mix|alloc|comp)$/' <<<"$states" | wc -l)
  if (( n_ok == NODES )); then ready=1; break; fi
  # nodes drained/down from an earlier run (e.g. saved state) are resumed once
  if ((resumed == 0)) && grep -qE ' (drain|drng|down|inval)$' <<<"$states"; then
    bad=$(awk '$2 ~ /^(drain|drng|down|inval)$/ {print $1}' <<<"$states" | paste -sd, -)
    log "resuming $bad"
    timeout 10 scontrol update nodename="$bad" state=resume 2>/dev/null || true
    resumed=1
  fi
  sleep 0.5
done
((ready)) || { timeout 10 sinfo -N -l >&2 || true; die "nodes not ready after ${WAIT_S}s"; }

if [[ $SMOKE == 1 && $STARTED == 1 ]]; then
  gres_opt=(); ((GPUS > 0)) && gres_opt=(--gres=gpu:1)
  out=$(timeout 120 srun -J dev-cluster-smoke -p "$PART" -N "$NODES" --ntasks-per-node=1 -t 1 --mem=64 \
        "${gres_opt[@]}" bash -c 'echo "$SLURMD_NODENAME:${CUDA_VISIBLE_DEVICES:-none}"' 2>&1) ||
    die "srun smoke test failed: $out"
  log "smoke test ok: $(sort <<<"$out" | paste -sd' ' -)"
fi
# accounting answers (sacct hangs or errors when slurmdbd/MariaDB is not reachable)
if [[ $WITH_DBD == 1 ]]; then
  timeout 15 sacct --noheader -X -S now-1hours -o JobID >/dev/null 2>&1 || die "sacct does not answer"
fi

log "Slurm $(sinfo -V | awk '{print $2}') ready: $NODES node(s) x ${GPUS} fake GPU(s), partition $PART, accounting=$([[ $WITH_DBD == 1 ]] && echo slurmdbd || echo none) (total $(( $(date +%s) - T_START ))s)"
timeout 10 sinfo -N -o '%N %P %t %c %m %G' || true
