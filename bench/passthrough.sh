#!/usr/bin/env bash
# bench/passthrough.sh: passthrough throughput of pgcloak, compared with
# PostgreSQL directly and with pgbouncer (session pooling).
#
# It starts its own throwaway PostgreSQL (bench/cmd/benchenv), initializes
# pgbench at scale $SCALE, builds and starts pgcloak and pgbouncer on
# 127.0.0.1, and runs `pgbench -S` (read-only, one primary-key select per
# transaction) in the simple, extended and prepared query modes. Within each
# mode the three targets run back to back (direct, pgcloak, pgbouncer), so
# drift on the machine hits all three alike; ROUNDS repeats the whole cycle
# and the table shows the mean.
#
# Environment (defaults in brackets):
#   DURATION  seconds per pgbench run [15]   ROUNDS   cycles [1]
#   SCALE     pgbench scale [10]              CLIENTS  pgbench -c [8]
#   JOBS      pgbench -j [2]
#   PIPE      1: also measure bench/cmd/bytepipe, a Go byte pipe (the floor
#             for any Go proxy), and print its ratios [0]
#   RELAY_AB  1: also measure a second pgcloak that keeps every session on
#             its own goroutines (PGCLOAK_RELAY=goroutines) instead of the
#             relay loop, and print its ratios [0]
#   TENANT    1: also measure sessions of a real deployment's configuration
#             (a login-mapped tenant role, an unscoped role, one declared
#             table that pgbench does not touch) on a third pgcloak: pgbench
#             -S as the tenant role ("tenant") and as the unscoped role
#             ("unscoped"), and pgbouncer as the tenant role
#             ("bouncer_tenant", same role and auth), and a token role
#             ("token": the same read after a session-level
#             SET pgcloak.tenant_token in each connection's first
#             transaction), and print their ratios [0]
#   LOOPS_AB  N (with TENANT=1): also measure the tenant role on a fourth
#             pgcloak that runs N relay loops (PGCLOAK_RELAY_LOOPS=N,
#             "tenant_loops") [unset]
#
# Needs Go, the PostgreSQL server binaries and pgbench, and pgbouncer
# (apt-get install -y postgresql pgbouncer). Everything it starts is stopped
# and every file it writes removed on exit, Ctrl-C included.
BENCH_NAME=passthrough.sh
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"

DURATION=${DURATION:-15}
ROUNDS=${ROUNDS:-1}
SCALE=${SCALE:-10}
CLIENTS=${CLIENTS:-8}
JOBS=${JOBS:-2}
MODES=(simple extended prepared)
TARGETS=(direct pgcloak pgbouncer)
PIPE=${PIPE:-0}
RELAY_AB=${RELAY_AB:-0}
TENANT=${TENANT:-0}
LOOPS_AB=${LOOPS_AB:-}

command -v pgbouncer >/dev/null || die "pgbouncer not found; install it with: apt-get install -y pgbouncer"

start_postgres

echo "--- pgbench -i -s $SCALE (PostgreSQL on 127.0.0.1:$PGPORT)"
"$PGBENCH" -i -s "$SCALE" -q -h 127.0.0.1 -p "$PGPORT" -U "$BENCH_USER" "$BENCH_DB" >"$work/init.log" 2>&1 ||
	{ cat "$work/init.log" >&2; die "pgbench -i failed"; }

echo "--- starting pgcloak on 127.0.0.1:$PGCLOAK_PORT"
cat >"$work/pgcloak.yaml" <<EOF
listen:
  address: 127.0.0.1:$PGCLOAK_PORT
  shutdown_timeout: 5s
upstream:
  address: 127.0.0.1:$PGPORT
  sslmode: disable
  user: $BENCH_USER
  password: \${PGCLOAK_UPSTREAM_PASSWORD}
  database: $BENCH_DB
keys:
  local:
    master_key_file: $work/master.key
log:
  level: warn
EOF
PGCLOAK_UPSTREAM_PASSWORD=$BENCH_PASSWORD "$work/pgcloak" serve -c "$work/pgcloak.yaml" 2>"$work/pgcloak.log" &
STOP_PIDS+=($!)
declare -A PID_OF=([pgcloak]=$!)

