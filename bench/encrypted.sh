#!/usr/bin/env bash
# bench/encrypted.sh: the cost of encryption, as a ratio to the same
# workload on a plaintext copy of the table directly against PostgreSQL.
#
# Three pgbench custom scripts run on a `patients` table of ROWS rows whose
# ssn, email and diagnosis columns are encrypted by pgcloak (tenant acme,
# RLS forced), and the same scripts run directly on `patients_plain`, a
# plaintext copy under the same policy (the direct sessions set the tenant
# setting as a startup parameter), so that the ratio is what encryption
# costs, not what row-level security does:
#   read    point read by id returning the three encrypted columns
#   search  equality search on the encrypted ssn (a blind-index lookup)
#   insert  insert with three encrypted columns
# In the same run, pgbench -S goes directly and through pgcloak, giving
# pgcloak's own passthrough ratio; the table relates each encrypted ratio to
# it. Each workload's plaintext script also runs through pgcloak (target
# "plain>pgcloak": patients_plain is not declared, so the tenant session
# passes it through): the last column divides the encrypted tps by it, the
# same statement's cost through the same proxy with and without encryption.
# (A point read of patients is much lighter than -S's read of 1,000,000
# rows, so a proxy's fixed cost per transaction weighs more on it.) Within each workload the two targets alternate; ROUNDS repeats the
# cycle and the table shows the mean.
#
# Environment (defaults in brackets):
#   DURATION seconds per run [15]   ROUNDS cycles [1]
#   MODES pgbench -M modes [simple extended prepared]
#   ROWS table rows [10000]         SCALE pgbench -S scale [10]
#   CLIENTS pgbench -c [8]          JOBS pgbench -j [2]
#   PERF=1 records pgcloak with perf during each of its runs and prints the
#   hottest symbols of each
#   STORED=1 also inserts, directly and without pgcloak, what pgcloak stores
#   for a row (ciphertexts and blind indexes as bytea literals, one row's
#   copied) into the encrypted table, alternated with the plaintext insert:
#   what the stored form costs PostgreSQL (larger values, the format CHECKs,
#   the blind-index indexes), apart from what pgcloak does
BENCH_NAME=encrypted.sh
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"

DURATION=${DURATION:-15}
ROUNDS=${ROUNDS:-1}
ROWS=${ROWS:-10000}
SCALE=${SCALE:-10}
CLIENTS=${CLIENTS:-8}
JOBS=${JOBS:-2}
read -r -a MODES <<<"${MODES:-simple extended prepared}"
TENANT_ROLE=acme_app
TENANT_PASSWORD=acme-bench-password
# The passthrough runs log in as this unscoped role: no client may log in as
# upstream.user through pgcloak.
PASS_ROLE=bench_pass
PASS_PASSWORD=pass-bench-password

start_postgres

echo "--- pgbench -i -s $SCALE and the patients tables"
"$PGBENCH" -i -s "$SCALE" -q -h 127.0.0.1 -p "$PGPORT" -U "$BENCH_USER" "$BENCH_DB" >"$work/init.log" 2>&1 ||
	{ cat "$work/init.log" >&2; die "pgbench -i failed"; }
psql_direct <<SQL
create role $TENANT_ROLE login password '$TENANT_PASSWORD';
create role $PASS_ROLE login password '$PASS_PASSWORD';
grant select on pgbench_accounts, pgbench_branches to $PASS_ROLE;
create table patients (
	id serial primary key,
	tenant_id text not null default current_setting('app.tenant_id'),
	name text,
	ssn bytea, ssn_bidx bytea, email bytea, email_bidx bytea, diagnosis bytea);
create index on patients (ssn_bidx);
alter table patients enable row level security;
alter table patients force row level security;
create policy tenant_isolation on patients
	using (tenant_id = current_setting('app.tenant_id', true))
	with check (tenant_id = current_setting('app.tenant_id', true));
