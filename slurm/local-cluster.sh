#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine, with accounting, for integration tests and local sweeps.
#
#   slurm/local-cluster.sh start    install packages if missing, write configs, start daemons, wait until usable
#   slurm/local-cluster.sh stop     cancel this cluster's jobs, stop the daemons THIS script started (by PID)
#   slurm/local-cluster.sh status   print which daemons run and the state of the node and queue (exit 0: all up)
#
# Daemons (no systemd; each runs in the foreground under setsid, its PID recorded in $STATE/pids/):
#   munged -> mariadbd (own data directory, 127.0.0.1:$DB_PORT) -> slurmdbd -> slurmctld -> slurmd -N localhost
# A munged or a MariaDB that this script did not start is never stopped by it.
#
# Environment:
#   XCHANNEL_SLURM_DIR       state directory (configs, logs, spool, database, PID files); default /tmp/xchannel-slurm
#   XCHANNEL_SLURM_DB_PORT   TCP port of the cluster's own MariaDB on 127.0.0.1; default 3307
#
# Exit status: 0 success; 1 a daemon failed (the message names its log); 3 the cluster cannot be set up on this
# machine at all (not Linux/root, no apt-get, packages cannot be installed).
#
# Clients (sinfo, sbatch, sacct, submitit) find the cluster through SLURM_CONF=$STATE/etc/slurm.conf; `start`
# also links /etc/slurm/slurm.conf to it when that path is free, so plain `sinfo` works too.
set -euo pipefail

STATE="${XCHANNEL_SLURM_DIR:-/tmp/xchannel-slurm}"
DB_PORT="${XCHANNEL_SLURM_DB_PORT:-3307}"
CLUSTER=xchannel
ACCOUNT=xchannel
ETC="$STATE/etc"
LOG="$STATE/log"
RUN="$STATE/run"
PIDS="$STATE/pids"
SPOOL="$STATE/spool"
DB_DIR="$STATE/mysql"
DB_SOCK="$RUN/mysqld/mysqld.sock"
SLURM_CONF_FILE="$ETC/slurm.conf"
SYSTEM_CONF=/etc/slurm/slurm.conf
PACKAGES=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server)
DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd)   # start order; stop goes in reverse
export SLURM_CONF="$SLURM_CONF_FILE"

say() { printf 'local-cluster: %s\n' "$*"; }
die() { local code="$1"; shift; printf 'local-cluster: ERROR: %s\n' "$*" >&2; exit "$code"; }

fail_daemon() {  # fail_daemon DAEMON MESSAGE: print the message and the tail of the daemon's logs, exit 1
  local name="$1" msg="$2" log="$LOG/$1.log"
  {
    printf 'local-cluster: ERROR: %s: %s\n' "$name" "$msg"
    for f in "$log" "$LOG/$name.out"; do
      [[ -s "$f" ]] || continue
      printf 'local-cluster: last lines of %s:\n' "$f"
      tail -n 15 "$f" | sed 's/^/    /'
    done
    printf 'local-cluster: logs are in %s\n' "$LOG"
  } >&2
  exit 1
}

# ---------------------------------------------------------------------------------------------- PID bookkeeping

# The executable each daemon's PID must be running (checked before we trust or signal a PID, so a recycled PID
# of an unrelated process is never touched).
exe_of() { echo "/usr/sbin/$1"; }

# pid_alive DAEMON: succeed and print the PID if our PID file names a live process running that daemon's binary.
pid_alive() {
  local name="$1" pid exe
  [[ -f "$PIDS/$name.pid" ]] || return 1
  pid="$(<"$PIDS/$name.pid")"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  exe="$(readlink "/proc/$pid/exe" 2>/dev/null)" || return 1
  # /usr/sbin/slurmctld and friends are alternatives symlinks (slurmctld -> slurmctld-wlm): compare real paths.
  [[ "${exe% (deleted)}" == "$(readlink -f "$(exe_of "$name")")" ]] || return 1
  echo "$pid"
}

