#!/usr/bin/env bash
# transparency.sh — pgcloak's transparency bar: the test suites of pgx and
# lib/pq, and PostgreSQL's own regression suite, must pass through pgcloak
# exactly as they pass directly against PostgreSQL.
#
# For each suite it starts a throwaway PostgreSQL (testenv, via
# scripts/transparencyenv), configures it the way the suite's CI does (users,
# pg_hba.conf auth methods, TLS certificates, extensions, databases), puts a
# pgcloak proxy in front of it, then runs the suite twice from a writable copy
# of the module: once directly against PostgreSQL and once through the proxy.
# It compares the sets of failing tests and exits 1 if any test fails through
# the proxy but not directly (0 if none does, 2 if the setup failed).
#
# The regress suite is PostgreSQL's regression suite (pg_regress with
# parallel_schedule, as `make installcheck` runs it against an existing
# server: pg_regress drops and creates the database "regression" itself),
# with the sql/, expected/ and data/ files of the Debian source package of
# exactly the installed server version and regress.so built against it
# (scripts/regress-sources.sh; cached, see there). It runs against two
# identical fresh servers, one directly and one through pgcloak in pure
# passthrough (no declared tables, no tenant roles; the suite's login role,
# the bootstrap superuser as in `make installcheck`, is unscoped, and
# upstream.user is a role of its own that the suite never logs in as).
# Loopback logins are trusted, as pg_regress's own temporary instance trusts
# them. Every test that passes
# directly must pass through pgcloak, and a test that fails both ways must
# print the same output both ways; the diffs of a test that fails through
# pgcloak only are printed.
#
# Everything binds to 127.0.0.1 and is stopped on exit. Needs go, psql, openssl and the
# PostgreSQL server binaries (postgresql, postgresql-contrib for hstore/ltree).
#
# Environment knobs (all optional):
#   SUITES            suites to run, default "pgx pq pq_binary regress"
#                     (pq_binary is lib/pq with PQTEST_BINARY_PARAMETERS=yes,
#                     as lib/pq's CI runs it; regress is pg_regress)
#   PGX_VERSION       default v5.12.0      PQ_VERSION  default v1.12.3
#   PGX_PKGS          pgx packages to test (default: the ones that talk to the server)
#   GO_TEST_FLAGS     extra flags for go test (default "-p 2 -timeout 5m")
#   UPSTREAM_SSLMODE  the proxy's upstream.sslmode: follow (default: TLS upstream
#                     exactly when the client used TLS), require or disable
#   PROXY_TLS         1 (default): the proxy accepts TLS with the same
#                     certificate the server has; 0: the proxy answers 'N'
#   RERUNS            times each proxy-only failure is run again, directly
#                     and through the proxy, to tell flakes from real
#                     failures (default 2; 0 to skip); for regress, the
#                     whole suite runs again through the proxy that often
#   INCOMPLETE_RERUNS with TOLERATE_FLAKES=1, times tests that did not finish
#                     through the proxy (another test crashed the binary)
#                     are run again by name while each run passes some
#                     (default 10)
#   TOLERATE_FLAKES   1: a proxy-only failure that passes in every one of
#                     at least 2 reruns through the proxy is reported as a
#                     flake and does not fail the run (CI sets it; default 0)
#   ETC_HOSTS         1 (default when root): add "127.0.0.1 postgres
#                     postgres-invalid" to /etc/hosts for lib/pq's TLS tests
#                     while the script runs (removed on exit)
#   KEEP_WORK         1: keep the work directory (logs, JSON results)
#   ALLOW_PROXY_ONLY  extended regex of "package TestName" entries that may
#                     fail through the proxy only without failing the run
#                     (default: none; regress tests are "regress NAME")
#   REGRESS_TENANCY   unscoped (default): the suite's roles are in
#                     tenancy.unscoped_roles, so its sessions run through
#                     pgcloak's message handlers (each message decoded,
#                     checked and re-encoded); none: no tenancy section at
#                     all, so they go to the relay loop
#   REGRESS_TIMEOUT   bound on one pg_regress run (default 15m)
#   REGRESS_SCHEDULE  the schedule: a file of the suite (default
#                     parallel_schedule) or an absolute path (a shorter
#                     schedule of the suite's tests, to try something)
set -euo pipefail
export LC_ALL=C

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SUITES=${SUITES:-"pgx pq pq_binary regress"}
PGX_VERSION=${PGX_VERSION:-v5.12.0}
PQ_VERSION=${PQ_VERSION:-v1.12.3}
PGX_PKGS=${PGX_PKGS:-". ./pgconn ./pgproto3 ./pgtype ./pgtype/zeronull ./pgxpool ./stdlib ./tracelog"}
GO_TEST_FLAGS=${GO_TEST_FLAGS:-"-p 2 -timeout 5m"}
UPSTREAM_SSLMODE=${UPSTREAM_SSLMODE:-follow}
PROXY_TLS=${PROXY_TLS:-1}
RERUNS=${RERUNS:-2}
INCOMPLETE_RERUNS=${INCOMPLETE_RERUNS:-10}
TOLERATE_FLAKES=${TOLERATE_FLAKES:-0}
KEEP_WORK=${KEEP_WORK:-0}
# Strict by default: no test may fail through the proxy only. With
# PROXY_TLS=1 the proxy presents the server's own certificate, so SCRAM
# channel binding passes; it verifies client certificates against the
# server's CA and presents the suite's client certificate upstream
# (upstream.client_certs), so logins by certificate pass; and with
# upstream.sslmode follow, pg_hba's hostssl and hostnossl rules see what the
# client did.
ALLOW_PROXY_ONLY=${ALLOW_PROXY_ONLY-}
REGRESS_TENANCY=${REGRESS_TENANCY:-unscoped}
REGRESS_TIMEOUT=${REGRESS_TIMEOUT:-15m}
REGRESS_SCHEDULE=${REGRESS_SCHEDULE:-parallel_schedule}
if [[ -z ${ETC_HOSTS:-} ]]; then
	if [[ $(id -u) -eq 0 ]]; then ETC_HOSTS=1; else ETC_HOSTS=0; fi
fi

START_TIME=$(date +%s)
log() { printf '%s [%4ss] %s\n' "$(date +%H:%M:%S)" "$(($(date +%s) - START_TIME))" "$*" >&2; }
die() {
	log "ERROR: $*"
	exit 2
}