grant select, insert, update, delete on patients to $TENANT_ROLE;
grant usage on sequence patients_id_seq to $TENANT_ROLE;
create table patients_plain (id serial primary key,
	tenant_id text not null default current_setting('app.tenant_id'),
	name text, ssn text, email text, diagnosis text);
create index on patients_plain (ssn);
alter table patients_plain enable row level security;
alter table patients_plain force row level security;
create policy tenant_isolation on patients_plain
	using (tenant_id = current_setting('app.tenant_id', true))
	with check (tenant_id = current_setting('app.tenant_id', true));
grant select, insert, update, delete on patients_plain to $TENANT_ROLE;
grant usage on sequence patients_plain_id_seq to $TENANT_ROLE;
SQL

echo "--- starting pgcloak on 127.0.0.1:$PGCLOAK_PORT"
"$work/pgcloak" keys init-local -o "$work/master.key" >/dev/null
{
	pgcloak_yaml_head
	cat <<EOF2
tenancy:
  login:
    roles: { $TENANT_ROLE: acme }
  unscoped_roles: [$PASS_ROLE]
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
EOF2
} >"$work/pgcloak.yaml"
# serve refuses declared columns without pgcloak's format CHECKs.
{ echo "set client_min_messages = warning;"; PGCLOAK_UPSTREAM_PASSWORD=$BENCH_PASSWORD "$work/pgcloak" schema -c "$work/pgcloak.yaml"; } | psql_direct >/dev/null
serve_pgcloak "$TENANT_ROLE" "$TENANT_PASSWORD"

echo "--- loading $ROWS rows (through pgcloak, and plaintext directly)"
gen_rows() { # gen_rows TABLE: multi-row inserts of ROWS patients
	awk -v rows="$ROWS" -v table="$1" 'BEGIN {
		for (i = 1; i <= rows; i += 100) {
			printf "insert into %s (name, ssn, email, diagnosis) values ", table
			for (j = i; j < i + 100 && j <= rows; j++)
				printf "%s(%cpatient %d%c, %c%d%c, %cuser%d@example.com%c, %cdiagnosis %d%c)", (j > i ? ", " : ""), 39, j, 39, 39, j, 39, 39, j, 39, 39, j % 97, 39
			print ";"
		}
	}'
}
gen_rows patients | PGPASSWORD=$TENANT_PASSWORD "$PSQL" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PGCLOAK_PORT" -U "$TENANT_ROLE" -d "$BENCH_DB" >/dev/null
gen_rows patients_plain | PGOPTIONS="-c app.tenant_id=acme" psql_direct >/dev/null
psql_direct -c "analyze patients; analyze patients_plain" >/dev/null

# One script per workload, with TABLE replaced per target.
cat >"$work/read.sql.in" <<'EOF2'
\set id random(1, :rows)
SELECT ssn, email, diagnosis FROM TABLE WHERE id = :id;
EOF2
cat >"$work/search.sql.in" <<'EOF2'
\set n random(1, :rows)
SELECT id, name FROM TABLE WHERE ssn = :n::text;
EOF2
cat >"$work/insert.sql.in" <<'EOF2'
\set n random(1, 1000000000)
INSERT INTO TABLE (name, ssn, email, diagnosis) VALUES ('bench', :n::text, :n::text, 'inserted');
EOF2
for w in read search insert; do
	sed 's/TABLE/patients/' "$work/$w.sql.in" >"$work/$w-pgcloak.sql"
	sed 's/TABLE/patients_plain/' "$work/$w.sql.in" >"$work/$w-direct.sql"
done

# Sanity: through pgcloak, search finds exactly one row and read returns
# plaintext, so the figures below measure working queries.
got=$(PGPASSWORD=$TENANT_PASSWORD "$PSQL" -X -At -h 127.0.0.1 -p "$PGCLOAK_PORT" -U "$TENANT_ROLE" -d "$BENCH_DB" \
	-c "select name from patients where ssn = '42'" -c "select ssn from patients where id = 42")
