package proxy

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/sync/errgroup"

	"github.com/pgcloak/pgcloak/testenv"
)

// Tenant tokens with the connection pools applications use (issue 13,
// item 5): one token role, one shared pool, a tenant per transaction.
//
// Every pool test writes rows whose plaintext names their tenant
// (poolPatient), reports what each transaction wrote and read as a
// poolTx, and is checked by checkPoolRun: each transaction saw only its
// own tenant's rows and plaintext, a transaction without a token saw
// nothing and could not write, the pool's few connections served many
// tenants, and afterwards every stored row's tenant_id is the tenant whose
// keys open it and whose name its plaintext carries.

// poolRow is one patients row as a pool transaction wrote or read it.
type poolRow struct {
	Name      string `json:"name"`
	SSN       string `json:"ssn"`
	Diagnosis string `json:"diagnosis"`
	Tenant    string `json:"tenant_id"` // read back; stamped by pgcloak.current_tenant()
}

// poolPatient is the row tenant writes under tag: every value names the
// tenant, so a row shown to another tenant cannot pass for its own.
func poolPatient(tenant, tag string) poolRow {
	name := tenant + "/" + tag
	return poolRow{Name: name, SSN: tenant + "-ssn-" + tag, Diagnosis: "diagnosis of " + name, Tenant: tenant}
}

// ownedBy says why r is not a row of tenant's, or returns nil.
func (r poolRow) ownedBy(tenant string) error {
	tag, ok := strings.CutPrefix(r.Name, tenant+"/")
	if !ok || r != poolPatient(tenant, tag) {
		return fmt.Errorf("row %+v is not one of tenant %s's", r, tenant)
	}
	return nil
}

// poolTx is what one pooled transaction did and saw. The node-postgres and
// psycopg fixtures print these as JSON.
type poolTx struct {
	Tenant string    `json:"tenant"` // "" for a transaction that presented no token
	PID    uint32    `json:"pid"`    // the upstream backend that served it
	Wrote  []poolRow `json:"wrote"`
	Read   []poolRow `json:"read"`  // select of every visible row, after the writes
	Found  []poolRow `json:"found"` // search by the first written row's ssn
	Other  int       `json:"other"` // rows found searching another tenant's ssn
	// Refused is the SQLSTATE of an insert without a token.
	Refused string `json:"refused"`
}

// check says what is wrong with what tx saw, or returns nil.
func (tx poolTx) check() error {
	if tx.Tenant == "" {
		if len(tx.Read) != 0 || tx.Refused != "42501" {
			return fmt.Errorf("transaction without a token read %v and its insert got %q, want no rows and 42501", tx.Read, tx.Refused)
		}
		return nil
	}
	for _, r := range tx.Read {
		if err := r.ownedBy(tx.Tenant); err != nil {
			return fmt.Errorf("transaction of tenant %s (backend %d): %w", tx.Tenant, tx.PID, err)
		}
	}
	if len(tx.Wrote) == 0 {
		return fmt.Errorf("transaction of tenant %s wrote nothing", tx.Tenant)
	}
	for _, w := range tx.Wrote {
		if !slices.Contains(tx.Read, w) {
			return fmt.Errorf("transaction of tenant %s does not read back its row %+v (read %v)", tx.Tenant, w, tx.Read)
		}
	}
	if len(tx.Found) != 1 || tx.Found[0] != tx.Wrote[0] {
		return fmt.Errorf("transaction of tenant %s searching ssn %s found %v, want its own row", tx.Tenant, tx.Wrote[0].SSN, tx.Found)
	}
	if tx.Other != 0 {
		return fmt.Errorf("transaction of tenant %s found %d rows searching another tenant's ssn, want 0", tx.Tenant, tx.Other)
	}
	return nil
}

// poolTenants returns n tenant names.
func poolTenants(n int) []string {
	tenants := make([]string, n)
	for i := range tenants {
		tenants[i] = fmt.Sprintf("tenant%02d", i)
	}
	return tenants
}

// otherSSN is the ssn of a row of a tenant other than tenant's, which
// seedPool writes before the run: a transaction searches for it and must
// find nothing.
func otherSSN(tenant string) string {
	other := "tenant00"
	if tenant == other {
		other = "tenant01"
	}
	return poolPatient(other, "seed.0").SSN
}

