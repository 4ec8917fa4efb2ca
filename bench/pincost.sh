#!/usr/bin/env bash
# bench/pincost.sh: what the verified tenant costs PostgreSQL, in CPU time
# per transaction, measured directly (no proxy in the way): the
# pgcloak.current_tenant() that every row-level security policy calls, and
# the pgcloak.pin_next() that every transaction of a local tenant token
# runs.
#
# bench/policy.sh and bench/token.sh give throughput through pgcloak, where
# the machine's drift between runs (about +-10 % on a small VM) hides
# differences of a few microseconds. Here one client runs N transactions
# per variant and the script reads the CPU time of PostgreSQL's backends
# (children of the postmaster, counted once they exit); variants alternate
# for ROUNDS rounds and the table shows each one's minimum and median.
#
# pgcloak serve installs the pin (functions and key) once, as upstream.user
# (the bench role, which owns the key). Then, as a tenant role, directly:
#
#   bare       SELECT v FROM bare WHERE id = :id      policy on the bare setting
#   verified   SELECT v FROM verified WHERE id = :id  policy on pgcloak.current_tenant()
#              (session pinned once with pgcloak.pin(): a login-mapped tenant)
#   login      BEGIN; SELECT ... FROM verified; COMMIT              (session pin)
#   mac        BEGIN; SELECT bench.next_mac(...); SELECT ...; COMMIT
#   token      BEGIN; <pgcloak's local pin statement>; SELECT ...; COMMIT
#
# The token variant's pin statement is keystore.NextStatement with local
# true, as pgcloak sends it for SET LOCAL pgcloak.tenant_token (literals in
# -M simple, bound in -M prepared); its MAC comes from bench.next_mac(), a
# SECURITY DEFINER function of the key's owner that computes what pgcloak
# computes in Go. "mac" runs the same call without the pin, so token - mac
# is what the pin costs PostgreSQL, and verified - bare what the policy
# function costs a statement.
#
# Environment (defaults in brackets):
#   N transactions per run [10000]   ROUNDS rounds [5]
#   MODES pgbench -M modes [prepared simple]   ROWS rows per table [1000]
BENCH_NAME=pincost.sh
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"

N=${N:-10000}
ROUNDS=${ROUNDS:-5}
ROWS=${ROWS:-1000}
read -r -a MODES <<<"${MODES:-prepared simple}"
TENANT_ROLE=acme_app
TENANT_PASSWORD=acme-bench-password
VARIANTS=(bare verified login mac token)

start_postgres
psql_direct -c "create role $TENANT_ROLE login password '$TENANT_PASSWORD'" >/dev/null

echo "--- starting pgcloak on 127.0.0.1:$PGCLOAK_PORT once: it installs the verified tenant pin"
{
	pgcloak_yaml_head
	cat <<EOF
tenancy:
  login:
    roles: { $TENANT_ROLE: acme }
log:
  level: warn
EOF
} >"$work/pgcloak.yaml"
serve_pgcloak "$TENANT_ROLE" "$TENANT_PASSWORD"

echo "--- tables bare and verified ($ROWS rows of tenant acme), bench.pin_mac() and bench.next_mac()"
psql_direct <<SQL
create table bare (id int primary key, tenant_id text not null, v text not null);
insert into bare select g, 'acme', 'value ' || g from generate_series(1, $ROWS) g;
create table verified (like bare including all);
insert into verified select * from bare;
alter table bare enable row level security;
alter table bare force row level security;
alter table verified enable row level security;
alter table verified force row level security;
create policy tenant_isolation on bare using (tenant_id = current_setting('app.tenant_id', true));
create policy tenant_isolation on verified using (tenant_id = pgcloak.current_tenant());
grant select on bare, verified to $TENANT_ROLE;
analyze bare;
analyze verified;
-- The MACs pgcloak's Pinner makes (keystore/pin.go), from the key only
-- the bench role (upstream.user) can read: for the benchmark only.
create schema bench;
grant usage on schema bench to public;
create function bench.pin_mac(c bigint, tenant text, proof text) returns text
language plpgsql stable security definer set search_path = pg_catalog, pg_temp
as \$fn\$ DECLARE k record; BEGIN
  SELECT ikey, okey INTO k FROM pgcloak.pin_key WHERE id;
  RETURN encode(sha256(k.okey || sha256(k.ikey || convert_to('v1|' || c || '|' || tenant || '|' || proof, 'UTF8'))), 'hex');
