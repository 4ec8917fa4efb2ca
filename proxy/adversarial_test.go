package proxy

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/pgcloak/pgcloak/config"
	"github.com/pgcloak/pgcloak/crypto"
	"github.com/pgcloak/pgcloak/keystore"
	"github.com/pgcloak/pgcloak/testenv"
	"github.com/rs/zerolog"
	"gopkg.in/yaml.v3"
)

// The adversarial corpus (testdata/adversarial/*.yaml) is what an attacker
// with SQL injection in one tenant's requests would try. Every case runs
// through pgcloak against a real PostgreSQL that logs every statement
// (log_statement = all), in a database of its own copied from one template:
// table patients with a declared column ssn (text, equality search), its
// format CHECKs, row-level security whose policy reads
// pgcloak.current_tenant() (the verified pin, keystore.EnsurePin), and
// one row of each of the tenants acme and globex.
//
// A case is SQL text or a protocol sequence, the session that runs it and
// the outcome the SPEC requires. Whatever the outcome, after every case:
//
//	(a) no marker is stored: every ssn value starts with the format byte
//	    0x01 and is long enough, no stored value holds a marker, and the
//	    other tenant's rows are exactly as they were;
//	(b) the text of a refused statement (marker ${M}) and the plaintext of a
//	    declared column that pgcloak must encrypt (marker ${S}) never reach
//	    PostgreSQL: not its log, in clear or hex;
//	(c) the tenant PostgreSQL sees for the session (pgcloak.current_tenant())
//	    is the one pgcloak pinned, read back through the same
//	    session after the case (in and out of a transaction it left open);
//	    a session pgcloak now refuses everything in (0A000) passes.
//
// A case marked pending runs and reports (t.Log) how its outcome or (b)
// differs from the SPEC, and fails once it matches: remove the mark then.
// (a) and (c) are asserted for every case; one marked breaks reports them
// instead, and fails once they hold.

// advCase is one entry of a corpus file. Unknown fields are an error.
type advCase struct {
	Name    string `yaml:"name"`
	Comment string `yaml:"comment"`
	// Session is the login: alice (tenant acme, the default), bob (tenant
	// globex), migrator (unscoped, BYPASSRLS), trust (trust_user, tenant
	// acme, no password) or postgres (upstream.user).
	Session string `yaml:"session"`
	// Setup runs as the superuser, directly, before the session starts;
	// {{db}} is the case's database.
	Setup []string `yaml:"setup"`
	// Startup adds StartupMessage parameters (options, client_encoding ...).
	Startup map[string]string `yaml:"startup"`
	// SQL is one simple Query; Steps a sequence of protocol operations.
	SQL   string    `yaml:"sql"`
	Steps []advStep `yaml:"steps"`
	// Wire is a raw startup sequence: ssl_pipelined or gss_pipelined (a
	// StartupMessage and a Query in the same packet as the request).
	Wire string `yaml:"wire"`
	// Expect lists the acceptable outcomes: "ok", "refused CODE" (a pgcloak
	// error), "pg CODE" (PostgreSQL's error) or "error CODE" (either). The
	// outcome is the first error of the case.
	Expect  stringList `yaml:"expect"`
	Pending string     `yaml:"pending"`
	Breaks  string     `yaml:"breaks"`
	// LosesTenant says why pgcloak.current_tenant() may be NULL after the
	// case (the pin failing closed); another tenant is never allowed.
	LosesTenant string `yaml:"loses_tenant"`

	file string
}

// advStep is one protocol operation; exactly one of its verbs is set.
type advStep struct {
	Query    string   `yaml:"query"`       // simple Query
	Prepare  string   `yaml:"prepare"`     // Parse (+Describe, Sync) of SQL as this name
	Execute  string   `yaml:"execute"`     // Bind + Execute of a prepared name, with Params
	Params   []string `yaml:"params"`      // text-format parameters of execute/exec_params
	ExecSQL  string   `yaml:"exec_params"` // unnamed Parse/Bind/Execute of this text
	Close    string   `yaml:"close"`       // Close (statement) of this name
	CopyFrom string   `yaml:"copy_from"`   // a COPY ... FROM STDIN, fed Data
	Data     string   `yaml:"data"`
	SQL      string   `yaml:"sql"` // the text of prepare
}