for tool in go psql jq openssl; do
	command -v "$tool" >/dev/null 2>&1 || die "$tool not found on PATH"
done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/pgcloak-transparency.XXXXXX")
# transparencyenv's -instance and -client-cert values are split on ':'.
[[ $WORK != *:* ]] || die "the work directory $WORK contains ':'; set TMPDIR to a path without one"
chmod 755 "$WORK"
ENV_PID=
TEST_PID=
HOSTS_MARK="# pgcloak-transparency $$"

cleanup() {
	local rc=$?
	set +e
	trap - EXIT INT TERM HUP
	# Closing fd 3 (the helper's stdin) makes the helper stop the proxies
	# and PostgreSQL servers; SIGTERM does the same if it is not listening.
	exec 3>&-
	if [[ -n $TEST_PID ]]; then
		kill -TERM -- "-$TEST_PID" 2>/dev/null
		wait "$TEST_PID" 2>/dev/null
	fi
	if [[ -n $ENV_PID ]]; then
		for _ in $(seq 1 100); do
			kill -0 "$ENV_PID" 2>/dev/null || break
			sleep 0.1
		done
		if kill -0 "$ENV_PID" 2>/dev/null; then
			kill -TERM "$ENV_PID" 2>/dev/null
			sleep 2
			kill -KILL "$ENV_PID" 2>/dev/null
		fi
		wait "$ENV_PID" 2>/dev/null
	fi
	if grep -qF "$HOSTS_MARK" /etc/hosts 2>/dev/null; then
		# Rewrite in place: /etc/hosts is often a bind mount that cannot be
		# replaced by rename.
		grep -vF "$HOSTS_MARK" /etc/hosts >"$WORK/hosts.new" && cat "$WORK/hosts.new" >/etc/hosts
	fi
	if [[ $KEEP_WORK == 1 ]]; then
		log "work directory kept: $WORK"
	else
		chmod -R u+w "$WORK" 2>/dev/null
		rm -rf "$WORK"
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# --- Go environment for the suites: clean, and the same for both runs.
GOCACHE_DIR=$(go env GOCACHE)
GOMODCACHE_DIR=$(go env GOMODCACHE)
GOPATH_DIR=$(go env GOPATH)
GOPROXY_VAL=$(go env GOPROXY)
GOSUMDB_VAL=$(go env GOSUMDB)
mkdir -p "$WORK/home" "$WORK/tmp" "$WORK/results" "$WORK/logs" "$WORK/bin"
BASE_ENV=(PATH="$PATH" HOME="$WORK/home" USER="$(id -un)" LOGNAME="$(id -un)" LANG=C.UTF-8
	GOCACHE="$GOCACHE_DIR" GOMODCACHE="$GOMODCACHE_DIR" GOPATH="$GOPATH_DIR"
	GOPROXY="$GOPROXY_VAL" GOSUMDB="$GOSUMDB_VAL" GOTOOLCHAIN=local GOFLAGS= TMPDIR="$WORK/tmp")
# suite_env runs "$@" with only the environment a suite should see (no PG*
# variables from the caller) plus the NAME=VALUE words given before "--".
suite_env() {
	local extra=()
	while [[ $1 != -- ]]; do
		extra+=("$1")
		shift
	done
	shift
	env -i "${BASE_ENV[@]}" "${extra[@]}" "$@"
}

# --- Sources: writable copies of the modules (the module cache is read-only).
module_dir() { (cd "$ROOT" && go mod download -json "$1@$2" | jq -r '.Dir // empty'); }
copy_module() { # name module version
	local dir
	dir=$(module_dir "$2" "$3")
	[[ -n $dir && -d $dir ]] || die "cannot find $2@$3 (go mod download failed)"
	cp -r "$dir" "$WORK/src/$1"
	chmod -R u+w "$WORK/src/$1"
	(cd "$WORK/src/$1" && suite_env -- go mod download) || die "go mod download for $2@$3 failed"
}

want_suite() { [[ " $SUITES " == *" $1 "* ]]; }
want_pgx=0 want_pq=0 want_regress=0
want_suite pgx && want_pgx=1
{ want_suite pq || want_suite pq_binary; } && want_pq=1
want_suite regress && want_regress=1
GO_SUITES=""
for suite in $SUITES; do
	case $suite in
	pgx | pq | pq_binary) GO_SUITES+="${GO_SUITES:+ }$suite" ;;
	regress) ;;
	*) die "unknown suite $suite (want pgx, pq, pq_binary, regress)" ;;
	esac
done
case $REGRESS_TENANCY in unscoped | none) ;; *) die "REGRESS_TENANCY=$REGRESS_TENANCY: want unscoped or none" ;; esac

