#!/usr/bin/env bash
# slurm_cluster.sh - a real single-node SLURM cluster (with accounting) on this machine, for CI and developers.
#
#   scripts/slurm_cluster.sh up       install missing packages, start munged, MariaDB, slurmdbd, slurmctld, slurmd;
#                                     wait until the node is idle and sacct answers; run a self-test job
#   scripts/slurm_cluster.sh down     cancel our jobs and stop exactly the daemons `up` started (by their pid files)
#   scripts/slurm_cluster.sh status   which of our daemons run; sinfo/squeue when the controller is up
#   scripts/slurm_cluster.sh env      `export SLURM_CONF=...` for `eval "$(scripts/slurm_cluster.sh env)"`
#   scripts/slurm_cluster.sh clean    down, then delete the state dir (database, spool, logs)
#
# Everything (configs, logs, pid files, spool dirs, the MariaDB datadir, the munge key and socket) lives in one
# state dir: $SIM_SLURM_DIR, default /tmp/sim-slurm. The cluster needs nothing under /etc/slurm (Debian's tools
# read no /etc/slurm/slurm.conf when SLURM_CONF is set, and jobs get SLURM_CONF from slurmd even with
# --export=NONE); slurmdbd.conf and gres.conf are read from SLURM_CONF's directory. Clients must have SLURM_CONF
# (`env` prints it). A re-run of `up` reuses the state dir (accounting history and job ids carry on); `clean`
# starts from nothing.
#
# Cluster: name `simci`; partition `debug` (default, no time limit) on node `localhost` with $SIM_SLURM_CPUS
# (default 32) CPUs whatever the machine has, the memory `slurmd -C` reports, and two fake GPUs (gres gpu:2 ->
# CUDA_VISIBLE_DEVICES in --gres=gpu:N jobs); account `sim` with root (and $SUDO_USER) as users; requeue allowed;
# finished jobs stay visible to squeue/scontrol for 300 s.
#
# The node is deliberately oversubscribed: tests need many 1-CPU jobs running at the same time (e.g. 16 jobs
# logging to one MLflow server concurrently), and with consumable cores only as many jobs run at once as the node
# has CPUs (2 on a small CI machine). So the node advertises SIM_SLURM_CPUS CPUs (1 socket x SIM_SLURM_CPUS cores x
# 1 thread, so a -c 1 job takes one "CPU") and slurmd is told to believe slurm.conf over the hardware
# (SlurmdParameters=config_overrides). Jobs then share the real cores through the kernel scheduler; a real
# cluster would never do this. The memory is split evenly over the advertised CPUs (DefMemPerCPU), so
# SIM_SLURM_CPUS jobs with the default memory fit at once. SIM_SLURM_CPUS=0 (or empty) means: the real CPUs.
#
# Facts this relies on are measured on Debian 12 with its slurm 22.05.8 (docs/environment.md#slurm); the comments
# below say which setting comes from which fact.
#
# Environment knobs: SIM_SLURM_DIR (state dir), SIM_SLURM_DB_PORT (MariaDB, default 3307, loopback only),
# SIM_SLURM_PORT (slurmctld port, default 6817; slurmd uses +1, slurmdbd +2), SIM_SLURM_CPUS (CPUs the node
# advertises, default 32; 0 = what `slurmd -C` reports; read by `up`, which must follow a `down` to change it).
# Must run as root (slurmd has to; so do apt-get and starting munged as user munge).
set -euo pipefail
# The daemons live in /usr/sbin, which a CI or sudo environment may leave off PATH.
export PATH=$PATH:/usr/sbin:/sbin

PROG=slurm_cluster
CLUSTER=simci
ACCOUNT=sim
PARTITION=debug

STATE=$(realpath -m -- "${SIM_SLURM_DIR:-/tmp/sim-slurm}")
DB_PORT=${SIM_SLURM_DB_PORT:-3307}
SIM_CPUS=${SIM_SLURM_CPUS-32}
CTLD_PORT=${SIM_SLURM_PORT:-6817}
SLURMD_PORT=$((CTLD_PORT + 1))
DBD_PORT=$((CTLD_PORT + 2))

ETC=$STATE/etc            # slurm.conf, slurmdbd.conf, gres.conf (SLURM_CONF points here)
LOG=$STATE/log
RUN=$STATE/run            # pid files of the slurm daemons
SPOOL=$STATE/spool
MUNGE_DIR=$STATE/munge    # owned by user munge: key, socket, pid file, log, seed
DB_DIR=$STATE/db          # owned by user mysql: datadir, socket, pid file, error log
CONF=$ETC/slurm.conf
MUNGE_SOCKET=$MUNGE_DIR/munge.socket
MUNGE_KEY=$MUNGE_DIR/munge.key
DB_SOCKET=$DB_DIR/mysqld.sock
MARKER=$STATE/.sim-slurm  # says "this dir was made by slurm_cluster.sh" before `clean` deletes anything

