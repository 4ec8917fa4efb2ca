#!/usr/bin/env bash
# bench/connect.sh: connection latency of pgcloak, compared with PostgreSQL
# directly and with pgbouncer (session pooling).
#
# lib/pq's listener tests allow 100 ms for a connection, and pgbench -C
# showed pgcloak adding about 3 ms to each. This measures it: for each
# target, N sequential connections (connect, SSLRequest answered N as with
# libpq's default sslmode=prefer, SCRAM login, `SELECT 1`, disconnect;
# bench/cmd/connlat, with pgx's pgconn) and their 50th and 99th percentile.
# Rounds alternate the targets, so drift on the machine hits them alike.
# Targets:
#
#   direct          PostgreSQL
#   pgcloak         pgcloak as a pure passthrough (no tenancy, no tables:
#                   the relay loop carries the session after startup)
#   unscoped        pgcloak with unscoped_roles: ["*"] and no tables
#                   (tenancy on: the session's own goroutines carry it)
#   pgbouncer       pgbouncer, session pooling: it keeps its server
#                   connections, so no backend is forked per connection
#   pgcloak>bouncer pgcloak (as "pgcloak") in front of that pgbouncer: the
#                   difference with pgbouncer is what pgcloak adds, without
#                   a backend's fork and start dominating the figures
#   pipe            bench/cmd/bytepipe in front of PostgreSQL: a Go byte
#                   pipe that dials as it accepts and copies bytes, the
#                   floor for any proxy written in Go that relays the login
#   pipe>bouncer    the same pipe in front of pgbouncer: pgcloak>bouncer
#                   against pipe>bouncer is what pgcloak adds beyond relaying
#
# Environment (defaults in brackets):
#   N        connections per target and round [200]   ROUNDS  rounds [3]
#   BOUNCER  0: leave pgbouncer out (and pgcloak>bouncer) [1]
#   PIPE     0: leave the byte pipes out [1]
#   BEFORE   a pgcloak binary (e.g. built at an earlier commit) measured as
#            "before" and "before>bouncer" beside "pgcloak": a before/after
#            comparison under the same load [unset]
#   PERF     1: then N more connections to pgcloak under perf (hottest
#            symbols, and functions with what they call) and N more under
#            strace -c (system calls per connection) [0]
#
# Needs Go, the PostgreSQL server binaries, and pgbouncer (apt-get install -y
# postgresql pgbouncer). Everything it starts is stopped and every file it
# writes removed on exit, Ctrl-C included; each connection is bounded to 10 s.
BENCH_NAME=connect.sh
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"

N=${N:-200}
ROUNDS=${ROUNDS:-3}
BOUNCER=${BOUNCER:-1}
PIPE=${PIPE:-1}
BEFORE=${BEFORE:-}
if [[ $BOUNCER == 1 ]]; then
	command -v pgbouncer >/dev/null || die "pgbouncer not found; install it with: apt-get install -y pgbouncer (or BOUNCER=0)"
fi
[[ -z $BEFORE || -x $BEFORE ]] || die "BEFORE=$BEFORE is not an executable"

start_postgres
go build -o "$work/connlat" ./bench/cmd/connlat
mapfile -t more_ports < <("$work/connlat" -ports 3)
if [[ $PIPE == 1 ]]; then go build -o "$work/bytepipe" ./bench/cmd/bytepipe; fi

# upstream.user may not be a client's login once tenancy is on: the
# unscoped proxy has a role of its own.
psql_direct -c "create role bench_proxy login password 'bench_proxy'" >/dev/null

declare -A PORT=([direct]=$PGPORT) PID=()
TARGETS=(direct)

# cpu_ms PID: the CPU time (user + system, all threads) a process has used.
cpu_ms() {
	awk -v hz="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); print ($12 + $13) * 1000 / hz }' "/proc/$1/stat"
}