mkdir -p "$WORK/src"
log "copying modules to $WORK/src"
if ((want_pgx)); then
	copy_module pgx github.com/jackc/pgx/v5 "$PGX_VERSION"
	# pgx's CI generates its CA, server and (encrypted) client certificates.
	(cd "$WORK/src/pgx/testsetup" && suite_env -- go run generate_certs.go) || die "pgx generate_certs.go failed"
	PGX_CERTS="$WORK/src/pgx/testsetup"
	chmod 600 "$PGX_CERTS"/*.key
fi
if ((want_pq)); then
	copy_module pq github.com/lib/pq "$PQ_VERSION"
	PQ_SSL="$WORK/src/pq/testdata/ssl"
fi

# --- /etc/hosts names lib/pq's TLS tests connect to.
if ((want_pq)) && [[ $ETC_HOSTS == 1 ]]; then
	missing=()
	for h in postgres postgres-invalid; do
		getent hosts "$h" >/dev/null 2>&1 || missing+=("$h")
	done
	if ((${#missing[@]} > 0)); then
		if [[ -w /etc/hosts ]]; then
			log "adding 127.0.0.1 ${missing[*]} to /etc/hosts until exit"
			printf '127.0.0.1 %s %s\n' "${missing[*]}" "$HOSTS_MARK" >>/etc/hosts
		else
			log "WARNING: /etc/hosts lacks ${missing[*]} and is not writable; lib/pq's TLS tests will fail in both runs"
		fi
	fi
fi

# --- PostgreSQL's regression suite: sources, regress.so, pg_regress.
if ((want_regress)); then
	log "regress: preparing PostgreSQL's regression suite (scripts/regress-sources.sh)"
	bash "$ROOT/scripts/regress-sources.sh" >"$WORK/regress-sources.env" 2>"$WORK/logs/regress-sources.log" || {
		cat "$WORK/logs/regress-sources.log" >&2
		die "regress: could not prepare the regression suite (above)"
	}
	# shellcheck disable=SC1091
	source "$WORK/regress-sources.env"
	# The server (another OS user when we are root) reads data/ and loads
	# lib/ itself: a copy under the work directory, readable by all.
	mkdir -p "$WORK/regress"
	cp -r "$REGRESS_SRC" "$WORK/regress/src"
	cp -r "$REGRESS_LIB" "$WORK/regress/lib"
	chmod -R a+rX "$WORK/regress"
	REGRESS_SCHEDULE_FILE=$REGRESS_SCHEDULE
	[[ $REGRESS_SCHEDULE == /* ]] || REGRESS_SCHEDULE_FILE=$WORK/regress/src/$REGRESS_SCHEDULE
	[[ -f $REGRESS_SCHEDULE_FILE ]] || die "regress: no schedule $REGRESS_SCHEDULE"
	REGRESS_COUNT=$(awk '$1 == "test:" {n += NF - 1} END {print n + 0}' "$REGRESS_SCHEDULE_FILE")
	REGRESS_FROM=""
	if [[ $REGRESS_SOURCE_VERSION != "$REGRESS_VERSION" ]]; then
		REGRESS_FROM=" (WARNING: the suite's files are those of $REGRESS_SOURCE_VERSION; apt could not download $REGRESS_VERSION's)"
	fi
	log "regress: PostgreSQL $REGRESS_VERSION, $REGRESS_COUNT tests in $REGRESS_SCHEDULE$REGRESS_FROM"
fi

# --- PostgreSQL servers and proxies.
log "building scripts/transparencyenv"
(cd "$ROOT" && go build -o "$WORK/bin/transparencyenv" ./scripts/transparencyenv) || die "build transparencyenv failed"
instances=()
if ((want_pgx)); then
	if [[ $PROXY_TLS == 1 ]]; then
		# The proxy verifies client certificates against the server's CA,
		# and presents pgx_sslcert's own upstream for a client that proved
		# to be pgx_sslcert. pgx encrypts that key (password certpw, in a
		# PEM block typed CERTIFICATE); the proxy's copy is decrypted.
		sed 's/ CERTIFICATE-----$/ RSA PRIVATE KEY-----/' "$PGX_CERTS/pgx_sslcert.key" |
			openssl rsa -passin pass:certpw -out "$WORK/pgx_sslcert.key" 2>"$WORK/logs/openssl.log" ||
			{ cat "$WORK/logs/openssl.log" >&2; die "could not decrypt pgx_sslcert.key"; }
		instances+=(-instance "pgx:$PGX_CERTS/localhost.crt:$PGX_CERTS/localhost.key:$PGX_CERTS/ca.pem"
			-client-cert "pgx:pgx_sslcert:$PGX_CERTS/pgx_sslcert.crt:$WORK/pgx_sslcert.key")
	else
		instances+=(-instance pgx)
	fi
fi
if ((want_pq)); then
	if [[ $PROXY_TLS == 1 ]]; then
		instances+=(-instance "pq:$PQ_SSL/server.crt:$PQ_SSL/server.key:$PQ_SSL/root.crt"
			-client-cert "pq:pqgosslcert:$PQ_SSL/postgresql.crt:$PQ_SSL/postgresql.key")
	else
		instances+=(-instance pq)
	fi
fi
if ((want_regress)); then
	# Two identical servers, so that neither run sees what the other left.
	# max_prepared_transactions as pg_regress's temporary instance sets it.
	# pgcloak's own role (upstream.user) is not the suite's.
	for n in regress_direct regress_proxy; do
		instances+=(-instance "$n" -conf "$n:max_prepared_transactions=2" -upstream-user "$n:pgcloak")
		if [[ $REGRESS_TENANCY == unscoped ]]; then
			instances+=(-unscoped "$n:postgres" -unscoped "$n:regress_*")
		fi
	done
fi
mkfifo "$WORK/env.in"
"$WORK/bin/transparencyenv" -log-dir "$WORK/logs" -upstream-sslmode "$UPSTREAM_SSLMODE" "${instances[@]}" \
	<"$WORK/env.in" >"$WORK/env.out" 2>"$WORK/logs/transparencyenv.err" &
ENV_PID=$!
exec 3>"$WORK/env.in"
log "starting PostgreSQL and pgcloak (helper pid $ENV_PID)"
for _ in $(seq 1 1200); do
	grep -q '^READY=1$' "$WORK/env.out" 2>/dev/null && break
	kill -0 "$ENV_PID" 2>/dev/null || {
		cat "$WORK/logs/transparencyenv.err" >&2
		die "transparencyenv exited during startup"
	}
	sleep 0.1
done
grep -q '^READY=1$' "$WORK/env.out" || die "transparencyenv not ready after 120s"
# shellcheck disable=SC1091
source "$WORK/env.out"

server_user() { if [[ $(id -u) -eq 0 ]]; then echo postgres; else id -un; fi; }
PGOWNER=$(server_user)

# psql_on NAME [psql args...] runs psql over the server's Unix socket as the
# testenv superuser (local connections are trusted).
psql_on() {
	local n=${1^^}
	shift
	local dir_var=${n}_PG_DIR port_var=${n}_PG_PORT
	env -i PATH="$PATH" HOME="$WORK/home" PGOPTIONS='-c client_min_messages=warning' \
		psql -X -q -v ON_ERROR_STOP=1 -h "${!dir_var}" -p "${!port_var}" -U postgres "$@"
}

# install_ssl NAME CERT KEY CA: copies the server's TLS files into its
# directory and turns ssl on (ALTER SYSTEM; applied by pg_reload_conf).
install_ssl() {
	local n=${1^^}
	local dir_var=${n}_PG_DIR
	local ssl="${!dir_var}/ssl"
	mkdir -p "$ssl"
	cp "$2" "$ssl/server.crt"
	cp "$3" "$ssl/server.key"
	cp "$4" "$ssl/root.crt"
	chmod 600 "$ssl/server.key"
	chmod 644 "$ssl/server.crt" "$ssl/root.crt"
	[[ $(id -u) -eq 0 ]] && chown -R "$PGOWNER:" "$ssl"
	psql_on "$1" -d postgres <<-SQL
		ALTER SYSTEM SET ssl = on;
		ALTER SYSTEM SET ssl_cert_file = '$ssl/server.crt';
		ALTER SYSTEM SET ssl_key_file = '$ssl/server.key';
		ALTER SYSTEM SET ssl_ca_file = '$ssl/root.crt';
	SQL
}

# install_hba NAME FILE: the suite's pg_hba.conf replaces testenv's.
install_hba() {
	local n=${1^^}
	local data_var=${n}_PG_DATA
	cp "$2" "${!data_var}/pg_hba.conf"
	chmod 600 "${!data_var}/pg_hba.conf"
	[[ $(id -u) -eq 0 ]] && chown "$PGOWNER:" "${!data_var}/pg_hba.conf"
	return 0
}

reload() {
	psql_on "$1" -d postgres -c 'SELECT pg_reload_conf()' >/dev/null
	sleep 0.5
}

if ((want_pgx)); then
	log "configuring PostgreSQL for pgx (port $PGX_PG_PORT, proxy $PGX_PROXY_PORT)"
	src="$WORK/src/pgx"
	install_ssl pgx "$PGX_CERTS/localhost.crt" "$PGX_CERTS/localhost.key" "$PGX_CERTS/ca.pem"
	install_hba pgx "$src/testsetup/pg_hba.conf"
	reload pgx
	psql_on pgx -d postgres -c 'CREATE DATABASE pgx_test'
	# The setup's \set whoami `whoami` creates a superuser for the OS user,
	# which the Unix-socket connection string logs in as.
	(cd "$src" && psql_on pgx -d pgx_test -f testsetup/postgresql_setup.sql)
	psql_on pgx -d pgx_test -Atc "SELECT 'ssl=' || current_setting('ssl')" | grep -qx 'ssl=on' || die "pgx server: ssl is not on"
fi
if ((want_pq)); then
	log "configuring PostgreSQL for lib/pq (port $PQ_PG_PORT, proxy $PQ_PROXY_PORT)"
	src="$WORK/src/pq"
	install_hba pq "$src/testdata/postgres/pg_hba.conf"
	# What the postgres image does with POSTGRES_USER=pqgo.
	psql_on pq -d postgres <<-SQL
		CREATE ROLE pqgo SUPERUSER LOGIN PASSWORD 'unused';
		CREATE DATABASE pqgo OWNER pqgo;
	SQL
	# Its init script, with the image's /ssl2 directory replaced by ours.
	sed "s|/ssl2/|$PQ_PG_DIR/ssl/|g" "$src/testdata/postgres/docker-entrypoint-initdb.d/20-config.sql" >"$WORK/pq-20-config.sql"
	psql_on pq -U pqgo -d pqgo -f "$WORK/pq-20-config.sql"
	install_ssl pq "$PQ_SSL/server.crt" "$PQ_SSL/server.key" "$PQ_SSL/root.crt"
	reload pq
	psql_on pq -d pqgo -Atc "SELECT 'ssl=' || current_setting('ssl')" | grep -qx 'ssl=on' || die "pq server: ssl is not on"
fi

if ((want_regress)); then
	printf 'local all all trust\nhost all all 127.0.0.1/32 trust\n' >"$WORK/regress-hba.conf"
	for n in regress_direct regress_proxy; do
		install_hba "$n" "$WORK/regress-hba.conf"
		reload "$n"
	done
	log "regress: servers on ports $REGRESS_DIRECT_PG_PORT (direct) and $REGRESS_PROXY_PG_PORT (proxy $REGRESS_PROXY_PROXY_PORT)"
fi

# --- Suite environments. $1 is the port TCP connections go to.
pgx_env() {
	local port=$1 c=$PGX_CERTS
	# Unix-socket connections cannot go through the proxy: the variable
	# points at the server's socket in both runs.
	printf '%s\n' \
		"PGX_TEST_DATABASE=host=127.0.0.1 port=$port user=pgx_md5 password=secret dbname=pgx_test" \
		"PGX_TEST_UNIX_SOCKET_CONN_STRING=host=$PGX_PG_DIR port=$PGX_PG_PORT dbname=pgx_test" \
		"PGX_TEST_TCP_CONN_STRING=host=127.0.0.1 port=$port user=pgx_md5 password=secret dbname=pgx_test" \
		"PGX_TEST_SCRAM_PASSWORD_CONN_STRING=host=127.0.0.1 port=$port user=pgx_scram password=secret dbname=pgx_test channel_binding=disable" \
		"PGX_TEST_SCRAM_PLUS_CONN_STRING=host=localhost port=$port user=pgx_ssl password=secret sslmode=verify-full sslrootcert=$c/ca.pem dbname=pgx_test channel_binding=require" \
		"PGX_TEST_MD5_PASSWORD_CONN_STRING=host=127.0.0.1 port=$port user=pgx_md5 password=secret dbname=pgx_test" \
		"PGX_TEST_PLAIN_PASSWORD_CONN_STRING=host=127.0.0.1 port=$port user=pgx_pw password=secret dbname=pgx_test" \
		"PGX_TEST_TLS_CONN_STRING=host=localhost port=$port user=pgx_ssl password=secret sslmode=verify-full sslrootcert=$c/ca.pem dbname=pgx_test channel_binding=disable" \
		"PGX_SSL_PASSWORD=certpw" \
		"PGX_TEST_TLS_CLIENT_CONN_STRING=host=localhost port=$port user=pgx_sslcert sslmode=verify-full sslrootcert=$c/ca.pem sslcert=$c/pgx_sslcert.crt sslkey=$c/pgx_sslcert.key dbname=pgx_test"
}
pq_env() {
	# lib/pq's defaults (pqtest.DSN): PGHOST=localhost PGUSER=pqgo
	# PGDATABASE=pqgo PGSSLMODE=disable; only the port differs.
	printf '%s\n' "PGPORT=$1" "PQTEST_BINARY_PARAMETERS=no"
}
pq_binary_env() { printf '%s\n' "PGPORT=$1" "PQTEST_BINARY_PARAMETERS=yes"; }

suite_dir() { case $1 in pgx) echo "$WORK/src/pgx" ;; pq | pq_binary) echo "$WORK/src/pq" ;; esac; }
# Example_openConfig dials localhost:5432 (hard-coded) and log.Fatal()s when
# nothing is there, which ends the whole test binary: skip it in both runs.
suite_pkgs() { case $1 in pgx) echo "$PGX_PKGS" ;; pq | pq_binary) echo "-skip ^Example_openConfig\$ ./..." ;; esac; }
suite_ports() { # direct proxy
	case $1 in
	pgx) echo "$PGX_PG_PORT $PGX_PROXY_PORT" ;;
	pq | pq_binary) echo "$PQ_PG_PORT $PQ_PROXY_PORT" ;;
	esac
}

# run_suite SUITE TARGET PORT OUT [go test args...]
run_suite() {
	local suite=$1 target=$2 port=$3 out=$4
	shift 4
	local envs=()
	mapfile -t envs < <("${suite}_env" "$port")
	rm -rf "$WORK/home" "$WORK/tmp"
	mkdir -p "$WORK/home" "$WORK/tmp"
	# In the background, in a process group of its own, so that a signal
	# interrupts the wait at once and cleanup can stop exactly this run.
	# shellcheck disable=SC2086
	(cd "$(suite_dir "$suite")" && exec setsid env -i "${BASE_ENV[@]}" "${envs[@]}" \
		go test -json -count=1 $GO_TEST_FLAGS "$@") >"$out" 2>"${out%.json}.stderr" &
	TEST_PID=$!
	wait "$TEST_PID" || true
	TEST_PID=
}

# summarize FILE: one line per test ("pkg test<TAB>result"). result is pass,
# fail or skip; "incomplete" for a test that started but never finished
# because its test binary exited early (a panic in another test, os.Exit,
# log.Fatal, the -timeout). A package that failed without any failing test
# (build error, TestMain) is reported as "pkg [package]" with result fail.
summarize() {
	jq -rs '
	  [ .[] | select(.Action != null and .Package != null) ] as $ev
	  | ( [ $ev[] | select(.Test != null and (.Action | IN("run","pass","fail","skip")))
	        | {k: (.Package + " " + .Test), a: .Action} ]
	      | group_by(.k)
	      | map({k: .[0].k, a: ([.[].a | select(. != "run")] | last // "incomplete")}) ) as $tests
	  | ( [ $ev[] | select(.Test == null and .Action == "fail") | .Package ] | unique ) as $failedPkgs
	  | ( [ $tests[] | select(.a | IN("fail","incomplete")) | .k | split(" ")[0] ] | unique ) as $pkgsWithFails
	  | ( $tests | map("\(.k)\t\(.a)") )
	    + [ $failedPkgs[] | select(. as $p | $pkgsWithFails | index($p) | not) | "\(.) [package]\tfail" ]
	  | .[]' "$1"
}

counts() { # file.tsv -> "passed N failed N skipped N [incomplete N]"
	awk -F'\t' '{c[$2]++} END {
		printf "passed %5d  failed %4d  skipped %4d", c["pass"], c["fail"], c["skip"]
		if (c["incomplete"]) printf "  incomplete %4d (test binary exited early)", c["incomplete"]
	}' "$1"
}

# go test -run pattern for one test name (subtests split on /).
run_pattern() {
	local name=$1 out="" part
	IFS=/ read -r -a parts <<<"$name"
	for part in "${parts[@]}"; do
		part=$(printf '%s' "$part" | sed 's/[][\\.*+?(){}|^$]/\\&/g')
		out+="${out:+/}^${part}\$"
	done
	printf '%s' "$out"
}

status=0
n_allowed=0
rerun_seq=0
declare -A summary
for suite in $GO_SUITES; do
	read -r direct_port proxy_port < <(suite_ports "$suite")
	read -r -a pkgs <<<"$(suite_pkgs "$suite")"
	# Compile first, so that neither run's time includes the build.
	t0=$(date +%s)
	pkg_args=()
	for a in "${pkgs[@]}"; do if [[ $a == .* ]]; then pkg_args+=("$a"); fi; done
	mkdir -p "$WORK/tmp/build"
	(cd "$(suite_dir "$suite")" && suite_env -- go test -c -o "$WORK/tmp/build/" "${pkg_args[@]}") \
		>"$WORK/logs/$suite-build.log" 2>&1 || {
		cat "$WORK/logs/$suite-build.log" >&2
		die "$suite: go test -c failed"
	}
	log "$suite: compiled the test binaries ($(($(date +%s) - t0))s)"
	for target in direct proxy; do
		port=$direct_port
		[[ $target == proxy ]] && port=$proxy_port
		log "$suite: go test ${pkgs[*]} ($target, port $port)"
		t0=$(date +%s)
		run_suite "$suite" "$target" "$port" "$WORK/results/$suite-$target.json" "${pkgs[@]}"
		summarize "$WORK/results/$suite-$target.json" | sort >"$WORK/results/$suite-$target.tsv"
		summary[$suite-$target]="$(counts "$WORK/results/$suite-$target.tsv")  ($(($(date +%s) - t0))s)"
		log "$suite $target: ${summary[$suite-$target]}"
		if [[ ! -s $WORK/results/$suite-$target.tsv ]]; then
			cat "$WORK/results/$suite-$target.stderr" >&2
			die "$suite $target: no test results (see above)"
		fi
	done
	# "Bad" is failed or incomplete; a test that did not finish directly is
	# not held against the proxy either.
	for target in direct proxy; do
		awk -F'\t' '$2 == "fail" || $2 == "incomplete" {print $1}' "$WORK/results/$suite-$target.tsv" |
			sort -u >"$WORK/results/$suite-$target.fail"
	done
	comm -13 "$WORK/results/$suite-direct.fail" "$WORK/results/$suite-proxy.fail" >"$WORK/results/$suite-proxy-only.all"
	comm -23 "$WORK/results/$suite-direct.fail" "$WORK/results/$suite-proxy.fail" >"$WORK/results/$suite-direct-only.fail"
	# Split the proxy-only ones into failed and incomplete.
	awk -F'\t' 'NR == FNR {bad[$1] = 1; next} bad[$1] && $2 == "fail" {print $1}' \
		"$WORK/results/$suite-proxy-only.all" "$WORK/results/$suite-proxy.tsv" | sort -u >"$WORK/results/$suite-proxy-only.fail"
	awk -F'\t' 'NR == FNR {bad[$1] = 1; next} bad[$1] && $2 == "incomplete" {print $1}' \
		"$WORK/results/$suite-proxy-only.all" "$WORK/results/$suite-proxy.tsv" | sort -u >"$WORK/results/$suite-proxy-only.incomplete"

	# Run each proxy-only failure again, both ways, to tell a flake from a
	# reproducible difference. A rerun counts as passed only when the test
	# reports pass (a crash, a timeout or no such test counts as failed).
	# The verdict stays strict unless TOLERATE_FLAKES=1.
	: >"$WORK/results/$suite-reruns"
	if ((RERUNS > 0)) && [[ -s $WORK/results/$suite-proxy-only.fail ]]; then
		n=$(wc -l <"$WORK/results/$suite-proxy-only.fail")
		if ((n > 30)); then
			log "$suite: $n proxy-only failures; not re-running them"
		else
			log "$suite: re-running $n proxy-only failure(s) ${RERUNS}x each way"
			while read -r pkg test; do
				[[ $test == "[package]" ]] && continue
				pat=$(run_pattern "$test")
				res=""
				for target in direct proxy; do
					port=$direct_port
					[[ $target == proxy ]] && port=$proxy_port
					fails=0
					for _ in $(seq 1 "$RERUNS"); do
						rr="$WORK/results/rerun-$suite-$target-$((++rerun_seq)).json"
						run_suite "$suite" "$target" "$port" "$rr" -run "$pat" "$pkg"
						if summarize "$rr" | awk -F'\t' -v k="$pkg $test" '$1 == k && $2 == "pass" {p=1} END {exit !p}'; then
							rm -f "$rr" "${rr%.json}.stderr"
						else
							fails=$((fails + 1)) # keep the output of a failed rerun
						fi
					done
					res+="$target failed $fails/$RERUNS; "
				done
				printf '%s %s\t%s\n' "$pkg" "$test" "${res%; }" >>"$WORK/results/$suite-reruns"
			done <"$WORK/results/$suite-proxy-only.fail"
		fi
	fi

	# Tests that never ran through the proxy because another test crashed
	# the binary (lib/pq's listener tests panic when an event takes longer
	# than their 100 ms on a loaded machine) are not a verdict on the proxy
	# either way: with TOLERATE_FLAKES=1, run their packages again through
	# the proxy, up to RERUNS times, and keep as incomplete only the tests
	# that never passed. The crashing test itself is judged above.
	# Each run may meet another listener test that crashes under load
	# before the rest finish, so the runs go on while they make progress,
	# up to INCOMPLETE_RERUNS times.
	inc=$WORK/results/$suite-proxy-only.incomplete
	if [[ $TOLERATE_FLAKES == 1 ]] && ((RERUNS > 0)) && [[ -s $inc ]]; then
		for pkg in $(awk '{print $1}' "$inc" | sort -u); do
			stalls=0
			for i in $(seq 1 "$INCOMPLETE_RERUNS"); do
				# Not "awk | grep -q": under pipefail, grep leaving after the
				# first line kills awk with SIGPIPE and ends the loop early.
				awk -v p="$pkg" '$1 == p {found = 1; exit} END {exit !found}' "$inc" || break
				# Only those tests: the whole package would meet the
				# crashing test again, and crash before them again.
				pat="^($(awk -v p="$pkg" '$1 == p {split($2, t, "/"); print t[1]}' "$inc" | sort -u | paste -sd'|'))\$"
				log "$suite: $(awk -v p="$pkg" '$1 == p' "$inc" | wc -l) test(s) of $pkg did not finish through the proxy; running them again (${i}/${INCOMPLETE_RERUNS})"
				rr="$WORK/results/rerun-$suite-proxy-$((++rerun_seq)).json"
				run_suite "$suite" proxy "$proxy_port" "$rr" -run "$pat" "$pkg"
				summarize "$rr" | awk -F'\t' '$2 == "pass" {print $1}' | sort -u >"$rr.passed"
				comm -23 <(sort -u "$inc") "$rr.passed" >"$inc.left"
				comm -12 <(sort -u "$inc") "$rr.passed" | sed "s/\$/\tpassed when the package ran again through the proxy/" >>"$WORK/results/$suite-reruns"
				if [[ -z $(comm -12 <(sort -u "$inc") "$rr.passed") ]]; then
					((++stalls))
				else
					stalls=0
				fi
				mv "$inc.left" "$inc"
				if ((stalls >= 2)); then
					log "$suite: no test of $pkg passed in two runs in a row; not running them again"
					break
				fi
			done
		done
	fi
done

# --- PostgreSQL's regression suite, directly and through pgcloak.
# run_regress TARGET PORT: pg_regress into $WORK/regress/TARGET.
run_regress() {
	local out=$WORK/regress/$1
	rm -rf "$out"
	# The server writes COPY TO files into results/ as its own OS user.
	mkdir -p "$out/results"
	chmod 777 "$out" "$out/results"
	rm -rf "$WORK/home" "$WORK/tmp"
	mkdir -p "$WORK/home" "$WORK/tmp"
	# pg_regress sets the locale, time zone and date style variables the
	# expected files assume (--no-locale: C); psql comes from the server's
	# own bin directory. The suite runs as the bootstrap superuser, which
	# owns the catalogs (sequence's expected output depends on it). Its
	# sessions use plain TCP, as most applications on a private network do:
	# through pgcloak the relay loop then carries them between statements
	# its handlers analyse (TLS sessions never leave their goroutines, and
	# the driver suites cover TLS).
	(cd "$out" && exec setsid env -i PATH="$PATH" HOME="$WORK/home" TMPDIR="$WORK/tmp" PGSSLMODE=disable \
		timeout "$REGRESS_TIMEOUT" "$PG_REGRESS" --host=127.0.0.1 --port="$2" --user=postgres \
		--dbname=regression --no-locale --bindir="$REGRESS_BINDIR" --dlpath="$WORK/regress/lib" \
		--inputdir="$WORK/regress/src" --outputdir="$out" \
		--schedule="$REGRESS_SCHEDULE_FILE") >"$out/stdout" 2>&1 &
	TEST_PID=$!
	local rc=0
	wait "$TEST_PID" || rc=$?
	TEST_PID=
	# 0: all passed, 1: some failed; anything else is pg_regress's own
	# failure (no server, no database) or the timeout.
	if ((rc > 1)); then
		cat "$out/stdout" >&2
		die "regress $1: pg_regress exited with $rc (above)"
	fi
}

# regress_summarize FILE: "name<TAB>pass|fail" per test from pg_regress's
# own report ("ok", "FAILED", "failed (ignored)").
regress_summarize() {
	sed -nE 's/^(test |     )([^ ]+) +\.\.\. (ok|FAILED|failed \(ignored\)).*/\2\t\3/p' "$1" |
		awk -F'\t' '{print $1 "\t" ($2 == "ok" ? "pass" : "fail")}' | sort
}