[[ $got == $'patient 42\n42' ]] || die "sanity check through pgcloak failed: got $got"
# Directly, the tenant role sees the plaintext copy's rows only with the
# tenant setting (what the direct runs pass), so both sides read rows.
direct_tenant() { PGOPTIONS="-c app.tenant_id=acme" PGPASSWORD=$TENANT_PASSWORD "$@"; }
got=$(direct_tenant "$PSQL" -X -At -h 127.0.0.1 -p "$PGPORT" -U "$TENANT_ROLE" -d "$BENCH_DB" \
	-c "select count(*) from patients_plain" -c "select name from patients_plain where ssn = '42'")
[[ $got == "$ROWS"$'\npatient 42' ]] || die "sanity check directly on patients_plain failed: got $got"
got=$(PGPASSWORD=$TENANT_PASSWORD "$PSQL" -X -At -h 127.0.0.1 -p "$PGCLOAK_PORT" -U "$TENANT_ROLE" -d "$BENCH_DB" \
	-c "select count(*) from patients_plain")
[[ $got == "$ROWS" ]] || die "sanity check on patients_plain through pgcloak failed: got $got"

declare -A PORT=([direct]=$PGPORT [pgcloak]=$PGCLOAK_PORT [stored]=$PGPORT [plain\>pgcloak]=$PGCLOAK_PORT)
results=$work/results
: >"$results"
run() { # run ROUND MODE WORKLOAD TARGET USER PASSWORD ARGS...
	local round=$1 mode=$2 w=$3 t=$4 user=$5 password=$6
	shift 6
	local tps perf_pid=
	if [[ -n ${PERF:-} && $t == pgcloak ]]; then
		perf record -q -F 999 -g -p "$PGCLOAK_PID" -o "$work/perf-$mode-$w.data" -- sleep "$((DURATION > 2 ? DURATION - 1 : 1))" 2>/dev/null &
		perf_pid=$!
	fi
	local options=
	[[ ($t == direct || $t == stored) && $user == "$TENANT_ROLE" ]] && options="-c app.tenant_id=acme"
	tps=$(PGOPTIONS=$options PGPASSWORD=$password pgbench_tps "$work/run-$round-$mode-$w-$t.log" "$w against $t ($mode)" \
		-n -M "$mode" -c "$CLIENTS" -j "$JOBS" -T "$DURATION" -D rows="$ROWS" "$@" \
		-h 127.0.0.1 -p "${PORT[$t]}" -U "$user" "$BENCH_DB")
	if [[ -n $perf_pid ]]; then
		wait "$perf_pid" || true
		echo "  perf of pgcloak, $mode $w (self time by symbol):"
		{ perf report -q -i "$work/perf-$mode-$w.data" --no-children -g none --percent-limit 0.7 --sort symbol 2>/dev/null | grep -v "^$" | sed "s/^/    /"; } || true
	fi
	printf '  round %d  %-9s %-8s %-8s %12.1f tps\n' "$round" "$mode" "$w" "$t" "$tps"
	echo "$mode $w $t $tps" >>"$results"
}

echo "--- pgbench -c $CLIENTS -j $JOBS -T $DURATION, $ROUNDS round(s)"
for round in $(seq "$ROUNDS"); do
	for mode in "${MODES[@]}"; do
		for t in direct pgcloak; do
			run "$round" "$mode" passthrough "$t" "$PASS_ROLE" "$PASS_PASSWORD" -S
		done
		for w in read search insert; do
			for t in direct pgcloak; do
				run "$round" "$mode" "$w" "$t" "$TENANT_ROLE" "$TENANT_PASSWORD" -f "$work/$w-$t.sql"
			done
			run "$round" "$mode" "$w" "plain>pgcloak" "$TENANT_ROLE" "$TENANT_PASSWORD" -f "$work/$w-direct.sql"
		done
	done
