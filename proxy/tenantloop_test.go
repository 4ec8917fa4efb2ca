//go:build linux

package proxy

import (
	"bytes"
	"context"
	"fmt"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/pgcloak/pgcloak/config"
	"github.com/pgcloak/pgcloak/crypto"
)

// loopTurns sums, over the proxy's sessions, the times the relay loop took
// them, and counts those it carries now.
func loopTurns(p *testProxy) (turns int64, carried int) {
	p.srv.mu.Lock()
	defer p.srv.mu.Unlock()
	for s := range p.srv.sessions {
		turns += s.loopTurns.Load()
		if s.relayed.Load() != nil {
			carried++
		}
	}
	return turns, carried
}

// waitCarried waits until the relay loop carries want sessions.
func waitCarried(t *testing.T, p *testProxy, want int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, carried := loopTurns(p)
		if carried == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the relay loop carries %d sessions, want %d", carried, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// quietUntilCarried runs statements on no declared table until the relay
// loop carries c's session (its proxy's only one), and fails if it never
// does within the longest back-off (handbackMax rounds).
func quietUntilCarried(t *testing.T, c *pgx.Conn, p *testProxy) {
	t.Helper()
	for range handbackMax + 8 {
		if _, carried := loopTurns(p); carried == 1 {
			return
		}
		var n int
		fatalIf(t, c.QueryRow(ctxT(t), `select 1`).Scan(&n), "quiet round")
	}
	waitCarried(t, p, 1)
}

// TestTenantLoopHandOver: a tenant's session moves between the relay loop
// (statements on undeclared tables) and its goroutines (statements on the
// declared table, rows to decrypt) and back, in every pgx mode, and every
// answer is what it would be on the goroutines alone: declared values
// sealed on the way in, opened on the way out, undeclared ones as they are.
func TestTenantLoopHandOver(t *testing.T) {
	env := startEncrypted(t)
	ctx := ctxT(t)
	_, err := env.pool.Exec(ctx, `create table notes (id int primary key, body text);
		grant select, insert on notes to acme_app`)
	fatalIf(t, err, "schema")
	for _, mode := range []string{"simple_protocol", "exec", "cache_statement", "cache_describe", "describe_exec"} {
		t.Run(mode, func(t *testing.T) {
			mustExec(t, connect(t, env.pg.SuperuserURL(env.db)), `truncate patients, notes`)
			c := connect(t, env.proxy.url(acmeRole, rolePassword, env.db, "default_query_exec_mode="+mode))
			var one int
			fatalIf(t, c.QueryRow(ctx, `select 1`).Scan(&one), "select 1")
			waitCarried(t, env.proxy, 1)
			before, _ := loopTurns(env.proxy)

			for i := range 3 {
				mustExec(t, c, `insert into notes values ($1, $2)`, i, fmt.Sprintf("note %d", i))
				mustExec(t, c, `insert into patients (name, ssn) values ($1, $2)`, fmt.Sprintf("p%d", i), fmt.Sprintf("123-45-000%d", i))
				var ssn string
				fatalIf(t, c.QueryRow(ctx, `select ssn from patients where ssn = $1`, fmt.Sprintf("123-45-000%d", i)).Scan(&ssn), "search %d", i)
				mustEqual(t, "ssn", ssn, fmt.Sprintf("123-45-000%d", i))
				// Quiet rounds on undeclared tables: the loop takes the
				// session again.
				for j := range 2 * handbackMax / 64 {
					var body string
					fatalIf(t, c.QueryRow(ctx, `select body from notes where id = $1`, i).Scan(&body), "note %d/%d", i, j)
					mustEqual(t, "note", body, fmt.Sprintf("note %d", i))
				}
				// A FETCH names no declared table, but its rows carry one:
				// the loop hands the result to the goroutines to open.
				tx, err := c.Begin(ctx)
				fatalIf(t, err, "begin")
				_, err = tx.Exec(ctx, `declare cur cursor for select name, ssn from patients order by id`)
				fatalIf(t, err, "declare")
				for range 4 {
					var body string
					fatalIf(t, tx.QueryRow(ctx, `select body from notes where id = 0`).Scan(&body), "note in the transaction")
				}
				rows, err := tx.Query(ctx, `fetch all from cur`)
				fatalIf(t, err, "fetch")
				k := 0
				for rows.Next() {
					var name, ssn string
					fatalIf(t, rows.Scan(&name, &ssn), "fetched row")
					mustEqual(t, "fetched ssn", ssn, fmt.Sprintf("123-45-000%d", k))
					k++
				}
				fatalIf(t, rows.Err(), "fetch rows")
				mustEqual(t, "fetched rows", k, i+1)
				fatalIf(t, tx.Commit(ctx), "commit")
			}
			after, _ := loopTurns(env.proxy)
			if after-before < 3 {
				t.Errorf("the relay loop took the session %d times, want at least 3 (once after each declared statement)", after-before)
			}

			// A pipeline mixing both kinds, in one round trip.
			b := &pgx.Batch{}
			b.Queue(`select body from notes where id = 0`)
			b.Queue(`select ssn from patients where ssn = '123-45-0001'`)
			b.Queue(`select count(*) from notes`)
			b.Queue(`select name from patients where ssn = '123-45-0002'`)
			br := c.SendBatch(ctx, b)
			var body, ssn, name string
			var n int
			fatalIf(t, br.QueryRow().Scan(&body), "batch 1")
			fatalIf(t, br.QueryRow().Scan(&ssn), "batch 2")
			fatalIf(t, br.QueryRow().Scan(&n), "batch 3")
			fatalIf(t, br.QueryRow().Scan(&name), "batch 4")
			fatalIf(t, br.Close(), "batch close")
			mustEqual(t, "batch body", body, "note 0")
			mustEqual(t, "batch ssn", ssn, "123-45-0001")
			mustEqual(t, "batch count", n, 3)
			mustEqual(t, "batch name", name, "p2")

			// What PostgreSQL stores is sealed, whichever side wrote it.
			var stored []byte
			fatalIf(t, env.pool.QueryRow(ctx, `select ssn from patients where name = 'p1'`).Scan(&stored), "stored")
			if string(stored) == "123-45-0001" || len(stored) < 20 {
				t.Errorf("stored ssn %q is not sealed", stored)
			}
		})
	}
}

// TestTenantLoopSimpleQueries: multi-statement simple queries that mix
// declared and undeclared tables, and errors on either side, keep their
// PostgreSQL semantics across hand-overs.
func TestTenantLoopSimpleQueries(t *testing.T) {
	env := startEncrypted(t)
	ctx := ctxT(t)
	_, err := env.pool.Exec(ctx, `create table notes (id int primary key, body text); grant select, insert on notes to acme_app`)
	fatalIf(t, err, "schema")
	c := env.tenantConn(t, acmeRole)
	for i := range 20 {
		mustExec(t, c, fmt.Sprintf(`insert into notes values (%d, 'n%d'); insert into patients (name, ssn) values ('q%d', '987-65-43%02d')`, i, i, i, i))
		_, err := c.Exec(ctx, `select 1/0`)
		mustEqual(t, "division by zero", pgCode(err), "22012")
		_, err = c.Exec(ctx, `select ssn from patients where no_such_column = 1`)
		mustEqual(t, "undefined column", pgCode(err), "42703")
		var ssn string
		fatalIf(t, c.QueryRow(ctx, fmt.Sprintf(`select ssn from patients where ssn = '987-65-43%02d'`, i)).Scan(&ssn), "read %d", i)
		mustEqual(t, "ssn", ssn, fmt.Sprintf("987-65-43%02d", i))
	}
	var n int
	fatalIf(t, c.QueryRow(ctx, `select count(*) from notes`).Scan(&n), "count")
	mustEqual(t, "notes", n, 20)
}

// TestTenantLoopConcurrent: sessions of two tenants, each alternating
// statements the loop runs and statements the goroutines run, never see
// each other's rows or a wrong value.
func TestTenantLoopConcurrent(t *testing.T) {
	env := startEncrypted(t)
	ctx := ctxT(t)
	_, err := env.pool.Exec(ctx, `create table notes (id int primary key, body text); grant select, insert on notes to acme_app, globex_app`)
	fatalIf(t, err, "schema")
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for w := range 8 {
		role := []string{acmeRole, globexRole}[w%2]
		mode := []string{"simple_protocol", "cache_statement", "exec", "cache_describe"}[w%4]
		c := connect(t, env.proxy.url(role, rolePassword, env.db, "default_query_exec_mode="+mode))
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 40 {
				ssn := fmt.Sprintf("%03d-00-%04d", w, i)
				if _, err := c.Exec(ctx, `insert into patients (name, ssn) values ($1, $2)`, role, ssn); err != nil {
					errs <- fmt.Errorf("worker %d insert %d: %w", w, i, err)
					return
				}
				for range i % 7 {
					var n int
					if err := c.QueryRow(ctx, `select count(*) from notes`).Scan(&n); err != nil {
						errs <- fmt.Errorf("worker %d count: %w", w, err)
						return
					}
				}
				var name, got string
				if err := c.QueryRow(ctx, `select name, ssn from patients where ssn = $1`, ssn).Scan(&name, &got); err != nil {
					errs <- fmt.Errorf("worker %d read %d: %w", w, i, err)
					return
				}
				if name != role || got != ssn {
					errs <- fmt.Errorf("worker %d read %d: got (%s, %s), want (%s, %s)", w, i, name, got, role, ssn)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	turns, _ := loopTurns(env.proxy)
	if turns < 8 {
		t.Errorf("the relay loop took sessions %d times, want at least one per session", turns)
	}
}

// loopGuardKeys counts the calls into the key layer made on the relay
// loop's thread, and those of them that could wait for the key store: a
// key the layer must load would stall every session the loop carries, so
// on the loop every call must be one that gives up instead (crypto.NoWait).
type loopGuardKeys struct {
	Keys
	onLoop, mayWait *atomic.Int64
}

func onLoopThread() bool { return bytes.Contains(debug.Stack(), []byte("(*relayLoop).")) }

func (k loopGuardKeys) note(ctx context.Context) {
	if onLoopThread() {
		k.onLoop.Add(1)
		if crypto.MayWait(ctx) {
			k.mayWait.Add(1)
		}
	}
}

func (k loopGuardKeys) Seal(ctx context.Context, tenant string, ref ValueRef, plaintext []byte) ([]byte, error) {
	k.note(ctx)
	return k.Keys.Seal(ctx, tenant, ref, plaintext)
}

func (k loopGuardKeys) BlindIndex(ctx context.Context, tenant string, ref ValueRef, normalized []byte) ([]byte, error) {
	k.note(ctx)
	return k.Keys.BlindIndex(ctx, tenant, ref, normalized)
}

func (k loopGuardKeys) NewOpener(tenant string) Opener {
	return loopGuardOpener{k.Keys.NewOpener(tenant), k}
}

type loopGuardOpener struct {
	Opener
	k loopGuardKeys
}

func (o loopGuardOpener) Column(ref ValueRef) ColumnOpener {
	return loopGuardColumn{o.Opener.Column(ref), o.k}
}

type loopGuardColumn struct {
	ColumnOpener
	k loopGuardKeys
}

func (c loopGuardColumn) Open(ctx context.Context, dst, value []byte) ([]byte, error) {
	c.k.note(ctx)
	return c.ColumnOpener.Open(ctx, dst, value)
}

// TestTenantLoopKeysNeverWait: a tenant's session runs its encrypted
// statements (writes, searches, reads of declared columns in every pgx
// mode, a FETCH whose text names no declared table, COPY) on the relay
// loop's thread, and there no call into the key layer may wait for the key
// store. The key cache is emptied before every round, so the loop meets
// keys it does not hold: it must give the session to its goroutines at
// that message, and every answer must still be right.
func TestTenantLoopKeysNeverWait(t *testing.T) {
	var onLoop, mayWait atomic.Int64
	var cache *crypto.KeyCache
	env := startEncryptedDeps(t, func(d *Deps) {
		cache = d.Keys.(CacheKeys).Cache
		d.Keys = loopGuardKeys{d.Keys, &onLoop, &mayWait}
	})
	ctx := ctxT(t)
	_, err := env.pool.Exec(ctx, `create table notes (id int primary key, body text); grant select, insert on notes to acme_app`)
	fatalIf(t, err, "schema")
	for _, mode := range []string{"simple_protocol", "exec", "cache_statement", "cache_describe", "describe_exec"} {
		c := connect(t, env.proxy.url(acmeRole, rolePassword, env.db, "default_query_exec_mode="+mode))
		for i := range 6 {
			if i%2 == 1 {
				cache.PurgeAll()
			}
			ssn := fmt.Sprintf("555-%s-%d", mode[:4], i)
			mustExec(t, c, `insert into patients (name, ssn, diagnosis) values ($1, $2, 'flu')`, mode, ssn)
			for range handbackMin + 1 {
				var n int
				fatalIf(t, c.QueryRow(ctx, `select count(*) from notes`).Scan(&n), "count")
			}
			var got string
			fatalIf(t, c.QueryRow(ctx, `select diagnosis from patients where ssn = $1`, ssn).Scan(&got), "search")
			mustEqual(t, "diagnosis", got, "flu")
			tx, err := c.Begin(ctx)
			fatalIf(t, err, "begin")
			_, err = tx.Exec(ctx, `declare cur cursor for select ssn, diagnosis from patients where name = '`+mode+`'`)
			fatalIf(t, err, "declare")
			for range handbackMin + 1 {
				var n int
				fatalIf(t, tx.QueryRow(ctx, `select count(*) from notes`).Scan(&n), "count in the transaction")
			}
			if i%2 == 1 {
				cache.PurgeAll() // the FETCH's rows meet a key not cached
			}
			rows, err := tx.Query(ctx, `fetch all from cur`)
			fatalIf(t, err, "fetch")
			k := 0
			for rows.Next() {
				var s, d string
				fatalIf(t, rows.Scan(&s, &d), "fetched row")
				mustEqual(t, "fetched diagnosis", d, "flu")
				k++
			}
			fatalIf(t, rows.Err(), "fetch rows")
			mustEqual(t, "fetched rows", k, i+1)
			fatalIf(t, tx.Commit(ctx), "commit")
		}
		var out bytes.Buffer
		_, err := c.PgConn().CopyTo(ctx, &out, `copy patients (ssn) to stdout`)
		fatalIf(t, err, "copy to")
		if !strings.Contains(out.String(), "555-"+mode[:4]+"-5") {
			t.Errorf("copy to: %q holds no plaintext of the session's rows", out.String())
		}
	}
	turns, _ := loopTurns(env.proxy)
	if turns < 10 {
		t.Errorf("the relay loop took the sessions %d times; the test wants it to carry them between declared statements", turns)
	}
	if n := onLoop.Load(); n == 0 {
		t.Error("no call into the key layer ran on the relay loop's thread: encrypted statements are not carried by the loop")
	}
	if n := mayWait.Load(); n != 0 {
		t.Errorf("%d calls into the key layer on the relay loop's thread could wait for the key store", n)
	}
}

// TestTenantLoopLargeMessages: a statement larger than the loop handles on
// its thread, and a row larger than it forwards, go through the goroutines
// and come back whole; the session returns to the loop after them.
func TestTenantLoopLargeMessages(t *testing.T) {
	env := startEncrypted(t, func(c *Config) { c.Listen.MaxMessageSize = 8 << 20 })
	ctx := ctxT(t)
	_, err := env.pool.Exec(ctx, `create table notes (id int primary key, body text); grant select, insert, update on notes to acme_app`)
	fatalIf(t, err, "schema")
	for _, mode := range []string{"simple_protocol", "cache_statement"} {
		c := connect(t, env.proxy.url(acmeRole, rolePassword, env.db, "default_query_exec_mode="+mode))
		// A row over inlineUpstreamMax goes to the goroutines; one under
		// it the loop forwards as it came.
		for id, size := range map[int]int{1: 3 << 20, 2: inlineUpstreamMax / 2} {
			big := strings.Repeat(string(rune('a'+id)), size)
			mustExec(t, c, `insert into notes values ($1, $2) on conflict (id) do update set body = excluded.body`, id, big)
			var n int
			fatalIf(t, c.QueryRow(ctx, `select length(body) from notes where id = $1 -- `+strings.Repeat("c", inlineClientMax), id).Scan(&n), "large statement")
			mustEqual(t, "length", n, len(big))
			for range handbackMin + 1 {
				var body string
				fatalIf(t, c.QueryRow(ctx, `select body from notes where id = $1`, id).Scan(&body), "large row")
				if body != big {
					t.Fatalf("large row: got %d bytes, want %d", len(body), len(big))
				}
			}
			quietUntilCarried(t, c, env.proxy)
		}
		c.Close(ctx)
	}
}

// TestShapeOfOnLoopNeverWaits: on the relay loop's thread, a RowDescription
// naming a table the catalog does not know (it was reset by a SIGHUP after
// the loop looked) makes shapeOf give up before it changes anything,
// instead of asking pg_catalog; off the loop it asks.
func TestShapeOfOnLoopNeverWaits(t *testing.T) {
	c := newCatalog(nil, patientsDecl())
	s := &session{decl: &declarations{catalog: c}, decrypts: true, onLoop: true}
	rd := &pgproto3.RowDescription{Fields: []pgproto3.FieldDescription{
		{Name: []byte("id"), TableOID: 0, DataTypeOID: 23},
		{Name: []byte("ssn"), TableOID: 424242, TableAttributeNumber: 4, DataTypeOID: 17},
	}}
	if _, err := s.shapeOf(rd); err != errLoopWouldWait {
		t.Fatalf("shapeOf on the loop: %v, want errLoopWouldWait", err)
	}
	if rd.Fields[1].DataTypeOID != 17 || len(rd.Fields) != 2 {
		t.Errorf("shapeOf changed the message before giving up: %+v", rd.Fields)
	}
	c.mu.Lock()
	c.declared[424242] = false
	c.mu.Unlock()
	shape, err := s.shapeOf(rd)
	fatalIf(t, err, "shapeOf of a known table")
	if shape.any {
		t.Errorf("a table known not to be declared gave a shape with declared fields")
	}
}

// TestTenantLoopRowKeyNotCached: rows of a declared table arrive at the
// relay loop when the key cache has just forgotten their key. The loop
// must hand each such row to the goroutines as it came (decrypting works
// in the row's buffer), and the client gets every value right.
func TestTenantLoopRowKeyNotCached(t *testing.T) {
	var cache *crypto.KeyCache
	env := startEncryptedDeps(t, func(d *Deps) { cache = d.Keys.(CacheKeys).Cache })
	ctx := ctxT(t)
	for _, mode := range []string{"simple_protocol", "cache_statement"} {
		t.Run(mode, func(t *testing.T) {
			mustExec(t, connect(t, env.pg.SuperuserURL(env.db)), `truncate patients`)
			c := connect(t, env.proxy.url(acmeRole, rolePassword, env.db, "default_query_exec_mode="+mode))
			for i := range 3 {
				mustExec(t, c, `insert into patients (name, ssn, diagnosis) values ($1, $2, $3)`, "p", fmt.Sprintf("555-00-000%d", i), fmt.Sprintf("diagnosis %d", i))
			}
			read := func(round int) {
				rows, err := c.Query(ctx, `select ssn, diagnosis from patients order by id`)
				fatalIf(t, err, "read %d", round)
				k := 0
				for rows.Next() {
					var ssn, d string
					fatalIf(t, rows.Scan(&ssn, &d), "row")
					mustEqual(t, "ssn", ssn, fmt.Sprintf("555-00-000%d", k))
					mustEqual(t, "diagnosis", d, fmt.Sprintf("diagnosis %d", k))
					k++
				}
				fatalIf(t, rows.Err(), "rows %d", round)
				mustEqual(t, "rows", k, 3)
			}
			read(0) // the plan is cached
			for round := 1; round <= 3; round++ {
				quietUntilCarried(t, c, env.proxy) // the read starts on the loop
				cache.PurgeAll()
				read(round)
			}
		})
	}
}

// TestTenantLoopNullAuditOnce: under on_decrypt_error: null, a row whose
// first declared value does not open and whose second needs a key the
// cache does not hold reaches the relay loop: the loop gives the row to
// the goroutines, which open it again, and the value that did not open is
// audited once, not once per side.
func TestTenantLoopNullAuditOnce(t *testing.T) {
	var cache *crypto.KeyCache
	env := startEncryptedDeps(t, func(d *Deps) { cache = d.Keys.(CacheKeys).Cache },
		func(c *Config) { c.Encrypt.OnDecryptError = config.DecryptErrorNull })
	ctx := ctxT(t)
	c := env.tenantConn(t, acmeRole)
	insertPatient(t, c, "alice", "123-45-6789", "alice@example.com", "influenza", "1980-01-02")
	// Alice's ssn tampered (the tag's last byte): it passes the format
	// CHECK and opens for no one.
	fatalIf(t, env.pg.Exec(ctx, env.db, `update patients set ssn = overlay(ssn placing decode(lpad(to_hex(255 - get_byte(ssn, length(ssn) - 1)), 2, '0'), 'hex') from length(ssn) for 1)`), "tamper")
	audited := func() int { return strings.Count(env.audit.String(), `"event":"decrypt_failed"`) }
	both := `select ssn, diagnosis from patients where name = 'alice'`
	ssnOnly := `select ssn from patients where name = 'alice'`
	read := func(sql string, want string) {
		t.Helper()
		var ssn, diagnosis *string
		var err error
		if sql == both {
			err = c.QueryRow(ctx, sql).Scan(&ssn, &diagnosis)
		} else {
			err = c.QueryRow(ctx, sql).Scan(&ssn)
		}
		fatalIf(t, err, "%s", sql)
		if ssn != nil {
			t.Fatalf("%s: the tampered ssn opened as %q", sql, *ssn)
		}
		if sql == both && (diagnosis == nil || *diagnosis != want) {
			t.Fatalf("%s: diagnosis %v, want %q", sql, diagnosis, want)
		}
	}
	read(both, "influenza") // plans and both keys cached
	read(ssnOnly, "")
	before := audited()
	mustEqual(t, "decrypt_failed events so far", before, 2)
	// Only the ssn's key (class default) comes back into the cache; the
	// diagnosis's (class phi) stays out.
	cache.PurgeAll()
	read(ssnOnly, "")
	quietUntilCarried(t, c, env.proxy)
	read(both, "influenza") // on the loop: ssn does not open, then phi's key is missing
	mustEqual(t, "decrypt_failed events after the handed-over row", audited()-before, 2)
}

// loopGuardVerifier counts the tokens verified on the relay loop's thread,
// and those of them it did not say it verifies at once (a JWKS fetch there
// would stall every session the loop carries).
type loopGuardVerifier struct {
	TokenVerifier
	atOnce          *atomic.Bool
	onLoop, waiting *atomic.Int64
}

func (v loopGuardVerifier) VerifyTokenAtOnce(raw string) (TokenClaims, error, bool) {
	if !v.atOnce.Load() {
		return TokenClaims{}, nil, false
	}
	c, err := v.VerifyToken(context.Background(), raw)
	return c, err, true
}

func (v loopGuardVerifier) VerifyToken(ctx context.Context, raw string) (TokenClaims, error) {
	if onLoopThread() {
		v.onLoop.Add(1)
		if !v.atOnce.Load() {
			v.waiting.Add(1)
		}
	}
	return v.TokenVerifier.VerifyToken(ctx, raw)
}

// TestTenantLoopTokenSession: the relay loop carries a token role's session
// between its token statements. With a session token, its statements on
// declared and undeclared tables run on the loop as the token's tenant; a
// local token's transaction switches tenant and back; RESET leaves no
// tenant. Every read is checked, in the simple and the extended protocol.
func TestTenantLoopTokenSession(t *testing.T) {
	var atOnce atomic.Bool
	var onLoop, waiting atomic.Int64
	env := startTokenEnvDeps(t, func(d *Deps) { d.Tokens = loopGuardVerifier{d.Tokens, &atOnce, &onLoop, &waiting} })
	t.Cleanup(func() {
		if n := waiting.Load(); n != 0 {
			t.Errorf("%d tokens were verified on the relay loop's thread by a verifier that may wait", n)
		}
	})
	ctx := ctxT(t)
	_, err := env.pool.Exec(ctx, `create table notes (id int primary key, body text); grant select on notes to `+poolRole+`;
		insert into notes values (1, 'shared')`)
	fatalIf(t, err, "schema")
	acme, globex := mintToken(t, "acme", time.Hour), mintToken(t, "globex", time.Hour)
	for _, run := range []struct {
		mode   string
		atOnce bool
	}{{"simple_protocol", false}, {"simple_protocol", true}, {"cache_statement", false}, {"cache_statement", true}} {
		mode := run.mode
		t.Run(fmt.Sprintf("%s/at_once=%v", mode, run.atOnce), func(t *testing.T) {
			atOnce.Store(run.atOnce)
			verified := onLoop.Load()
			t.Cleanup(func() {
				// A verifier that answers at once verifies token
				// statements on the loop, in either protocol.
				if n := onLoop.Load() - verified; run.atOnce && n == 0 {
					t.Error("no token was verified on the relay loop's thread: token statements do not ride the loop")
				}
			})
			mustExec(t, connect(t, env.pg.SuperuserURL(env.db)), `truncate patients`)
			c := connect(t, env.proxy.url(poolRole, rolePassword, env.db, "default_query_exec_mode="+mode))
			for _, w := range []struct{ tok, name, ssn string }{{acme, "Ann", "123-45-6789"}, {globex, "Gus", "987-65-4321"}} {
				tx, err := c.Begin(ctx)
				fatalIf(t, err, "begin")
				_, err = tx.Exec(ctx, `SET LOCAL pgcloak.tenant_token = '`+w.tok+`'`)
				fatalIf(t, err, "SET LOCAL")
				_, err = tx.Exec(ctx, `insert into patients (name, ssn) values ($1, $2)`, w.name, w.ssn)
				fatalIf(t, err, "insert")
				fatalIf(t, tx.Commit(ctx), "commit")
			}
			_, err := c.Exec(ctx, `SET pgcloak.tenant_token = '`+acme+`'`)
			fatalIf(t, err, "SET token")
			quietUntilCarried(t, c, env.proxy)
			before, _ := loopTurns(env.proxy)
			for i := range 3 * handbackMin {
				var body string
				fatalIf(t, c.QueryRow(ctx, `select body from notes where id = 1`).Scan(&body), "note %d", i)
				got := names(t, c, `select name, ssn from patients where ssn = $1`, "123-45-6789")
				if len(got) != 1 || got[0] != "Ann:123-45-6789" {
					t.Fatalf("round %d, acme by ssn: %v", i, got)
				}
				if got := names(t, c, `select name from patients`); len(got) != 1 || got[0] != "Ann" {
					t.Fatalf("round %d, acme's rows: %v", i, got)
				}
			}
			if _, carried := loopTurns(env.proxy); carried != 1 {
				t.Fatal("the relay loop does not carry the session while its session token lasts")
			}
			// Local tokens' transactions: globex, then acme again. In
			// the extended protocol the set_config statement is prepared
			// once; its later Binds reach the loop, which verifies their
			// token there when the verifier answers at once and gives
			// them to the goroutines otherwise.
			localVerified := onLoop.Load()
			for k := range 3 {
				quietUntilCarried(t, c, env.proxy)
				tx, err := c.Begin(ctx)
				fatalIf(t, err, "begin")
				_, err = tx.Exec(ctx, `select pg_catalog.set_config('pgcloak.tenant_token', $1, true)`, globex)
				fatalIf(t, err, "set_config local")
				if got := names(t, c, `select name, ssn from patients`); len(got) != 1 || got[0] != "Gus:987-65-4321" {
					t.Fatalf("local globex %d: %v", k, got)
				}
				fatalIf(t, tx.Commit(ctx), "commit")
				for i := range handbackMin {
					if got := names(t, c, `select name, ssn from patients`); len(got) != 1 || got[0] != "Ann:123-45-6789" {
						t.Fatalf("round %d.%d after the local token: %v", k, i, got)
					}
				}
			}
			if run.atOnce && onLoop.Load() == localVerified {
				t.Error("no set_config token was verified on the relay loop's thread: its Bind (or Query) left the loop")
			}
			_, err = c.Exec(ctx, `RESET pgcloak.tenant_token`)
			fatalIf(t, err, "RESET")
			for i := range 2 * handbackMin {
				if got := names(t, c, `select name from patients`); len(got) != 0 {
					t.Fatalf("round %d after RESET: %v", i, got)
				}
				_, err := c.Exec(ctx, `insert into patients (name, ssn) values ('x', '000-00-0000')`)
				if pgCode(err) != "42501" {
					t.Fatalf("round %d, insert without a tenant: %v, want 42501", i, err)
				}
			}
			if after, _ := loopTurns(env.proxy); after <= before {
				t.Errorf("the relay loop took the session %d times after the token statements, want it back", after-before)
			}
		})
	}
}

// TestTenantLoopTokenQueryGivesUp: a simple Query that sets a session
// token and then runs a statement whose plan is not cached reaches the
// relay loop, which gives it to the goroutines after it has verified the
// token. The goroutines handle it again from the session's state before it:
// the query runs under the new token, the session keeps it after COMMIT,
// and its acceptance is audited once.
func TestTenantLoopTokenQueryGivesUp(t *testing.T) {
	env := startTokenEnv(t)
	ctx := ctxT(t)
	acme, globex := mintToken(t, "acme", time.Hour), mintToken(t, "globex", time.Hour)
	c := env.tenantConn(t, poolRole)
	for _, w := range []struct{ tok, name, ssn string }{{acme, "Ann", "123-45-6789"}, {globex, "Gus", "987-65-4321"}} {
		_, err := c.Exec(ctx, `SET pgcloak.tenant_token = '`+w.tok+`'`)
		fatalIf(t, err, "SET token")
		mustExec(t, c, `insert into patients (name, ssn) values ('`+w.name+`', '`+w.ssn+`')`)
	}
	accepted := func() int { return strings.Count(env.audit.String(), `"tenant_token_accepted"`) }
	for i, w := range []struct{ tok, row string }{{acme, "Ann:123-45-6789"}, {globex, "Gus:987-65-4321"}, {acme, "Ann:123-45-6789"}} {
		quietUntilCarried(t, c, env.proxy)
		before := accepted()
		// A shape never seen: its plan is not cached when the loop meets it.
		res, err := c.PgConn().Exec(ctx, fmt.Sprintf(`BEGIN; SET pgcloak.tenant_token = '%s'; SELECT name AS n%d, ssn FROM patients; COMMIT`, w.tok, i)).ReadAll()
		fatalIf(t, err, "query %d", i)
		if len(res) != 4 || len(res[2].Rows) != 1 || string(res[2].Rows[0][0])+":"+string(res[2].Rows[0][1]) != w.row {
			t.Fatalf("query %d: %+v, want %s", i, res, w.row)
		}
		mustEqual(t, "tenant_token_accepted events of the query", accepted()-before, 1)
		if got := names(t, c, `select name, ssn from patients`); len(got) != 1 || got[0] != w.row {
			t.Fatalf("after the committed token %d: %v, want %s", i, got, w.row)
		}
	}
}
