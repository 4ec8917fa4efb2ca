package proxy

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/pgcloak/pgcloak/testenv"
)

// The pool tests of tokenpool_test.go with the token as a bound parameter,
// SELECT pg_catalog.set_config('pgcloak.tenant_token', $1, true): what an
// ORM or a driver with bound parameters sends, through the extended
// protocol.

// setConfigToken presents a token as set_config's bound parameter.
func setConfigToken(ctx context.Context, tx pgx.Tx, tok string) error {
	_, err := tx.Exec(ctx, `select pg_catalog.set_config('pgcloak.tenant_token', $1, true)`, tok)
	return err
}

// TestTokenPoolPgxSetConfig is TestTokenPoolPgx with set_config($1): in
// pgx's default mode the token statement is prepared once per connection
// and bound by every tenant that connection serves.
func TestTokenPoolPgxSetConfig(t *testing.T) {
	env := startTokenEnv(t)
	txs := append(seedPool(t, env), runPgxPool(t, env, pgx.QueryExecModeCacheStatement, setConfigToken)...)
	checkPoolRun(t, env, txs, 4)
}

// TestTokenPoolNodeSetConfig is TestTokenPoolNode with set_config($1)
// (node-postgres: an unnamed statement per call).
func TestTokenPoolNodeSetConfig(t *testing.T) {
	dir, _ := filepath.Abs(filepath.Join("testdata", "node"))
	testenv.NodeModules(t, dir)
	node, _ := exec.LookPath("node")
	env := startTokenEnv(t)
	seeds := seedPool(t, env)
	cmd := exec.Command(node, "pool.js")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "PGCLOAK_URL="+env.proxy.url(poolRole, rolePassword, env.db),
		"PGCLOAK_TOKENS="+fixtureTokens(t, poolTenants(4), 4), "PGCLOAK_TOKEN_FORM=set_config", "PGCLOAK_POOL_MAX=2")
	checkPoolRun(t, env, append(seeds, runPoolFixture(t, cmd)...), 2)
}

// TestTokenPoolPsycopgSetConfig is TestTokenPoolPsycopg with
// set_config(%s): psycopg prepares the token statement once it has run
// five times on a connection, and binds the next tenants' tokens to it.
func TestTokenPoolPsycopgSetConfig(t *testing.T) {
	needPsycopg(t)
	env := startTokenEnv(t)
	seeds := seedPool(t, env)
	dir, _ := filepath.Abs(filepath.Join("testdata", "python"))
	cmd := exec.Command(python3, "pool.py")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "PGCLOAK_URL="+env.proxy.url(poolRole, rolePassword, env.db),
		"PGCLOAK_TOKENS="+fixtureTokens(t, poolTenants(4), 6), "PGCLOAK_TOKEN_FORM=set_config", "PGCLOAK_POOL_MAX=2")
	checkPoolRun(t, env, append(seeds, runPoolFixture(t, cmd)...), 2)
}

// TestTokenPgbouncerExtended is TestTokenPgbouncerTransactionMode's SET
// LOCAL run in pgbench -M extended (unnamed statements, which pgbouncer's
// transaction pooling carries), the token bound to set_config's $1.
func TestTokenPgbouncerExtended(t *testing.T) {
	const rows, perClient, clients = 10, 60, 8
	env := startTokenEnv(t)
	seedBouncerTenants(t, env, rows)
	b := startPgbouncer(t, env.proxy, env.db, poolRole, rolePassword, 2)
	before := acceptedTokens(env)
	out, err := runBouncerPgbench(t, env, b, "extended", "SELECT pg_catalog.set_config('pgcloak.tenant_token', :tok, true);", rows, perClient)
	if err != nil || strings.Contains(out, "LEAK") {
		t.Fatalf("pgbench -M extended through pgbouncer: %v\n%s", err, out)
	}
	want := fmt.Sprintf("number of transactions actually processed: %d/%d", clients*perClient, clients*perClient)
	if !strings.Contains(out, want) || !strings.Contains(out, "number of failed transactions: 0 ") {
		t.Fatalf("pgbench -M extended through pgbouncer: want %q and no failed transactions:\n%s", want, out)
	}
	after := acceptedTokens(env)
	for _, tenant := range pgbouncerTenants {
		if got, want := after[tenant.name]-before[tenant.name], clients*perClient/3; got != want {
			t.Errorf("tokens of %s accepted: got %d, want %d", tenant.name, got, want)
		}
	}
}