END \$fn\$;
create function bench.next_mac(c bigint, n bigint, is_local boolean, tenant text, proof text) returns text
language plpgsql stable security definer set search_path = pg_catalog, pg_temp
as \$fn\$ DECLARE k record; BEGIN
  SELECT ikey, okey INTO k FROM pgcloak.pin_key WHERE id;
  RETURN encode(sha256(k.okey || sha256(k.ikey ||
    convert_to('v1n|' || c || '|' || n || '|' || is_local::text || '|' || tenant || '|' || proof, 'UTF8'))), 'hex');
END \$fn\$;
SQL
PIN_SQL=$(go run ./bench/cmd/pinsql)

direct() { PGPASSWORD=$TENANT_PASSWORD "$PSQL" -X -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PGPORT" -U "$TENANT_ROLE" -d "$BENCH_DB" "$@"; }

# Each script pins its session once, in its client's first transaction
# (pgbench keeps a client's variables): the session pin of a login-mapped
# tenant, or, for mac and token, the challenge that pin_next() needs.
# The proof, v1:0:pincostbench (no expiry), spelled without a colon that
# pgbench would take for a variable.
PROOF="('v1' || chr(58) || '0' || chr(58) || 'pincostbench')"
# pin() and pin_next() accept a MAC only in pgcloak's own text (keystore:
# PinWord): pgcloak's parameterised statement, which these texts name in a
# comment because their MAC is computed in the statement itself.
session_pin="SELECT pg_catalog.set_config('app.tenant_id', 'acme', false), pg_catalog.set_config('pgcloak.tenant_proof', $PROOF, false), pgcloak.pin('acme', $PROOF, bench.pin_mac(pgcloak.pin_challenge(), 'acme', $PROOF)), 1 AS pinned /* pgcloak.pin(\$1, \$2, \$3) */ \\gset"
challenge="SELECT pgcloak.pin_challenge() AS c, 1 AS pinned \\gset"
read_sql='SELECT v FROM verified WHERE id = :id;'
mac_sql="SELECT bench.next_mac(:c, :n, true, 'acme', $PROOF);"
# keystore.NextStatement(true, alias) with its parameters: tenant, proof,
# challenge, number, MAC, setting, proof setting.
token_sql=$(sed -e "s/\\\$1::pg_catalog.text/'acme'::text/g" -e "s/\\\$2::pg_catalog.text/$PROOF/" -e 's/\$3::pg_catalog.int8/:c::bigint/' \
	-e 's/\$4::pg_catalog.int8/:n::bigint/' -e "s/\\\$5::pg_catalog.text/bench.next_mac(:c, :n, true, 'acme', $PROOF)/" \
	-e "s/\\\$6::pg_catalog.text/'app.tenant_id'::text/" -e "s/\\\$7::pg_catalog.text/'pgcloak.tenant_proof'::text/" <<<"$PIN_SQL");
[[ $token_sql != *'$'* ]] || die "pin statement still has parameters: $token_sql"
token_sql="$token_sql /* pgcloak.pin_next(\$1::pg_catalog.text */"
script() { # script NAME FIRST BODY...: a pgbench script
	local name=$1 first=$2
	shift 2
	{
		printf '\\if :pinned = 0\n%s\n\\endif\n\\set n :n + 1\n\\set id random(1, %d)\n' "$first" "$ROWS"
		printf '%s\n' "$@"
	} >"$work/$name.sql"
}
script bare "SELECT 1 AS pinned \\gset" 'SELECT v FROM bare WHERE id = :id;'
script verified "$session_pin" "$read_sql"
script login "$session_pin" 'BEGIN;' "$read_sql" 'COMMIT;'
script mac "$challenge" 'BEGIN;' "$mac_sql" "$read_sql" 'COMMIT;'
script token "$challenge" 'BEGIN;' "$token_sql;" "$read_sql" 'COMMIT;'

# Sanity: each variant reads a row of acme (the pin verified), and without
# a pin the verified table shows nothing.
for v in "${VARIANTS[@]}"; do
	PGPASSWORD=$TENANT_PASSWORD "$PGBENCH" -n -M prepared -c 1 -t 3 -D pinned=0 -D n=0 -f "$work/$v.sql" \
		-h 127.0.0.1 -p "$PGPORT" -U "$TENANT_ROLE" "$BENCH_DB" >"$work/sanity-$v.log" 2>&1 ||
		{ cat "$work/sanity-$v.log" >&2; die "pgbench $v failed"; }
done
got=$(direct -c "select count(*) from verified")
[[ $got == 0 ]] || die "without a pin, verified shows $got rows, want 0"
got=$(direct <<<"$session_pin
select count(*) from verified;" | tail -n1)
[[ $got == "$ROWS" ]] || die "with a session pin, verified shows $got rows, want $ROWS"
got=$(direct <<<"$challenge
\\set n 1
BEGIN;
$token_sql;
select count(*) from verified;
COMMIT;
select count(*) from verified;" | sed -n '3p;5p' | tr '\n' ' ')
[[ $got == "$ROWS 0 " ]] || die "with a local pin, verified shows '$got' rows (in the transaction, after it), want '$ROWS 0'"

# cpu_ms: CPU time (user + system) of the postmaster's children that it has
# waited for, in milliseconds.
POSTMASTER_PID=$(direct <<'SQL'
select pg_backend_pid() as backend \gset
\setenv BACKEND :backend
\! awk '{ sub(/^.*\) /, ""); print $2 }' /proc/$BACKEND/stat
SQL
)
[[ -r /proc/$POSTMASTER_PID/stat ]] || die "cannot read the postmaster's CPU time (/proc/$POSTMASTER_PID/stat)"
cpu_ms() { awk -v hz="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); print ($14 + $15) * 1000 / hz }' "/proc/$POSTMASTER_PID/stat"; }

results=$work/results
: >"$results"
echo "--- pgbench -c 1 -t $N directly as $TENANT_ROLE, $ROUNDS round(s)"
for round in $(seq "$ROUNDS"); do
	for mode in "${MODES[@]}"; do
		for v in "${VARIANTS[@]}"; do
			a=$(cpu_ms)
			PGPASSWORD=$TENANT_PASSWORD pgbench_tps "$work/run-$round-$mode-$v.log" "$v ($mode)" \
				-n -M "$mode" -c 1 -j 1 -t "$N" -D pinned=0 -D n=0 -f "$work/$v.sql" \
				-h 127.0.0.1 -p "$PGPORT" -U "$TENANT_ROLE" "$BENCH_DB" >/dev/null
			sleep 0.3 # the backend exits and the postmaster reaps it
			us=$(awk -v a="$a" -v b="$(cpu_ms)" -v n="$N" 'BEGIN { printf "%.1f", (b - a) * 1000 / n }')
			printf '  round %d  %-9s %-9s %7.1f us\n' "$round" "$mode" "$v" "$us"
			echo "$mode $v $us" >>"$results"
		done
	done
done

echo
echo "PostgreSQL CPU time per transaction, one client, directly, $N transactions per run, $ROUNDS rounds"
versions
echo
sort -k1,1 -k2,2 -k3n "$results" | awk -v modes="${MODES[*]}" -v variants="${VARIANTS[*]}" '
	{ k = $1 SUBSEP $2; v[k, ++n[k]] = $3 }
	END {
		printf "| %-8s | %-9s | %8s | %9s |\n", "mode", "variant", "min µs", "median µs"
		printf "|%s|%s|%s|%s|\n", "----------", "-----------", "---------:", "----------:"
		m = split(modes, ms, " ")
		c = split(variants, vs, " ")
		for (i = 1; i <= m; i++) {
			for (j = 1; j <= c; j++) {
				k = ms[i] SUBSEP vs[j]
				mn[k] = v[k, 1]; md[k] = v[k, int((n[k] + 1) / 2)]
				printf "| %-8s | %-9s | %8.1f | %9.1f |\n", ms[i], vs[j], mn[k], md[k]
			}
		}
		print ""
		for (i = 1; i <= m; i++) {
			b = ms[i] SUBSEP "bare"; f = ms[i] SUBSEP "verified"; l = ms[i] SUBSEP "login"
			x = ms[i] SUBSEP "mac"; t = ms[i] SUBSEP "token"
			printf "%s: current_tenant() per statement (verified - bare) %+.1f us, %.0f %% of a point read under the bare setting; ", ms[i], mn[f] - mn[b], 100 * (mn[f] - mn[b]) / mn[b]
			printf "the pin (token - mac) %+.1f us, %.0f %% of the login transaction (minimums)\n", mn[t] - mn[x], 100 * (mn[t] - mn[x]) / mn[l]
		}
	}'