# launch DAEMON CMD...: start CMD in its own session (immune to the caller's Ctrl-C / process-group kills),
# stdin from /dev/null, output to $LOG/DAEMON.out, without our lock (fd 9: a daemon holding it would block every
# later start/stop), and record its PID. setsid does not fork here: a background job of a non-interactive shell
# is not a process-group leader, so $! is the daemon itself.
launch() {
  local name="$1"; shift
  setsid "$@" </dev/null >>"$LOG/$name.out" 2>&1 9>&- &
  echo $! >"$PIDS/$name.pid"
  sleep 0.2
  pid_alive "$name" >/dev/null || fail_daemon "$name" "exited right after start"
}

# wait_for DAEMON SECONDS CMD...: poll CMD every 0.5 s until it succeeds; fail with the daemon's log otherwise.
wait_for() {
  local name="$1" seconds="$2"; shift 2
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    if [[ -f "$PIDS/$name.pid" ]] && ! pid_alive "$name" >/dev/null; then
      fail_daemon "$name" "the daemon exited"
    fi
    ((SECONDS < deadline)) || fail_daemon "$name" "not ready after ${seconds} s (check: $*)"
    sleep 0.5
  done
}

# -------------------------------------------------------------------------------------------------- installing

install_packages() {
  local missing=() p
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  ((${#missing[@]} == 0)) && return 0
  command -v apt-get >/dev/null || die 3 "packages missing (${missing[*]}) and apt-get is not available"
  say "installing ${missing[*]} (apt-get, --no-install-recommends)"
  # Package scripts must not start the system's own services (we run private instances): a policy-rc.d that
  # answers 101 ("action forbidden") does that. Install one only for the duration, and only if none exists.
  local own_policy=0
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    own_policy=1
  fi
  local rc=0
  {
    DEBIAN_FRONTEND=noninteractive apt-get update -q &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
  } >"$LOG/apt.log" 2>&1 || rc=$?
  ((own_policy)) && rm -f /usr/sbin/policy-rc.d
  if ((rc != 0)); then
    tail -n 15 "$LOG/apt.log" | sed 's/^/    /' >&2
    die 3 "apt-get could not install ${missing[*]} (exit $rc); full log: $LOG/apt.log"
  fi
}

# ------------------------------------------------------------------------------------------------------ configs

# write_if_changed FILE MODE: stdin -> FILE (atomically, mode MODE) unless FILE already has that content.
write_if_changed() {
  local file="$1" mode="$2" tmp
  tmp="$(mktemp "$file.XXXXXX")"
  cat >"$tmp"
  chmod "$mode" "$tmp"
  if [[ -f "$file" ]] && cmp -s "$tmp" "$file"; then
    rm -f "$tmp"
  else
    mv -f "$tmp" "$file"
    CHANGED+=("$file")
  fi
}
CHANGED=()

db_password() {  # a random password for the database user 'slurm', made once per state directory
  local f="$ETC/db-password"
  if [[ ! -s "$f" ]]; then
    (umask 077; head -c 18 /dev/urandom | base64 | tr -d '/+=' >"$f")
  fi
  cat "$f"
}

write_configs() {
  local cpus mem_mb
  cpus="$(nproc)"
  mem_mb="$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)"

  write_if_changed "$SLURM_CONF_FILE" 644 <<EOF
# Written by slurm/local-cluster.sh: a one-node cluster on this machine. Do not edit; rerun 'start'.
ClusterName=$CLUSTER
SlurmctldHost=localhost
SlurmUser=root
AuthType=auth/munge
# The job-step credential lifetime is also how long a requeued job waits before it may start again (default
# 120 s); 10 s is ample on one machine and keeps requeue/preemption round trips short.
AuthInfo=cred_expire=10
MpiDefault=none
# No cgroups (containers without systemd): track processes by parent PID, no task binding, no usage sampling.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# submitit's job wrapper ignores SIGTERM: SIGKILL follows 5 s after it (default 30 s) so cancels end quickly.
KillWait=5
# A node that was down comes back as soon as its slurmd registers with a valid configuration.
ReturnToService=2
# Batch jobs are requeueable by default ('scontrol requeue JOBID' on a running job); jobs in the low-priority
# partition 'debug' are requeued when a job of partition 'urgent' needs their CPUs (real preemption).
JobRequeue=1
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
# Accounting (sacct) through slurmdbd: without it a job that dies without a result (scancel, SIGKILL) stays
# in state UNKNOWN for submitit and result() never returns.
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobCompType=jobcomp/none
MailProg=/bin/true
StateSaveLocation=$SPOOL/slurmctld
SlurmdSpoolDir=$SPOOL/slurmd
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP PriorityTier=1 PreemptMode=REQUEUE
PartitionName=urgent Nodes=localhost MaxTime=INFINITE State=UP PriorityTier=2 PreemptMode=OFF
EOF

  # slurmdbd refuses a slurmdbd.conf that others can read (it holds the database password): mode 600.
  write_if_changed "$ETC/slurmdbd.conf" 600 <<EOF
# Written by slurm/local-cluster.sh.
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$(db_password)
StorageLoc=slurm_acct_db
LogFile=$LOG/slurmdbd.log
PidFile=$RUN/slurmdbd.pid
DebugLevel=info
EOF

  write_if_changed "$ETC/my.cnf" 644 <<EOF
# Written by slurm/local-cluster.sh: the cluster's private MariaDB (never the system's).
[mysqld]
user=mysql
datadir=$DB_DIR
socket=$DB_SOCK
pid-file=$RUN/mysqld/mariadbd.pid
bind-address=127.0.0.1
port=$DB_PORT
log-error=$LOG/mariadbd.log
skip-name-resolve
innodb_buffer_pool_size=64M
EOF

  write_if_changed "$STATE/env.sh" 644 <<EOF
# source this file to use the local cluster from a shell: sinfo, squeue, sbatch, sacct
export SLURM_CONF=$SLURM_CONF_FILE
EOF

  # Make plain client commands find the cluster when the system has no slurm.conf of its own.
  mkdir -p /etc/slurm
  if [[ ! -e "$SYSTEM_CONF" && ! -L "$SYSTEM_CONF" ]] || [[ "$(readlink "$SYSTEM_CONF" 2>/dev/null)" == "$SLURM_CONF_FILE" ]]; then
    ln -sfn "$SLURM_CONF_FILE" "$SYSTEM_CONF"
  fi
}

# ------------------------------------------------------------------------------------------------------ daemons

munge_works() { munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munged() {
  if pid_alive munged >/dev/null; then return 0; fi
  if munge_works; then
    say "munged: using the one already running on this machine (not started here, will not be stopped)"
    rm -f "$PIDS/munged.pid"
    return 0
  fi
  if [[ ! -s /etc/munge/munge.key ]]; then
    setpriv --reuid=munge --regid=munge --init-groups mungekey --create --keyfile=/etc/munge/munge.key \
      >>"$LOG/munged.out" 2>&1 || fail_daemon munged "could not create /etc/munge/munge.key"
  fi
  mkdir -p /run/munge && chown munge:munge /run/munge && chmod 755 /run/munge
  touch "$LOG/munged.log" && chown munge:munge "$LOG/munged.log"
  launch munged setpriv --reuid=munge --regid=munge --init-groups /usr/sbin/munged --foreground \
    --log-file="$LOG/munged.log"
  wait_for munged 15 munge_works
}

db() { mariadb --no-defaults --socket="$DB_SOCK" -uroot "$@"; }

start_mariadbd() {
  if ! pid_alive mariadbd >/dev/null; then
    mkdir -p "$DB_DIR" "$RUN/mysqld"
    chown mysql:mysql "$DB_DIR" "$RUN/mysqld"
    touch "$LOG/mariadbd.log" && chown mysql:mysql "$LOG/mariadbd.log"
    if [[ ! -d "$DB_DIR/mysql" ]]; then
      mariadb-install-db --defaults-file="$ETC/my.cnf" --auth-root-authentication-method=socket \
        --skip-test-db >>"$LOG/mariadbd.out" 2>&1 || fail_daemon mariadbd "mariadb-install-db failed"
    fi
    launch mariadbd /usr/sbin/mariadbd --defaults-file="$ETC/my.cnf"
  fi
  wait_for mariadbd 60 db -e 'SELECT 1'
  local pw
  pw="$(db_password)"
  db <<EOF || fail_daemon mariadbd "could not create the database user 'slurm'"
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$pw';
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$pw';
ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$pw';
ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$pw';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
EOF
}

start_slurmdbd() {
  pid_alive slurmdbd >/dev/null || launch slurmdbd /usr/sbin/slurmdbd -D
  wait_for slurmdbd 60 sacctmgr -n -P list cluster
  # Register the cluster, an account and the users who submit (before slurmctld connects, so it finds them).
  if ! sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER"; then
    sacctmgr -i add cluster "$CLUSTER" >>"$LOG/sacctmgr.log" 2>&1 ||
      fail_daemon slurmdbd "sacctmgr could not add cluster $CLUSTER (see $LOG/sacctmgr.log)"
  fi
  if ! sacctmgr -n -P list account format=account | grep -qx "$ACCOUNT"; then
    sacctmgr -i add account "$ACCOUNT" cluster="$CLUSTER" description="xchannel local cluster" \
      organization=xchannel >>"$LOG/sacctmgr.log" 2>&1 ||
      fail_daemon slurmdbd "sacctmgr could not add account $ACCOUNT (see $LOG/sacctmgr.log)"
  fi
  local user
  for user in root ${SUDO_USER:-}; do
    if ! sacctmgr -n -P list assoc user="$user" account="$ACCOUNT" format=user | grep -qx "$user"; then
      sacctmgr -i add user "$user" account="$ACCOUNT" cluster="$CLUSTER" defaultaccount="$ACCOUNT" \
        >>"$LOG/sacctmgr.log" 2>&1 || fail_daemon slurmdbd "sacctmgr could not add user $user (see $LOG/sacctmgr.log)"
    fi
  done
}

start_slurmctld() {
  if pid_alive slurmctld >/dev/null && [[ " ${CHANGED[*]} " == *" $SLURM_CONF_FILE "* ]]; then
    # Running daemons keep the configuration they read at start (e.g. nproc or memory changed): restart them.
    say "slurm.conf changed: restarting slurmd and slurmctld"
    stop_daemon slurmd
    stop_daemon slurmctld
  fi
  pid_alive slurmctld >/dev/null || launch slurmctld /usr/sbin/slurmctld -D -f "$SLURM_CONF_FILE"
  wait_for slurmctld 60 bash -c 'scontrol ping | grep -q "is UP"'
}

start_slurmd() {
  pid_alive slurmd >/dev/null || launch slurmd /usr/sbin/slurmd -D -f "$SLURM_CONF_FILE" -N localhost
  local deadline=$((SECONDS + 60)) state=""
  while :; do
    state="$(sinfo -h -n localhost -o %t 2>/dev/null | head -n 1)"
    case "$state" in
      idle | mix | alloc | comp) break ;;
      drain* | drng | inval | fail*)
        fail_daemon slurmd "node is '$state': $(sinfo -h -R -o '%E' 2>/dev/null | head -n 1)" ;;
    esac
    pid_alive slurmd >/dev/null || fail_daemon slurmd "the daemon exited"
    ((SECONDS < deadline)) || fail_daemon slurmd "node state is '${state:-unknown}', not idle, after 60 s"
    sleep 0.5
  done
  if [[ "$state" == alloc ]]; then
    say "node fully allocated by running jobs: skipping the srun check"
    return 0
  fi
  timeout 60 srun -N1 -n1 -p debug true >>"$LOG/srun-check.out" 2>&1 ||
    fail_daemon slurmd "'srun -N1 -n1 true' failed (see $LOG/srun-check.out)"
}

cmd_start() {
  [[ "$(uname -s)" == Linux ]] || die 3 "needs Linux"
  (($(id -u) == 0)) || die 3 "needs root (installs packages, runs munged/slurmd as root); run it with sudo"
  mkdir -p "$ETC" "$LOG" "$RUN" "$PIDS" "$SPOOL/slurmctld" "$SPOOL/slurmd"
  exec 9>"$STATE/lock"
  flock -w 900 9 || die 1 "another local-cluster.sh holds $STATE/lock"
  local t0=$SECONDS
  install_packages
  write_configs
  start_munged
  start_mariadbd
  start_slurmdbd
  start_slurmctld
  start_slurmd
  say "cluster '$CLUSTER' is up ($((SECONDS - t0)) s): partitions debug (default), urgent; $(nproc) CPUs"
  say "use it from a shell with: source $STATE/env.sh"
}

# ------------------------------------------------------------------------------------------------------- stop

# running PID: the process exists and is not a zombie (our daemons' parent is init, which may reap late).
running() {
  local stat
  stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
  stat="${stat##*) }"
  [[ "${stat:0:1}" != Z ]]
}

stop_daemon() {  # stop_daemon NAME: SIGTERM our PID, SIGKILL after 20 s; nothing if we did not start it
  local name="$1" pid i
  if ! pid="$(pid_alive "$name")"; then
    rm -f "$PIDS/$name.pid"
    return 0
  fi
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 200; i++)); do
    running "$pid" || break
    sleep 0.1
  done
  if running "$pid"; then
    say "$name (pid $pid) ignored SIGTERM for 20 s: SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$PIDS/$name.pid"
  say "stopped $name (pid $pid)"
}