echo "--- starting pgbouncer on 127.0.0.1:$PGBOUNCER_PORT (session pooling)"
bouncer=$work/pgbouncer
mkdir "$bouncer"
printf '"%s" "%s"\n' "$BENCH_USER" "$BENCH_PASSWORD" >"$bouncer/userlist.txt"
cat >"$bouncer/pgbouncer.ini" <<EOF
[databases]
$BENCH_DB = host=127.0.0.1 port=$PGPORT dbname=$BENCH_DB

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $PGBOUNCER_PORT
unix_socket_dir =
auth_type = md5
auth_file = $bouncer/userlist.txt
pool_mode = session
max_client_conn = 200
default_pool_size = $((CLIENTS + 4))
logfile = $bouncer/pgbouncer.log
pidfile = $bouncer/pgbouncer.pid
ignore_startup_parameters = extra_float_digits
EOF
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
PID_OF[pgbouncer]=$!

if [[ $TENANT == 1 ]]; then
	printf '"%s" "%s"\n' bench_tenant "$BENCH_PASSWORD" >>"$bouncer/userlist.txt"
fi
declare -A PORT=([direct]=$PGPORT [pgcloak]=$PGCLOAK_PORT [pgbouncer]=$PGBOUNCER_PORT)
declare -A USER_OF=()
declare -A SCRIPT_OF=() # pgbench script options other than -S
if [[ $PIPE == 1 ]]; then
	echo "--- starting bytepipe (a Go byte pipe, the floor for a Go proxy)"
	go build -o "$work/bytepipe" ./bench/cmd/bytepipe
	"$work/bytepipe" -upstream "127.0.0.1:$PGPORT" >"$work/bytepipe.out" 2>&1 &
	STOP_PIDS+=($!)
	for _ in $(seq 50); do grep -q '^PORT=' "$work/bytepipe.out" && break; sleep 0.1; done
	PORT[pipe]=$(sed -n 's/^PORT=//p' "$work/bytepipe.out")
	[[ -n ${PORT[pipe]} ]] || die "bytepipe did not start"
	TARGETS+=(pipe)
fi
declare -A LOG=([pgcloak]=$work/pgcloak.log [pgbouncer]=$bouncer/pgbouncer.log)
login_targets=(pgcloak pgbouncer)
if [[ $RELAY_AB == 1 ]]; then
	echo "--- starting pgcloak with PGCLOAK_RELAY=goroutines on 127.0.0.1:$SPARE_PORT"
	sed "s/127.0.0.1:$PGCLOAK_PORT/127.0.0.1:$SPARE_PORT/" "$work/pgcloak.yaml" >"$work/pgcloak-goroutines.yaml"
	PGCLOAK_RELAY=goroutines PGCLOAK_UPSTREAM_PASSWORD=$BENCH_PASSWORD "$work/pgcloak" serve -c "$work/pgcloak-goroutines.yaml" 2>"$work/pgcloak-goroutines.log" &
	STOP_PIDS+=($!)
	PID_OF[goroutines]=$!
	PORT[goroutines]=$SPARE_PORT
	LOG[goroutines]=$work/pgcloak-goroutines.log
	TARGETS+=(goroutines)
	login_targets+=(goroutines)
fi
if [[ $TENANT == 1 ]]; then
	echo "--- starting pgcloak with a tenant role, an unscoped role and a declared table"
	go build -o "$work/connlat" ./bench/cmd/connlat
	TENANT_PORT=$("$work/connlat" -ports 1)
	psql_direct <<SQL
