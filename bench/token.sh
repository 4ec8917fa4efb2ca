#!/usr/bin/env bash
# bench/token.sh: what a signed tenant token costs a pooled transaction,
# against the same transaction of a login-mapped tenant role.
#
# pgcloak runs with an encrypted patients table of ROWS rows of tenant acme
# (ssn, email, diagnosis encrypted; RLS forced, policy and tenant_id
# default on pgcloak.current_tenant()), a login-mapped role acme_app
# (tenant acme for the whole session) and a token role app_pool (no tenant
# until a token names one), with an HS256 secret; the token comes from
# `pgcloak token --tenant acme`. Through pgcloak, two targets run the same
# point read of the three encrypted columns, in a transaction:
#   token  app_pool: BEGIN; <token statement>; SELECT ...; COMMIT
#   login  acme_app: BEGIN; SELECT ...; COMMIT
#   login+stmt  acme_app: BEGIN; SELECT 1; SELECT ...; COMMIT
# login+stmt has a statement in the token statement's place that costs
# what any trivial statement does, so token/(login+stmt) is what the token
# itself costs (verification, pgcloak.pin_next(), the proof checked again
# in each transaction) beyond that statement.
# The token statement is SET LOCAL pgcloak.tenant_token = '<jwt>' in -M
# simple, and SELECT pg_catalog.set_config('pgcloak.tenant_token', $1,
# true) with the token bound in -M extended and prepared. Every
# transaction presents the same token, so pgcloak verifies it from its
# cache (SHA-256 of the token, until its expiry): the warm-cache case.
# Two workloads:
#   separate   each statement its own round trip (pgbench's usual way)
#   one-query  the whole transaction in one simple Query (statements joined
#              with \;), as TestServeTenantTokens sends it; -M simple only
# Within each mode and workload the targets alternate; ROUNDS repeats the
# cycle and the table shows the mean tps and the ratios. A second table
# splits the CPU time per transaction between pgcloak (its process) and
# PostgreSQL (the backends, counted by the postmaster once they exit; runs
# end with their connections closed): where a token's cost goes.
#
# Environment (defaults in brackets):
#   DURATION seconds per run [10]   ROUNDS cycles [3]
#   MODES pgbench -M modes [simple extended prepared]
#   ROWS table rows [10000]         CLIENTS pgbench -c [8]   JOBS pgbench -j [2]
BENCH_NAME=token.sh
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"

DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
ROWS=${ROWS:-10000}
CLIENTS=${CLIENTS:-8}
JOBS=${JOBS:-2}
read -r -a MODES <<<"${MODES:-simple extended prepared}"
LOGIN_ROLE=acme_app
POOL_ROLE=app_pool
PASSWORD=token-bench-password
TARGETS=(login login+stmt token)

start_postgres

echo "--- roles and the patients table"
psql_direct <<SQL
create role $LOGIN_ROLE login password '$PASSWORD';
create role $POOL_ROLE login password '$PASSWORD';
create table patients (
	id serial primary key,
	tenant_id text not null,
	name text,
	ssn bytea, ssn_bidx bytea, email bytea, email_bidx bytea, diagnosis bytea);
alter table patients enable row level security;
alter table patients force row level security;
grant select, insert on patients to $LOGIN_ROLE, $POOL_ROLE;
grant usage on sequence patients_id_seq to $LOGIN_ROLE, $POOL_ROLE;
SQL

echo "--- starting pgcloak on 127.0.0.1:$PGCLOAK_PORT (it installs pgcloak.current_tenant())"
"$work/pgcloak" keys init-local -o "$work/master.key" >/dev/null
JWT_SECRET=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
export JWT_SECRET PGCLOAK_UPSTREAM_PASSWORD=$BENCH_PASSWORD
{
	pgcloak_yaml_head
	cat <<EOF
tenancy:
  login:
    roles: { $LOGIN_ROLE: acme }
  token_roles: [$POOL_ROLE]
  jwt:
    hs256_secret: \${JWT_SECRET}
keys:
  local:
    master_key_file: $work/master.key
encrypt:
  tables:
    - name: public.patients
      columns:
        - { name: ssn, type: text, search: equality }
        - { name: email, type: text, search: equality, normalize: lower }
        - { name: diagnosis, type: text, key_class: phi }
audit:
  output: $work/audit.log
log:
  level: warn
EOF
} >"$work/pgcloak.yaml"
# serve refuses declared columns without pgcloak's format CHECKs.
{ echo "set client_min_messages = warning;"; "$work/pgcloak" schema -c "$work/pgcloak.yaml"; } | psql_direct >/dev/null
serve_pgcloak "$LOGIN_ROLE" "$PASSWORD"
psql_direct <<SQL
alter table patients alter column tenant_id set default pgcloak.current_tenant();
create policy tenant_isolation on patients
	using (tenant_id = pgcloak.current_tenant())
	with check (tenant_id = pgcloak.current_tenant());
SQL
TOKEN=$("$work/pgcloak" token --tenant acme --ttl 1h -c "$work/pgcloak.yaml") || die "pgcloak token failed"