# Daemons in start order; `down` stops them in reverse. name -> pid file.
DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd)
declare -A PIDFILE LOGFILE
while IFS='|' read -r name pidfile logfile; do  # name|pid file|log file (paths may hold spaces)
    PIDFILE[$name]=$pidfile
    LOGFILE[$name]=$logfile
done <<EOF_DAEMONS
munged|$MUNGE_DIR/munged.pid|$MUNGE_DIR/munged.log
mariadbd|$DB_DIR/mariadbd.pid|$DB_DIR/mariadbd.err
slurmdbd|$RUN/slurmdbd.pid|$LOG/slurmdbd.log
slurmctld|$RUN/slurmctld.pid|$LOG/slurmctld.log
slurmd|$RUN/slurmd.pid|$LOG/slurmd.log
EOF_DAEMONS

export SLURM_CONF=$CONF

log() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# --- processes -------------------------------------------------------------------------------------------------

# pid_of NAME: the pid in NAME's pid file if that process is alive and really is NAME (guards against a stale pid
# file whose pid was reused by something else). Prints nothing and fails otherwise.
pid_of() {
    local name=$1 f=${PIDFILE[$1]} pid comm
    [[ -r $f ]] || return 1
    pid=$(tr -dc '0-9' <"$f" 2>/dev/null || true)
    [[ -n $pid && -r /proc/$pid/comm ]] || return 1
    comm=$(cat "/proc/$pid/comm" 2>/dev/null || true)
    [[ $comm == "$name" ]] || return 1
    echo "$pid"
}

# wait_gone PID SECONDS: true once PID has exited.
wait_gone() {
    local pid=$1 deadline=$(($(date +%s) + $2))
    while kill -0 "$pid" 2>/dev/null; do
        [[ $(date +%s) -lt $deadline ]] || return 1
        sleep 0.1
    done
}

# stop_daemons NAME...: SIGTERM the pids from these daemons' pid files together, wait for each (slurmctld saves
# its state, MariaDB flushes), SIGKILL one that does not exit within 30 s. Removes the pid files. Never touches a
# process we did not start (pid_of checks the name behind the pid).
stop_daemons() {
    local name pid t0 names=() pids=() i
    t0=$(now)
    for name in "$@"; do
        if pid=$(pid_of "$name"); then
            kill -TERM "$pid" 2>/dev/null || true
            names+=("$name")
            pids+=("$pid")
        fi
    done
    for i in "${!pids[@]}"; do
        name=${names[$i]} pid=${pids[$i]}
        if ! wait_gone "$pid" 30; then
            log "$name (pid $pid) ignored SIGTERM for 30 s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            wait_gone "$pid" 10 || log "$name (pid $pid) is still there after SIGKILL"
        fi
        log "stopped $name (pid $pid) in $(since "$t0") s"
    done
    for name in "$@"; do rm -f -- "${PIDFILE[$name]}"; done
}

# Processes that our daemons spawned and that outlive them are ours too: slurmstepd and the job processes under it
# (if slurmd died while a job ran), slurmctld's helper slurmscriptd. All of them inherit SLURM_CONF=<our conf>
# from the daemon we started (and jobs get it from sbatch's environment propagation), so that is how we find them.
# Only slurm helper processes or processes of a slurm job (SLURM_JOB_ID set) qualify, and never this script's own
# ancestors (someone may run `down` from inside a job of this cluster).
leftover_pids() {
    local ancestors=" " p=$$ pid comm env
    while [[ $p -gt 1 ]]; do
        ancestors+="$p "
        p=$(awk '{ print $4 }' "/proc/$p/stat" 2>/dev/null || echo 1)
    done
    for d in /proc/[0-9]*; do
        pid=${d#/proc/}
        [[ $ancestors == *" $pid "* ]] && continue
        env=$( { tr '\0' '\n' <"$d/environ"; } 2>/dev/null) || continue
        grep -qxF "SLURM_CONF=$CONF" <<<"$env" || continue
        comm=$( { cat "$d/comm"; } 2>/dev/null) || continue
        case $comm in
            slurmstepd | slurmscriptd | slurmd | slurmctld | slurmdbd) echo "$pid" ;;
            *) grep -q '^SLURM_JOB_ID=' <<<"$env" && echo "$pid" ;;
        esac
    done
}

# port_in_use PORT: something accepts TCP connections on 127.0.0.1:PORT.
port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_for SECONDS WHAT CMD...: poll CMD every 0.2 s until it succeeds; die naming WHAT after SECONDS.
wait_for() {
    local secs=$1 what=$2 deadline
    shift 2
    deadline=$(($(date +%s) + secs))
    until "$@" >/dev/null 2>&1; do
        [[ $(date +%s) -lt $deadline ]] || die "$what did not come up within ${secs} s"
        sleep 0.2
    done
}