// seedPool writes the rows otherSSN names, and returns its transactions
// for checkPoolRun.
func seedPool(t *testing.T, env *encryptedEnv) []poolTx {
	t.Helper()
	ctx := ctxT(t)
	pool, err := pgxpool.New(ctx, env.proxy.url(poolRole, rolePassword, env.db))
	fatalIf(t, err, "pool")
	defer pool.Close()
	var txs []poolTx
	for _, tenant := range []string{"tenant00", "tenant01"} {
		tx, err := pgxPoolTx(ctx, pool, setLocalToken, tenant, mintToken(t, tenant, time.Hour), "seed")
		fatalIf(t, err, "seed %s", tenant)
		tx.PID = 0 // not a backend of the pool under test
		txs = append(txs, tx)
	}
	return txs
}

// setLocalToken presents a token with SET LOCAL, in a simple query (pgx
// sends Exec without arguments as one).
func setLocalToken(ctx context.Context, tx pgx.Tx, tok string) error {
	_, err := tx.Exec(ctx, `SET LOCAL pgcloak.tenant_token = '`+tok+`'`)
	return err
}

// checkPoolRun checks every transaction of a run, that the pool used at
// most maxConns upstream backends and that some backend served more than
// one tenant, and then what PostgreSQL stores (checkStoredTenants).
func checkPoolRun(t *testing.T, env *encryptedEnv, txs []poolTx, maxConns int) {
	t.Helper()
	tenantsOf := map[uint32]map[string]bool{}
	wrote := map[string][]poolRow{}
	noToken := 0
	for _, tx := range txs {
		if err := tx.check(); err != nil {
			t.Error(err)
		}
		if tx.Tenant == "" {
			noToken++
			continue
		}
		if tx.PID != 0 {
			if tenantsOf[tx.PID] == nil {
				tenantsOf[tx.PID] = map[string]bool{}
			}
			tenantsOf[tx.PID][tx.Tenant] = true
		}
		wrote[tx.Tenant] = append(wrote[tx.Tenant], tx.Wrote...)
	}
	if t.Failed() {
		t.FailNow()
	}
	if len(tenantsOf) == 0 || len(tenantsOf) > maxConns {
		t.Errorf("upstream backends: got %d, want 1 to %d (the pool's size)", len(tenantsOf), maxConns)
	}
	switched := false
	for _, tenants := range tenantsOf {
		switched = switched || len(tenants) > 1
	}
	if !switched {
		t.Errorf("no backend served more than one tenant: %v", tenantsOf)
	}
	if noToken == 0 {
		t.Error("no transaction ran without a token")
	}
	t.Logf("%d transactions (%d without a token), %d tenants, %d upstream backends", len(txs), noToken, len(wrote), len(tenantsOf))
	checkStoredTenants(t, env, wrote)
}