# start_pipe NAME UPSTREAM_PORT: starts a bytepipe in front of
# UPSTREAM_PORT (it picks its own port and prints it).
start_pipe() {
	local name=$1 out=$work/bytepipe-${1//>/-}.out
	"$work/bytepipe" -upstream "127.0.0.1:$2" >"$out" 2>&1 &
	STOP_PIDS+=($!)
	PID[$name]=$!
	for _ in $(seq 50); do grep -q '^PORT=' "$out" && break; sleep 0.1; done
	PORT[$name]=$(sed -n 's/^PORT=//p' "$out")
	[[ -n ${PORT[$name]} ]] || die "bytepipe ($name) did not start: $(cat "$out")"
	TARGETS+=("$name")
}

# start_pgcloak NAME BINARY PORT UPSTREAM_PORT [TENANCY_YAML]: starts a
# pgcloak in the background and waits until it takes a login.
start_pgcloak() {
	local name=$1 bin=$2 port=$3 upstream=$4 tenancy=${5:-} user=$BENCH_USER password=$BENCH_PASSWORD
	if [[ -n $tenancy ]]; then user=bench_proxy password=bench_proxy; fi
	echo "--- starting $name on 127.0.0.1:$port (upstream 127.0.0.1:$upstream)"
	cat >"$work/$name.yaml" <<-YAML
		listen:
		  address: 127.0.0.1:$port
		  shutdown_timeout: 5s
		upstream:
		  address: 127.0.0.1:$upstream
		  sslmode: disable
		  user: $user
		  password: \${PGCLOAK_UPSTREAM_PASSWORD}
		  database: $BENCH_DB
		keys:
		  local:
		    master_key_file: $work/master.key
		log:
		  level: warn
		$tenancy
	YAML
	PGCLOAK_UPSTREAM_PASSWORD=$password "$bin" serve -c "$work/$name.yaml" 2>"$work/$name.log" &
	STOP_PIDS+=($!)
	PID[$name]=$!
	wait_login "$name" "$port" "$BENCH_USER" "$BENCH_PASSWORD" "$work/$name.log"
	PORT[$name]=$port
	TARGETS+=("$name")
}

start_pgcloak pgcloak "$work/pgcloak" "$PGCLOAK_PORT" "$PGPORT"
if [[ -n $BEFORE ]]; then
	start_pgcloak before "$BEFORE" "$SPARE_PORT" "$PGPORT"
else
	start_pgcloak unscoped "$work/pgcloak" "$SPARE_PORT" "$PGPORT" $'tenancy:\n  unscoped_roles: ["*"]'
fi
if [[ $PIPE == 1 ]]; then start_pipe pipe "$PGPORT"; fi

if [[ $BOUNCER == 1 ]]; then
	echo "--- starting pgbouncer on 127.0.0.1:$PGBOUNCER_PORT (session pooling)"
	bouncer=$work/pgbouncer
	mkdir "$bouncer"
	printf '"%s" "%s"\n' "$BENCH_USER" "$BENCH_PASSWORD" >"$bouncer/userlist.txt"
	cat >"$bouncer/pgbouncer.ini" <<-INI
		[databases]
		$BENCH_DB = host=127.0.0.1 port=$PGPORT dbname=$BENCH_DB

		[pgbouncer]
		listen_addr = 127.0.0.1
		listen_port = $PGBOUNCER_PORT
		unix_socket_dir =
		auth_type = scram-sha-256
		auth_file = $bouncer/userlist.txt
		pool_mode = session
		max_client_conn = 50
		default_pool_size = 4
		logfile = $bouncer/pgbouncer.log
		pidfile = $bouncer/pgbouncer.pid
	INI
	chmod 0600 "$bouncer/userlist.txt"
	if [[ $(id -u) -eq 0 ]]; then
		# pgbouncer refuses to run as root.
		id postgres >/dev/null 2>&1 || die "running as root needs a 'postgres' OS user for pgbouncer"
		chown -R postgres: "$bouncer"
		setpriv --reuid=postgres --regid=postgres --init-groups pgbouncer "$bouncer/pgbouncer.ini" 2>"$work/pgbouncer.stderr" &
	else
		pgbouncer "$bouncer/pgbouncer.ini" 2>"$work/pgbouncer.stderr" &
	fi
	STOP_PIDS+=($!)
	PID[pgbouncer]=$!
	wait_login pgbouncer "$PGBOUNCER_PORT" "$BENCH_USER" "$BENCH_PASSWORD" "$bouncer/pgbouncer.log"
	PORT[pgbouncer]=$PGBOUNCER_PORT
	TARGETS+=(pgbouncer)
	start_pgcloak 'pgcloak>bouncer' "$work/pgcloak" "${more_ports[0]}" "$PGBOUNCER_PORT"
	if [[ -n $BEFORE ]]; then
		start_pgcloak 'before>bouncer' "$BEFORE" "${more_ports[1]}" "$PGBOUNCER_PORT"
	fi
	if [[ $PIPE == 1 ]]; then start_pipe "pipe>bouncer" "$PGBOUNCER_PORT"; fi
fi

args=()
for t in "${TARGETS[@]}"; do
	args+=("$t=postgres://$BENCH_USER:$BENCH_PASSWORD@127.0.0.1:${PORT[$t]}/$BENCH_DB?sslmode=disable")
done
declare -A CPU0=()
for t in "${!PID[@]}"; do CPU0[$t]=$(cpu_ms "${PID[$t]}"); done
echo "--- $N sequential connections per target, $ROUNDS rounds"
"$work/connlat" -n "$N" -rounds "$ROUNDS" "${args[@]}" | tee "$work/results"
# CPU per connection of each proxy: what it costs the machine, whatever the
# load (the probes of wait_login happened before CPU0).
# pgbouncer also serves the connections of the pgcloak>bouncer targets.
served_by_bouncer=1
for t in "${TARGETS[@]}"; do [[ $t == *'>bouncer' ]] && served_by_bouncer=$((served_by_bouncer + 1)); done
for t in "${!PID[@]}"; do
	n=$((N * ROUNDS))
	[[ $t == pgbouncer ]] && n=$((n * served_by_bouncer))
	echo "CPU $t $(awk -v a="${CPU0[$t]}" -v b="$(cpu_ms "${PID[$t]}")" -v n=$n 'BEGIN { printf "%.3f", (b - a) / n }')" >>"$work/results"
done

if [[ ${PERF:-0} == 1 ]]; then
	# Where pgcloak's time goes: perf's hottest symbols and strace's system
	# call counts per connection, over N more connections to pgcloak alone.
	command -v perf >/dev/null || die "PERF=1 needs perf (apt-get install -y linux-perf)"
	command -v strace >/dev/null || die "PERF=1 needs strace (apt-get install -y strace)"
	url="postgres://$BENCH_USER:$BENCH_PASSWORD@127.0.0.1:${PORT[pgcloak]}/$BENCH_DB?sslmode=disable"
	# while_connecting CMD...: runs CMD (a tracer of pgcloak's process) in
	# the background while N more connections are made, then stops it.
	while_connecting() {
		"$@" 2>/dev/null &
		local tracer=$!
		sleep 1
		"$work/connlat" -n "$N" -rounds 1 "pgcloak=$url" >/dev/null
		kill -INT "$tracer"
		wait "$tracer" || true
	}
	while_connecting perf record -F 4999 -g -o "$work/perf.data" -p "${PID[pgcloak]}"
	echo "--- perf: pgcloak's hottest symbols over $N connections"
	perf report -i "$work/perf.data" --no-children --sort dso,symbol --stdio -g none 2>/dev/null | grep -v '^#' | grep -v '^$' | head -40 || true
	echo "--- perf: pgcloak's functions with what they call (children), over the same connections"
	perf report -i "$work/perf.data" --children --sort symbol --stdio -g none 2>/dev/null | grep -v '^#' | grep -v '^$' | grep -v '\[k\]' | head -60 || true
	while_connecting strace -f -c -o "$work/strace.txt" -p "${PID[pgcloak]}"
	echo "--- strace: pgcloak's system calls per connection ($N connections)"
	awk -v n="$N" '$1 ~ /^[0-9.]+$/ && NF >= 5 { printf "  %-16s %8.1f\n", $NF, $4 / n }' "$work/strace.txt" | sort -k2 -nr | head -20 || true
fi

echo
echo "connect + SSLRequest (N) + SCRAM login + SELECT 1 + disconnect, $N per target and round, $ROUNDS rounds"
versions "$(if [[ $BOUNCER == 1 ]]; then pgbouncer --version | head -n1; fi)" "load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo
awk '
	/^SUMMARY/ { name[++n] = $2; p50[$2] = $3; p99[$2] = $4; mean[$2] = $5 }
	/^CPU/ { cpu[$2] = $3 }
	END {
		printf "| %-15s | %8s | %8s | %9s | %22s |\n", "target", "p50 ms", "p99 ms", "mean ms", "proxy CPU ms per conn."
		printf "|%s|%s|%s|%s|%s|\n", "-----------------", "---------:", "---------:", "----------:", "-----------------------:"
		for (i = 1; i <= n; i++) {
			t = name[i]
			c = (t in cpu) ? sprintf("%.3f", cpu[t]) : "-"
			printf "| %-15s | %8.2f | %8.2f | %9.2f | %22s |\n", t, p50[t], p99[t], mean[t], c
		}
		print ""
		if ("pgcloak" in p50)
			printf "pgcloak - direct:           p50 %+.2f ms, p99 %+.2f ms\n", p50["pgcloak"] - p50["direct"], p99["pgcloak"] - p99["direct"]
		if ("pipe" in p50)
			printf "pgcloak - pipe:             p50 %+.2f ms, p99 %+.2f ms\n", p50["pgcloak"] - p50["pipe"], p99["pgcloak"] - p99["pipe"]
		if ("pgcloak>bouncer" in p50)
			printf "pgcloak>bouncer - pgbouncer: p50 %+.2f ms, p99 %+.2f ms\n", p50["pgcloak>bouncer"] - p50["pgbouncer"], p99["pgcloak>bouncer"] - p99["pgbouncer"]
		if ("pipe>bouncer" in p50)
			printf "pipe>bouncer - pgbouncer:    p50 %+.2f ms, p99 %+.2f ms\n", p50["pipe>bouncer"] - p50["pgbouncer"], p99["pipe>bouncer"] - p99["pgbouncer"]
		if ("pipe>bouncer" in p50 && "pgcloak>bouncer" in p50)
			printf "pgcloak>bouncer - pipe>bouncer: p50 %+.2f ms, p99 %+.2f ms\n", p50["pgcloak>bouncer"] - p50["pipe>bouncer"], p99["pgcloak>bouncer"] - p99["pipe>bouncer"]
		if ("before>bouncer" in p50)
			printf "before>bouncer - pgbouncer:  p50 %+.2f ms, p99 %+.2f ms\n", p50["before>bouncer"] - p50["pgbouncer"], p99["before>bouncer"] - p99["pgbouncer"]
	}' "$work/results"
