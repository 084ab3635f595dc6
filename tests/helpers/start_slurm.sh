#!/usr/bin/env bash
# A one-node SLURM cluster on this machine for tests/test_slurm_cluster.py (Debian's slurmd, slurmctld, munge).
# Writes /etc/slurm/slurm.conf naming this host, starts munged, slurmctld and slurmd, and waits until the node
# is idle. Idempotent: daemons already running are left alone. Needs root (CI's container is root).
set -euo pipefail
host=$(hostname -s)
cpus=$(nproc)
mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 512 ))
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge
if [ ! -f /etc/slurm/slurm.conf ] || ! grep -q "NodeName=$host " /etc/slurm/slurm.conf; then
  cat > /etc/slurm/slurm.conf.tmp <<CONF
ClusterName=imgclf-ci
SlurmctldHost=$host
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SchedulerType=sched/backfill
SlurmUser=root
SlurmdUser=root
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ReturnToService=2
# A requeued job waits to be eligible again (its BeginTime is set in the future); the test releases it at once
# with scontrol update BeginTime=now. The scheduler looks at the queue every second here.
SchedulerParameters=sched_interval=1,bf_interval=1
MinJobAge=600
KillWait=30
JobRequeue=1
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
  mv /etc/slurm/slurm.conf.tmp /etc/slurm/slurm.conf
fi
chown -R munge:munge /run/munge /etc/munge 2>/dev/null || true
pgrep -x munged >/dev/null || su -s /bin/sh munge -c /usr/sbin/munged || /usr/sbin/munged --force
pgrep -x slurmctld >/dev/null || /usr/sbin/slurmctld
pgrep -x slurmd >/dev/null || /usr/sbin/slurmd
for _ in $(seq 60); do
  state=$(sinfo -h -N -o %t 2>/dev/null | head -1 || true)
  case "$state" in idle|mix|alloc) echo "slurm: node $host $state"; exit 0 ;; down*|drain*) scontrol update NodeName="$host" State=RESUME || true ;; esac
  sleep 1
done
echo "slurm: node $host did not come up (state: ${state:-none}); see /var/log/slurm/" >&2
exit 1