// checkStoredTenants checks, directly in PostgreSQL, that the rows stored
// are exactly those written, with no plaintext, and, through the proxy
// with each tenant's token, that the rows stamped with a tenant are the
// ones that tenant reads: its keys open them (the AEAD binds the tenant)
// and their plaintext names it.
func checkStoredTenants(t *testing.T, env *encryptedEnv, wrote map[string][]poolRow) {
	t.Helper()
	ctx := ctxT(t)
	rows, err := env.pool.Query(ctx, `select id, tenant_id, name, ssn, diagnosis from patients order by id`)
	fatalIf(t, err, "direct select")
	stamped := map[string][]int{} // tenant_id -> ids
	total := 0
	for rows.Next() {
		var id int
		var tenant, name string
		var ssn, diagnosis []byte
		fatalIf(t, rows.Scan(&id, &tenant, &name, &ssn, &diagnosis), "scan")
		total++
		stamped[tenant] = append(stamped[tenant], id)
		tag, _ := strings.CutPrefix(name, tenant+"/")
		want := poolPatient(tenant, tag)
		if bytes.Contains(ssn, []byte(want.SSN)) || bytes.Contains(diagnosis, []byte(want.Diagnosis)) || len(ssn) < 29 {
			t.Errorf("row %d (%s) is stored in plaintext", id, name)
		}
	}
	fatalIf(t, rows.Err(), "direct rows")
	written := 0
	for _, w := range wrote {
		written += len(w)
	}
	if total != written {
		t.Errorf("stored rows: got %d, want the %d written", total, written)
	}

	conn := env.tenantConn(t, poolRole)
	for tenant, want := range wrote {
		tx, err := conn.Begin(ctx)
		fatalIf(t, err, "begin")
		_, err = tx.Exec(ctx, `SET LOCAL pgcloak.tenant_token = '`+mintToken(t, tenant, time.Hour)+`'`)
		fatalIf(t, err, "token of %s", tenant)
		got, err := tx.Query(ctx, `select id, name, ssn, diagnosis, tenant_id from patients order by id`)
		fatalIf(t, err, "select as %s", tenant)
		var ids []int
		var read []poolRow
		for got.Next() {
			var id int
			var r poolRow
			fatalIf(t, got.Scan(&id, &r.Name, &r.SSN, &r.Diagnosis, &r.Tenant), "scan as %s", tenant)
			ids = append(ids, id)
			read = append(read, r)
		}
		fatalIf(t, got.Err(), "select as %s", tenant)
		fatalIf(t, tx.Commit(ctx), "commit")
		if !slices.Equal(ids, stamped[tenant]) {
			t.Errorf("tenant %s reads rows %v; stored with its tenant_id: %v", tenant, ids, stamped[tenant])
		}
		for _, r := range read {
			if err := r.ownedBy(tenant); err != nil {
				t.Errorf("stored: %v", err)
			}
		}
		slices.SortFunc(want, func(a, b poolRow) int { return strings.Compare(a.Name, b.Name) })
		slices.SortFunc(read, func(a, b poolRow) int { return strings.Compare(a.Name, b.Name) })
		if !slices.Equal(read, want) {
			t.Errorf("tenant %s reads %d rows, wrote %d:\nread  %v\nwrote %v", tenant, len(read), len(want), read, want)
		}
		delete(stamped, tenant)
	}
	if len(stamped) > 0 {
		t.Errorf("rows stamped with tenants that wrote nothing: %v", stamped)
	}
}

// pgxPoolTx runs one transaction of tenant, presenting tok with setToken
// (no token when tenant is ""), on a pgx pool and reports what it saw.
func pgxPoolTx(ctx context.Context, pool *pgxpool.Pool, setToken func(context.Context, pgx.Tx, string) error, tenant, tok, tag string) (poolTx, error) {
	res := poolTx{Tenant: tenant}
	tx, err := pool.Begin(ctx)
	if err != nil {
		return res, err
	}
	defer tx.Rollback(context.Background())
	res.PID = tx.Conn().PgConn().PID()
	read := func() error {
		rows, err := tx.Query(ctx, `select name, ssn, diagnosis, tenant_id from patients`)
		if err != nil {
			return err
		}
		res.Read, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (poolRow, error) {
			var r poolRow
			err := row.Scan(&r.Name, &r.SSN, &r.Diagnosis, &r.Tenant)
			return r, err
		})
		return err
	}
	const insert = `insert into patients (name, ssn, diagnosis) values ($1, $2, $3)`
	if tenant == "" {
		if err := read(); err != nil {
			return res, fmt.Errorf("select without a token: %w", err)
		}
		// An unnamed statement, parsed in this transaction without a
		// tenant.
		w := poolPatient("nobody", tag)
		_, err := tx.Exec(ctx, insert, pgx.QueryExecModeExec, w.Name, w.SSN, w.Diagnosis)
		res.Refused = pgCode(err)
		return res, nil
	}
	if err := setToken(ctx, tx, tok); err != nil {
		return res, fmt.Errorf("token of %s: %w", tenant, err)
	}
	for i := range 2 {
		w := poolPatient(tenant, fmt.Sprintf("%s.%d", tag, i))
		if _, err := tx.Exec(ctx, insert, w.Name, w.SSN, w.Diagnosis); err != nil {
			return res, fmt.Errorf("insert as %s: %w", tenant, err)
		}
		res.Wrote = append(res.Wrote, w)
	}
	if err := read(); err != nil {
		return res, fmt.Errorf("select as %s: %w", tenant, err)
	}
	rows, err := tx.Query(ctx, `select name, ssn, diagnosis, tenant_id from patients where ssn = $1`, res.Wrote[0].SSN)
	if err != nil {
		return res, fmt.Errorf("search as %s: %w", tenant, err)
	}
	res.Found, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (poolRow, error) {
		var r poolRow
		err := row.Scan(&r.Name, &r.SSN, &r.Diagnosis, &r.Tenant)
		return r, err
	})
	if err != nil {
		return res, fmt.Errorf("search as %s: %w", tenant, err)
	}
	if err := tx.QueryRow(ctx, `select count(*) from patients where ssn = $1`, otherSSN(tenant)).Scan(&res.Other); err != nil {
		return res, fmt.Errorf("search for another tenant's ssn as %s: %w", tenant, err)
	}
	return res, tx.Commit(ctx)
}

