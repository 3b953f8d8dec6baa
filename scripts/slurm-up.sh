#!/usr/bin/env bash
# A real single-node Slurm on this machine, for the Slurm profile's end-to-end test.
# Idempotent and fast when already up: installs slurm-wlm and munge (Debian) if missing,
# writes /etc/slurm/slurm.conf from `slurmd -C` (job steps lose SLURM_CONF, so the config must
# be at the default path), starts munged, slurmctld and slurmd as plain daemons (no systemd)
# and waits until `sinfo` shows the node idle. Run as root. Accounting is off, so the executor
# plugin must query squeue (profiles/slurm: slurm-status-command: squeue).
# Environment: LLMBUILD_SLURM_PARTITION (default: llmbuild).
set -euo pipefail

PARTITION=${LLMBUILD_SLURM_PARTITION:-llmbuild}
CONF=/etc/slurm/slurm.conf
say() { echo "slurm-up: $*"; }
die() { echo "slurm-up: error: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (it installs packages and starts daemons)"

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null \
   || ! command -v munged >/dev/null || ! command -v sinfo >/dev/null; then
  say "installing slurm-wlm and munge"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q slurm-wlm munge >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null && apt-get install -y -q slurm-wlm munge >/dev/null; } \
    || die "apt-get install slurm-wlm munge failed"
fi

# munge: a key, then the daemon (it refuses to start twice, so check first)
mkdir -p /etc/munge /var/lib/munge /var/log/munge /run/munge
if [ ! -s /etc/munge/munge.key ]; then
  dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
fi
chown -R munge:munge /etc/munge /var/lib/munge /var/log/munge /run/munge
chmod 0700 /etc/munge && chmod 0400 /etc/munge/munge.key
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  say "starting munged"
  runuser -u munge -- munged || munged --force
  for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
  munge -n | unmunge >/dev/null || die "munged does not answer"
fi

# slurm.conf: this node with its real CPU count and memory
node_line=$(slurmd -C | head -n 1)
host=$(hostname -s)
want=$(cat <<EOF
# Written by llmbuild scripts/slurm-up.sh: one node, accounting off, no cgroups (no systemd).
ClusterName=llmbuild
SlurmctldHost=$host
AuthType=auth/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
MinJobAge=600
$node_line State=UNKNOWN
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
)
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
changed=0
if [ ! -f "$CONF" ] || [ "$(cat "$CONF")" != "$want" ]; then
  say "writing $CONF"
  printf '%s\n' "$want" > "$CONF"
  changed=1
fi

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
if [ "$changed" = 1 ]; then  # a new config: restart what runs, by its pid file
  for pid in /run/slurmd.pid /run/slurmctld.pid; do
    if running "$pid"; then kill "$(cat "$pid")"; sleep 1; fi
  done
fi
if ! running /run/slurmctld.pid; then say "starting slurmctld"; slurmctld; fi
if ! running /run/slurmd.pid; then say "starting slurmd"; slurmd; fi

for _ in $(seq 60); do
  state=$(sinfo -h -p "$PARTITION" -o %t 2>/dev/null | head -n 1 || true)
  case "$state" in
    idle|mix|alloc) say "partition $PARTITION: node $host $state ($node_line)"; exit 0 ;;
    down*|drain*) scontrol update nodename="$host" state=resume >/dev/null 2>&1 || true ;;
  esac
  sleep 1
done
die "node $host not idle after 60 s (sinfo: ${state:-nothing}); see /var/log/slurm/"