set client_min_messages = warning;
create role bench_tenant login password '$BENCH_PASSWORD';
create role bench_unscoped login password '$BENCH_PASSWORD';
create role bench_pool login password '$BENCH_PASSWORD';
grant select on pgbench_accounts, pgbench_branches, pgbench_tellers, pgbench_history to bench_tenant, bench_unscoped, bench_pool;
create table bench_secret (id int primary key, tenant_id text not null, secret bytea);
SQL
	"$work/pgcloak" keys init-local -o "$work/master.key" >/dev/null
	# The passthrough configuration on another port, with tenancy.
	{
		sed "s/127.0.0.1:$PGCLOAK_PORT/127.0.0.1:$TENANT_PORT/" "$work/pgcloak.yaml"
		cat <<EOF
tenancy:
  login:
    roles: { bench_tenant: acme }
  unscoped_roles: [bench_unscoped]
  token_roles: [bench_pool]
  jwt:
    hs256_secret: bench-hs256-secret-of-at-least-32-bytes
encrypt:
  tables:
    - name: public.bench_secret
      columns:
        - { name: secret, type: text }
EOF
	} >"$work/pgcloak-tenant.yaml"
	# serve refuses declared columns without pgcloak's format CHECKs.
	{ echo "set client_min_messages = warning;"; PGCLOAK_UPSTREAM_PASSWORD=$BENCH_PASSWORD "$work/pgcloak" schema -c "$work/pgcloak-tenant.yaml"; } | psql_direct >/dev/null
	PGCLOAK_UPSTREAM_PASSWORD=$BENCH_PASSWORD "$work/pgcloak" serve -c "$work/pgcloak-tenant.yaml" 2>"$work/pgcloak-tenant.log" &
	STOP_PIDS+=($!)
	PID_OF[tenant]=$! PID_OF[unscoped]=$! PID_OF[token]=$! PID_OF[bouncer_tenant]=${PID_OF[pgbouncer]}
	PORT[tenant]=$TENANT_PORT PORT[unscoped]=$TENANT_PORT PORT[token]=$TENANT_PORT PORT[bouncer_tenant]=$PGBOUNCER_PORT
	USER_OF[tenant]=bench_tenant USER_OF[unscoped]=bench_unscoped USER_OF[token]=bench_pool USER_OF[bouncer_tenant]=bench_tenant
	TARGETS+=(tenant unscoped token bouncer_tenant)
	# pgbench -S's read, after a session token set once per connection
	# (pgbench keeps a client's variables from one transaction to the next).
	token=$("$work/pgcloak" token --tenant acme --ttl 2h -c "$work/pgcloak-tenant.yaml") || die "pgcloak token failed"
	cat >"$work/token.sql" <<EOF
\\if :tok_set = 0
SET pgcloak.tenant_token = '$token';
\\set tok_set 1
\\endif
\\set aid random(1, $((100000 * SCALE)))
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
EOF
	SCRIPT_OF[token]="-D tok_set=0 -f $work/token.sql"
	wait_login tenant "$TENANT_PORT" bench_tenant "$BENCH_PASSWORD" "$work/pgcloak-tenant.log"
	if [[ -n $LOOPS_AB ]]; then
		LOOPS_PORT=$("$work/connlat" -ports 1)
		sed "s/127.0.0.1:$TENANT_PORT/127.0.0.1:$LOOPS_PORT/" "$work/pgcloak-tenant.yaml" >"$work/pgcloak-loops.yaml"
		PGCLOAK_RELAY_LOOPS=$LOOPS_AB PGCLOAK_UPSTREAM_PASSWORD=$BENCH_PASSWORD "$work/pgcloak" serve -c "$work/pgcloak-loops.yaml" 2>"$work/pgcloak-loops.log" &
		STOP_PIDS+=($!)
		PID_OF[tenant_loops]=$!
		PORT[tenant_loops]=$LOOPS_PORT USER_OF[tenant_loops]=bench_tenant
		TARGETS+=(tenant_loops)
		wait_login tenant_loops "$LOOPS_PORT" bench_tenant "$BENCH_PASSWORD" "$work/pgcloak-loops.log"
	fi
fi
for t in "${login_targets[@]}"; do
	wait_login "$t" "${PORT[$t]}" "$BENCH_USER" "$BENCH_PASSWORD" "${LOG[$t]}"
done

results=$work/results
: >"$results"
echo "--- pgbench -S -c $CLIENTS -j $JOBS -T $DURATION, $ROUNDS round(s)"
# cpu_ms PID: the CPU time (user + system, all threads) a process has used.
cpu_ms() {
	awk -v hz="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); print ($12 + $13) * 1000 / hz }' "/proc/$1/stat"
}
cpu=$work/cpu
: >"$cpu"
for round in $(seq "$ROUNDS"); do
	for mode in "${MODES[@]}"; do
		for t in "${TARGETS[@]}"; do
			pid=${PID_OF[$t]:-}
			[[ -z $pid ]] || before=$(cpu_ms "$pid")
			# shellcheck disable=SC2086 # SCRIPT_OF holds several words
			tps=$(pgbench_tps "$work/run-$round-$mode-$t.log" "against $t ($mode)" \
				-n ${SCRIPT_OF[$t]:--S} -M "$mode" -c "$CLIENTS" -j "$JOBS" -T "$DURATION" \
				-h 127.0.0.1 -p "${PORT[$t]}" -U "${USER_OF[$t]:-$BENCH_USER}" "$BENCH_DB")
			printf '  round %d  %-9s %-10s %12.1f tps\n' "$round" "$mode" "$t" "$tps"
			echo "$mode $t $tps" >>"$results"
			# The proxy's CPU per transaction, in microseconds.
			[[ -z $pid ]] || echo "$mode $t $(cpu_ms "$pid") $before $tps $DURATION" >>"$cpu"
		done
	done
