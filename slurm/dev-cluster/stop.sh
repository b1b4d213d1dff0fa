#!/usr/bin/env bash
# slurm/dev-cluster/stop.sh -- stop what start.sh started, by PID file (never by process name).
# Jobs still queued are cancelled first, so no job processes are left behind.
#   --purge   also delete Slurm state, spool, logs and the accounting database
#   --keep-db leave MariaDB running
set -uo pipefail
PURGE=0 KEEP_DB=0
for a in "$@"; do
  case $a in
    --purge) PURGE=1 ;;
    --keep-db) KEEP_DB=1 ;;
    *) echo "usage: $0 [--purge] [--keep-db]" >&2; exit 2 ;;
  esac
done
log() { printf '[dev-cluster stop %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

pid_alive() {
  local pf=$1 comm=${2:-} pid st
  [[ -s $pf ]] || return 1
  pid=$(<"$pf"); [[ $pid =~ ^[0-9]+$ ]] || return 1
  st=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1) || return 1
  [[ -n $st && $st != Z && $st != X ]] || return 1
  [[ -z $comm || $(cat "/proc/$pid/comm" 2>/dev/null) == "$comm" ]]
}
stop_pidfile() {
  local pf=$1 comm=$2 pid i
  pid_alive "$pf" "$comm" || { rm -f "$pf"; return 0; }
  pid=$(<"$pf"); log "stopping $comm ($pid)"
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 1 50); do pid_alive "$pf" "$comm" || break; sleep 0.2; done
  if pid_alive "$pf" "$comm"; then log "$comm ($pid) ignored SIGTERM, sending SIGKILL"; kill -KILL "$pid" 2>/dev/null || true; sleep 0.5; fi
  rm -f "$pf"
}

# 1. cancel all jobs so no slurmstepd / job processes are left behind
if pid_alive /run/slurmctld.pid slurmctld; then
  jobs=$(timeout 10 squeue -h -o %i 2>/dev/null | paste -sd' ' -)
  if [[ -n $jobs ]]; then
    log "cancelling jobs: $jobs"
    timeout 10 scancel $jobs 2>/dev/null || true
    for i in $(seq 1 60); do [[ -z $(timeout 10 squeue -h -o %i 2>/dev/null) ]] && break; sleep 0.5; done
  fi
fi

# 2. daemons, reverse start order
for pf in /run/slurmd-*.pid; do [[ -e $pf ]] && stop_pidfile "$pf" slurmd; done
stop_pidfile /run/slurmctld.pid slurmctld
stop_pidfile /run/slurmdbd.pid slurmdbd
rm -f /run/slurm-dev-cluster.hash /run/slurm-dev-cluster-dbd.hash

if [[ -x /etc/init.d/mariadb ]] && pid_alive /run/mysqld/mysqld.pid mariadbd; then
  if ((PURGE)); then mariadb -e 'DROP DATABASE IF EXISTS slurm_acct_db' 2>/dev/null || true; fi
  if ((KEEP_DB == 0)); then log "stopping mariadb"; /etc/init.d/mariadb stop >/dev/null 2>&1 || true; fi
fi
stop_pidfile /run/munge/munged.pid munged

if ((PURGE)); then
  log "purging Slurm state and logs"
  rm -rf /var/spool/slurmctld /var/spool/slurmd /var/log/slurm/*
fi
log "done"
