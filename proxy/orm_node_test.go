package proxy

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgcloak/pgcloak/testenv"
)

// The TestORMNode tests run the npm ORMs on node-postgres (pg) through
// pgcloak: Sequelize, TypeORM and Knex, pinned in testdata/ormnode's
// package.json and installed there with npm ci. Each has a fixture
// script, a small application with a plain model (ssn is a string
// column), run twice:
//
//   - tenant: as tenant acme (a login role) against ormEnv's patients,
//     the script reflects the table, inserts, reads back typed values,
//     searches the encrypted columns with = and IN, streams through a
//     server-side cursor, updates and deletes, and prints a line per step
//     for the test to compare; psql, directly, then finds only
//     ciphertext (checkStored).
//   - pool: as the token role with ONE pool of 2 connections, 3 tenants
//     (so that a connection must serve more than one), a transaction
//     per tenant token (SET LOCAL pgcloak.tenant_token) in
//     the ORM's own transaction API, with transactions without a token,
//     all started at once; the script prints poolTx values and
//     checkPoolRun checks that each transaction saw only its own tenant's
//     rows and plaintext and that what it wrote is stamped with its
//     tenant.

// ormNodeTokens is how many transactions each of the pool tenants runs.
const ormNodeTokens = 3

// ormNodePlaintexts are what the tenant fixtures write that must not be
// stored (dave's row is deleted again, but must not have been stored in
// plaintext either).
var ormNodePlaintexts = append(ormPlaintexts, "555-00-2222", "dave@example.com", "1970-05-06", "1990-03-05")

// ormNodeDir installs the fixtures' npm project (npm ci, when its lock
// file has changed) and returns its directory, logging the versions of
// the packages the tests run.
func ormNodeDir(t *testing.T) string {
	t.Helper()
	dir, err := filepath.Abs(filepath.Join("testdata", "ormnode"))
	fatalIf(t, err, "testdata/ormnode")
	testenv.NodeModules(t, dir)
	var versions []string
	for _, pkg := range []string{"sequelize", "typeorm", "knex", "pg", "pg-cursor", "pg-query-stream"} {
		b, err := os.ReadFile(filepath.Join(dir, "node_modules", pkg, "package.json"))
		fatalIf(t, err, "%s is not installed in %s (npm ci)", pkg, dir)
		var p struct{ Version string }
		fatalIf(t, json.Unmarshal(b, &p), "%s's package.json", pkg)
		versions = append(versions, pkg+" "+p.Version)
	}
	t.Logf("%s", strings.Join(versions, ", "))
	return dir
}

// ormNodeCmd is node running script in dir with PGCLOAK_URL set to url
// and vars added.
func ormNodeCmd(t *testing.T, dir, script, url string, vars ...string) *exec.Cmd {
	t.Helper()
	node, err := exec.LookPath("node")
	fatalIf(t, err, "node not found: install Node.js 20 and npm (apt-get install -y nodejs npm)")
	cmd := exec.Command(node, script)
	cmd.Dir = dir
	cmd.Env = append(append(os.Environ(), "PGCLOAK_URL="+url), vars...)
	return cmd
}

// runORMNodeTenant runs script in tenant mode as acme against ormEnv's
// patients, after letting the migrator create tables in public, compares
// what it prints with want and checks what PostgreSQL stores.
func runORMNodeTenant(t *testing.T, dir, script string, want []string) {
	t.Helper()
	env := ormEnv(t)
	fatalIf(t, env.pg.Exec(ctxT(t), env.db, `grant create on schema public to `+migratorRole), "grant create to the migrator")
	cmd := ormNodeCmd(t, dir, script, env.proxy.url(acmeRole, rolePassword, env.db),
		"PGCLOAK_MODE=tenant", "PGCLOAK_SSN="+ormSSN, "PGCLOAK_APP_ROLE="+acmeRole,
		"PGCLOAK_MIGRATOR_URL="+env.proxy.url(migratorRole, rolePassword, env.db))
	start := time.Now()
	out, err := cmd.CombinedOutput()
	t.Logf("node %s: %s", script, time.Since(start).Round(time.Millisecond))
	if err != nil {
		t.Fatalf("node %s through pgcloak: %v\n%s\npgcloak's errors:\n%s", script, err, out, proxyErrors(env))
	}
	t.Logf("%s printed:\n%s", script, out)
	wantLines(t, strings.Split(strings.TrimRight(string(out), "\n"), "\n"), want)
	checkStored(t, env, 4, ormNodePlaintexts...)
}

// runORMNodePool runs script in pool mode as the token role: 3 tenants,
// ormNodeTokens transactions each, on one pool of 2 connections.
func runORMNodePool(t *testing.T, dir, script string) {
	t.Helper()
	env := startTokenEnv(t)
	seeds := seedPool(t, env)
	cmd := ormNodeCmd(t, dir, script, env.proxy.url(poolRole, rolePassword, env.db),
		"PGCLOAK_MODE=pool", "PGCLOAK_POOL_MAX=2", "PGCLOAK_TOKENS="+fixtureTokens(t, poolTenants(3), ormNodeTokens))
	start := time.Now()
	txs := runPoolFixture(t, cmd)
	t.Logf("node %s: %s", script, time.Since(start).Round(time.Millisecond))
	checkPoolRun(t, env, append(seeds, txs...), 2)
}

// testORMNode runs script in tenant mode, comparing what it prints with
// want, and in pool mode, as the subtests "tenant" and "pool".
func testORMNode(t *testing.T, script string, want []string) {
	dir := ormNodeDir(t)
	t.Run("tenant", func(t *testing.T) {
		runORMNodeTenant(t, dir, script, want)
	})
	t.Run("pool", func(t *testing.T) {
		runORMNodePool(t, dir, script)
	})
}

