#!/usr/bin/env bash
# bench/policy.sh: what a row-level security policy on the verified tenant,
# pgcloak.current_tenant(), costs against the same policy on the bare
# setting, current_setting('app.tenant_id', true).
#
# pgcloak runs with one login-mapped tenant role (acme) and no declared
# table, so statements pass through it unchanged. Three tables of ROWS rows
# of tenant acme differ only in their policy:
#   bare      USING (tenant_id = current_setting('app.tenant_id', true))
#   verified  USING (tenant_id = pgcloak.current_tenant())
#   initplan  USING (tenant_id = (SELECT pgcloak.current_tenant()))
#   floor     USING (tenant_id = bench_floor.tenant()), a plpgsql function
#             declared as pgcloak.current_tenant() is (SECURITY DEFINER,
#             STABLE, the same SET search_path) whose body only returns the
#             bare setting: what any such function costs before it checks
#             anything, the floor for the verified one
# Two pgbench custom scripts run through pgcloak as the tenant role:
#   point  SELECT v FROM t WHERE id = :id   (the policy runs for one row)
#   scan   SELECT count(*) FROM t           (for every row, unless initplan)
# Within each workload and mode the tables alternate; ROUNDS repeats the
# cycle and the table shows the mean tps and each table's ratio to bare.
# Before that, psql times 200000 calls of each function in one statement,
# for the cost per call.
#
# Environment (defaults in brackets):
#   DURATION seconds per run [10]   ROUNDS cycles [3]
#   MODES pgbench -M modes [simple extended prepared]
#   ROWS rows per table [1000]      CLIENTS pgbench -c [8]   JOBS pgbench -j [2]
BENCH_NAME=policy.sh
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"

DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
ROWS=${ROWS:-1000}
CLIENTS=${CLIENTS:-8}
JOBS=${JOBS:-2}
read -r -a MODES <<<"${MODES:-simple extended prepared}"
TENANT_ROLE=acme_app
TENANT_PASSWORD=acme-bench-password
TABLES=(bare verified initplan floor)

start_postgres
psql_direct -c "create role $TENANT_ROLE login password '$TENANT_PASSWORD'" >/dev/null

echo "--- starting pgcloak on 127.0.0.1:$PGCLOAK_PORT (it installs pgcloak.current_tenant())"
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

echo "--- $ROWS rows in each of: ${TABLES[*]}"
psql_direct <<SQL
create schema bench_floor;
grant usage on schema bench_floor to public;
create function bench_floor.tenant() returns text
language plpgsql stable security definer set search_path = pg_catalog, pg_temp
as \$fn\$ BEGIN RETURN current_setting('app.tenant_id', true); END \$fn\$;
SQL
declare -A POLICY=(
	[bare]="current_setting('app.tenant_id', true)"
	[verified]="pgcloak.current_tenant()"
	[initplan]="(SELECT pgcloak.current_tenant())"
	[floor]="bench_floor.tenant()"
)
for t in "${TABLES[@]}"; do
	psql_direct <<SQL
create table $t (id int primary key, tenant_id text not null, v text not null);
insert into $t select g, 'acme', 'value ' || g from generate_series(1, $ROWS) g;
alter table $t enable row level security;
alter table $t force row level security;
create policy tenant_isolation on $t using (tenant_id = ${POLICY[$t]});
grant select on $t to $TENANT_ROLE;
analyze $t;
SQL
done

