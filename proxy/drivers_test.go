package proxy

import (
	"database/sql"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/lib/pq"

	"github.com/pgcloak/pgcloak/testenv"
)

// TestNodePostgres drives the proxy with node-postgres (npm package pg),
// as a Node.js application would. The fixture lives in testdata/node; the
// test installs its packages with npm ci when they are missing.
func TestNodePostgres(t *testing.T) {
	dir, _ := filepath.Abs(filepath.Join("testdata", "node"))
	testenv.NodeModules(t, dir)
	node, _ := exec.LookPath("node")
	env := startEncrypted(t)
	cmd := exec.Command(node, "drive.js")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "TZ=UTC", "PGCLOAK_URL="+env.proxy.url(acmeRole, rolePassword, env.db))
	out, err := cmd.Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		t.Fatalf("node drive.js: %v\n%s%s", err, out, stderr)
	}
	var got struct {
		Returned    struct{ SSN, Birth string }
		Row         map[string]any
		BirthIsDate bool
		Fields      [][2]any
		ByEmail     []string
		Any         int
		AfterRoll   any `json:"afterRollback"`
		Refused     string
		Usable      int
	}
	fatalIf(t, json.Unmarshal(out, &got), "decode %s", out)
	mustEqual(t, "RETURNING ssn", got.Returned.SSN, "555-12-3456")
	mustEqual(t, "RETURNING birth_date", got.Returned.Birth, "1990-05-06T00:00:00.000Z")
	mustEqual(t, "ssn", got.Row["ssn"], any("555-12-3456"))
	mustEqual(t, "email", got.Row["email"], any("Nina@Example.org"))
	mustEqual(t, "birth_date", got.Row["birth_date"], any("1990-05-06T00:00:00.000Z"))
	mustEqual(t, "diagnosis", got.Row["diagnosis"], nil)
	mustEqual(t, "birth_date is a Date", got.BirthIsDate, true)
	b, _ := json.Marshal(got.Fields)
	mustEqual(t, "field types", string(b), `[["name",25],["ssn",25],["email",25],["birth_date",1082],["diagnosis",25]]`)
	want := "555-12-3456 1990-05-06T00:00:00.000Z"
	mustEqual(t, "by email (normalised), prepared statement run 3 times", strings.Join(got.ByEmail, "|"), want+"|"+want+"|"+want)
	mustEqual(t, "= any", got.Any, 1)
	mustEqual(t, "after rollback", got.AfterRoll, nil)
	mustEqual(t, "refused SQLSTATE", got.Refused, "0A000")
	mustEqual(t, "usable after refusal", got.Usable, 1)
}

// TestLibPQEncrypted: lib/pq through database/sql, with prepared
// statements (text parameters) and transactions on encrypted columns.
func TestLibPQEncrypted(t *testing.T) {
	env := startEncrypted(t)
	db, err := sql.Open("postgres", env.proxy.url(acmeRole, rolePassword, env.db))
	fatalIf(t, err, "open")
	defer db.Close()
	ctx := ctxT(t)

	tx, err := db.BeginTx(ctx, nil)
	fatalIf(t, err, "begin")
	ins, err := tx.PrepareContext(ctx, `insert into patients (name, ssn, email, birth_date) values ($1, $2, $3, $4)`)
	fatalIf(t, err, "prepare insert")
	for i, name := range []string{"ann", "bob", "cy"} {
		_, err := ins.ExecContext(ctx, name, "ssn-"+name, strings.ToUpper(name)+"@x.org", time.Date(1970+i, 1, 2, 0, 0, 0, 0, time.UTC))
		fatalIf(t, err, "insert %s", name)
	}
	fatalIf(t, ins.Close(), "close stmt")
	fatalIf(t, tx.Commit(), "commit")

	tx, err = db.BeginTx(ctx, nil)
	fatalIf(t, err, "begin 2")
	_, err = tx.ExecContext(ctx, `insert into patients (name, ssn) values ($1, $2)`, "rolled back", "ssn-gone")
	fatalIf(t, err, "insert in rolled-back tx")
	fatalIf(t, tx.Rollback(), "rollback")

	sel, err := db.PrepareContext(ctx, `select name, ssn, birth_date from patients where email = $1`)
	fatalIf(t, err, "prepare select")
	defer sel.Close()
	for _, email := range []string{"bob@x.org", "BOB@X.ORG"} {
		var name, ssn string
		var birth time.Time
		fatalIf(t, sel.QueryRowContext(ctx, email).Scan(&name, &ssn, &birth), "select by %s", email)
		mustEqual(t, "name", name, "bob")
		mustEqual(t, "ssn", ssn, "ssn-bob")
		mustEqual(t, "birth", birth.Format("2006-01-02"), "1971-01-02")
	}
	var n int
	fatalIf(t, db.QueryRowContext(ctx, `select count(*) from patients where ssn = $1`, "ssn-gone").Scan(&n), "count rolled back")
	mustEqual(t, "rolled-back rows", n, 0)
	_, err = db.ExecContext(ctx, `update patients set birth_date = $1 where ssn = $2`, "1970-02-30", "ssn-ann")
	var pqErr *pq.Error
	if !errors.As(err, &pqErr) || pqErr.Code != "22008" {
		t.Errorf("invalid date: got %v, want SQLSTATE 22008", err)
	}
}

// TestPgbenchEncrypted runs pgbench custom scripts that insert, read and
// search the encrypted table in each protocol mode, with no failed
// transactions.
func TestPgbenchEncrypted(t *testing.T) {
	env := startEncrypted(t)
	dir := t.TempDir()
	script := filepath.Join(dir, "enc.sql")
	// pgbench substitutes variables as whole values: literals in -M
	// simple, parameters otherwise. A number compared with a text column
	// needs its cast, as in PostgreSQL (text = integer has no operator).
	fatalIf(t, os.WriteFile(script, []byte(`\set id random(1, 1000000)
\set ssn :id * 7
insert into patients (name, ssn, email, birth_date) values ('bench', :ssn, :id, '2001-02-03');
select ssn, email, birth_date from patients where ssn = :ssn::text;
select count(*) from patients where email = :id::text;
`), 0o644), "write script")
	for _, mode := range []string{"simple", "extended", "prepared"} {
		t.Run(mode, func(t *testing.T) {
			cmd := exec.Command(env.pg.Bin("pgbench"), "-n", "-M", mode, "-c", "2", "-j", "2", "-t", "100", "-f", script,
				env.proxy.url(acmeRole, rolePassword, env.db))
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("pgbench -M %s: %v\n%s", mode, err, out)
			}
			if !regexp.MustCompile(`number of failed transactions: 0 `).Match(out) {
				t.Errorf("pgbench -M %s reported failures:\n%s", mode, out)
			}
			if !regexp.MustCompile(`number of transactions actually processed: 200/200`).Match(out) {
				t.Errorf("pgbench -M %s did not complete:\n%s", mode, out)
			}
		})
	}
	var n int
	fatalIf(t, env.pool.QueryRow(ctxT(t), `select count(*) from patients where name = 'bench' and ssn is not null and ssn_bidx is not null`).Scan(&n), "count")
	mustEqual(t, "encrypted rows written by pgbench", n, 600)
}