type stringList []string

func (l *stringList) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode {
		*l = []string{n.Value}
		return nil
	}
	var s []string
	if err := n.Decode(&s); err != nil {
		return err
	}
	*l = s
	return nil
}

func loadAdversarialCorpus(t *testing.T) []*advCase {
	t.Helper()
	files, err := filepath.Glob("testdata/adversarial/*.yaml")
	fatalIf(t, err, "glob")
	if len(files) == 0 {
		t.Fatal("no corpus files in testdata/adversarial")
	}
	var all []*advCase
	seen := map[string]bool{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		fatalIf(t, err, "read %s", f)
		dec := yaml.NewDecoder(bytes.NewReader(b))
		dec.KnownFields(true)
		var cases []*advCase
		if err := dec.Decode(&cases); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		for _, c := range cases {
			c.file = filepath.Base(f)
			if err := c.validate(); err != nil {
				t.Fatalf("%s: case %q: %v", f, c.Name, err)
			}
			if seen[c.Name] {
				t.Fatalf("%s: case %q: name used twice", f, c.Name)
			}
			seen[c.Name] = true
			all = append(all, c)
		}
	}
	return all
}

var outcomeRE = regexp.MustCompile(`^(ok|(refused|pg|error) [0-9A-Z]{5})$`)

func (c *advCase) validate() error {
	if c.Name == "" {
		return errors.New("no name")
	}
	n := 0
	for _, set := range []bool{c.SQL != "", len(c.Steps) > 0, c.Wire != ""} {
		if set {
			n++
		}
	}
	if n != 1 {
		return errors.New("exactly one of sql, steps and wire must be set")
	}
	if len(c.Expect) == 0 {
		return errors.New("no expect")
	}
	for _, e := range c.Expect {
		if !outcomeRE.MatchString(e) {
			return fmt.Errorf("expect %q: want ok, refused CODE, pg CODE or error CODE", e)
		}
	}
	if c.refusedOnly() && c.Wire == "" && !strings.Contains(c.allText(), "${M}") && !strings.Contains(c.allText(), "${S}") {
		return errors.New("a refused case must carry ${M} (or ${S}) in the refused text, so (b) can see whether it reached PostgreSQL")
	}
	switch c.Session {
	case "", "alice", "bob", "migrator", "trust", "postgres":
	default:
		return fmt.Errorf("session %q", c.Session)
	}
	switch c.Wire {
	case "", "ssl_pipelined", "gss_pipelined":
	default:
		return fmt.Errorf("wire %q", c.Wire)
	}
	for i, s := range c.Steps {
		verbs := 0
		for _, v := range []string{s.Query, s.Prepare, s.Execute, s.ExecSQL, s.Close, s.CopyFrom} {
			if v != "" {
				verbs++
			}
		}
		if verbs != 1 {
			return fmt.Errorf("step %d: exactly one verb", i)
		}
	}
	return nil
}

// refusedOnly reports whether the SPEC wants pgcloak to refuse the case.
func (c *advCase) refusedOnly() bool {
	for _, e := range c.Expect {
		if !strings.HasPrefix(e, "refused ") {
			return false
		}
	}
	return true
}

func (c *advCase) allText() string {
	var b strings.Builder
	b.WriteString(c.SQL)
	for _, s := range c.Steps {
		b.WriteString(s.Query + s.SQL + s.ExecSQL + s.CopyFrom + s.Data + strings.Join(s.Params, ""))
	}
	for _, v := range c.Startup {
		b.WriteString(v)
	}
	return b.String()
}

// advMarkers are one case's markers. Each is unique to the case, so a hit in
// the log or the table is this case's.
type advMarkers struct {
	m, s, p string // refused text; plaintext pgcloak must encrypt; plaintext PostgreSQL may see
}

func newMarkers(i int) advMarkers {
	r := make([]byte, 4)
	rand.Read(r)
	tag := fmt.Sprintf("%02d%x", i, r)
	return advMarkers{m: "zqrefused" + tag, s: "zqsecret" + tag, p: "zqplain" + tag}
}