# regress_diff_of NAME FILE: NAME's sections of a regression.diffs.
regress_diff_of() {
	awk -v t="$1" '/^diff / {on = ($0 ~ ("/expected/" t "(_[0-9]+)?\\.out ")) } on' "$2"
}

if ((want_regress)); then
	for target in direct proxy; do
		port=$REGRESS_DIRECT_PG_PORT
		[[ $target == proxy ]] && port=$REGRESS_PROXY_PROXY_PORT
		log "regress: pg_regress --schedule=$REGRESS_SCHEDULE ($target, port $port)"
		t0=$(date +%s)
		run_regress "$target" "$port"
		regress_summarize "$WORK/regress/$target/stdout" >"$WORK/results/regress-$target.tsv"
		n=$(wc -l <"$WORK/results/regress-$target.tsv")
		if ((n != REGRESS_COUNT)); then
			cat "$WORK/regress/$target/stdout" >&2
			die "regress $target: pg_regress reported $n tests, the schedule has $REGRESS_COUNT (above)"
		fi
		summary[regress-$target]="$(counts "$WORK/results/regress-$target.tsv")  ($(($(date +%s) - t0))s)"
		log "regress $target: ${summary[regress-$target]}"
	done
	for target in direct proxy; do
		awk -F'\t' '$2 == "fail" {print $1}' "$WORK/results/regress-$target.tsv" >"$WORK/results/regress-$target.fail"
	done
	comm -13 "$WORK/results/regress-direct.fail" "$WORK/results/regress-proxy.fail" >"$WORK/results/regress-proxy-only.fail"
	comm -23 "$WORK/results/regress-direct.fail" "$WORK/results/regress-proxy.fail" >"$WORK/results/regress-direct-only.fail"
	# Tests depend on the ones before them, so a rerun is a whole run
	# through the proxy (a few minutes), made only when something failed
	# there alone.
	: >"$WORK/results/regress-reruns"
	if ((RERUNS > 0)) && [[ -s $WORK/results/regress-proxy-only.fail ]]; then
		log "regress: $(wc -l <"$WORK/results/regress-proxy-only.fail") proxy-only failure(s); running the suite through the proxy ${RERUNS}x more"
		for i in $(seq 1 "$RERUNS"); do
			run_regress "proxy-rerun-$i" "$REGRESS_PROXY_PROXY_PORT"
			regress_summarize "$WORK/regress/proxy-rerun-$i/stdout" >"$WORK/results/regress-proxy-rerun-$i.tsv"
		done
		while read -r t; do
			fails=0
			for i in $(seq 1 "$RERUNS"); do
				awk -F'\t' -v t="$t" '$1 == t && $2 == "pass" {p = 1} END {exit !p}' \
					"$WORK/results/regress-proxy-rerun-$i.tsv" || fails=$((fails + 1))
			done
			printf '%s\tproxy failed %d/%d\n' "$t" "$fails" "$RERUNS" >>"$WORK/results/regress-reruns"
		done <"$WORK/results/regress-proxy-only.fail"
	fi
	# A test that fails both ways must fail the same way: its output through
	# pgcloak is the one it printed directly (the output directory's path
	# aside, which error messages about COPY files name).
	: >"$WORK/results/regress-both-differ.fail"
	while read -r t; do
		[[ -n $t ]] || continue
		if ! cmp -s <(sed "s|$WORK/regress/direct|OUTDIR|g" "$WORK/regress/direct/results/$t.out" 2>/dev/null) \
			<(sed "s|$WORK/regress/proxy|OUTDIR|g" "$WORK/regress/proxy/results/$t.out" 2>/dev/null); then
			echo "$t" >>"$WORK/results/regress-both-differ.fail"
		fi
	done < <(comm -12 "$WORK/results/regress-direct.fail" "$WORK/results/regress-proxy.fail")
