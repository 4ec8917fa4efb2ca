# shellcheck shell=bash
# bench/lib.sh: what the benchmark scripts share: a work directory, a
# throwaway PostgreSQL started by bench/cmd/benchenv, a pgcloak binary, and
# cleanup of everything they start (Ctrl-C included). Source it after
# setting BENCH_NAME; add the PIDs of processes you start to STOP_PIDS.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

die() {
	echo "$BENCH_NAME: $*" >&2
	exit 1
}

command -v go >/dev/null || die "go not found"

work=$(mktemp -d -t pgcloak-bench.XXXXXX)
chmod 0755 "$work"
benchenv_pid=
STOP_PIDS=()

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
	local pid
	for pid in "${STOP_PIDS[@]}"; do stop "$pid"; done
	if [[ -n $benchenv_pid ]]; then
		# Closing its stdin makes benchenv stop PostgreSQL and exit.
		exec 3>&- || true
		for _ in $(seq 300); do
			kill -0 "$benchenv_pid" 2>/dev/null || break
			sleep 0.1
		done
		stop "$benchenv_pid"
	fi
	rm -rf "$work"
	exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# start_postgres builds pgcloak and benchenv into $work, starts PostgreSQL,
# and sets PGHOST PGPORT BENCH_USER BENCH_PASSWORD BENCH_DB BINDIR
# PGCLOAK_PORT PGBOUNCER_PORT PGBENCH PSQL.
start_postgres() {
	echo "--- building pgcloak and benchenv"
	go build -o "$work/pgcloak" ./cmd/pgcloak
	go build -o "$work/benchenv" ./bench/cmd/benchenv

	echo "--- starting PostgreSQL"
	mkfifo "$work/benchenv.in"
	"$work/benchenv" <"$work/benchenv.in" >"$work/benchenv.out" 2>"$work/benchenv.log" &
	benchenv_pid=$!
	exec 3>"$work/benchenv.in" # held open until cleanup: benchenv's lifeline
	for _ in $(seq 1200); do
		grep -q '^READY=1$' "$work/benchenv.out" && break
		kill -0 "$benchenv_pid" 2>/dev/null || { cat "$work/benchenv.log" >&2; die "benchenv exited"; }
		sleep 0.1
	done
	grep -q '^READY=1$' "$work/benchenv.out" || die "PostgreSQL did not start within 120s"
	local key value
	while IFS='=' read -r key value; do
		case $key in
		PGHOST | PGPORT | BENCH_USER | BENCH_PASSWORD | BENCH_DB | BINDIR | PGCLOAK_PORT | PGBOUNCER_PORT)
			printf -v "$key" '%s' "$value"
			;;
		esac
	done <"$work/benchenv.out"
	PGBENCH=$(tool pgbench)
	PSQL=$(tool psql)
	export PGPASSWORD=$BENCH_PASSWORD PGSSLMODE=disable PGCONNECT_TIMEOUT=10
	unset PGSERVICE PGSERVICEFILE PGOPTIONS
}

tool() { # the PostgreSQL client program $1, preferring the server's own
	if [[ -x $BINDIR/$1 ]]; then echo "$BINDIR/$1"; else command -v "$1" || die "$1 not found"; fi
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