func (m advMarkers) all() []string { return []string{m.m, m.s, m.p} }

var (
	repeatRE = regexp.MustCompile(`\$\{REPEAT (\d+) ([^}]*)\}`)
	byteRE   = regexp.MustCompile(`\{\{x([0-9a-fA-F]{2})\}\}`)
)

// expand fills in markers, {{db}}, ${REPEAT n text} and raw bytes {{xNN}}.
func (m advMarkers) expand(s, db string) string {
	s = repeatRE.ReplaceAllStringFunc(s, func(x string) string {
		sub := repeatRE.FindStringSubmatch(x)
		n, _ := strconv.Atoi(sub[1])
		return strings.Repeat(sub[2], n)
	})
	s = strings.NewReplacer("${M}", m.m, "${S}", m.s, "${P}", m.p, "{{db}}", db).Replace(s)
	return byteRE.ReplaceAllStringFunc(s, func(x string) string {
		b, _ := hex.DecodeString(byteRE.FindStringSubmatch(x)[1])
		return string(b)
	})
}

// Roles of the adversarial server (its own cluster, so the names are free).
const (
	advAlice    = "alice" // tenant acme
	advBob      = "bob"   // tenant globex
	advMigrator = "migrator"
	advPassword = "adversarial-role-password"
)

// advSchema is the declared table. Its CHECKs are the ones `pgcloak schema`
// prints; pgcloak.current_tenant() is the expression of the pinned tenant.
const advSchema = `
CREATE TABLE patients (
	id serial PRIMARY KEY,
	tenant_id text NOT NULL DEFAULT pgcloak.current_tenant(),
	name text,
	ssn bytea,
	ssn_bidx bytea,
	CONSTRAINT patients_ssn_pgcloak_format CHECK (ssn IS NULL OR (length(ssn) >= 33 AND get_byte(ssn, 0) = 1)),
	CONSTRAINT patients_ssn_bidx_pgcloak_format CHECK (ssn_bidx IS NULL OR length(ssn_bidx) = 16)
);
ALTER TABLE patients ENABLE ROW LEVEL SECURITY;
ALTER TABLE patients FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON patients USING (tenant_id = pgcloak.current_tenant()) WITH CHECK (tenant_id = pgcloak.current_tenant());
GRANT SELECT, INSERT, UPDATE, DELETE ON patients TO alice, bob, migrator, trust_user;
GRANT USAGE ON SEQUENCE patients_id_seq TO alice, bob, migrator, trust_user;
-- A schema the tenant roles may create in: the attacker has the most room.
GRANT CREATE ON SCHEMA public TO alice, bob, trust_user;
`

// advEnv is the server and template every case copies.
type advEnv struct {
	pg       *testenv.Postgres
	template string
	provider crypto.Provider
}