# mark_log NAME: called just before NAME starts. Removes a stale pid file and remembers how long NAME's log is,
# so that a failure shows only what this start wrote.
declare -A LOGSTART=() STARTED=()
mark_log() {
    rm -f -- "${PIDFILE[$1]}"
    LOGSTART[$1]=$(stat -c %s "${LOGFILE[$1]}" 2>/dev/null || echo 0)
    STARTED[$1]=$(date +%s)
}

# require_alive NAME: die with the end of the daemon's log if it exited (e.g. a bad config) instead of waiting
# out a timeout. The slurm daemons and munged fork into the background and the child writes the pid file a
# moment later: a pid file that does not exist yet is no failure during the first 10 s.
require_alive() {
    [[ ! -s ${PIDFILE[$1]} && $(date +%s) -lt $((${STARTED[$1]:-0} + 10)) ]] && return 0
    pid_of "$1" >/dev/null || die "$1 exited during start-up; it logged (${LOGFILE[$1]}):
$(tail -c +$((${LOGSTART[$1]:-0} + 1)) "${LOGFILE[$1]}" 2>/dev/null | tail -n 8)"
}

# --- packages --------------------------------------------------------------------------------------------------

# Debian's slurm 22.05.8 + munge + slurmdbd + MariaDB, installed only if a binary is missing.
install_packages() {
    local -A need=([slurmctld]=slurmctld [slurmd]=slurmd [sbatch]=slurm-client [sacct]=slurm-client
        [munged]=munge [mungekey]=munge [slurmdbd]=slurmdbd [mariadbd]=mariadb-server
        [mariadb-install-db]=mariadb-server)
    local bin pkgs=() t0
    for bin in "${!need[@]}"; do
        command -v "$bin" >/dev/null 2>&1 || pkgs+=("${need[$bin]}")
    done
    [[ ${#pkgs[@]} -gt 0 ]] || return 0
    mapfile -t pkgs < <(printf '%s\n' "${pkgs[@]}" | sort -u)
    command -v apt-get >/dev/null || die "missing ${pkgs[*]} and no apt-get to install them"
    log "installing ${pkgs[*]} (apt-get)"
    t0=$(now)
    # Package maintainer scripts must not start system-wide daemons (this image's policy-rc.d already forbids
    # it; without systemd they could not be started anyway). Debian creates the munge and mysql users.
    # A fresh machine may have no package lists yet: update once and retry.
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${pkgs[@]}" \
        >"$STATE/apt.log" 2>&1; then
        DEBIAN_FRONTEND=noninteractive apt-get update -q >>"$STATE/apt.log" 2>&1 ||
            die "apt-get update failed (see $STATE/apt.log)"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${pkgs[@]}" \
            >>"$STATE/apt.log" 2>&1 || die "apt-get install ${pkgs[*]} failed (see $STATE/apt.log)"
    fi
    log "packages installed in $(since "$t0") s"
}

# --- configuration ---------------------------------------------------------------------------------------------

make_dirs() {
    mkdir -p "$ETC" "$LOG" "$RUN" "$SPOOL/ctld" "$SPOOL/d" "$MUNGE_DIR" "$DB_DIR"
    touch "$MARKER"
    # munged (as user munge) and mariadbd (as user mysql) must reach their dirs; clients must reach the munge
    # socket, so the path to it stays world-traversable.
    chmod 755 "$STATE" "$MUNGE_DIR"
    chown munge:munge "$MUNGE_DIR"
    chown mysql:mysql "$DB_DIR"
    chmod 750 "$DB_DIR"
}

# Loopback only. The daemons bind every interface unless told NoCtldInAddrAny (slurmctld) / NoInAddrAny (slurmd,
# slurmdbd), and then bind the first IPv4 address this machine's hostname resolves to. Where that is not a loopback
# address (a container whose hostname maps to its bridge IP), they run in a UTS namespace whose hostname is
# localhost; where namespaces are refused too (no CAP_SYS_ADMIN), they bind every interface and `up` says so.
choose_binding() {
    local addr
    addr=$(getent ahostsv4 "$(hostname)" 2>/dev/null | awk 'NR == 1 {print $1}' || true)
    if [[ $addr == 127.* ]]; then
        BIND=loopback
    elif unshare --uts sh -c 'hostname localhost' 2>/dev/null &&
        [[ $(getent ahostsv4 localhost | awk 'NR == 1 {print $1}') == 127.* ]]; then
        BIND=namespace
    else
        BIND=any
        log "warning: hostname $(hostname) resolves to ${addr:-nothing}, not loopback, and no UTS namespace can be" \
            "made: the SLURM daemons listen on every interface"
    fi
}

# Start a daemon (it forks itself) with the hostname choose_binding asked for.
start_bound() {
    if [[ $BIND == namespace ]]; then
        unshare --uts sh -c 'hostname localhost && exec "$@"' sh "$@"
    else
        "$@"
    fi
}

write_configs() {
    local hw cpus sockets cores threads mem defmem dbpass overrides= comm= dbdcomm=
    if [[ $BIND != any ]]; then
        comm=CommunicationParameters=NoCtldInAddrAny,NoInAddrAny dbdcomm=CommunicationParameters=NoInAddrAny
    fi
    # The node must declare what slurmd detects, else slurmd registers with different hardware and the node turns
    # INVAL (docs/environment.md#slurm: "node named localhost with the CPUs/memory that slurmd -C reports") -- unless
    # slurmd is told to report the configured hardware instead (config_overrides, below).
    hw=$(slurmd -C 2>/dev/null | head -n 1) || die "slurmd -C failed"
    cpus=$(sed -n 's/.* CPUs=\([0-9]*\).*/\1/p' <<<"$hw")
    sockets=$(sed -n 's/.* SocketsPerBoard=\([0-9]*\).*/\1/p' <<<"$hw")
    cores=$(sed -n 's/.* CoresPerSocket=\([0-9]*\).*/\1/p' <<<"$hw")
    threads=$(sed -n 's/.* ThreadsPerCore=\([0-9]*\).*/\1/p' <<<"$hw")
    mem=$(sed -n 's/.* RealMemory=\([0-9]*\).*/\1/p' <<<"$hw")
    [[ -n $cpus && -n $sockets && -n $cores && -n $threads && -n $mem ]] ||
        die "cannot parse 'slurmd -C' output: $hw"
    # Oversubscription for concurrency tests (see the header): advertise SIM_SLURM_CPUS CPUs as one socket of
    # single-thread cores, so that CR_Core gives a -c 1 job exactly one CPU, and make slurmd register with these
    # numbers instead of the real ones. A real cluster would not do this.
    [[ $SIM_CPUS =~ ^[0-9]+$ ]] || die "SIM_SLURM_CPUS must be a number, not '$SIM_CPUS'"
    if [[ $SIM_CPUS -gt 0 && $SIM_CPUS -ne $cpus ]]; then
        [[ $SIM_CPUS -le 1024 ]] || die "SIM_SLURM_CPUS=$SIM_CPUS is more than 1024"
        cpus=$SIM_CPUS sockets=1 cores=$SIM_CPUS threads=1
        overrides=config_overrides
    fi
    # Without DefMemPerCPU a job that names no --mem is given the whole node's memory and jobs run one at a time
    # (docs/environment.md#slurm). Split the memory evenly over the (advertised) CPUs, so that as many default-memory jobs
    # as there are CPUs fit at once (32 CPUs on 24 GB: ~750 MB each). Memory is not enforced (no cgroups).
    defmem=$((mem / cpus))

    # Fake GPUs: gres File= must name device-like files; symlinks to /dev/null work, a regular file or a bare
    # Count= leaves the node INVAL (docs/environment.md#slurm).
    ln -sfn /dev/null "$STATE/fakegpu0"
    ln -sfn /dev/null "$STATE/fakegpu1"

    cat >"$CONF" <<EOF
# Written by scripts/slurm_cluster.sh; rewritten on every 'up'. See that script for why each line is here.
ClusterName=$CLUSTER
SlurmctldHost=localhost
SlurmctldPort=$CTLD_PORT
# Loopback only where choose_binding could arrange it ('$BIND' on this machine).
${comm}
SlurmdPort=$SLURMD_PORT
# Daemons run as root: nothing to chown, and slurmd must be root anyway.
SlurmUser=root
SlurmdUser=root
# Our own munged, on its own socket. cred_expire=10: a requeued job may restart only after the job credential
# expires; the default (120 s) made a requeue wait 121 s (docs/environment.md#slurm).
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCKET,cred_expire=10
StateSaveLocation=$SPOOL/ctld
SlurmdSpoolDir=$SPOOL/d
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups here (no systemd, container): track processes through /proc and bind nothing (docs/environment.md#slurm).
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SwitchType=switch/none
MpiDefault=none
MailProg=/bin/true
# SlurmdParameters=config_overrides (written only when SIM_SLURM_CPUS differs from the real CPU count; here:
# '${overrides:-none, real CPUs}'): slurmd registers the node with the CPUs/sockets/cores/threads written below
# instead of the hardware it detects, so the node is not INVAL or drained for "Low socket*core*thread count".
# Oversubscription for concurrency tests; see the header.
${overrides:+SlurmdParameters=$overrides}
# Cores and memory are consumable, so several 1-CPU jobs share the node; DefMemPerCPU is required with
# CR_Core_Memory (see above).
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$defmem
GresTypes=gpu
# Test-friendly timing: requeue allowed; finished jobs stay visible for 5 min; a cancelled/preempted job gets
# SIGTERM and SIGKILL 10 s later; a node that lost its slurmd comes back by itself when it re-registers.
JobRequeue=1
MinJobAge=300
KillWait=10
ReturnToService=2
# The main scheduler loop runs every 60 s and backfill every 30 s by default; jobs that become eligible later
# than their submission (a requeued job after cred_expire, a --begin job, a job held until a dependency ends)
# wait for one of those loops. Every second is cheap on one node.
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,bf_interval=1
# Accounting through slurmdbd is required: without it sacct fails and submitit never sees a cancelled or killed
# job as finished (docs/environment.md#slurm). Associations are enforced like on a real cluster, so a wrong --account fails
# at submission instead of passing silently. gres/gpu is tracked so sacct shows GPU allocations.
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$DBD_PORT
# Surprise: clients and slurmctld authenticate to slurmdbd with the munge socket named here, not the AuthInfo
# one (slurm 22.05 signs persistent connections with the "global" key, which AccountingStoragePass names);
# without it sacctmgr/sacct try /run/munge/munge.socket.2.
AccountingStoragePass=$MUNGE_SOCKET
AccountingStorageEnforce=associations
AccountingStorageTRES=gres/gpu
JobCompType=jobcomp/none

NodeName=localhost CPUs=$cpus SocketsPerBoard=$sockets CoresPerSocket=$cores ThreadsPerCore=$threads RealMemory=$mem Gres=gpu:2 State=UNKNOWN
PartitionName=$PARTITION Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF

    cat >"$ETC/gres.conf" <<EOF
# Written by scripts/slurm_cluster.sh. No GPU here: two fake devices so --gres=gpu:N schedules and sets
# CUDA_VISIBLE_DEVICES. AutoDetect=off: no NVML.
AutoDetect=off
NodeName=localhost Name=gpu File=$STATE/fakegpu[0-1]
EOF

    # The database password is made once per state dir; only root (slurmdbd.conf) and mysql (init file) read it.
    if [[ ! -s $ETC/dbpass ]]; then
        (umask 077 && head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' >"$ETC/dbpass")
    fi
    dbpass=$(cat "$ETC/dbpass")
    # slurmdbd refuses a slurmdbd.conf that others can read or that SlurmUser does not own.
    (umask 077 && cat >"$ETC/slurmdbd.conf" <<EOF
# Written by scripts/slurm_cluster.sh.
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
DbdHost=localhost
DbdPort=$DBD_PORT
${dbdcomm}
SlurmUser=root
PidFile=$RUN/slurmdbd.pid
LogFile=$LOG/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
# 127.0.0.1, not localhost: the MySQL client library turns "localhost" into the system socket, not ours.
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$dbpass
StorageLoc=slurm_acct_db
EOF
    )
    chmod 600 "$ETC/slurmdbd.conf"

    # Run by mariadbd at every start, so the slurm user and its grant exist whatever state the datadir is in.
    (umask 077 && cat >"$DB_DIR/init.sql" <<EOF
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$dbpass';
ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$dbpass';
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
EOF
    )
    chown mysql:mysql "$DB_DIR/init.sql"
}

# --- starting the daemons --------------------------------------------------------------------------------------

start_munged() {
    # Our own key and socket, so a system munged (if any) is neither needed nor disturbed.
    if [[ ! -s $MUNGE_KEY ]]; then
        runuser -u munge -- mungekey --create --keyfile="$MUNGE_KEY" 2>/dev/null ||
            { dd if=/dev/urandom of="$MUNGE_KEY" bs=1024 count=1 status=none && chown munge:munge "$MUNGE_KEY"; }
        chmod 400 "$MUNGE_KEY"
    fi
    mark_log munged
    rm -f -- "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock"
    # munged daemonizes itself and writes its pid file; it refuses to run as root, hence user munge.
    runuser -u munge -- munged --socket="$MUNGE_SOCKET" --key-file="$MUNGE_KEY" \
        --pid-file="${PIDFILE[munged]}" --log-file="${LOGFILE[munged]}" --seed-file="$MUNGE_DIR/munged.seed" 9>&- ||
        die "munged failed to start (see ${LOGFILE[munged]})"
    # shellcheck disable=SC2016  # $1 is expanded by the inner bash
    wait_for 15 munged bash -c 'munge -n -S "$1" | unmunge -S "$1"' _ "$MUNGE_SOCKET"
}

start_mariadbd() {
    local data=$DB_DIR/data
    if [[ ! -d $data/mysql ]]; then
        rm -rf -- "$data"
        mariadb-install-db --no-defaults --user=mysql --datadir="$data" --auth-root-authentication-method=socket \
            --skip-test-db >"$DB_DIR/install.log" 2>&1 ||
            die "mariadb-install-db failed (see $DB_DIR/install.log)"
    fi
    mark_log mariadbd
    rm -f -- "$DB_SOCKET"
    # mariadbd (as mysql) rewrites the pid file we fill in below: create it with the right owner first.
    install -o mysql -g mysql -m 644 /dev/null "${PIDFILE[mariadbd]}"
    # --no-defaults: ignore /etc/mysql (its socket, port and datadir are the system server's). Loopback only, on
    # our own port and socket. The buffer pool, log file size and lock wait timeout are the minimums slurmdbd
    # checks for (it logs an error below them); the pool is touched only as it fills, so 1 GiB costs nothing
    # here. Relaxed flushing: a test database. Native AIO is off because sandboxes often refuse io_setup().
    # mariadbd does not daemonize: run it in its own session so it survives this script and the terminal.
    setsid mariadbd --no-defaults --user=mysql --datadir="$data" --socket="$DB_SOCKET" --port="$DB_PORT" \
        --bind-address=127.0.0.1 --skip-name-resolve --pid-file="${PIDFILE[mariadbd]}" \
        --log-error="${LOGFILE[mariadbd]}" --init-file="$DB_DIR/init.sql" \
        --innodb-buffer-pool-size=1024M --innodb-log-file-size=64M --innodb-flush-log-at-trx-commit=2 \
        --innodb-lock-wait-timeout=900 --innodb-use-native-aio=0 --max-connections=50 \
        </dev/null >>"$LOG/mariadbd.out" 2>&1 9>&- &
    # Record the pid now (mariadbd writes the same pid later) so a failing start can still be torn down, and
    # wait the few milliseconds until bash's fork has exec'd setsid and setsid has exec'd mariadbd (same pid).
    local pid=$! i
    echo "$pid" >"${PIDFILE[mariadbd]}"
    for ((i = 0; i < 50; i++)); do
        [[ $(cat "/proc/$pid/comm" 2>/dev/null) == mariadbd ]] || ! kill -0 "$pid" 2>/dev/null && break
        sleep 0.1
    done
    local deadline=$(($(date +%s) + 60))
    until port_in_use "$DB_PORT"; do
        require_alive mariadbd
        [[ $(date +%s) -lt $deadline ]] || die "MariaDB did not listen on 127.0.0.1:$DB_PORT within 60 s"
        sleep 0.2
    done
}

start_slurmdbd() {
    mark_log slurmdbd
    start_bound slurmdbd 9>&- || die "slurmdbd failed to start (see ${LOGFILE[slurmdbd]})"
    # The first start creates the accounting tables; sacctmgr answers once slurmdbd serves requests.
    local deadline=$(($(date +%s) + 90))
    until sacctmgr -n -P list cluster format=cluster >/dev/null 2>&1; do
        require_alive slurmdbd
        [[ $(date +%s) -lt $deadline ]] || die "slurmdbd did not answer within 90 s (see ${LOGFILE[slurmdbd]})"
        sleep 0.2
    done
}

# The cluster, account and users must exist in the database before slurmctld starts (it does not register the
# cluster itself, and associations are enforced). Idempotent: only adds what is missing.
setup_accounting() {
    local users=(root) u
    if [[ -n ${SUDO_USER:-} && ${SUDO_USER} != root ]] && id "$SUDO_USER" >/dev/null 2>&1; then
        users+=("$SUDO_USER")
    fi
    if ! sacctmgr -n -P list cluster format=cluster | grep -qxF "$CLUSTER"; then
        sacctmgr -i add cluster "$CLUSTER" >/dev/null || die "sacctmgr add cluster $CLUSTER failed"
    fi
    if ! sacctmgr -n -P list account "$ACCOUNT" format=account | grep -qxF "$ACCOUNT"; then
        sacctmgr -i add account "$ACCOUNT" cluster="$CLUSTER" description="sim tests" organization=sim \
            >/dev/null || die "sacctmgr add account $ACCOUNT failed"
    fi
    for u in "${users[@]}"; do
        if ! sacctmgr -n -P list assoc cluster="$CLUSTER" account="$ACCOUNT" user="$u" format=user |
            grep -qxF "$u"; then
            sacctmgr -i add user "$u" account="$ACCOUNT" cluster="$CLUSTER" >/dev/null ||
                die "sacctmgr add user $u account=$ACCOUNT failed"
        fi
    done
}

start_slurmctld() {
    mark_log slurmctld
    start_bound slurmctld 9>&- || die "slurmctld failed to start (see ${LOGFILE[slurmctld]})"
    local deadline=$(($(date +%s) + 30))
    until scontrol ping 2>/dev/null | grep -q 'is UP'; do
        require_alive slurmctld
        [[ $(date +%s) -lt $deadline ]] || die "slurmctld did not answer within 30 s (see ${LOGFILE[slurmctld]})"
        sleep 0.2
    done
}

# Jobs from a previous life of this cluster (a machine restart, or a kill -9 that skipped 'down') have no
# processes left. Those slurmctld restores from its state dir would keep the node from ever being idle: cancel
# them before slurmd registers. Those it never saved stay RUNNING in the database ("runaway"): close them there,
# so that sacct tells the truth.
forget_previous_jobs() {
    local ids
    ids=$(squeue -h -o %A 2>/dev/null || true)
    if [[ -n $ids ]]; then
        log "cancelling jobs left from a previous start: ${ids//$'\n'/ }"
        # shellcheck disable=SC2086
        scancel $ids 2>/dev/null || true
    fi
    timeout 30 sacctmgr -i list runawayjobs >>"$LOG/sacctmgr.log" 2>&1 || true
}

start_slurmd() {
    # -N localhost: the node is named localhost whatever this machine's hostname is.
    mark_log slurmd
    start_bound slurmd -N localhost 9>&- || die "slurmd failed to start (see ${LOGFILE[slurmd]})"
    local deadline=$(($(date +%s) + 30)) st resumed=0 started
    while :; do
        require_alive slurmd
        # slurmctld restores the node's last state (often IDLE) from its state dir before slurmd says anything:
        # the node counts only once this slurmd has registered (SlurmdStartTime from this start).
        started=$(scontrol -o show node localhost 2>/dev/null | sed -n 's/.*SlurmdStartTime=\([^ ]*\).*/\1/p')
        started=$(date -d "$started" +%s 2>/dev/null || echo 0)
        st=
        [[ $started -lt ${STARTED[slurmd]} ]] || st=$(sinfo -h -n localhost -o %T 2>/dev/null | head -n 1)
        case $st in
            idle) break ;;
            # A drain or down state saved by a previous run (e.g. slurmd stopped under a running job) is not
            # this run's problem: resume the node once.
            drain* | down*)
                if [[ $resumed -eq 0 ]]; then
                    scontrol update nodename=localhost state=resume >/dev/null 2>&1 || true
                    resumed=1
                fi
                ;;
            inval*) die "node localhost is INVAL: $(sinfo -h -R -n localhost -o %E) (see $LOG/slurmctld.log)" ;;
        esac
        [[ $(date +%s) -lt $deadline ]] ||
            die "node localhost not idle within 30 s (state '${st:-none}'; see $LOG/slurmd.log)"
        sleep 0.2
    done
}

# End-to-end check: a GPU job on account sim runs to completion, sees a fake GPU, and sacct records it.
self_test() {
    local out=$LOG/selftest-%j.out id state deadline
    # shellcheck disable=SC2016  # expanded inside the job
    id=$(timeout 60 sbatch -W --parsable --account="$ACCOUNT" --gres=gpu:1 --job-name=selftest -o "$out" \
        --wrap 'echo "CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES"') ||
        die "self-test job failed or did not finish within 60 s (see $LOG/slurmctld.log)"
    id=${id%%;*}
    out=$LOG/selftest-$id.out
    grep -q '^CUDA_VISIBLE_DEVICES=[0-9]' "$out" 2>/dev/null ||
        die "self-test job $id saw no CUDA_VISIBLE_DEVICES (output: $(cat "$out" 2>/dev/null))"
    # slurmctld hands the job's end to slurmdbd asynchronously: give it a few seconds.
    deadline=$(($(date +%s) + 20))
    while :; do
        state=$(sacct -n -X -P -j "$id" -o State 2>/dev/null | head -n 1)
        [[ $state == COMPLETED ]] && break
        [[ $(date +%s) -lt $deadline ]] || die "sacct reports self-test job $id as '${state:-nothing}', not COMPLETED"
        sleep 0.2
    done
    rm -f -- "$out"
}

# --- subcommands -----------------------------------------------------------------------------------------------

running_daemons() {
    local n
    for n in "${DAEMONS[@]}"; do pid_of "$n" >/dev/null && echo "$n"; done
    return 0
}

lock() {
    mkdir -p "$STATE"
    # fd 9 holds the lock: every daemon is started with 9>&- so that it does not inherit (and keep) it.
    exec 9>"$STATE/.lock"
    flock -w 120 9 || die "another $PROG holds $STATE/.lock"
}

cmd_up() {
    local t0 running
    t0=$(now)
    [[ $(id -u) -eq 0 ]] || die "must run as root (slurmd, munged and apt-get need it)"
    [[ ${#MUNGE_SOCKET} -lt 100 ]] || die "SIM_SLURM_DIR is too long for a unix socket path: $STATE"
    lock
    mapfile -t running < <(running_daemons)
    if [[ ${#running[@]} -eq ${#DAEMONS[@]} ]] && scontrol ping 2>/dev/null | grep -q 'is UP'; then
        log "already up (state dir $STATE)"
        return 0
    fi
    if [[ ${#running[@]} -gt 0 ]]; then
        log "partly up (${running[*]} running): stopping those and starting afresh"
        do_down
    fi

    # If anything below fails, stop whatever this run started, so a failed 'up' leaves nothing behind.
    # shellcheck disable=SC2154  # rc is assigned inside the trap string
    trap 'rc=$?; if [[ $rc -ne 0 ]]; then log "up failed: stopping what was started"; do_down || true; fi' EXIT

    install_packages
    local p
    for p in "$DB_PORT" "$CTLD_PORT" "$SLURMD_PORT" "$DBD_PORT"; do
        ! port_in_use "$p" || die "port $p on 127.0.0.1 is in use (set SIM_SLURM_DB_PORT / SIM_SLURM_PORT)"
    done
    make_dirs
    choose_binding
    write_configs
    start_munged
    start_mariadbd
    start_slurmdbd
    setup_accounting
    start_slurmctld
    forget_previous_jobs
    start_slurmd
    wait_for 20 "sacct" sacct -n -X -S now-1minutes
    self_test
    trap - EXIT
    log "cluster $CLUSTER up in $(since "$t0") s (state dir $STATE; eval \"\$($0 env)\" to use it)"
}

# Stop everything of ours: cancel jobs first (their processes belong to slurmstepd, which outlives slurmd),
# then the daemons in reverse start order, then anything they left behind.
do_down() {
    local n pid pids deadline
    if pid_of slurmctld >/dev/null; then
        pids=$(squeue -h -o %A 2>/dev/null || true)
        if [[ -n $pids ]]; then
            log "cancelling jobs: ${pids//$'\n'/ }"
            # shellcheck disable=SC2086
            scancel $pids 2>/dev/null || true
            # KillWait=10: a job gets SIGTERM, then SIGKILL after 10 s. Without a live slurmd nobody ends the
            # jobs: the sweep below does.
            deadline=$(($(date +%s) + 25))
            while pid_of slurmd >/dev/null && [[ -n $(squeue -h -t running,completing -o %A 2>/dev/null) ]]; do
                [[ $(date +%s) -lt $deadline ]] || { log "jobs still ending after 25 s"; break; }
                sleep 0.3
            done
        fi
    fi
    # Reverse start order, in three steps whose daemons stop together (each needs ~1.5-4 s to exit here, so
    # this nearly halves the time): slurmctld flushes its accounting records to slurmdbd as it shuts down, and
    # slurmdbd writes to MariaDB, so those steps stay in order.
    stop_daemons slurmd slurmctld
    stop_daemons slurmdbd
    stop_daemons mariadbd munged
    pids=$(leftover_pids)
    if [[ -n $pids ]]; then
        log "killing leftover processes of this cluster: ${pids//$'\n'/ }"
        # shellcheck disable=SC2086
        kill -TERM $pids 2>/dev/null || true
        sleep 1
        pids=$(leftover_pids)
        # shellcheck disable=SC2086
        [[ -z $pids ]] || kill -KILL $pids 2>/dev/null || true
    fi
    rm -f -- "$MUNGE_SOCKET" "$DB_SOCKET"
}

cmd_down() {
    local t0
    t0=$(now)
    [[ -d $STATE ]] || { log "nothing to stop (no $STATE)"; return 0; }
    [[ $(id -u) -eq 0 ]] || die "must run as root"
    lock
    do_down
    log "down in $(since "$t0") s"
}

cmd_status() {
    local n pid up=0
    for n in "${DAEMONS[@]}"; do
        if pid=$(pid_of "$n"); then
            printf '%-10s running (pid %s)\n' "$n" "$pid"
            up=$((up + 1))
        else
            printf '%-10s stopped\n' "$n"
        fi
    done
    if pid_of slurmctld >/dev/null; then
        echo
        sinfo 2>&1 || true
        echo
        squeue 2>&1 || true
    fi
    echo
    echo "state dir: $STATE"
    # Exit 0 only when the whole cluster runs (3 = not running, as LSB init scripts say).
    [[ $up -eq ${#DAEMONS[@]} ]] || return 3
}

cmd_env() {
    printf 'export SLURM_CONF=%q\n' "$CONF"
}

cmd_clean() {
    cmd_down
    if [[ -d $STATE ]]; then
        [[ -e $MARKER ]] || die "$STATE was not made by this script; not deleting it"
        rm -rf -- "$STATE"
        log "deleted $STATE"
    fi
}

case ${1:-} in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    env) cmd_env ;;
    clean) cmd_clean ;;
    *)
        echo "usage: $0 up|down|status|env|clean   (state dir: \$SIM_SLURM_DIR, default /tmp/sim-slurm)" >&2
        exit 2
        ;;
esac
