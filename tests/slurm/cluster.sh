#!/usr/bin/env bash
# A one-node Slurm on 127.0.0.1 for the tests (../shared/reference facts; Debian's
# slurmctld slurmd slurm-client munge):
#   cluster.sh start DIR PORT   writes DIR/slurm.conf, starts munged (where none runs),
#                               slurmctld on PORT and slurmd on PORT+1; waits for `idle`
#   cluster.sh stop DIR         stops what `start` started, by the pids in DIR
# The tests and .ci/run export SLURM_CONF=DIR/slurm.conf for sbatch, squeue and scancel.
set -euo pipefail
cmd=${1:?start|stop}; dir=$(realpath -m "${2:?scratch folder}")
case "$cmd" in
start)
  port=${3:?port}
  [ "$(id -u)" = 0 ] || { echo "cluster.sh: the daemons run as root here (munge's key, slurmd)" >&2; exit 3; }
  for b in slurmctld slurmd sbatch squeue munged; do
    command -v "$b" >/dev/null 2>&1 || [ -x "/usr/sbin/$b" ] || { echo "cluster.sh: $b not installed" >&2; exit 3; }
  done
  mkdir -p "$dir/state" "$dir/spool"
  host=$(hostname -s)
  # CPUs and memory as slurmd sees them, so that the node is not drained as smaller.
  node=$(/usr/sbin/slurmd -C | head -1 | sed -e "s/NodeName=[^ ]*/NodeName=$host NodeAddr=127.0.0.1/" -e 's/ UpTime=.*//')
  cat > "$dir/slurm.conf" <<CONF
ClusterName=runnertest
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$dir/jobcomp.txt
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
KillWait=10
MinJobAge=600
SlurmctldPort=$port
SlurmdPort=$((port + 1))
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
$node State=UNKNOWN
PartitionName=ci Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
  export SLURM_CONF="$dir/slurm.conf"
  # munge's daemon: the one already serving this machine, else one of our own.
  if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    mkdir -p /run/munge && chown munge:munge /run/munge
    runuser -u munge -- /usr/sbin/munged --force
    cp /run/munge/munged.pid "$dir/munged.pid" 2>/dev/null || pgrep -n -x munged > "$dir/munged.pid"
  fi
  /usr/sbin/slurmctld -c
  /usr/sbin/slurmd -c
  deadline=$((SECONDS + 30))
  while [ $SECONDS -lt $deadline ]; do
    [ "$(timeout 5 sinfo -h -o %T 2>/dev/null | head -1)" = idle ] && exit 0
    sleep 0.2
  done
  echo "cluster.sh: the node did not become idle; see $dir/slurmctld.log and $dir/slurmd.log" >&2
  exit 1
  ;;
stop)
  for p in slurmd slurmctld munged; do
    # shellcheck disable=SC2046 # one pid per line
    [ -f "$dir/$p.pid" ] && kill $(cat "$dir/$p.pid") 2>/dev/null || true
  done
  ;;
esac