func startAdversarial(t *testing.T) *advEnv {
	t.Helper()
	ctx := ctxT(t)
	pg, err := testenv.Start(ctx, testenv.Options{ExtraConf: map[string]string{
		"log_statement":           "all",
		"log_min_error_statement": "error",
		"log_min_messages":        "warning",
	}})
	fatalIf(t, err, "start PostgreSQL")
	t.Cleanup(func() {
		if err := pg.Stop(); err != nil {
			t.Errorf("stop PostgreSQL: %v", err)
		}
	})
	fatalIf(t, pg.Exec(ctx, "", fmt.Sprintf(`
		CREATE ROLE alice LOGIN PASSWORD '%[1]s';
		CREATE ROLE bob LOGIN PASSWORD '%[1]s';
		CREATE ROLE migrator LOGIN BYPASSRLS PASSWORD '%[1]s';`, advPassword)), "roles")

	master := make([]byte, 32)
	rand.Read(master)
	provider, err := crypto.NewLocalProvider(master)
	fatalIf(t, err, "local provider")
	env := &advEnv{pg: pg, template: "adv_template", provider: provider}

	fatalIf(t, pg.CreateDatabase(ctx, env.template), "template database")
	pool, err := pgxpool.New(ctx, pg.SuperuserURL(env.template))
	fatalIf(t, err, "pool")
	_, err = keystore.Open(ctx, pool)
	fatalIf(t, err, "keystore")
	pinner, err := keystore.EnsurePin(ctx, pool, "app.tenant_id")
	fatalIf(t, err, "install the verified tenant pin")
	pinner.Close()
	_, err = pool.Exec(ctx, advSchema)
	fatalIf(t, err, "schema")
	t.Logf("adversarial server: log %s", pg.LogFile)

	// One row per tenant, written through pgcloak.
	p := env.proxy(t, pool)
	for _, r := range []struct{ role, name, ssn string }{{advAlice, "alice-row", "111-11-1111"}, {advBob, "bob-row", "222-22-2222"}} {
		conn, err := pgconn.Connect(ctx, p.url(r.role, advPassword, env.template))
		fatalIf(t, err, "connect as %s", r.role)
		_, err = conn.Exec(ctx, fmt.Sprintf(`INSERT INTO patients (name, ssn) VALUES ('%s', '%s')`, r.name, r.ssn)).ReadAll()
		fatalIf(t, err, "sentinel row of %s", r.role)
		conn.Close(ctx)
	}
	pool.Close()
	// Nothing may stay connected to a template that CREATE DATABASE copies.
	deadline := time.Now().Add(10 * time.Second)
	for {
		var n int
		fatalIf(t, pgxQueryRow(ctx, pg, "postgres", `SELECT count(*) FROM pg_stat_activity WHERE datname = 'adv_template'`, &n), "sessions")
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d sessions still on the template", n)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return env
}

// pgxQueryRow runs one query as the superuser, directly.
func pgxQueryRow(ctx context.Context, pg *testenv.Postgres, db, sql string, dst ...any) error {
	conn, err := pgx.Connect(ctx, pg.SuperuserURL(db))
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	return conn.QueryRow(ctx, sql).Scan(dst...)
}

// proxy starts pgcloak in front of the database pool is connected to.
func (e *advEnv) proxy(t *testing.T, pool *pgxpool.Pool) *testProxy {
	t.Helper()
	store, err := keystore.Open(ctxT(t), pool)
	fatalIf(t, err, "keystore")
	pinner, err := keystore.EnsurePin(ctxT(t), pool, "app.tenant_id")
	fatalIf(t, err, "verified tenant pin")
	t.Cleanup(pinner.Close)
	cache := crypto.NewKeyCache(store, e.provider, crypto.CacheOptions{TTL: time.Minute, MaxEntries: 100})
	t.Cleanup(cache.Close)
	return startAdvProxy(t, e.pg, Deps{Pool: pool, Keys: CacheKeys{Cache: cache}, Pinner: pinner}, func(c *Config) {
		c.Upstream.User = testenv.SuperuserName
		c.Tenancy = config.Tenancy{
			Setting: "app.tenant_id",
			Mode:    config.ModeLogin,
			Login: config.LoginTenancy{Roles: map[string]string{
				advAlice: "acme", advBob: "globex", testenv.TrustUser: "acme",
			}},
			// upstream.user listed as unscoped: the login is refused anyway.
			UnscopedRoles: []string{advMigrator, testenv.SuperuserName},
		}
		c.Encrypt = config.Encrypt{
			OnDecryptError:      config.DecryptErrorFail,
			RequireFormatChecks: true,
			Tables: []config.Table{{
				Schema: "public", Name: "patients",
				Columns: []config.Column{{Name: "ssn", Type: "text", Search: config.SearchEquality, IndexColumn: "ssn_bidx", Normalize: config.NormalizeNone}},
			}},
		}
	})
}

// startAdvProxy is startProxyDeps without its goroutine check, which cases
// running in parallel would trip over each other's goroutines;
// TestAdversarialCorpus checks once, after every case.
func startAdvProxy(t testing.TB, pg *testenv.Postgres, deps Deps, mutate func(*Config)) *testProxy {
	t.Helper()
	cfg := Config{
		Listen:   config.Listen{Address: "127.0.0.1:0", MaxMessageSize: 1 << 20, ShutdownTimeout: time.Second},
		Upstream: config.Upstream{Address: pg.Addr(), SSLMode: config.SSLDisable, ConnectTimeout: 5 * time.Second},
	}
	mutate(&cfg)
	srv, err := NewServer(cfg, zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.InfoLevel), deps)
	fatalIf(t, err, "NewServer")
	fatalIf(t, srv.LoadCatalog(context.Background()), "LoadCatalog")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	fatalIf(t, err, "listen")
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	t.Cleanup(func() {
		srv.Close()
		if err := <-done; err != ErrServerClosed {
			t.Errorf("Serve returned %v, want ErrServerClosed", err)
		}
	})
	return &testProxy{srv: srv, addr: ln.Addr().String(), pg: pg}
}