echo "--- loading $ROWS rows of tenant acme through pgcloak"
awk -v rows="$ROWS" 'BEGIN {
	for (i = 1; i <= rows; i += 100) {
		printf "insert into patients (name, ssn, email, diagnosis) values "
		for (j = i; j < i + 100 && j <= rows; j++)
			printf "%s(%cpatient %d%c, %c%d%c, %cuser%d@example.com%c, %cdiagnosis %d%c)", (j > i ? ", " : ""), 39, j, 39, 39, j, 39, 39, j, 39, 39, j % 97, 39
		print ";"
	}
}' | PGPASSWORD=$PASSWORD "$PSQL" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PGCLOAK_PORT" -U "$LOGIN_ROLE" -d "$BENCH_DB" >/dev/null
psql_direct -c "analyze patients" >/dev/null

through() { # through ROLE ARGS...: psql through pgcloak as ROLE
	local role=$1
	shift
	PGPASSWORD=$PASSWORD "$PSQL" -X -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PGCLOAK_PORT" -U "$role" -d "$BENCH_DB" "$@"
}
# Sanity: the token role reads acme's plaintext with the token and nothing
# without it; the login role reads the same row.
got=$(through "$POOL_ROLE" -c "BEGIN" -c "SET LOCAL pgcloak.tenant_token = '$TOKEN'" -c "select ssn from patients where id = 42" -c "COMMIT" | sed -n 3p)
[[ $got == 42 ]] || die "through pgcloak with the token, row 42's ssn is '$got', want 42"
got=$(through "$POOL_ROLE" -c "select count(*) from patients")
[[ $got == 0 ]] || die "through pgcloak without a token, app_pool sees $got rows, want 0"
got=$(through "$LOGIN_ROLE" -c "select ssn from patients where id = 42")
[[ $got == 42 ]] || die "through pgcloak as $LOGIN_ROLE, row 42's ssn is '$got', want 42"

# Scripts: $work/<mode>-<workload>-<target>.sql. pgbench puts a variable
# into the statement as it is in -M simple (so the token is quoted there)
# and binds it as a parameter otherwise.
read_sql='SELECT ssn, email, diagnosis FROM patients WHERE id = :id'
for mode in "${MODES[@]}"; do
	token_sql="SET LOCAL pgcloak.tenant_token = :tok"
	[[ $mode == simple ]] || token_sql="SELECT pg_catalog.set_config('pgcloak.tenant_token', :tok, true)"
	printf '\\set id random(1, :rows)\nBEGIN;\n%s;\n%s;\nCOMMIT;\n' "$token_sql" "$read_sql" >"$work/$mode-separate-token.sql"
	printf '\\set id random(1, :rows)\nBEGIN;\n%s;\nCOMMIT;\n' "$read_sql" >"$work/$mode-separate-login.sql"
	printf '\\set id random(1, :rows)\nBEGIN;\nSELECT 1;\n%s;\nCOMMIT;\n' "$read_sql" >"$work/$mode-separate-login+stmt.sql"
	[[ $mode == simple ]] || continue
	printf '\\set id random(1, :rows)\nBEGIN \\; %s \\; %s \\; COMMIT;\n' "$token_sql" "$read_sql" >"$work/$mode-one-query-token.sql"
	printf '\\set id random(1, :rows)\nBEGIN \\; %s \\; COMMIT;\n' "$read_sql" >"$work/$mode-one-query-login.sql"
	printf '\\set id random(1, :rows)\nBEGIN \\; SELECT 1 \\; %s \\; COMMIT;\n' "$read_sql" >"$work/$mode-one-query-login+stmt.sql"
done
workloads() { if [[ $1 == simple ]]; then echo "separate one-query"; else echo separate; fi; }
tok_value() { if [[ $1 == simple ]]; then echo "'$TOKEN'"; else echo "$TOKEN"; fi; }
declare -A ROLE=([login]=$LOGIN_ROLE [login+stmt]=$LOGIN_ROLE [token]=$POOL_ROLE)

# cpu_ms PID self|children: CPU time (user + system) of process PID, or of
# its children that it has waited for, in milliseconds.
cpu_ms() {
	awk -v hz="$(getconf CLK_TCK)" -v which="$2" '{ sub(/^.*\) /, ""); print (which == "self" ? $12 + $13 : $14 + $15) * 1000 / hz }' "/proc/$1/stat"
}
# The postmaster is a backend's parent; read it while that backend lives.
POSTMASTER_PID=$(psql_direct -At <<'SQL'
select pg_backend_pid() as backend \gset
\setenv BACKEND :backend
\! awk '{ sub(/^.*\) /, ""); print $2 }' /proc/$BACKEND/stat
SQL
)
[[ -r /proc/$POSTMASTER_PID/stat ]] || die "cannot read the postmaster's CPU time (/proc/$POSTMASTER_PID/stat)"