done

if [[ ${STORED:-0} == 1 ]]; then
	stored=$(PGOPTIONS="-c app.tenant_id=acme" psql_direct -At -c "select format('INSERT INTO patients (name, ssn, ssn_bidx, email, email_bidx, diagnosis) VALUES (''bench'', ''\\x%s'', ''\\x%s'', ''\\x%s'', ''\\x%s'', ''\\x%s'');', encode(ssn, 'hex'), encode(ssn_bidx, 'hex'), encode(email, 'hex'), encode(email_bidx, 'hex'), encode(diagnosis, 'hex')) from patients where id = 42" 2>&1) || true
	[[ $stored == INSERT* ]] || die "could not read row 42's stored form: $stored"
	echo "$stored" >"$work/insert-stored.sql"
	echo "--- the stored form inserted directly (no pgcloak) against the plaintext insert, $ROUNDS round(s)"
	for round in $(seq "$ROUNDS"); do
		for mode in "${MODES[@]}"; do
			run "$round" "$mode" stored direct "$TENANT_ROLE" "$TENANT_PASSWORD" -f "$work/insert-direct.sql"
			run "$round" "$mode" stored stored "$TENANT_ROLE" "$TENANT_PASSWORD" -f "$work/insert-stored.sql"
		done
	done
fi

echo
echo "encrypted workloads, $ROWS rows, $CLIENTS clients, $JOBS threads, ${DURATION}s per run, mean of $ROUNDS round(s)"
versions
echo
awk -v modes="${MODES[*]}" '
	{ sum[$1, $2, $3] += $4; n[$1, $2, $3]++ }
	END {
		printf "| %-8s | %-11s | %11s | %11s | %14s | %24s | %19s |\n", "mode", "workload", "direct tps", "pgcloak tps", "pgcloak/direct", "ratio / passthrough ratio", "pgcloak / plaintext through pgcloak"
		printf "|%s|%s|%s|%s|%s|%s|%s|\n", "----------", "-------------", "------------:", "------------:", "---------------:", "-------------------------:", "------------------------------------:"
		m = split(modes, ms, " ")
		split("passthrough read search insert", ws, " ")
		for (i = 1; i <= m; i++) {
			mode = ms[i]
			pd = sum[mode, "passthrough", "direct"] / n[mode, "passthrough", "direct"]
			pc = sum[mode, "passthrough", "pgcloak"] / n[mode, "passthrough", "pgcloak"]
			for (k = 1; k <= 4; k++) {
				w = ws[k]
				d = sum[mode, w, "direct"] / n[mode, w, "direct"]
				c = sum[mode, w, "pgcloak"] / n[mode, w, "pgcloak"]
				pp = "-"
				if (n[mode, w, "plain>pgcloak"] > 0)
					pp = sprintf("%.2f", c / (sum[mode, w, "plain>pgcloak"] / n[mode, w, "plain>pgcloak"]))
				printf "| %-8s | %-11s | %11.0f | %11.0f | %14.2f | %24.2f | %35s |\n", mode, w, d, c, c / d, (c / d) / (pc / pd), pp
			}
		}
		if (n[ms[1], "stored", "stored"] > 0) {
			print ""
			print "The stored form inserted directly, against the plaintext insert directly:"
			print ""
			printf "| %-8s | %17s | %16s | %13s |\n", "mode", "plaintext tps", "stored form tps", "stored/plain"
			printf "|%s|%s|%s|%s|\n", "----------", "------------------:", "-----------------:", "--------------:"
			for (i = 1; i <= m; i++) {
				mode = ms[i]
				d = sum[mode, "stored", "direct"] / n[mode, "stored", "direct"]
				c = sum[mode, "stored", "stored"] / n[mode, "stored", "stored"]
				printf "| %-8s | %17.0f | %16.0f | %13.2f |\n", mode, d, c, c / d
			}
		}
	}' "$results"