func TestAdversarialCorpus(t *testing.T) {
	before := runtime.NumGoroutine()
	t.Cleanup(func() { waitGoroutines(t, before) }) // runs last, after every case
	cases := loadAdversarialCorpus(t)
	if len(cases) < 60 {
		t.Errorf("corpus: %d cases, want at least 60", len(cases))
	}
	env := startAdversarial(t)
	var mu sync.Mutex
	var pending, breaks []string
	t.Cleanup(func() {
		t.Logf("%d cases; pending and differing: %d %v; breaking an invariant: %d %v", len(cases), len(pending), pending, len(breaks), breaks)
	})
	for i, c := range cases {
		t.Run(c.Name, func(t *testing.T) {
			// Each case has a database of its own and markers no other
			// case uses, so cases may share the server and its log.
			t.Parallel()
			problems, violations := env.run(t, i, c)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case c.Pending != "" && len(problems) > 0:
				pending = append(pending, c.Name)
				t.Logf("pending (%s): %s", c.Pending, strings.Join(problems, "; "))
			case c.Pending != "":
				t.Errorf("case is marked pending (%s) but now behaves as the SPEC requires: remove its pending field", c.Pending)
			default:
				for _, p := range problems {
					t.Error(p)
				}
			}
			switch {
			case c.Breaks != "" && len(violations) > 0:
				breaks = append(breaks, c.Name)
				t.Logf("BREAKS an invariant (%s): %s", c.Breaks, strings.Join(violations, "; "))
			case c.Breaks != "":
				t.Errorf("case is marked breaks (%s) but the invariants hold now: remove its breaks field", c.Breaks)
			default:
				for _, v := range violations {
					t.Error("INVARIANT: " + v)
				}
			}
		})
	}
}

// advOutcome is what a case did: "ok", or its first error.
type advOutcome struct {
	code    string
	pgcloak bool // the error's message starts with "pgcloak:"
	msg     string
}

func (o advOutcome) String() string {
	switch {
	case o.code == "" && o.msg != "":
		return "ok (" + o.msg + ")"
	case o.code == "":
		return "ok"
	case o.pgcloak:
		return "refused " + o.code + " (" + o.msg + ")"
	}
	return "pg " + o.code + " (" + o.msg + ")"
}

func (o advOutcome) matches(want string) bool {
	if want == "ok" {
		return o.code == ""
	}
	kind, code, _ := strings.Cut(want, " ")
	if o.code != code {
		return false
	}
	switch kind {
	case "refused":
		return o.pgcloak
	case "pg":
		return !o.pgcloak
	}
	return true
}

