#!/usr/bin/env bash
# bench/keys.sh: what the key lifecycle costs (issue 6), with
# keys.provider aws against testenv's KMS emulator (bench/cmd/kmsenv):
#
#   (a) KMS calls per 1,000 statements in a steady multi-tenant workload:
#       TENANTS tenants, one session each, through pgcloak
#       (bench/cmd/keyload): a warm-up (each tenant's first insert and
#       search, which create its data and index keys), then STATEMENTS
#       inserts, blind-index searches and reads on random tenants. KMS calls
#       are counted by the emulator. A run shorter than keys.cache_ttl
#       reloads nothing, so the table also gives the steady state the cache
#       allows: every tenant's two keys reloaded once per cache_ttl, at the
#       measured statement rate.
#   (b) reencrypt throughput: ROWS rows of tenant acme in table records (two
#       encrypted columns) are written through pgcloak, `keys rotate` makes
#       version 2, and `pgcloak reencrypt` moves them, with its default
#       batch size and pause unless overridden; rows per second.
#   (c) the tps of a pgbench run through pgcloak on records (a point read of
#       both encrypted columns and a blind-index search, as acme) while
#       reencrypt runs, against the same run without it, alternating for
#       ROUNDS rounds; each concurrent run starts after a new rotation and
#       lasts at most 80% of (b)'s reencrypt time, so that it overlaps
#       reencrypt throughout. Target: at least 70% of the tps kept.
#
# Environment (defaults in brackets):
#   TENANTS [100]  STATEMENTS [10000]  LOAD_CLIENTS keyload clients [8]
#   CACHE_TTL keys.cache_ttl [60s]     KMS_LATENCY each KMS call [10ms]
#   ROWS [100000]  REENCRYPT_BATCH [500]  REENCRYPT_PAUSE [50ms]
#   DURATION pgbench seconds, at most [15]  ROUNDS [2]
#   CLIENTS pgbench -c [4]  JOBS pgbench -j [2]  MODE pgbench -M [simple]
BENCH_NAME=keys.sh
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"

TENANTS=${TENANTS:-100}
STATEMENTS=${STATEMENTS:-10000}
LOAD_CLIENTS=${LOAD_CLIENTS:-8}
CACHE_TTL=${CACHE_TTL:-60s}
KMS_LATENCY=${KMS_LATENCY:-10ms}
ROWS=${ROWS:-100000}
REENCRYPT_BATCH=${REENCRYPT_BATCH:-500}
REENCRYPT_PAUSE=${REENCRYPT_PAUSE:-50ms}
DURATION=${DURATION:-15}
ROUNDS=${ROUNDS:-2}
CLIENTS=${CLIENTS:-4}
JOBS=${JOBS:-2}
MODE=${MODE:-simple}
TENANT_PASSWORD=tenant-bench-password
ACME_ROLE=acme_app
began=$(date +%s)

now() { date +%s.%N; }

start_postgres
echo "--- building kmsenv and keyload"
go build -o "$work/kmsenv" ./bench/cmd/kmsenv
go build -o "$work/keyload" ./bench/cmd/keyload

echo "--- starting the KMS emulator (latency $KMS_LATENCY per call)"
start_env kmsenv "$work/kmsenv" -latency "$KMS_LATENCY"
env_vars kmsenv KMS_URL KMS_CONTROL
# Static credentials for the SDK; the emulator checks that they are there,
# not what they are. No shared files, no instance metadata.
export AWS_ACCESS_KEY_ID=AKIDPGCLOAKBENCH AWS_SECRET_ACCESS_KEY=pgcloak-bench-secret AWS_EC2_METADATA_DISABLED=true
export AWS_CONFIG_FILE=$work/aws-config AWS_SHARED_CREDENTIALS_FILE=$work/aws-credentials
unset AWS_PROFILE AWS_SESSION_TOKEN
export PGCLOAK_UPSTREAM_PASSWORD=$BENCH_PASSWORD

