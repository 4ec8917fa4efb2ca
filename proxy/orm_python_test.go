package proxy

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The Python part of the ORM matrix (issue 14): psycopg 3 and asyncpg
// directly, SQLAlchemy 1.4 and Django 3.2 (TestORMSQLAlchemy and
// TestORMDjango in orm_test.go), all from Debian's packages and the system
// Python. Each library runs twice. As tenant acme (a login role) on
// ormEnv's patients table, its script prints what it saw and the test
// compares the lines; psql, directly, then finds only ciphertext. As the
// token role, on a database of its own, ONE pool of the library serves
// two tenants with a token per transaction: the script prints its
// transactions as poolTx JSON (py_pooljobs.py) and checkPoolRun checks
// that each saw only its own tenant's rows and plaintext, that a
// transaction without a token saw nothing and could not write, and that
// every stored row is stamped with the tenant that wrote it.

// migratedEnv is ormEnv with the application's own index and CHECK left
// for the script's migration to create, as the unscoped migrator that
// owns patients, through pgcloak.
func migratedEnv(t *testing.T) *encryptedEnv {
	t.Helper()
	env := ormEnv(t)
	fatalIf(t, env.pg.Exec(ctxT(t), env.db, `drop index patients_name_idx;
		alter table patients drop constraint patients_name_check;
		grant create on schema public to `+migratorRole+`;
		alter table patients owner to `+migratorRole), "leave the migration to the migrator")
	return env
}

// runPyTenant runs script (a script of testdata/orm) in tenant mode as
// acme on migratedEnv, the migrator's DDL through pgcloak, compares what
// it prints with want, and checks that PostgreSQL stores rows rows and
// none of the plaintexts the scripts write.
func runPyTenant(t *testing.T, script string, rows int, want []string) {
	t.Helper()
	env := migratedEnv(t)
	got := runORM(t, env, env.proxy.url(acmeRole, rolePassword, env.db), exec.Command(python3, script, "tenant"),
		"PGCLOAK_SSN="+ormSSN, "PGCLOAK_MIGRATOR_URL="+env.proxy.url(migratorRole, rolePassword, env.db))
	wantLines(t, got, want)
	checkStored(t, env, rows, append(ormPlaintexts, "555-00-2222", "dave@example.com", "555-00-3333", "erin@example.com")...)
}

// runPyPool runs a script of testdata/orm (args, after python3) as the
// token role on a fresh token environment, with perTenant tokens for
// each of two tenants, and checks its transactions with checkPoolRun: at
// most maxConns upstream backends.
func runPyPool(t *testing.T, maxConns, perTenant int, args ...string) {
	t.Helper()
	env := startTokenEnv(t)
	seeds := seedPool(t, env)
	dir, err := filepath.Abs(filepath.Join("testdata", "orm"))
	fatalIf(t, err, "testdata/orm")
	cmd := exec.Command(python3, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "PGCLOAK_URL="+env.proxy.url(poolRole, rolePassword, env.db),
		"PGCLOAK_TOKENS="+fixtureTokens(t, poolTenants(3), perTenant))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	start := time.Now()
	out, err := cmd.Output()
	t.Logf("%s: %s", strings.Join(cmd.Args, " "), time.Since(start).Round(time.Millisecond))
	if err != nil {
		t.Fatalf("%s through pgcloak as %s: %v\nstdout:\n%s\nstderr:\n%s\npgcloak's errors:\n%s",
			strings.Join(cmd.Args, " "), poolRole, err, out, stderr.Bytes(), proxyErrors(env))
	}
	var txs []poolTx
	fatalIf(t, json.Unmarshal(out, &txs), "decode %s", out)
	if len(txs) == 0 {
		t.Fatalf("%s reported no transactions", strings.Join(cmd.Args, " "))
	}
	checkPoolRun(t, env, append(seeds, txs...), maxConns)
}