// run runs one case in a fresh copy of the template and returns how it
// differs from the SPEC (problems) and which invariants it broke.
func (e *advEnv) run(t *testing.T, i int, c *advCase) (problems, violations []string) {
	ctx := ctxT(t)
	db := fmt.Sprintf("adv_%03d", i)
	fatalIf(t, e.pg.Exec(ctx, "postgres", fmt.Sprintf("CREATE DATABASE %s TEMPLATE %s", db, e.template)), "case database")
	t.Cleanup(func() { e.pg.DropDatabase(context.Background(), db) })
	pool, err := pgxpool.New(ctx, e.pg.SuperuserURL(db))
	fatalIf(t, err, "pool")
	t.Cleanup(pool.Close)
	mk := newMarkers(i)
	for _, s := range c.Setup {
		_, err := pool.Exec(ctx, mk.expand(s, db), pgx.QueryExecModeSimpleProtocol)
		fatalIf(t, err, "setup %q", s)
	}
	before := otherTenantDigest(t, pool)
	p := e.proxy(t, pool)
	logStart := fileSize(t, e.pg.LogFile)

	var out advOutcome
	note := func(err error) {
		if err == nil || out.code != "" {
			return
		}
		var pe *pgconn.PgError
		if errors.As(err, &pe) {
			out = advOutcome{code: pe.Code, pgcloak: strings.HasPrefix(pe.Message, "pgcloak:"), msg: pe.Message}
			return
		}
		out = advOutcome{code: "conn?", msg: err.Error()}
	}
	var conn *pgconn.PgConn
	if c.Wire != "" {
		out = e.runWire(t, p, c, mk, db)
	} else {
		conn, err = e.connect(ctx, p, c, mk, db)
		note(err)
		if conn != nil {
			defer conn.Close(context.Background())
			runSteps(ctx, conn, c, mk, db, note)
		}
	}

	t.Logf("outcome: %s", out)
	ok := false
	for _, want := range c.Expect {
		ok = ok || out.matches(want)
	}
	if !ok {
		problems = append(problems, fmt.Sprintf("outcome: got %s, want %s", out, strings.Join(c.Expect, " or ")))
	}

	// (c) the tenant, through the same session, before anything else runs.
	if conn != nil && !conn.IsClosed() {
		violations = append(violations, e.checkTenant(ctx, conn, c)...)
	}
	// (b) what reached PostgreSQL's log during the case: never ${S}; ${M}
	// when the SPEC says pgcloak refuses the case.
	logged := readFrom(t, e.pg.LogFile, logStart)
	secret := []string{mk.s}
	if c.refusedOnly() {
		secret = append(secret, mk.m)
	}
	for _, m := range secret {
		for _, form := range []string{m, hex.EncodeToString([]byte(m)), strings.ToUpper(hex.EncodeToString([]byte(m)))} {
			if bytes.Contains(logged, []byte(form)) {
				what := "the refused statement's text"
				if m == mk.s {
					what = "plaintext of a declared column"
				}
				problems = append(problems, fmt.Sprintf("%s reached PostgreSQL's log: %s", what, logExcerpt(logged, []byte(form))))
			}
		}
	}
	// (a) what is stored, read directly as the superuser.
	violations = append(violations, storedViolations(t, pool, mk)...)
	if after := otherTenantDigest(t, pool); after != before {
		violations = append(violations, fmt.Sprintf("the other tenant's rows changed: %s, then %s", before, after))
	}
	return problems, violations
}

// connect starts the case's session through p; the error of a refused
// startup is returned with a nil conn.
func (e *advEnv) connect(ctx context.Context, p *testProxy, c *advCase, mk advMarkers, db string) (*pgconn.PgConn, error) {
	user, password := advAlice, advPassword
	switch c.Session {
	case "bob":
		user = advBob
	case "migrator":
		user = advMigrator
	case "trust":
		user, password = testenv.TrustUser, ""
	case "postgres":
		user, password = testenv.SuperuserName, testenv.SuperuserPassword
	}
	cfg, err := pgconn.ParseConfig(p.url(user, password, db))
	if err != nil {
		return nil, err
	}
	cfg.ConnectTimeout = 10 * time.Second
	for k, v := range c.Startup {
		cfg.RuntimeParams[k] = mk.expand(v, db)
	}
	cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	return pgconn.ConnectConfig(cctx, cfg)
}

// runSteps runs the case's SQL or steps, passing every error to note.
func runSteps(ctx context.Context, conn *pgconn.PgConn, c *advCase, mk advMarkers, db string, note func(error)) {
	steps := c.Steps
	if c.SQL != "" {
		steps = []advStep{{Query: c.SQL}}
	}
	for _, s := range steps {
		if conn.IsClosed() {
			return
		}
		sctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		x := func(v string) string { return mk.expand(v, db) }
		params := make([][]byte, len(s.Params))
		for i, v := range s.Params {
			params[i] = []byte(x(v))
		}
		switch {
		case s.Query != "":
			_, err := conn.Exec(sctx, x(s.Query)).ReadAll()
			note(err)
		case s.Prepare != "":
			_, err := conn.Prepare(sctx, x(s.Prepare), x(s.SQL), nil)
			note(err)
		case s.Execute != "":
			_, err := conn.ExecPrepared(sctx, x(s.Execute), params, nil, nil).Close()
			note(err)
		case s.ExecSQL != "":
			_, err := conn.ExecParams(sctx, x(s.ExecSQL), params, nil, nil, nil).Close()
			note(err)
		case s.Close != "":
			// Not pgconn's Deallocate: it returns at an ErrorResponse and
			// leaves the ReadyForQuery unread.
			note(closeStatement(sctx, conn, x(s.Close)))
		case s.CopyFrom != "":
			_, err := conn.CopyFrom(sctx, strings.NewReader(x(s.Data)), x(s.CopyFrom))
			note(err)
		}
		cancel()
	}
}