// runPgxPool serves tenants interleaved from workers goroutines on a pgx
// pool of maxConns connections through the proxy as the token role: rounds
// transactions per tenant in shuffled order, and every seventh
// transaction without a token.
func runPgxPool(t *testing.T, env *encryptedEnv, mode pgx.QueryExecMode, setToken func(context.Context, pgx.Tx, string) error) []poolTx {
	t.Helper()
	const (
		tenantCount = 50
		rounds      = 3
		workers     = 16
		maxConns    = 4
	)
	ctx := ctxT(t)
	cfg, err := pgxpool.ParseConfig(env.proxy.url(poolRole, rolePassword, env.db))
	fatalIf(t, err, "pool config")
	cfg.MaxConns = maxConns
	cfg.ConnConfig.DefaultQueryExecMode = mode
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	fatalIf(t, err, "pool")
	defer pool.Close()

	type job struct{ tenant, tok, tag string }
	var jobs []job
	rng := rand.New(rand.NewPCG(13, 5))
	tenants := poolTenants(tenantCount)
	for r := range rounds {
		order := slices.Clone(tenants)
		rng.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
		for i, tenant := range order {
			jobs = append(jobs, job{tenant, mintToken(t, tenant, time.Hour), fmt.Sprintf("r%d.%d", r, i)})
			if len(jobs)%7 == 0 {
				jobs = append(jobs, job{"", "", fmt.Sprintf("none%d.%d", r, i)})
			}
		}
	}
	results := make([]poolTx, len(jobs))
	next := make(chan int)
	g, gctx := errgroup.WithContext(ctx)
	for range workers {
		g.Go(func() error {
			for i := range next {
				res, err := pgxPoolTx(gctx, pool, setToken, jobs[i].tenant, jobs[i].tok, jobs[i].tag)
				if err != nil {
					return fmt.Errorf("transaction %d (%s): %w", i, jobs[i].tenant, err)
				}
				results[i] = res
			}
			return nil
		})
	}
	g.Go(func() error {
		defer close(next)
		for i := range jobs {
			select {
			case next <- i:
			case <-gctx.Done():
				return nil
			}
		}
		return nil
	})
	fatalIf(t, g.Wait(), "pool")
	if got := pool.Stat().MaxConns(); got != maxConns {
		t.Fatalf("pool size: got %d, want %d", got, maxConns)
	}
	return results
}

// TestTokenPoolPgx: a pgxpool of 4 connections through the proxy as the
// token role serves 50 tenants interleaved from 16 goroutines, each
// transaction BEGIN; SET LOCAL pgcloak.tenant_token (a simple query, as
// pgx sends Exec without arguments); inserts and searches with bound
// parameters in pgx's default mode (cached prepared statements, shared
// by every tenant of a connection).
func TestTokenPoolPgx(t *testing.T) {
	env := startTokenEnv(t)
	txs := append(seedPool(t, env), runPgxPool(t, env, pgx.QueryExecModeCacheStatement, setLocalToken)...)
	checkPoolRun(t, env, txs, 4)
}