cmd_stop() {
  [[ -d "$STATE" ]] || { say "nothing to stop ($STATE does not exist)"; return 0; }
  mkdir -p "$PIDS"
  exec 9>"$STATE/lock"
  flock -w 900 9 || die 1 "another local-cluster.sh holds $STATE/lock"
  # Jobs of this cluster would outlive slurmd (their slurmstepd runs on its own): cancel them first.
  if pid_alive slurmctld >/dev/null; then
    local jobs
    jobs="$(squeue -h -o %A 2>/dev/null | wc -l)"
    if ((jobs > 0)); then
      say "cancelling $jobs job(s) of cluster $CLUSTER"
      squeue -h -o %A 2>/dev/null | xargs -r scancel --full 2>/dev/null || true
      local i
      for ((i = 0; i < 40; i++)); do
        (($(squeue -h -o %A 2>/dev/null | wc -l) == 0)) && break
        sleep 0.25
      done
    fi
  fi
  local i
  for ((i = ${#DAEMONS[@]} - 1; i >= 0; i--)); do
    stop_daemon "${DAEMONS[i]}"
  done
  if [[ "$(readlink "$SYSTEM_CONF" 2>/dev/null)" == "$SLURM_CONF_FILE" ]]; then
    rm -f "$SYSTEM_CONF"
  fi
}

# ------------------------------------------------------------------------------------------------------ status

cmd_status() {
  local all=0 name pid
  for name in "${DAEMONS[@]}"; do
    if pid="$(pid_alive "$name")"; then
      printf '%-10s running (pid %s, started by local-cluster.sh)\n' "$name" "$pid"
    elif [[ "$name" == munged ]] && munge_works; then
      printf '%-10s running (not started by local-cluster.sh)\n' "$name"
    else
      printf '%-10s not running\n' "$name"
      all=1
    fi
  done
  if ((all == 0)); then
    echo
    sinfo 2>&1 || all=1
    echo
    squeue 2>&1 || all=1
  fi
  echo
  echo "state directory: $STATE (logs in $LOG); clients: source $STATE/env.sh"
  return "$all"
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  *)
    echo "usage: $0 start|stop|status   (state directory: $STATE)" >&2
    exit 2
    ;;
esac