// closeStatement sends Close (statement) and Sync and reads up to
// ReadyForQuery, returning the first error.
func closeStatement(ctx context.Context, conn *pgconn.PgConn, name string) error {
	fe := conn.Frontend()
	fe.Send(&pgproto3.Close{ObjectType: 'S', Name: name})
	fe.Send(&pgproto3.Sync{})
	if err := fe.Flush(); err != nil {
		return err
	}
	var first error
	for {
		msg, err := conn.ReceiveMessage(ctx)
		if err != nil {
			return err
		}
		switch m := msg.(type) {
		case *pgproto3.ErrorResponse:
			if first == nil {
				first = pgconn.ErrorResponseToPgError(m)
			}
		case *pgproto3.ReadyForQuery:
			return first
		}
	}
}

// runWire sends a request (SSLRequest or GSSENCRequest), a StartupMessage
// and a Query in one write, as a man in the middle would inject them, and
// returns the first error pgcloak answers with.
func (e *advEnv) runWire(t *testing.T, p *testProxy, c *advCase, mk advMarkers, db string) advOutcome {
	conn, err := net.Dial("tcp", p.addr)
	fatalIf(t, err, "dial")
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	code := uint32(80877103) // SSLRequest
	if c.Wire == "gss_pipelined" {
		code = 80877104
	}
	buf := binary.BigEndian.AppendUint32(nil, 8)
	buf = binary.BigEndian.AppendUint32(buf, code)
	buf, _ = (&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30,
		Parameters: map[string]string{"user": testenv.TrustUser, "database": db}}).Encode(buf)
	buf, _ = (&pgproto3.Query{String: fmt.Sprintf("INSERT INTO patients (ssn) VALUES ('%s') /* %s */", mk.s, mk.m)}).Encode(buf)
	if _, err := conn.Write(buf); err != nil {
		return advOutcome{code: "conn?", msg: err.Error()}
	}
	answer := make([]byte, 1)
	if _, err := io.ReadFull(conn, answer); err != nil {
		return advOutcome{code: "conn?", msg: "no answer to the request: " + err.Error()}
	}
	fe := pgproto3.NewFrontend(conn, conn)
	for {
		msg, err := fe.Receive()
		if err != nil {
			return advOutcome{code: "conn?", msg: fmt.Sprintf("answered %q, then %v", answer, err)}
		}
		switch m := msg.(type) {
		case *pgproto3.ErrorResponse:
			return advOutcome{code: m.Code, pgcloak: strings.HasPrefix(m.Message, "pgcloak:"), msg: m.Message}
		case *pgproto3.ReadyForQuery:
			if m.TxStatus == 'I' {
				// The injected Query was acted on if a second one comes.
				continue
			}
		case *pgproto3.CommandComplete:
			return advOutcome{msg: "the injected query ran: " + string(m.CommandTag)}
		}
	}
}

