# shellcheck shell=bash
# bench/lib.sh: what the benchmark scripts share: a work directory, a
# throwaway PostgreSQL started by bench/cmd/benchenv, a pgcloak binary, and
# cleanup of everything they start (Ctrl-C included). Source it after
# setting BENCH_NAME; add the PIDs of processes you start to STOP_PIDS, and
# start helpers that print READY=1 (benchenv, kmsenv) with start_env.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

die() {
	echo "$BENCH_NAME: $*" >&2
	exit 1
}

command -v go >/dev/null || die "go not found"

work=$(mktemp -d -t pgcloak-bench.XXXXXX)
chmod 0755 "$work"
STOP_PIDS=()
ENV_PIDS=() # helpers started by start_env, and
ENV_FDS=()  # the write ends of their stdin FIFOs, held open until cleanup

# stop PID: SIGTERM, wait up to 10s, then SIGKILL. Only PIDs a script
# started are ever passed here.
stop() {
	local pid=$1
	[[ -n $pid ]] || return 0
	kill -TERM "$pid" 2>/dev/null || return 0
	for _ in $(seq 100); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	kill -KILL "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
}

cleanup() {
	local status=$?
	trap - EXIT INT TERM
	local pid fd
	for pid in "${STOP_PIDS[@]}"; do stop "$pid"; done
	# Closing its stdin makes a helper stop what it serves and exit.
	for fd in "${ENV_FDS[@]}"; do exec {fd}>&- || true; done
	for pid in "${ENV_PIDS[@]}"; do
		for _ in $(seq 300); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		stop "$pid"
	done
	rm -rf "$work"
	exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# start_postgres builds pgcloak and benchenv into $work, starts PostgreSQL,
# and sets PGHOST PGPORT BENCH_USER BENCH_PASSWORD BENCH_DB BINDIR
# PGCLOAK_PORT PGBOUNCER_PORT SPARE_PORT PGBENCH PSQL.
start_postgres() {
	echo "--- building pgcloak and benchenv"
	go build -o "$work/pgcloak" ./cmd/pgcloak
	go build -o "$work/benchenv" ./bench/cmd/benchenv

	echo "--- starting PostgreSQL"
	start_env benchenv "$work/benchenv"
	env_vars benchenv PGHOST PGPORT BENCH_USER BENCH_PASSWORD BENCH_DB BINDIR PGCLOAK_PORT PGBOUNCER_PORT SPARE_PORT
	PGBENCH=$(tool pgbench)
	PSQL=$(tool psql)
	export PGPASSWORD=$BENCH_PASSWORD PGSSLMODE=disable PGCONNECT_TIMEOUT=10
	unset PGSERVICE PGSERVICEFILE PGOPTIONS
}

# start_env NAME CMD...: starts the helper CMD in the background with a FIFO
# on its standard input whose write end stays open until cleanup closes it:
# its lifeline, which also ends when the script is killed. Its stdout goes
# to $work/NAME.out, its stderr to $work/NAME.log. Waits until it prints
# READY=1, and dies if it exits first or takes longer than 120s.
start_env() {
	local name=$1 fd
	shift
	mkfifo "$work/$name.in"
	"$@" <"$work/$name.in" >"$work/$name.out" 2>"$work/$name.log" &
	ENV_PIDS+=($!)
	exec {fd}>"$work/$name.in"
	ENV_FDS+=("$fd")
	for _ in $(seq 1200); do
		grep -q '^READY=1$' "$work/$name.out" && return 0
		kill -0 "${ENV_PIDS[-1]}" 2>/dev/null || { cat "$work/$name.log" >&2; die "$name exited"; }
		sleep 0.1
	done
	cat "$work/$name.log" >&2
	die "$name did not start within 120s"
}

# env_vars NAME KEY...: sets each KEY to its value in the KEY=VALUE lines
# start_env's helper NAME printed.
env_vars() {
	local name=$1 key value want
	shift
	while IFS='=' read -r key value; do
		for want; do
			if [[ $key == "$want" ]]; then printf -v "$key" '%s' "$value"; fi
		done
	done <"$work/$name.out"
}

tool() { # the PostgreSQL client program $1, preferring the server's own
	if [[ -x $BINDIR/$1 ]]; then echo "$BINDIR/$1"; else command -v "$1" || die "$1 not found"; fi
}

# pgcloak_yaml_head: the listen and upstream sections of a pgcloak.yaml for
# $PGCLOAK_PORT and the benchmark's PostgreSQL as $BENCH_USER, with the
# password from PGCLOAK_UPSTREAM_PASSWORD (serve_pgcloak sets it).
pgcloak_yaml_head() {
	cat <<EOF
listen:
  address: 127.0.0.1:$PGCLOAK_PORT
  shutdown_timeout: 5s
upstream:
  address: 127.0.0.1:$PGPORT
  user: $BENCH_USER
  password: \${PGCLOAK_UPSTREAM_PASSWORD}
  database: $BENCH_DB
EOF
}

# serve_pgcloak ROLE PASSWORD: starts pgcloak serve -c $work/pgcloak.yaml in
# the background (its PID in PGCLOAK_PID, its log in $work/pgcloak.log) and
# waits until ROLE logs in through it.
serve_pgcloak() {
	PGCLOAK_UPSTREAM_PASSWORD=$BENCH_PASSWORD "$work/pgcloak" serve -c "$work/pgcloak.yaml" 2>"$work/pgcloak.log" &
	PGCLOAK_PID=$!
	STOP_PIDS+=("$PGCLOAK_PID")
	wait_login pgcloak "$PGCLOAK_PORT" "$1" "$2" "$work/pgcloak.log"
}

# wait_login NAME PORT USER PASSWORD LOGFILE: wait until a psql login on
# 127.0.0.1:PORT works.
wait_login() {
	local name=$1 port=$2 user=$3 password=$4 log=$5
	for _ in $(seq 100); do
		if PGPASSWORD=$password "$PSQL" -X -q -At -h 127.0.0.1 -p "$port" -U "$user" -d "$BENCH_DB" -c 'select 1' >/dev/null 2>"$work/probe.err"; then
			return 0
		fi
		sleep 0.1
	done
	cat "$work/probe.err" "$log" >&2 || true
	die "$name did not accept a login"
}

# psql_direct [ARGS...]: psql straight to PostgreSQL as BENCH_USER, stopping
# at the first error.
psql_direct() { "$PSQL" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PGPORT" -U "$BENCH_USER" -d "$BENCH_DB" "$@"; }

# pgbench_tps LOG WHAT ARGS...: runs pgbench ARGS with its output in LOG and
# prints the tps it reports. It dies, showing LOG, if pgbench fails, reports
# no tps, or reports failed transactions. WHAT names the run in messages.
pgbench_tps() {
	local out=$1 what=$2
	shift 2
	"$PGBENCH" "$@" >"$out" 2>&1 || { cat "$out" >&2; die "pgbench $what failed"; }
	if grep -q 'number of failed transactions: [1-9]' "$out"; then
		cat "$out" >&2
		die "failed transactions in pgbench $what"
	fi
	local tps
	tps=$(awk '/^tps = / { print $3; exit }' "$out")
	[[ -n $tps ]] || { cat "$out" >&2; die "no tps in pgbench $what"; }
	echo "$tps"
}

# versions [MORE...]: the results' footer line: CPUs, pgbench's version,
# pgcloak's commit, then each MORE, separated by "; ".
versions() {
	local line more
	line="$(nproc) CPUs; $("$PGBENCH" --version); pgcloak $(git rev-parse --short HEAD 2>/dev/null || echo '(no commit)')"
	for more; do line+="; $more"; done
	echo "$line"
}