// TestORMNodeKnex: Knex 3 on pg. Tenant: the migrator runs a Knex
// migration (a visits table, through pgcloak); columnInfo shows patients
// with text and date columns and no index column; insert ... returning,
// where (=, an email in another case, whereIn, orWhere), count, first, a
// join with visits, .stream() (pg-query-stream's portal, a row per
// batch), update ... returning and del on the encrypted columns; ids are
// numbers and dates Dates (pg's date OID 1082 in the row description).
// Pool: knex.transaction per token.
func TestORMNodeKnex(t *testing.T) {
	testORMNode(t, "knex.js", []string{
		"migrated batch 1 20240101000000_visits.js",
		"columns birth_date:date diagnosis:text email:text id:integer name:text ssn:text tenant_id:text",
		`ssn column {"type":"text","maxLength":null,"nullable":true,"defaultValue":null}`,
		"inserted alice:number:acme:Date,carol:number:acme:Date,dave:number:acme:Date",
		"where ssn " + ormAlice + " string Date",
		"where email alice",
		"where in alice,carol",
		"count 2",
		"first " + ormCarol,
		"join alice|" + ormSSN + "|checkup",
		"stream " + ormAlice + ", " + ormCarol,
		"updated 1 " + ormAliceUpdated,
		"deleted 1",
		"all " + ormAliceUpdated + ", " + ormCarol,
		"raw ssn:25,birth_date:1082 " + ormSSN + " Date 1981-02-03",
	})
}

// TestORMNodeSequelize: Sequelize 6 on pg. Tenant: sync() (tableExists,
// then showIndex for the model's indexes), describeTable (TEXT and DATE, no
// index column) and showIndex (no blind-index index) read the declared
// schema; create returns a number id and acme's stamp; findAll, findOne
// and count with =, Op.in, Op.or and an email in another case (values as
// literals: the simple protocol) and a raw query with bind ($1: the
// extended protocol); a pg-cursor on a connection of Sequelize's pool
// (Sequelize has no streaming); update returning, save and destroy.
// DATEONLY attributes are 'YYYY-MM-DD' strings (Sequelize's mapping of
// date); the cursor shows pg's date OID 1082 and a Date. Pool: managed
// sequelize.transaction per token.
func TestORMNodeSequelize(t *testing.T) {
	testORMNode(t, "sequelize.js", []string{
		"synced",
		"describe id:INTEGER:not null:pk tenant_id:TEXT:not null name:TEXT:null ssn:TEXT:null email:TEXT:null diagnosis:TEXT:null birth_date:DATE:null",
		"indexes patients_name_idx:name patients_pkey:id",
		"created alice:number:acme:string,carol:number:acme:string,dave:number:acme:string",
		"where ssn " + ormAlice + " string string",
		"where email alice",
		"where in alice,carol",
		"count 2 number",
		"findOne " + ormCarol,
		"bind alice,dave",
		"cursor " + ormAlice + ", " + ormCarol + " string name:25,ssn:25,email:25,diagnosis:25,birth_date:1082",
		"updated 1 " + ormAliceUpdated,
		"saved carol|555-00-1111|carol@example.com|mild asthma|1990-03-05",
		"destroyed 1",
		"all " + ormAliceUpdated + ", carol|555-00-1111|carol@example.com|mild asthma|1990-03-05",
		"raw " + ormSSN + " string 1981-02-03",
	})
}

// TestORMNodeTypeORM: TypeORM 0.3 on pg. Tenant: QueryRunner.getTable
// shows patients with text and date columns, the application's index and
// CHECK and nothing of pgcloak's, and synchronize's dry run (the schema
// builder's log) finds nothing to change (as the unscoped migrator, which
// reads the stored catalog, it would change ssn and drop the index
// columns: the control); the repository saves (a number
// id, acme's stamp), finds with =, In, an email in another case and an
// OR, counts, queries with a QueryBuilder, streams with
// QueryBuilder.stream() (pg-query-stream's portal), updates, saves a
// loaded entity and deletes. date columns are 'YYYY-MM-DD' strings on
// entities (TypeORM's mapping of date) and Dates in raw results. Pool:
// dataSource.transaction per token.
func TestORMNodeTypeORM(t *testing.T) {
	testORMNode(t, "typeorm.js", []string{
		"columns id:integer:not null:pk:increment tenant_id:text:not null name:text ssn:text email:text diagnosis:text birth_date:date",
		"indices patients_name_idx:name",
		"checks patients_name_check:(name <> ''::text)",
		"foreign keys 0 uniques 0",
		"synchronize would run 0 queries",
		"as the migrator synchronize would touch ssn,ssn_bidx,email_bidx,birth_date",
		"saved alice:number:acme,carol:number:acme,dave:number:acme",
		"find ssn " + ormAlice + " string string",
		"find email alice",
		"find in alice,carol",
		"count 2 number",
		"findOneBy " + ormCarol,
		"query builder alice,dave",
		"raw " + ormSSN + " Date 1980-01-02",
		"stream " + ormAlice + ", " + ormCarol + " Date",
		"updated 1",
		"saved carol|555-00-1111|carol@example.com|mild asthma|1990-03-05",
		"deleted 1",
		"all " + ormAliceUpdated + ", carol|555-00-1111|carol@example.com|mild asthma|1990-03-05",
		"query " + ormSSN + " Date 1981-02-03",
	})
}