// checkTenant reads the tenant PostgreSQL sees through the case's session,
// inside any transaction the case left open and after it.
func (e *advEnv) checkTenant(ctx context.Context, conn *pgconn.PgConn, c *advCase) []string {
	want := "acme"
	switch c.Session {
	case "bob":
		want = "globex"
	case "migrator", "postgres":
		want = ""
	}
	const query = `SELECT coalesce(pgcloak.current_tenant(), '')`
	var vs []string
	read := func(when string) {
		qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		res, err := conn.Exec(qctx, query).ReadAll()
		var pe *pgconn.PgError
		switch {
		case errors.As(err, &pe) && pe.Code == "0A000" && strings.HasPrefix(pe.Message, "pgcloak:"):
			// The session is refused everything: nothing runs under any tenant.
		case err != nil:
			vs = append(vs, fmt.Sprintf("tenant %s: cannot read it: %v", when, err))
		case len(res) != 1 || len(res[0].Rows) != 1:
			vs = append(vs, fmt.Sprintf("tenant %s: %d results, not one row (the session is out of step)", when, len(res)))
		case string(res[0].Rows[0][0]) == "" && want != "" && c.LosesTenant != "":
			// Failed closed, as the case says it may: no tenant's rows.
		case string(res[0].Rows[0][0]) != want:
			vs = append(vs, fmt.Sprintf("tenant %s: got %q, want %q", when, res[0].Rows[0][0], want))
		}
	}
	switch conn.TxStatus() {
	case 'T':
		read("inside the transaction the case left open")
		conn.Exec(ctx, "ROLLBACK").ReadAll()
	case 'E':
		conn.Exec(ctx, "ROLLBACK").ReadAll()
	}
	if !conn.IsClosed() {
		read("after the case")
	}
	return vs
}

// storedViolations scans the declared column (child tables included) as the
// superuser, who bypasses row-level security.
func storedViolations(t *testing.T, pool *pgxpool.Pool, mk advMarkers) []string {
	t.Helper()
	ctx := ctxT(t)
	rows, err := pool.Query(ctx, `SELECT tableoid::regclass::text, id, tenant_id, ssn, ssn_bidx FROM patients`)
	fatalIf(t, err, "scan patients")
	defer rows.Close()
	var vs []string
	for rows.Next() {
		var table, tenant string
		var id int
		var ssn, bidx []byte
		fatalIf(t, rows.Scan(&table, &id, &tenant, &ssn, &bidx), "scan")
		where := fmt.Sprintf("%s id %d (tenant %s)", table, id, tenant)
		if ssn != nil && (len(ssn) < 33 || ssn[0] != 0x01) {
			vs = append(vs, fmt.Sprintf("%s: ssn %q is not in pgcloak's format", where, ssn[:min(len(ssn), 40)]))
		}
		if bidx != nil && len(bidx) != 16 {
			vs = append(vs, fmt.Sprintf("%s: ssn_bidx of %d bytes", where, len(bidx)))
		}
		for _, m := range mk.all() {
			if bytes.Contains(ssn, []byte(m)) || bytes.Contains(bidx, []byte(m)) {
				vs = append(vs, fmt.Sprintf("%s: a marker is stored in clear", where))
			}
		}
	}
	fatalIf(t, rows.Err(), "scan patients")
	return vs
}

// otherTenantDigest summarises globex's rows, which no case may touch.
func otherTenantDigest(t *testing.T, pool *pgxpool.Pool) string {
	t.Helper()
	var n int
	var digest string
	err := pool.QueryRow(ctxT(t), `SELECT count(*), coalesce(md5(string_agg(p::text, '|' ORDER BY id)), '') FROM patients p WHERE tenant_id = 'globex'`).Scan(&n, &digest)
	fatalIf(t, err, "digest")
	return fmt.Sprintf("%d rows %s", n, digest[:min(len(digest), 8)])
}

func fileSize(t *testing.T, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	fatalIf(t, err, "stat %s", path)
	return fi.Size()
}

func readFrom(t *testing.T, path string, off int64) []byte {
	t.Helper()
	f, err := os.Open(path)
	fatalIf(t, err, "open %s", path)
	defer f.Close()
	_, err = f.Seek(off, io.SeekStart)
	fatalIf(t, err, "seek")
	b, err := io.ReadAll(f)
	fatalIf(t, err, "read log")
	return b
}

// logExcerpt is the log line holding needle, shortened.
func logExcerpt(log, needle []byte) string {
	i := bytes.Index(log, needle)
	start := bytes.LastIndexByte(log[:i], '\n') + 1
	end := i + len(needle) + 60
	if end > len(log) {
		end = len(log)
	}
	if j := bytes.IndexByte(log[i:end], '\n'); j >= 0 {
		end = i + j
	}
	if i-start > 160 {
		start = i - 160
	}
	return strconv.Quote(string(log[start:end]))
}