done

echo
echo "pgbench -S, scale $SCALE, $CLIENTS clients, $JOBS threads, ${DURATION}s per run, mean of $ROUNDS round(s)"
versions "$(pgbouncer --version | head -n1)"
echo
# extra_ratios TARGET NAME: one line per mode with TARGET's mean tps, its
# ratio to pgbouncer and pgcloak's ratio to it.
extra_ratios() {
	awk -v modes="${MODES[*]}" -v t="$1" -v name="$2" '
		{ sum[$1, $2] += $3; n[$1, $2]++ }
		END {
			m = split(modes, ms, " ")
			for (i = 1; i <= m; i++) {
				x = sum[ms[i], t] / n[ms[i], t]
				printf "%s %-9s %8.0f tps, %s/pgbouncer %.2f, pgcloak/%s %.2f\n", name, ms[i], x, name, x / (sum[ms[i], "pgbouncer"] / n[ms[i], "pgbouncer"]),
					name, (sum[ms[i], "pgcloak"] / n[ms[i], "pgcloak"]) / x
			}
		}' "$work/results"
	echo
}
echo "proxy CPU per transaction (user + system, all threads), mean of the rounds:"
awk '{ us = ($3 - $4) * 1000 / ($5 * $6); sum[$1 " " $2] += us; n[$1 " " $2]++ }
	END { for (k in sum) printf "  %-24s %6.1f us\n", k, sum[k] / n[k] }' "$cpu" | sort
echo
if [[ $PIPE == 1 ]]; then extra_ratios pipe bytepipe; fi
if [[ $RELAY_AB == 1 ]]; then extra_ratios goroutines goroutines; fi
if [[ $TENANT == 1 ]]; then
	# Each target of the tenant configuration against pgbouncer as the
	# tenant role.
	awk -v modes="${MODES[*]}" -v loops="$LOOPS_AB" '
		{ sum[$1, $2] += $3; n[$1, $2]++ }
		END {
			m = split(modes, ms, " ")
			for (i = 1; i <= m; i++) {
				b = sum[ms[i], "bouncer_tenant"] / n[ms[i], "bouncer_tenant"]
				t = sum[ms[i], "tenant"] / n[ms[i], "tenant"]
				u = sum[ms[i], "unscoped"] / n[ms[i], "unscoped"]
				k = sum[ms[i], "token"] / n[ms[i], "token"]
				printf "tenant config %-9s pgbouncer as the tenant role %8.0f tps; tenant session %8.0f tps, /pgbouncer %.2f; unscoped session %8.0f tps, /pgbouncer %.2f; token session %8.0f tps, /pgbouncer %.2f\n", ms[i], b, t, t / b, u, u / b, k, k / b
				if (n[ms[i], "tenant_loops"] > 0) {
					x = sum[ms[i], "tenant_loops"] / n[ms[i], "tenant_loops"]
					printf "tenant config %-9s with %s relay loops: tenant session %8.0f tps, /pgbouncer %.2f, /one loop %.2f\n", ms[i], loops, x, x / b, x / t
				}
			}
		}' "$work/results"
	echo
fi
awk -v modes="${MODES[*]}" '
	{ sum[$1, $2] += $3; n[$1, $2]++ }
	END {
		printf "| %-9s | %12s | %12s | %13s | %14s | %16s | %17s |\n", "mode", "direct tps", "pgcloak tps", "pgbouncer tps", "pgcloak/direct", "pgbouncer/direct", "pgcloak/pgbouncer"
		printf "|%s|%s|%s|%s|%s|%s|%s|\n", "-----------", "-------------:", "-------------:", "--------------:", "---------------:", "-----------------:", "------------------:"
		m = split(modes, ms, " ")
		for (i = 1; i <= m; i++) {
			mode = ms[i]
			d = sum[mode, "direct"] / n[mode, "direct"]
			c = sum[mode, "pgcloak"] / n[mode, "pgcloak"]
			b = sum[mode, "pgbouncer"] / n[mode, "pgbouncer"]
			printf "| %-9s | %12.0f | %12.0f | %13.0f | %14.2f | %16.2f | %17.2f |\n", mode, d, c, b, c / d, b / d, c / b
		}
	}' "$results"
