#!/usr/bin/env bash
# Stop the local test cluster started by scripts/slurm-up.sh: slurmd n1/n2 and
# slurmctld, each by the pid in its pid file. munged is left running unless
# --all is given (other tools on the host may use it). Safe to run when nothing is up.
set -euo pipefail

[ "$(id -u)" -eq 0 ] || { echo "slurm-down: must run as root" >&2; exit 1; }

stop_pidfile() {
    local f="$1" name="$2" pid
    [ -s "$f" ] || { rm -f "$f"; return 0; }
    pid=$(cat "$f" 2>/dev/null || true)
    if [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null; then
        echo "slurm-down: stopping $name (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        if kill -0 "$pid" 2>/dev/null; then
            echo "slurm-down: $name did not exit, sending KILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    rm -f "$f"
}

stop_pidfile /run/slurmd-n1.pid "slurmd n1"
stop_pidfile /run/slurmd-n2.pid "slurmd n2"
stop_pidfile /run/slurmctld.pid slurmctld
if [ "${1:-}" = "--all" ]; then
    stop_pidfile /run/munge/munged.pid munged
fi
echo "slurm-down: done"