// runPoolFixture runs a driver fixture that prints its transactions as a
// JSON array of poolTx, and returns them.
func runPoolFixture(t *testing.T, cmd *exec.Cmd) []poolTx {
	t.Helper()
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s: %v\nstdout:\n%s\nstderr:\n%s", strings.Join(cmd.Args, " "), err, out, stderr.Bytes())
	}
	var txs []poolTx
	fatalIf(t, json.Unmarshal(out, &txs), "decode %s", out)
	if len(txs) == 0 {
		t.Fatalf("%s reported no transactions", strings.Join(cmd.Args, " "))
	}
	return txs
}

// fixtureTokens mints perTenant tokens for each of tenants, as JSON for a
// fixture: {"tenant": ["jwt", ...]}; a fixture runs one transaction per
// token.
func fixtureTokens(t *testing.T, tenants []string, perTenant int) string {
	t.Helper()
	toks := map[string][]string{}
	for _, tenant := range tenants {
		for range perTenant {
			toks[tenant] = append(toks[tenant], mintToken(t, tenant, time.Hour))
		}
	}
	b, err := json.Marshal(toks)
	fatalIf(t, err, "tokens")
	return string(b)
}

// TestTokenPoolNode: node-postgres's Pool (max 2) through the proxy as the
// token role, 4 tenants with 4 transactions each and transactions without
// a token, all started at once: BEGIN, SET LOCAL as a query without
// values (simple protocol), inserts and searches with values (extended).
func TestTokenPoolNode(t *testing.T) {
	dir, _ := filepath.Abs(filepath.Join("testdata", "node"))
	testenv.NodeModules(t, dir)
	node, _ := exec.LookPath("node")
	env := startTokenEnv(t)
	seeds := seedPool(t, env)
	cmd := exec.Command(node, "pool.js")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "PGCLOAK_URL="+env.proxy.url(poolRole, rolePassword, env.db),
		"PGCLOAK_TOKENS="+fixtureTokens(t, poolTenants(4), 4), "PGCLOAK_TOKEN_FORM=set_local", "PGCLOAK_POOL_MAX=2")
	checkPoolRun(t, env, append(seeds, runPoolFixture(t, cmd)...), 2)
}

// python3 is the system Python, which Debian's python3-psycopg and
// python3-psycopg-pool install into.
const python3 = "/usr/bin/python3"

// needPsycopg fails the test, saying what to install, unless the system
// Python has psycopg 3 and psycopg_pool.
func needPsycopg(t *testing.T) {
	t.Helper()
	out, err := exec.Command(python3, "-c", "import psycopg, psycopg_pool; print(psycopg.__version__)").CombinedOutput()
	if err != nil {
		t.Fatalf("%s cannot import psycopg and psycopg_pool (%v: %s); install them with: apt-get install -y python3-psycopg python3-psycopg-pool", python3, err, bytes.TrimSpace(out))
	}
	if !strings.HasPrefix(string(out), "3.") {
		t.Fatalf("psycopg %s: want psycopg 3 (apt-get install -y python3-psycopg)", bytes.TrimSpace(out))
	}
}

// TestTokenPoolPsycopg: psycopg 3's ConnectionPool (2 connections)
// through the proxy as the token role, 4 tenants with 4 transactions each
// and transactions without a token, from 6 threads: conn.transaction(),
// SET LOCAL as a statement without parameters (simple protocol), inserts
// and searches with parameters (extended; psycopg prepares a statement it
// has run five times on a connection, so later tenants bind to statements
// prepared under earlier ones).
func TestTokenPoolPsycopg(t *testing.T) {
	needPsycopg(t)
	env := startTokenEnv(t)
	dir, _ := filepath.Abs(filepath.Join("testdata", "python"))
	seeds := seedPool(t, env)
	cmd := exec.Command(python3, "pool.py")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "PGCLOAK_URL="+env.proxy.url(poolRole, rolePassword, env.db),
		"PGCLOAK_TOKENS="+fixtureTokens(t, poolTenants(4), 4), "PGCLOAK_TOKEN_FORM=set_local", "PGCLOAK_POOL_MAX=2")
	checkPoolRun(t, env, append(seeds, runPoolFixture(t, cmd)...), 2)
}

// pgbouncerTenants are the two tenants of the pgbouncer test, with the
// first number of their rows' ssn: tenant k's row i has ssn base+i, so
// pgbench can compare a decrypted ssn with what it expects.
var pgbouncerTenants = []struct {
	name string
	base int
}{{"acme", 1000}, {"globex", 2000}}