results=$work/results
: >"$results"
echo "--- pgbench -c $CLIENTS -j $JOBS -T $DURATION through pgcloak, $ROUNDS round(s)"
for round in $(seq "$ROUNDS"); do
	for mode in "${MODES[@]}"; do
		for w in $(workloads "$mode"); do
			for t in "${TARGETS[@]}"; do
				proxy0=$(cpu_ms "$PGCLOAK_PID" self)
				pg0=$(cpu_ms "$POSTMASTER_PID" children)
				log=$work/run-$round-$mode-$w-$t.log
				tps=$(PGPASSWORD=$PASSWORD pgbench_tps "$log" "$w as $t ($mode)" \
					-n -M "$mode" -c "$CLIENTS" -j "$JOBS" -T "$DURATION" -D rows="$ROWS" -D tok="$(tok_value "$mode")" \
					-f "$work/$mode-$w-$t.sql" -h 127.0.0.1 -p "$PGCLOAK_PORT" -U "${ROLE[$t]}" "$BENCH_DB")
				sleep 1 # the backends exit and the postmaster reaps them
				txns=$(awk '/^number of transactions actually processed:/ { split($6, a, "/"); print a[1] }' "$log")
				proxy_us=$(awk -v a="$proxy0" -v b="$(cpu_ms "$PGCLOAK_PID" self)" -v n="$txns" 'BEGIN { printf "%.1f", (b - a) * 1000 / n }')
				pg_us=$(awk -v a="$pg0" -v b="$(cpu_ms "$POSTMASTER_PID" children)" -v n="$txns" 'BEGIN { printf "%.1f", (b - a) * 1000 / n }')
				printf '  round %d  %-9s %-10s %-10s %10.1f tps  CPU/txn: pgcloak %6.1f us, PostgreSQL %6.1f us\n' "$round" "$mode" "$w" "$t" "$tps" "$proxy_us" "$pg_us"
				echo "$mode $w $t $tps $proxy_us $pg_us" >>"$results"
			done
		done
	done
done
# Every token transaction was accepted: the audit counts them.
accepted=$(grep -c '"event":"tenant_token_accepted"' "$work/audit.log" || true)
refused=$(grep -c '"event":"tenant_token_refused"' "$work/audit.log" || true)
[[ $refused == 0 ]] || die "$refused tokens refused during the runs"

echo
echo "tenant token (app_pool) vs login-mapped role (acme_app), point read of 3 encrypted columns in a transaction, through pgcloak, $ROWS rows, $CLIENTS clients, $JOBS threads, ${DURATION}s per run, mean of $ROUNDS round(s); $accepted tokens accepted, 0 refused"
versions
echo
awk -v modes="${MODES[*]}" '
	{ sum[$1, $2, $3] += $4; n[$1, $2, $3]++ }
	END {
		printf "| %-8s | %-9s | %10s | %15s | %10s | %11s | %18s |\n", "mode", "workload", "login tps", "login+stmt tps", "token tps", "token/login", "token/(login+stmt)"
		printf "|%s|%s|%s|%s|%s|%s|%s|\n", "----------", "-----------", "-----------:", "----------------:", "-----------:", "------------:", "-------------------:"
		m = split(modes, ms, " ")
		split("separate one-query", ws, " ")
		for (i = 1; i <= m; i++) {
			for (k = 1; k <= 2; k++) {
				mode = ms[i]; w = ws[k]
				if (!n[mode, w, "login"]) continue
				l = sum[mode, w, "login"] / n[mode, w, "login"]
				s = sum[mode, w, "login+stmt"] / n[mode, w, "login+stmt"]
				t = sum[mode, w, "token"] / n[mode, w, "token"]
				printf "| %-8s | %-9s | %10.0f | %15.0f | %10.0f | %11.2f | %18.2f |\n", mode, w, l, s, t, t / l, t / s
			}
		}
	}' "$results"
echo
echo "CPU time per transaction, microseconds (mean of the rounds)"
echo
awk -v modes="${MODES[*]}" -v targets="${TARGETS[*]}" '
	{ p[$1, $2, $3] += $5; g[$1, $2, $3] += $6; n[$1, $2, $3]++ }
	END {
		printf "| %-8s | %-9s | %-10s | %8s | %10s | %6s |\n", "mode", "workload", "target", "pgcloak", "PostgreSQL", "total"
		printf "|%s|%s|%s|%s|%s|%s|\n", "----------", "-----------", "------------", "---------:", "-----------:", "-------:"
		m = split(modes, ms, " ")
		split("separate one-query", ws, " ")
		k = split(targets, ts, " ")
		for (i = 1; i <= m; i++) for (j = 1; j <= 2; j++) for (x = 1; x <= k; x++) {
			key = ms[i] SUBSEP ws[j] SUBSEP ts[x]
			if (!n[key]) continue
			a = p[key] / n[key]; b = g[key] / n[key]
			printf "| %-8s | %-9s | %-10s | %8.1f | %10.1f | %6.1f |\n", ms[i], ws[j], ts[x], a, b, a + b
		}
	}' "$results"
