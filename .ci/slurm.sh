#!/usr/bin/env bash
# A real Slurm for the tests: Debian's slurm-wlm (slurmctld + two slurmd on this host, nodes n1 and
# n2, one partition "ci"), munge for authentication, slurmdbd on MariaDB for sacct. Run as root.
#   bash .ci/slurm.sh up      install (apt) if missing, configure, start; waits until both nodes are idle
#   bash .ci/slurm.sh down    stop the daemons
# The configuration lives in /etc/slurm/slurm.conf; state and logs under /var/lib/llemma-slurm.
set -euo pipefail
STATE=/var/lib/llemma-slurm
CPUS=${SLURM_CI_CPUS_PER_NODE:-8}   # more than the machine has: jobs share its cores

up() {
  if ! command -v slurmctld >/dev/null || ! command -v slurmdbd >/dev/null || ! command -v mariadbd >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      slurm-wlm slurmdbd munge mariadb-server >/dev/null
  fi
  mkdir -p "$STATE"/{ctld,n1,n2,log} /etc/slurm /run/munge /var/log/munge /var/lib/munge
  [[ -s /etc/munge/munge.key ]] || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  chown -R munge:munge /etc/munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
  chmod 400 /etc/munge/munge.key
  pgrep -x munged >/dev/null || runuser -u munge -- /usr/sbin/munged
  local host; host=$(hostname)
  cat > /etc/slurm/slurm.conf <<CONF
ClusterName=llemmaci
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
# how long a requeued job waits before it may start again (slurm.conf(5): AuthInfo cred_expire,
# default 120 s); the credential of a job step must stay valid that long
AuthInfo=cred_expire=${SLURM_CI_REQUEUE_WAIT:-20}
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/%n
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd-%n.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
JobRequeue=1
MpiDefault=none
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=600
KillWait=30
SchedulerParameters=sched_interval=2
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/none
NodeName=n1 NodeHostname=$host Port=17001 CPUs=$CPUS RealMemory=4000 State=UNKNOWN
NodeName=n2 NodeHostname=$host Port=17002 CPUs=$CPUS RealMemory=4000 State=UNKNOWN
PartitionName=ci Nodes=n1,n2 Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF
  # accounting (sacct): MariaDB, then slurmdbd, then the cluster's record
  pgrep -x mariadbd >/dev/null || { service mariadb start >/dev/null 2>&1 || (mysqld_safe >/dev/null 2>&1 &); }
  for _ in $(seq 30); do mysql -e 'select 1' >/dev/null 2>&1 && break; sleep 1; done
  mysql -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db; CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm';
            GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
  cat > /etc/slurm/slurmdbd.conf <<CONF
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
LogFile=$STATE/log/slurmdbd.log
PidFile=$STATE/slurmdbd.pid
CONF
  chmod 600 /etc/slurm/slurmdbd.conf
  pgrep -x slurmdbd >/dev/null || slurmdbd
  for _ in $(seq 30); do sacctmgr -n list cluster >/dev/null 2>&1 && break; sleep 1; done
  sacctmgr -n list cluster format=cluster | grep -qw llemmaci || sacctmgr -i add cluster llemmaci >/dev/null
  pgrep -x slurmctld >/dev/null || slurmctld -i
  for n in n1 n2; do pgrep -f "slurmd -N $n" >/dev/null || slurmd -N "$n"; done
  for _ in $(seq 60); do
    if [[ $(sinfo -h -o '%t' -p ci 2>/dev/null | sort -u | tr '\n' ' ') == "idle " ]]; then
      sinfo; return 0
    fi
    sleep 1
  done
  echo "error: the Slurm nodes did not become idle; sinfo:" >&2; sinfo -N -l >&2 || true
  tail -20 "$STATE"/log/*.log >&2 || true
  return 1
}

down() {
  pkill -x slurmctld 2>/dev/null || true
  pkill -x slurmdbd 2>/dev/null || true
  pkill -x slurmd 2>/dev/null || true
  pkill -x slurmstepd 2>/dev/null || true
}

"${1:?usage: slurm.sh up|down}"