through() { PGPASSWORD=$TENANT_PASSWORD "$PSQL" -X -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PGCLOAK_PORT" -U "$TENANT_ROLE" -d "$BENCH_DB" "$@"; }

# Sanity: through pgcloak the tenant sees every row of each table, and
# directly (no pin) the verified tables show none.
for t in "${TABLES[@]}"; do
	got=$(through -c "select count(*) from $t")
	[[ $got == "$ROWS" ]] || die "through pgcloak, $t shows $got rows, want $ROWS"
done
got=$(PGPASSWORD=$TENANT_PASSWORD "$PSQL" -X -At -h 127.0.0.1 -p "$PGPORT" -U "$TENANT_ROLE" -d "$BENCH_DB" \
	-c "set app.tenant_id = 'acme'" -c "select count(*) from verified" | tail -n1)
[[ $got == 0 ]] || die "directly, with the bare setting set, verified shows $got rows, want 0"

echo "--- cost per call: 200000 calls in one statement, through pgcloak"
per_call() { # per_call EXPR: microseconds per evaluation of EXPR
	through -c '\timing on' -c "select count($1) from generate_series(1, 200000)" |
		awk '/^Time: / { printf "%.2f", $2 * 1000 / 200000 }'
}
bare_us=$(per_call "current_setting('app.tenant_id', true)")
fn_us=$(per_call "pgcloak.current_tenant()")
floor_us=$(per_call "bench_floor.tenant()")
echo "  current_setting('app.tenant_id', true)  $bare_us us"
echo "  pgcloak.current_tenant()                $fn_us us"
echo "  bench_floor.tenant()                    $floor_us us"

cat >"$work/point.sql.in" <<'EOF'
\set id random(1, :rows)
SELECT v FROM TABLE WHERE id = :id;
EOF
cat >"$work/scan.sql.in" <<'EOF'
SELECT count(*) FROM TABLE;
EOF
for w in point scan; do
	for t in "${TABLES[@]}"; do sed "s/TABLE/$t/" "$work/$w.sql.in" >"$work/$w-$t.sql"; done
done

results=$work/results
: >"$results"
echo "--- pgbench -c $CLIENTS -j $JOBS -T $DURATION through pgcloak, $ROUNDS round(s)"
for round in $(seq "$ROUNDS"); do
	for mode in "${MODES[@]}"; do
		for w in point scan; do
			for t in "${TABLES[@]}"; do
				tps=$(PGPASSWORD=$TENANT_PASSWORD pgbench_tps "$work/run-$round-$mode-$w-$t.log" "$w on $t ($mode)" \
					-n -M "$mode" -c "$CLIENTS" -j "$JOBS" -T "$DURATION" -D rows="$ROWS" -f "$work/$w-$t.sql" \
					-h 127.0.0.1 -p "$PGCLOAK_PORT" -U "$TENANT_ROLE" "$BENCH_DB")
				printf '  round %d  %-9s %-6s %-9s %10.1f tps\n' "$round" "$mode" "$w" "$t" "$tps"
				echo "$mode $w $t $tps" >>"$results"
			done
		done
	done
done

echo
echo "RLS policy on pgcloak.current_tenant() vs the bare setting, through pgcloak, $ROWS rows, $CLIENTS clients, $JOBS threads, ${DURATION}s per run, mean of $ROUNDS round(s)"
versions "current_setting ${bare_us} us/call, current_tenant() ${fn_us} us/call, floor ${floor_us} us/call"
echo
awk -v modes="${MODES[*]}" '
	{ sum[$1, $2, $3] += $4; n[$1, $2, $3]++ }
	END {
		printf "| %-8s | %-8s | %10s | %13s | %13s | %10s | %14s | %14s | %11s |\n", "mode", "workload", "bare tps", "verified tps", "initplan tps", "floor tps", "verified/bare", "initplan/bare", "floor/bare"
		printf "|%s|%s|%s|%s|%s|%s|%s|%s|%s|\n", "----------", "----------", "-----------:", "--------------:", "--------------:", "-----------:", "---------------:", "---------------:", "------------:"
		m = split(modes, ms, " ")
		split("point scan", ws, " ")
		for (i = 1; i <= m; i++) {
			for (k = 1; k <= 2; k++) {
				mode = ms[i]; w = ws[k]
				b = sum[mode, w, "bare"] / n[mode, w, "bare"]
				v = sum[mode, w, "verified"] / n[mode, w, "verified"]
				p = sum[mode, w, "initplan"] / n[mode, w, "initplan"]
				f = sum[mode, w, "floor"] / n[mode, w, "floor"]
				printf "| %-8s | %-8s | %10.0f | %13.0f | %13.0f | %10.0f | %14.2f | %14.2f | %11.2f |\n", mode, w, b, v, p, f, v / b, p / b, f / b
			}
		}
	}' "$results"