fi

echo
echo "=== pgcloak transparency: go test directly vs through pgcloak (upstream sslmode=$UPSTREAM_SSLMODE, proxy TLS=$PROXY_TLS)"
for suite in $GO_SUITES; do
	printf '%-10s direct: %s\n' "$suite" "${summary[$suite-direct]}"
	printf '%-10s proxy:  %s\n' "$suite" "${summary[$suite-proxy]}"
done
if ((want_regress)); then
	printf '%-10s direct: %s\n' regress "${summary[regress-direct]}"
	printf '%-10s proxy:  %s\n' regress "${summary[regress-proxy]}"
	echo "           (pg_regress $REGRESS_SCHEDULE, PostgreSQL $REGRESS_VERSION, $REGRESS_COUNT tests; pgcloak tenancy: $REGRESS_TENANCY)$REGRESS_FROM"
fi
for suite in $GO_SUITES; do
	f="$WORK/results/$suite-proxy-only.fail"
	if [[ -s $WORK/results/$suite-direct.fail ]]; then
		echo
		echo "--- $suite: failing directly (not held against the proxy):"
		awk -F'\t' '$2 == "fail" {print "    " $1}' "$WORK/results/$suite-direct.tsv"
		awk -F'\t' '$2 == "incomplete" {split($1, a, " "); n[a[1]]++}
			END {for (p in n) printf "    %d tests in %s did not finish (test binary exited early)\n", n[p], p}' \
			"$WORK/results/$suite-direct.tsv"
	fi
	if [[ -s $WORK/results/$suite-direct-only.fail ]]; then
		echo "--- $suite: failing directly but passing through the proxy:"
		sed 's/^/    /' "$WORK/results/$suite-direct-only.fail"
	fi
	if [[ -s $f ]]; then
		echo
		echo "--- $suite: FAILING ONLY THROUGH THE PROXY: $(wc -l <"$f")"
		while read -r line; do
			note=$(awk -F'\t' -v k="$line" '$1 == k {print "  [rerun: " $2 "]"}' "$WORK/results/$suite-reruns")
			allowed=""
			if [[ -n $ALLOW_PROXY_ONLY ]] && [[ $line =~ $ALLOW_PROXY_ONLY ]]; then
				allowed="  (allowed by ALLOW_PROXY_ONLY)"
				n_allowed=$((n_allowed + 1))
			elif [[ $TOLERATE_FLAKES == 1 ]] && ((RERUNS >= 2)) && [[ $note == *"proxy failed 0/$RERUNS"* ]]; then
				allowed="  (a flake: passed every rerun through the proxy; TOLERATE_FLAKES=1)"
				n_allowed=$((n_allowed + 1))
			else
				status=1
			fi
			echo "    $line$note$allowed"
			# The failure output, from the proxy run.
			pkg=${line%% *} test=${line#* }
			if [[ $test != "[package]" ]]; then
				jq -j --arg p "$pkg" --arg t "$test" \
					'select(.Package == $p and .Test == $t and .Action == "output") | .Output' \
					"$WORK/results/$suite-proxy.json" | grep -v -E '^(=== (RUN|PAUSE|CONT|NAME)|--- (PASS|SKIP))|^\s*$' |
					head -n 12 | sed 's/^/        | /' || true
			fi
		done <"$f"
	fi
	inc="$WORK/results/$suite-proxy-only.incomplete"
	if [[ -s $inc ]]; then
		status=1
		echo
		echo "--- $suite: DID NOT FINISH THROUGH THE PROXY (passed directly; the test binary exited early"
		echo "    after a failure listed above, or timed out): $(wc -l <"$inc")"
		awk '{print $1}' "$inc" | sort | uniq -c | awk '{printf "    %5d tests in %s\n", $1, $2}'
		# The package output that explains the early exit (panic, timeout).
		jq -j 'select(.Action == "output") | .Output' "$WORK/results/$suite-proxy.json" |
			grep -E -A3 '^(panic: |fatal error: |\*\*\* Test killed|test timed out)' | head -n 12 | sed 's/^/        | /' || true
	fi
done
if ((want_regress)); then
	if [[ -s $WORK/results/regress-direct.fail ]]; then
		echo
		echo "--- regress: failing directly (not held against the proxy): $(wc -l <"$WORK/results/regress-direct.fail")"
		sed 's/^/    /' "$WORK/results/regress-direct.fail"
	fi
	if [[ -s $WORK/results/regress-direct-only.fail ]]; then
		echo "--- regress: failing directly but passing through the proxy:"
		sed 's/^/    /' "$WORK/results/regress-direct-only.fail"
	fi
	shown=0 # tests whose diffs were printed: at most 20, 300 lines each
	for kind in proxy-only both-differ; do
		f=$WORK/results/regress-$kind.fail
		[[ -s $f ]] || continue
		echo
		if [[ $kind == proxy-only ]]; then
			echo "--- regress: FAILING ONLY THROUGH THE PROXY: $(wc -l <"$f") (regression.diffs sections follow)"
		else
			echo "--- regress: FAILING BOTH WAYS, WITH OTHER OUTPUT THROUGH THE PROXY: $(wc -l <"$f") (diff of the direct and the proxy output follows)"
		fi
		while read -r t; do
			allowed=""
			note=""
			if [[ $kind == proxy-only ]]; then
				note=$(awk -F'\t' -v k="$t" '$1 == k {print "  [rerun: " $2 "]"}' "$WORK/results/regress-reruns")
			fi
			if [[ -n $ALLOW_PROXY_ONLY ]] && [[ "regress $t" =~ $ALLOW_PROXY_ONLY ]]; then
				allowed="  (allowed by ALLOW_PROXY_ONLY)"
				n_allowed=$((n_allowed + 1))
			elif [[ $TOLERATE_FLAKES == 1 ]] && ((RERUNS >= 2)) && [[ $note == *"proxy failed 0/$RERUNS"* ]]; then
				allowed="  (a flake: passed every rerun through the proxy; TOLERATE_FLAKES=1)"
				n_allowed=$((n_allowed + 1))
			else
				status=1
			fi
			echo "    regress $t$note$allowed"
			((++shown <= 20)) || continue
			# Into a file first: head would end the writer with SIGPIPE.
			if [[ $kind == proxy-only ]]; then
				regress_diff_of "$t" "$WORK/regress/proxy/regression.diffs"
			else
				diff -u --label "direct/results/$t.out" --label "proxy/results/$t.out" \
					<(sed "s|$WORK/regress/direct|OUTDIR|g" "$WORK/regress/direct/results/$t.out") \
					<(sed "s|$WORK/regress/proxy|OUTDIR|g" "$WORK/regress/proxy/results/$t.out")
			fi >"$WORK/results/regress-$t.diff" || true
			n=$(wc -l <"$WORK/results/regress-$t.diff")
			head -n 300 "$WORK/results/regress-$t.diff" | sed 's/^/        | /'
			((n <= 300)) || echo "        | ... $((n - 300)) more lines (KEEP_WORK=1 keeps them: $WORK/results/regress-$t.diff)"
		done <"$f"
	done
fi
echo
if ((status == 0)); then
	allowed_note=""
	if ((n_allowed > 0)); then allowed_note=" except $n_allowed allowed (ALLOW_PROXY_ONLY, TOLERATE_FLAKES)"; fi
	echo "RESULT: PASS — no test fails through pgcloak that passes directly$allowed_note ($(($(date +%s) - START_TIME))s)"
else
	echo "RESULT: FAIL — tests fail through pgcloak that pass directly, or print other output through it ($(($(date +%s) - START_TIME))s)"
	if [[ $KEEP_WORK == 1 ]]; then
		echo "        logs (proxy, PostgreSQL) and go test -json results: $WORK/logs, $WORK/results"
	else
		echo "        run with KEEP_WORK=1 to keep the proxy and PostgreSQL logs and the go test -json results"
	fi
fi
exit "$status"