// TestORMPsycopg: psycopg 3 with its default prepare settings. As acme:
// the migrator's DDL through pgcloak, the schema as the tenant reads it
// (information_schema, pg_indexes, pg_constraint), inserts with dates,
// reads back str, date and int (text and binary results), = and IN on
// the encrypted columns, 210 distinct statements run 7 times each on one
// connection (psycopg prepares at the 6th run and evicts past 100), named
// cursors (one scrollable), pipeline mode with inserts, searches and a
// delete, update and delete. As the token role: a ConnectionPool of 2
// connections and 4 threads, the token bound to set_config in each
// transaction, writes, searches and a delete in pipeline mode, the
// transaction's rows read through a named cursor.
func TestORMPsycopg(t *testing.T) {
	needPsycopg(t)
	t.Logf("psycopg, psycopg_pool: %s", needCommand(t, "python3-psycopg python3-psycopg-pool", python3, "-c",
		"import psycopg, psycopg_pool; print(psycopg.__version__, psycopg_pool.__version__)"))
	t.Run("tenant", func(t *testing.T) {
		runPyTenant(t, "py_psycopg.py", 5, []string{
			"migrated",
			"columns id:integer tenant_id:text name:text ssn:text email:text diagnosis:text birth_date:date",
			"indexes ['patients_name_idx', 'patients_pkey']",
			"checks ['patients_name_check']",
			"inserted int acme",
			"where ssn " + ormAlice + " str date",
			"binary " + ormAlice + " date",
			"where email ['alice']",
			"where in ['alice', 'dave']",
			"numbers 1 int int",
			"statements 210 runs 7 wrong []",
			"prepared upstream True",
			"named cursor " + ormAlice + ", " + ormCarol,
			"scroll " + ormAlice + ", " + ormCarol + " | " + ormAlice,
			"pipeline erin|555-00-3333|erin@example.com|flu|2001-02-03 | erin|2001-02-03, frank|2002-03-04 | deleted 1",
			"updated 1 " + ormAliceUpdated,
			"deleted 1 ['alice', 'carol', 'erin']",
		})
	})
	t.Run("token pool", func(t *testing.T) {
		runPyPool(t, 2, 6, "py_psycopg.py", "pool")
	})
}

// TestORMAsyncpg: asyncpg, which prepares every statement and reads and
// binds in binary. As acme: the migrator's DDL, the schema as the tenant
// reads it, a prepared statement's types and 7 runs, fetch, executemany,
// = and IN, cursor() in a transaction (portals read a row at a time),
// update and delete; copy_records_to_table into patients gets
// PostgreSQL's own refusal (COPY FROM where RLS applies). Into visits, a
// declared table without RLS, copy_records_to_table (a binary COPY FROM
// STDIN with a column list, 501 rows with a date and a numeric) stores
// ciphertext that reads back typed and searches. As the token role: one
// asyncpg pool of 2 connections, the token bound to set_config, or SET
// LOCAL as text.
func TestORMAsyncpg(t *testing.T) {
	t.Logf("asyncpg %s", needCommand(t, "python3-asyncpg", python3, "-c", "import asyncpg; print(asyncpg.__version__)"))
	t.Run("tenant", func(t *testing.T) {
		runPyTenant(t, "py_asyncpg.py", 4, []string{
			"migrated",
			"columns id:integer tenant_id:text name:text ssn:text email:text diagnosis:text birth_date:date",
			"indexes ['patients_name_idx', 'patients_pkey']",
			"inserted int acme",
			"prepared types name:text ssn:text email:text diagnosis:text birth_date:date params ['text']",
			"prepared runs 7 True " + ormAlice + " str date",
			"prepared other []",
			"fetch email ['alice']",
			"fetch in ['alice', 'dave']",
			"numbers 1 int int",
			"cursor " + ormAlice + ", " + ormCarol,
			"cursor fetch " + ormAlice + " | " + ormCarol,
			// PostgreSQL's own refusal: RLS applies to acme on patients.
			"copy into patients 0A000 COPY FROM not supported with row-level security",
			"update UPDATE 1 " + ormAliceUpdated,
			"delete DELETE 1 ['alice', 'carol']",
		})
	})
	t.Run("copy_records_to_table", func(t *testing.T) {
		env := startVisits(t)
		got := runORM(t, env, env.proxy.url(acmeRole, rolePassword, env.db), exec.Command(python3, "py_asyncpg.py", "copy"))
		wantLines(t, got, []string{
			"copy COPY 501",
			"search 321|note 321|ssn-321|2020-01-01|2020-11-17|321.25 int str str date date Decimal",
			"read back 501 True",
		})
		// Directly: the declared columns hold pgcloak's format, the
		// index 16 bytes, and no plaintext ssn.
		var sealed int
		fatalIf(t, env.pool.QueryRow(ctxT(t), `select count(*) from visits
			where get_byte(ssn, 0) = 1 and length(ssn_bidx) = 16 and position('ssn-'::bytea in ssn) = 0
			and get_byte(visit_date, 0) = 1 and get_byte(amount, 0) = 1 and tenant_id = 'acme'`).Scan(&sealed), "visits, directly")
		if sealed != 500 {
			t.Errorf("visits rows sealed for acme: got %d, want 500", sealed)
		}
	})
	for _, form := range []string{"set_config", "set_local"} {
		t.Run("token pool "+form, func(t *testing.T) {
			t.Setenv("PGCLOAK_TOKEN_FORM", form)
			runPyPool(t, 2, 6, "py_asyncpg.py", "pool")
		})
	}
}