// bouncer is a pgbouncer started by startPgbouncer.
type bouncer struct {
	addr string
	log  syncBuffer
}

// startPgbouncer runs pgbouncer in transaction pooling mode on a loopback
// port in front of the proxy: database db, pool of poolSize server
// connections, role may log in with password (the same password logs in
// through the proxy). Its configuration and auth file live in a
// t.TempDir(); it is stopped when the test ends, and the kernel kills it
// if the test binary dies first. Running as root, it runs as the postgres
// OS user (pgbouncer refuses root), as testenv runs PostgreSQL.
func startPgbouncer(t *testing.T, p *testProxy, db, role, password string, poolSize int) *bouncer {
	t.Helper()
	bin, err := exec.LookPath("pgbouncer")
	if err != nil {
		t.Fatalf("pgbouncer not found: install it with: apt-get install -y pgbouncer")
	}
	_, proxyPort, _ := net.SplitHostPort(p.addr)
	// A free port: pgbouncer binds it right after we let go of it.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	fatalIf(t, err, "free port")
	addr := ln.Addr().String()
	ln.Close()
	_, port, _ := net.SplitHostPort(addr)

	dir := t.TempDir()
	auth := filepath.Join(dir, "userlist.txt")
	ini := filepath.Join(dir, "pgbouncer.ini")
	fatalIf(t, os.WriteFile(auth, []byte(fmt.Sprintf("%q %q\n", role, password)), 0o600), "auth file")
	// Transaction pooling: a server connection goes back to the pool at
	// each transaction's end and the next transaction, of any client,
	// may get it. No reset query runs between clients in this mode
	// (server_reset_query applies to session pooling only).
	fatalIf(t, os.WriteFile(ini, []byte(fmt.Sprintf(`[databases]
%[1]s = host=127.0.0.1 port=%[2]s dbname=%[1]s

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = %[3]s
unix_socket_dir =
auth_type = scram-sha-256
auth_file = %[4]s
pool_mode = transaction
default_pool_size = %[5]d
min_pool_size = 0
reserve_pool_size = 0
max_db_connections = %[5]d
max_client_conn = 100
server_login_retry = 1
logfile =
pidfile =
`, db, proxyPort, port, auth, poolSize)), 0o600), "pgbouncer.ini")

	cmd := exec.Command(bin, ini)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			t.Fatalf("running as root, pgbouncer must run as another user, and there is no postgres OS user (apt-get install -y postgresql creates one): %v", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
		// t.TempDir's parent is private to us; pgbouncer needs to
		// reach its own files.
		fatalIf(t, os.Chmod(filepath.Dir(dir), 0o711), "chmod")
		for _, f := range []string{dir, auth, ini} {
			fatalIf(t, os.Chown(f, uid, gid), "chown %s", f)
		}
	}
	b := &bouncer{addr: addr, log: syncBuffer{b: &bytes.Buffer{}}}
	cmd.Stdout, cmd.Stderr = &b.log, &b.log
	// The kernel sends Pdeathsig when the thread that forked the child
	// ends: fork from a locked thread that lives until the child exits.
	started, done := make(chan error, 1), make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		cmd.Wait()
	}()
	if err := <-started; err != nil {
		t.Fatalf("start pgbouncer: %v", err)
	}
	t.Cleanup(func() {
		// SIGINT: pgbouncer's safe shutdown (its clients are gone by now).
		cmd.Process.Signal(syscall.SIGINT)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
			t.Errorf("pgbouncer ignored SIGINT for 10s; killed")
		}
		if t.Failed() {
			t.Logf("pgbouncer's log:\n%s", b.log.String())
		}
	})
	deadline := time.Now().Add(15 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return b
		}
		select {
		case <-done:
			t.Fatalf("pgbouncer exited:\n%s", b.log.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("pgbouncer did not listen on %s within 15s:\n%s", addr, b.log.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// url is a connection URL through pgbouncer.
func (b *bouncer) url(user, password, db string) string {
	return (&url.URL{Scheme: "postgres", User: url.UserPassword(user, password), Host: b.addr, Path: "/" + db, RawQuery: "sslmode=disable"}).String()
}

// seedBouncerTenants writes rows rows of each of pgbouncerTenants through
// the proxy directly, with SET LOCAL tokens on one connection it closes.
func seedBouncerTenants(t *testing.T, env *encryptedEnv, rows int) {
	t.Helper()
	ctx := ctxT(t)
	conn, err := pgx.Connect(ctx, env.proxy.url(poolRole, rolePassword, env.db, "default_query_exec_mode=simple_protocol"))
	fatalIf(t, err, "connect")
	defer conn.Close(ctx)
	for _, tenant := range pgbouncerTenants {
		var values []string
		for i := 1; i <= rows; i++ {
			values = append(values, fmt.Sprintf("('%s/%d', '%d')", tenant.name, i, tenant.base+i))
		}
		_, err := conn.Exec(ctx, "BEGIN; SET LOCAL pgcloak.tenant_token = '"+mintToken(t, tenant.name, time.Hour)+"'; "+
			"insert into patients (name, ssn) values "+strings.Join(values, ", ")+"; COMMIT")
		fatalIf(t, err, "seed %s", tenant.name)
	}
}

// bouncerScript is a pgbench script for the pgbouncer test. Each client
// cycles through three kinds of transaction, starting at its own place
// in the cycle (n counts its transactions): tenant acme (k = 0), tenant
// globex (k = 1), and no token (k = 2), which must see no row. A tenant's
// transaction presents its token as TOKEN says (:tok stands for the
// tenant's token variable), counts the rows it sees and those stamped
// with its tenant and named after it, and reads one row by its encrypted
// ssn, which must decrypt to the ssn it asked for. Anything else is a
// leak: the script says so on stderr and fails the transaction with an
// error, which aborts the client and fails pgbench.
const bouncerScript = `\set n :n + 1
\set k (:client_id + :n) % 3
\set i random(1, :rows)
BEGIN;
\if :k = 0
TOKEN_ACME
\set want 1000 + :i
\elif :k = 1
TOKEN_GLOBEX
\set want 2000 + :i
\endif
SELECT count(*) AS seen, count(*) FILTER (WHERE tenant_id = (CASE :k::int WHEN 0 THEN 'acme' WHEN 1 THEN 'globex' END) AND name LIKE tenant_id || '/%') AS own FROM patients \gset
\if :k = 2
\set expect 0
\else
\set expect :rows
SELECT ssn AS got FROM patients WHERE ssn = :want::text \gset
\if :got != :want
\shell echo LEAK: client :client_id tenant :k read ssn :got want :want >&2
SELECT 'LEAK: a transaction read another tenant''s plaintext'::int;
\endif
\endif
\if :seen != :expect OR :own != :expect
\shell echo LEAK: client :client_id tenant :k saw :seen rows own :own want :expect >&2
SELECT 'LEAK: a transaction saw rows of another tenant, or not its own'::int;
\endif
COMMIT;
`

// runBouncerPgbench runs bouncerScript with tokens presented by token (a
// statement with :tok in place of the token) through b, 8 clients, and
// returns pgbench's output and error.
func runBouncerPgbench(t *testing.T, env *encryptedEnv, b *bouncer, mode, token string, rows, perClient int) (string, error) {
	t.Helper()
	script := filepath.Join(t.TempDir(), "tokens.sql")
	s := strings.Replace(bouncerScript, "TOKEN_ACME", strings.ReplaceAll(token, ":tok", ":acme_tok"), 1)
	s = strings.Replace(s, "TOKEN_GLOBEX", strings.ReplaceAll(token, ":tok", ":globex_tok"), 1)
	fatalIf(t, os.WriteFile(script, []byte(s), 0o644), "script")
	// pgbench puts a variable's value into the statement as it is in -M
	// simple, and binds it as a parameter otherwise.
	quote := func(tok string) string {
		if mode == "simple" {
			return "'" + tok + "'"
		}
		return tok
	}
	args := []string{"-n", "-M", mode, "-c", "8", "-j", "2", "-t", strconv.Itoa(perClient), "-f", script,
		"-D", "n=0", "-D", "rows=" + strconv.Itoa(rows),
		"-D", "acme_tok=" + quote(mintToken(t, "acme", time.Hour)), "-D", "globex_tok=" + quote(mintToken(t, "globex", time.Hour)),
		b.url(poolRole, rolePassword, env.db)}
	out, err := exec.Command(env.pg.Bin("pgbench"), args...).CombinedOutput()
	return string(out), err
}

// TestTokenPgbouncerTransactionMode: pgbouncer in transaction pooling
// mode in front of the proxy, a pool of 2 server connections, 8 pgbench
// clients logging in as the token role; tenants acme and globex alternate
// with transactions without a token, each tenant transaction BEGIN; SET
// LOCAL pgcloak.tenant_token; SELECT ...; COMMIT, and every transaction
// checks what it saw (bouncerScript). With SET LOCAL no transaction sees
// another tenant's rows, although every server connection serves every
// client. The same script with a session-level SET must be caught
// leaking: the tenant stays on the server connection, and the next
// client's transaction there, which presented no token, sees its rows.
func TestTokenPgbouncerTransactionMode(t *testing.T) {
	const (
		rows      = 10
		perClient = 60
		clients   = 8
	)
	env := startTokenEnv(t)
	seedBouncerTenants(t, env, rows)

	t.Run("SET LOCAL", func(t *testing.T) {
		b := startPgbouncer(t, env.proxy, env.db, poolRole, rolePassword, 2)
		before := acceptedTokens(env)
		out, err := runBouncerPgbench(t, env, b, "simple", "SET LOCAL pgcloak.tenant_token = :tok;", rows, perClient)
		if err != nil || strings.Contains(out, "LEAK") {
			t.Fatalf("pgbench through pgbouncer: %v\n%s", err, out)
		}
		want := fmt.Sprintf("number of transactions actually processed: %d/%d", clients*perClient, clients*perClient)
		if !strings.Contains(out, want) || !strings.Contains(out, "number of failed transactions: 0 ") {
			t.Fatalf("pgbench through pgbouncer: want %q and no failed transactions:\n%s", want, out)
		}
		// Each client cycled through acme, globex and no token: a third
		// of the transactions presented each tenant's token.
		after := acceptedTokens(env)
		for _, tenant := range pgbouncerTenants {
			if got, want := after[tenant.name]-before[tenant.name], clients*perClient/3; got != want {
				t.Errorf("tokens of %s accepted: got %d, want %d", tenant.name, got, want)
			}
		}
		// pgbouncer still holds its server connections: at most 2
		// sessions of the token role reached PostgreSQL for 8 clients.
		var backends int
		fatalIf(t, env.pool.QueryRow(ctxT(t), `select count(*) from pg_stat_activity where usename = $1 and datname = $2`, poolRole, env.db).Scan(&backends), "pg_stat_activity")
		if backends < 1 || backends > 2 {
			t.Errorf("backends of %s: got %d, want 1 or 2 (pgbouncer's pool)", poolRole, backends)
		}
	})

	t.Run("session-level SET leaks", func(t *testing.T) {
		b := startPgbouncer(t, env.proxy, env.db, poolRole, rolePassword, 2)
		out, err := runBouncerPgbench(t, env, b, "simple", "SET pgcloak.tenant_token = :tok;", rows, perClient)
		if err == nil || !strings.Contains(out, "LEAK: client") {
			t.Fatalf("pgbench with session-level SET through pgbouncer: got %v, want a leak found:\n%s", err, out)
		}
		t.Logf("caught, as it must be: %s", firstLine(out, "LEAK: client"))
	})
}

// acceptedTokens counts the audit's tenant_token_accepted events by
// tenant.
func acceptedTokens(env *encryptedEnv) map[string]int {
	n := map[string]int{}
	for line := range strings.Lines(env.audit.String()) {
		var ev struct{ Event, Tenant string }
		if json.Unmarshal([]byte(line), &ev) == nil && ev.Event == "tenant_token_accepted" {
			n[ev.Tenant]++
		}
	}
	return n
}

// firstLine is the first line of out that contains s.
func firstLine(out, s string) string {
	for line := range strings.Lines(out) {
		if strings.Contains(line, s) {
			return strings.TrimSpace(line)
		}
	}
	return ""
}