psql_acme() { PGPASSWORD=$TENANT_PASSWORD "$PSQL" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PGCLOAK_PORT" -U "$ACME_ROLE" -d "$BENCH_DB" "$@"; }
role() { printf 'kt_%03d' "$1"; }

echo "--- $TENANTS tenant roles, tables patients and records"
{
	for i in $(seq "$TENANTS"); do
		echo "create role $(role "$i") login password '$TENANT_PASSWORD';"
		echo "grant select, insert on patients to $(role "$i");"
		echo "grant usage on sequence patients_id_seq to $(role "$i");"
	done
} >"$work/roles.sql"
psql_direct <<SQL
create role $ACME_ROLE login password '$TENANT_PASSWORD';
create table patients (
	id bigserial primary key,
	tenant_id text not null default current_setting('app.tenant_id'),
	name text, ssn bytea, ssn_bidx bytea);
create index on patients (ssn_bidx);
create table records (
	id serial primary key,
	tenant_id text not null default current_setting('app.tenant_id'),
	name text, ssn bytea, ssn_bidx bytea, note bytea);
create index on records (ssn_bidx);
do \$\$ declare t text; begin
	foreach t in array array['patients', 'records'] loop
		execute format('alter table %I enable row level security', t);
		execute format('alter table %I force row level security', t);
		execute format('create policy tenant_isolation on %I
			using (tenant_id = current_setting(''app.tenant_id'', true))
			with check (tenant_id = current_setting(''app.tenant_id'', true))', t);
	end loop;
end \$\$;
grant select, insert on records to $ACME_ROLE;
grant usage on sequence records_id_seq to $ACME_ROLE;
SQL
psql_direct -f "$work/roles.sql" >/dev/null

echo "--- starting pgcloak on 127.0.0.1:$PGCLOAK_PORT (keys.provider aws, cache_ttl $CACHE_TTL)"
{
	pgcloak_yaml_head
	cat <<EOF2
keys:
  provider: aws
  aws:
    region: us-east-1
    endpoint: $KMS_URL
    key_id: alias/pgcloak
  cache_ttl: $CACHE_TTL
tenancy:
  login:
    roles:
      $ACME_ROLE: acme
EOF2
	for i in $(seq "$TENANTS"); do printf '      %s: t%03d\n' "$(role "$i")" "$i"; done
	cat <<EOF2
encrypt:
  tables:
    - name: public.patients
      columns:
        - { name: ssn, type: text, search: equality }
    - name: public.records
      columns:
        - { name: ssn, type: text, search: equality }
        - { name: note, type: text }
audit:
  output: $work/audit.log
log:
  level: warn
EOF2
} >"$work/pgcloak.yaml"
# serve refuses declared columns without pgcloak's format CHECKs.
{ echo "set client_min_messages = warning;"; "$work/pgcloak" schema -c "$work/pgcloak.yaml"; } | psql_direct >/dev/null
"$work/pgcloak" serve -c "$work/pgcloak.yaml" 2>"$work/pgcloak.log" &
STOP_PIDS+=($!)
wait_login pgcloak "$PGCLOAK_PORT" "$ACME_ROLE" "$TENANT_PASSWORD" "$work/pgcloak.log"

# ---------------------------------------------------------------- (a)
echo "--- (a) $TENANTS tenants: warm-up, then $STATEMENTS statements ($LOAD_CLIENTS clients)"
"$work/keyload" -addr "127.0.0.1:$PGCLOAK_PORT" -db "$BENCH_DB" -role 'kt_%03d' -password "$TENANT_PASSWORD" \
	-kms-control "$KMS_CONTROL" -tenants "$TENANTS" -statements "$STATEMENTS" -clients "$LOAD_CLIENTS" \
	>"$work/keyload.out" 2>"$work/keyload.err" || { cat "$work/keyload.err" "$work/pgcloak.log" >&2; die "keyload failed"; }
cat "$work/keyload.out"

# ---------------------------------------------------------------- (b)
# Multi-row INSERTs: PostgreSQL refuses COPY FROM into a table under
# row-level security.
echo "--- (b) loading $ROWS rows of tenant acme into records (INSERTs of 200 rows through pgcloak)"
t0=$(now)
awk -v rows="$ROWS" 'BEGIN {
	for (i = 1; i <= rows; i += 200) {
		printf "insert into records (name, ssn, note) values "
		for (j = i; j < i + 200 && j <= rows; j++)
			printf "%s(%crecord %d%c, %c%d%c, %cnote of record %d%c)", (j > i ? ", " : ""), 39, j, 39, 39, j, 39, 39, j, 39
		print ";"
	}
}' | psql_acme >/dev/null
load_s=$(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }')
got=$(psql_acme -At -c "select name from records where ssn = '42'" -c "select note from records where id = 42")
[[ $got == $'record 42\nnote of record 42' ]] || die "sanity check through pgcloak failed"
psql_direct -c "analyze records" >/dev/null
echo "  loaded in ${load_s}s"

# version_count V: acme's records whose ssn is sealed under version V.
version_count() {
	psql_direct -At -c "set app.tenant_id = 'acme'" -c "select count(*) from records
		where (get_byte(ssn, 1)::bigint << 24 | get_byte(ssn, 2) << 16 | get_byte(ssn, 3) << 8 | get_byte(ssn, 4)) = $1"
}
rotate() {
	"$work/pgcloak" keys rotate -c "$work/pgcloak.yaml" --tenant acme >"$work/rotate.out" 2>&1 ||
		{ cat "$work/rotate.out" >&2; die "keys rotate failed"; }
	sed -n 's/.*version \([0-9]*\) is active.*/\1/p' "$work/rotate.out"
}
# reencrypt LOG: reencrypt acme's records.
reencrypt() {
	"$work/pgcloak" reencrypt -c "$work/pgcloak.yaml" --tenant acme --table records \
		--batch-size "$REENCRYPT_BATCH" --pause "$REENCRYPT_PAUSE" >"$1" 2>"$1.err"
}

version=$(rotate)
echo "  keys rotate: version $version is active; reencrypt --batch-size $REENCRYPT_BATCH --pause $REENCRYPT_PAUSE"
t0=$(now)
reencrypt "$work/reencrypt-b.out" || { cat "$work/reencrypt-b.out" "$work/reencrypt-b.out.err" >&2; die "reencrypt failed"; }
reencrypt_s=$(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }')
cat "$work/reencrypt-b.out"
moved=$(version_count "$version")
[[ $moved == "$ROWS" ]] || die "after reencrypt $moved of $ROWS rows are under version $version"
reencrypt_rps=$(awk -v r="$ROWS" -v s="$reencrypt_s" 'BEGIN { printf "%.0f", r / s }')
echo "  $ROWS rows in ${reencrypt_s}s: $reencrypt_rps rows/s"

# ---------------------------------------------------------------- (c)
cat >"$work/app.sql" <<'EOF2'
\set id random(1, :rows)
SELECT ssn, note FROM records WHERE id = :id;
SELECT id FROM records WHERE ssn = :id::text;
EOF2
duration=$(awk -v d="$DURATION" -v r="$reencrypt_s" 'BEGIN { x = int(r * 0.8); if (x > d) x = d; if (x < 3) x = 3; print x }')
results=$work/results
: >"$results"
# pgbench_run LABEL: one pgbench run as acme through pgcloak; prints tps.
pgbench_run() {
	PGPASSWORD=$TENANT_PASSWORD pgbench_tps "$work/pgbench-$1.log" "($1)" \
		-n -M "$MODE" -c "$CLIENTS" -j "$JOBS" -T "$duration" -D rows="$ROWS" \
		-f "$work/app.sql" -h 127.0.0.1 -p "$PGCLOAK_PORT" -U "$ACME_ROLE" "$BENCH_DB"
}
echo "--- (c) pgbench -M $MODE -c $CLIENTS -j $JOBS -T $duration through pgcloak, alone and during reencrypt, $ROUNDS round(s)"
for round in $(seq "$ROUNDS"); do
	tps=$(pgbench_run "alone-$round")
	printf '  round %d  alone             %10.1f tps\n' "$round" "$tps"
	echo "$round alone $tps" >>"$results"

	version=$(rotate)
	t0=$(now)
	reencrypt "$work/reencrypt-c$round.out" &
	re_pid=$!
	STOP_PIDS+=("$re_pid")
	tps=$(pgbench_run "reencrypt-$round")
	overlap=yes
	kill -0 "$re_pid" 2>/dev/null || overlap=no
	wait "$re_pid" || { cat "$work/reencrypt-c$round.out" "$work/reencrypt-c$round.out.err" >&2; die "reencrypt (round $round) failed"; }
	re_s=$(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }')
	moved=$(version_count "$version")
	[[ $moved == "$ROWS" ]] || die "round $round: after reencrypt $moved of $ROWS rows are under version $version"
	[[ $overlap == yes ]] || echo "  warning: reencrypt ended before pgbench did; lower DURATION"
	printf '  round %d  during reencrypt  %10.1f tps  (reencrypt to version %d: %d rows in %ss, %.0f rows/s)\n' \
		"$round" "$tps" "$version" "$ROWS" "$re_s" "$(awk -v r="$ROWS" -v s="$re_s" 'BEGIN { print r / s }')"
	echo "$round reencrypt $tps $re_s $overlap" >>"$results"
done

# ---------------------------------------------------------------- report
ttl_s=$(awk -v t="$CACHE_TTL" 'BEGIN {
	if (t ~ /^[0-9.]+ms$/) print substr(t, 1, length(t) - 2) / 1000
	else if (t ~ /^[0-9.]+s$/) print substr(t, 1, length(t) - 1)
	else if (t ~ /^[0-9.]+m$/) print substr(t, 1, length(t) - 1) * 60
	else if (t ~ /^[0-9.]+h$/) print substr(t, 1, length(t) - 1) * 3600
	else print 0 }')
echo
echo "keys benchmark: keys.provider aws (emulator, ${KMS_LATENCY} per call), keys.cache_ttl $CACHE_TTL"
versions "$(($(date +%s) - began))s in all"
echo
echo "(a) KMS calls, $TENANTS tenants, one session each, $LOAD_CLIENTS clients"
awk -v tenants="$TENANTS" -v ttl="$ttl_s" '
	function field(name,   i, kv) {
		for (i = 1; i <= NF; i++) { split($i, kv, "="); if (kv[1] == name) return kv[2] }
	}
	BEGIN {
		printf "| %-14s | %10s | %8s | %12s | %15s | %7s | %17s |\n", "phase", "statements", "seconds", "statements/s", "GenerateDataKey", "Decrypt", "calls per 1,000"
		printf "|%s|%s|%s|%s|%s|%s|%s|\n", "----------------", "-----------:", "---------:", "-------------:", "----------------:", "--------:", "------------------:"
	}
	{
		n = field("statements"); s = field("seconds"); g = field("GenerateDataKey"); d = field("Decrypt")
		label = field("phase") == "warmup" ? "warm-up" : "after warm-up"
		printf "| %-14s | %10d | %8.2f | %12.0f | %15d | %7d | %17.2f |\n", label, n, s, n / s, g, d, (g + d) * 1000 / n
		if (field("phase") == "steady") { rate = n / s; steady_s = s }
	}
	END {
		if (ttl > 0 && rate > 0) {
			printf "\nThe run after warm-up lasted %.1fs; keys live %gs. In a steady state every tenant'\''s data and index\n", steady_s, ttl
			printf "keys are reloaded once per cache_ttl: %d calls per %gs, at %.0f statements/s %.2f per 1,000 statements.\n",
				2 * tenants, ttl, rate, 2 * tenants * 1000 / (ttl * rate)
		}
	}' "$work/keyload.out"
echo
echo "(b) reencrypt, $ROWS rows (2 encrypted columns), --batch-size $REENCRYPT_BATCH --pause $REENCRYPT_PAUSE"
echo "    loaded through pgcloak (INSERTs) in ${load_s}s; reencrypt alone: ${reencrypt_s}s, $reencrypt_rps rows/s"
echo
echo "(c) pgbench through pgcloak (-M $MODE -c $CLIENTS -j $JOBS -T $duration; point read + blind-index search)"
awk '
	$2 == "alone" { alone[$1] = $3; rounds = $1 }
	$2 == "reencrypt" { during[$1] = $3; secs[$1] = $4; overlap[$1] = $5 }
	END {
		printf "| %5s | %10s | %21s | %6s | %14s |\n", "round", "alone tps", "during reencrypt tps", "kept", "reencrypt time"
		printf "|%s|%s|%s|%s|%s|\n", "------:", "-----------:", "----------------------:", "-------:", "---------------:"
		for (r = 1; r <= rounds; r++) {
			printf "| %5d | %10.1f | %21.1f | %5.1f%% | %13.1fs%s |\n", r, alone[r], during[r], 100 * during[r] / alone[r], secs[r], overlap[r] == "yes" ? "" : "*"
			sa += alone[r]; sd += during[r]
		}
		printf "| %5s | %10.1f | %21.1f | %5.1f%% | %14s |\n", "mean", sa / rounds, sd / rounds, 100 * sd / sa, ""
		printf "\ntarget: at least 70%% kept: %s\n", (sd / sa >= 0.7 ? "met" : "NOT met")
	}' "$results"
