#!/usr/bin/env bash
# A real single-node SLURM cluster on localhost, for the tests (see profiles/slurm and tests/test_slurm.py).
#   tools/slurm_cluster.sh install   apt-get the daemons (root only)
#   tools/slurm_cluster.sh start     write /etc/slurm/slurm.conf, start munged, slurmctld, slurmd
#   tools/slurm_cluster.sh stop      stop the daemons (by their pid files, else by name)
# It takes this machine's SLURM over (slurm.conf, the daemons): for test machines only.
# slurm.conf must live at /etc/slurm/slurm.conf: the Snakemake job step strips SLURM_*
# variables, so SLURM_CONF would not reach it.
set -euo pipefail
if [ "${CDSSL_SLURM_TESTS:-}" != 1 ]; then
  echo "slurm_cluster.sh takes this machine's SLURM over; set CDSSL_SLURM_TESTS=1 to confirm (make test-slurm does)" >&2
  exit 2
fi
STATE=${CDSSL_SLURM_STATE:-/tmp/cdssl-slurm}
HOST=$(hostname -s)
CPUS=$(nproc)
MEM=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))

install() {
  command -v slurmctld >/dev/null && command -v munged >/dev/null && return 0
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null 2>&1 || {
    apt-get update >/dev/null 2>&1
    apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
  }
}

start() {
  # a fresh cluster every time: jobs left in a saved state would keep the node busy, and
  # daemons still running (a cluster started by hand, an interrupted test) would keep the
  # new ones from binding their ports while their pid files are removed below
  stop
  rm -rf "$STATE"
  mkdir -p "$STATE"/{ctld,d} /etc/slurm /run/munge /var/log/slurm
  cat > /etc/slurm/slurm.conf <<CONF
ClusterName=cdssl
SlurmctldHost=${HOST}(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
# without slurmdbd the executor polls squeue: finished jobs must stay visible a while
MinJobAge=300
ReturnToService=2
StateSaveLocation=${STATE}/ctld
SlurmdSpoolDir=${STATE}/d
SlurmctldPidFile=${STATE}/slurmctld.pid
SlurmdPidFile=${STATE}/slurmd.pid
SlurmctldLogFile=${STATE}/slurmctld.log
SlurmdLogFile=${STATE}/slurmd.log
NodeName=${HOST} NodeAddr=127.0.0.1 CPUs=${CPUS} RealMemory=${MEM} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
  if [ ! -s /etc/munge/munge.key ]; then
    mkdir -p /etc/munge
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  fi
  chown -R munge:munge /etc/munge /run/munge
  chmod 0400 /etc/munge/munge.key
  resolve_host
  start_munge
  slurmctld -c
  slurmd -c
  # a deadline, not a count of tries: a client that cannot reach the controller waits in
  # each call (10 s or more when a name does not resolve), so 60 tries could take an hour
  local deadline=$((SECONDS + 120))
  while [ "$SECONDS" -lt "$deadline" ]; do
    if timeout 15 sinfo -h -o %t 2>/dev/null | grep -q -E '^idle'; then
      echo "slurm up: $(sinfo -h -o '%N %t %c CPUs')"
      return 0
    fi
    sleep 1
  done
  echo "slurm did not become idle within 120 s; the daemons' last lines:" >&2
  for log in "$STATE"/slurmctld.log "$STATE"/slurmd.log; do
    echo "== $log" >&2
    tail -n 12 "$log" >&2 2>/dev/null || true
  done
  return 1
}

# the node's name must resolve: slurmd and srun look the controller and the node up by it,
# and the ranks of a multi-rank job meet at the first name of SLURM_NODELIST (a throwaway
# machine's name is not always in its /etc/hosts, and without DNS each lookup fails slowly)
resolve_host() {
  if ! timeout 10 getent hosts "$HOST" >/dev/null; then
    echo "127.0.0.1 $HOST  # tools/slurm_cluster.sh: the SLURM node's name" >> /etc/hosts
    echo "added $HOST to /etc/hosts (it did not resolve)"
  fi
}

munge_works() {
  timeout 10 munge -n 2>/dev/null | timeout 10 unmunge >/dev/null 2>&1
}

# munged must answer, not merely exist: a munged left from before a reinstall runs without
# its socket, and a socket file can outlive its munged (a machine restored from a snapshot
# keeps /run/munge), so only a credential encoded and decoded says munge is up
start_munge() {
  munge_works && return 0
  pkill -x munged 2>/dev/null || true
  for _ in $(seq 1 20); do
    pgrep -x munged >/dev/null || break
    sleep 0.5
  done
  rm -f /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock /run/munge/munged.pid
  runuser -u munge -- /usr/sbin/munged
  for _ in $(seq 1 20); do
    munge_works && return 0
    sleep 0.5
  done
  echo "munged started but does not answer: munge -n | unmunge fails" >&2
  return 1
}

stop() {
  for daemon in slurmd slurmctld; do
    if [ -f "$STATE/$daemon.pid" ]; then
      kill "$(cat "$STATE/$daemon.pid")" 2>/dev/null || true
    fi
    # without a pid file (its state folder was removed), by name
    pkill -x "$daemon" 2>/dev/null || true
  done
  for _ in $(seq 1 20); do
    pgrep -x slurmctld >/dev/null || pgrep -x slurmd >/dev/null || return 0
    sleep 0.5
  done
}

"$@"
