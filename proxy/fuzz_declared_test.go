package proxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/pganalyze/pg_query_go/v5"
	"github.com/pgcloak/pgcloak/config"
	"github.com/pgcloak/pgcloak/rewrite"
	"github.com/pgcloak/pgcloak/testenv"
	"github.com/rs/zerolog"
	"gopkg.in/yaml.v3"
)

// fuzzMarker is the plaintext the seeds write into, and search, the declared
// column. The invariants are about where it may go.
const fuzzMarker = "zqfuzzmark"

// recordingRelay sits between pgcloak and PostgreSQL and keeps, per
// upstream connection, every byte pgcloak sent: what PostgreSQL was asked to
// run.
type recordingRelay struct {
	ln     net.Listener
	target string
	wg     sync.WaitGroup

	mu    sync.Mutex
	conns []*recordedConn
}

type recordedConn struct {
	mu  sync.Mutex
	buf []byte
}

func (c *recordedConn) bytes() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]byte(nil), c.buf...)
}

func startRecordingRelay(tb testing.TB, target string) *recordingRelay {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	r := &recordingRelay{ln: ln, target: target}
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			rc := &recordedConn{}
			r.mu.Lock()
			r.conns = append(r.conns, rc)
			r.mu.Unlock()
			r.wg.Add(1)
			go func() {
				defer r.wg.Done()
				r.relay(c, rc)
			}()
		}
	}()
	tb.Cleanup(func() { ln.Close(); r.wg.Wait() })
	return r
}

func (r *recordingRelay) relay(c net.Conn, rc *recordedConn) {
	defer c.Close()
	up, err := net.Dial("tcp", r.target)
	if err != nil {
		return
	}
	defer up.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		io.Copy(c, up)
		c.Close()
	}()
	buf := make([]byte, 32<<10)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			rc.mu.Lock()
			rc.buf = append(rc.buf, buf[:n]...)
			rc.mu.Unlock()
			if _, werr := up.Write(buf[:n]); werr != nil {
				break
			}
		}
		if err != nil {
			break
		}
	}
	up.Close()
	<-done
}

// since returns the connections accepted after the first n.
func (r *recordingRelay) since(n int) []*recordedConn {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*recordedConn(nil), r.conns[n:]...)
}

func (r *recordingRelay) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.conns)
}

// upstreamMessages decodes what pgcloak sent on one upstream connection:
// the StartupMessage, then every message; a torn tail is ignored.
func upstreamMessages(b []byte) []pgproto3.FrontendMessage {
	be := pgproto3.NewBackend(bytes.NewReader(b), io.Discard)
	be.SetMaxBodyLen(64 << 20)
	var msgs []pgproto3.FrontendMessage
	if _, err := be.ReceiveStartupMessage(); err != nil {
		return nil
	}
	for {
		m, err := be.Receive()
		if err != nil {
			return msgs
		}
		msgs = append(msgs, copyFrontend(m))
	}
}

// copyFrontend copies the message fields the checks read: pgproto3 reuses
// its values and aliases its buffer.
func copyFrontend(m pgproto3.FrontendMessage) pgproto3.FrontendMessage {
	switch x := m.(type) {
	case *pgproto3.Query:
		return &pgproto3.Query{String: x.String}
	case *pgproto3.Parse:
		return &pgproto3.Parse{Name: x.Name, Query: x.Query}
	case *pgproto3.Bind:
		ps := make([][]byte, len(x.Parameters))
		for i, p := range x.Parameters {
			ps[i] = append([]byte(nil), p...)
		}
		return &pgproto3.Bind{PreparedStatement: x.PreparedStatement, Parameters: ps}
	}
	return m
}

// raiseRE is pgcloak's own refusal raised through PostgreSQL (raiseSQL),
// alone or after the statements a refused simple query keeps.
var raiseRE = regexp.MustCompile(`;?DO \$pgcloak\$BEGIN RAISE EXCEPTION USING ERRCODE = '[0-9A-Z]{5}', MESSAGE = 'pgcloak: statement refused', DETAIL = 'pgcloak refusal [0-9]+'; END\$pgcloak\$$`)

// upstreamViolations checks what a tenant session sent upstream after its
// pin (pinTexts are the texts of the pin itself, which pgcloak may send
// again). Nothing may name the tenant setting or the proof setting, nothing
// may be SQL pgcloak refuses in a tenant session (opaque SQL, a lexer
// change: its own analyser, given the upstream text, says 42501), and the
// marker may not sit where the analyser sees a declared column's value.
func upstreamViolations(schema *rewrite.Schema, msgs []pgproto3.FrontendMessage, pinTexts map[string]bool) []string {
	var vs []string
	texts := map[string]string{} // upstream statement name -> text
	check := func(kind, text string) {
		if text == "" || pinTexts[text] {
			return
		}
		text = raiseRE.ReplaceAllString(text, "")
		if strings.TrimSpace(text) == "" {
			return
		}
		// The pin's functions, sequence and key are PostgreSQL's to guard
		// (a forged MAC is refused there); these two names are pgcloak's.
		// The parse tree, not the text: a comment may say anything.
		if tree, err := pg_query.ParseToJSON(text); err == nil {
			low := strings.ToLower(tree)
			for _, name := range []string{"app.tenant_id", "tenant_proof"} {
				if strings.Contains(low, name) {
					vs = append(vs, fmt.Sprintf("%s upstream names %s: %.200q", kind, name, text))
				}
			}
		}
		plan, err := schema.Analyze(text)
		var ref *rewrite.Refusal
		switch {
		case errors.As(err, &ref) && ref.Code == "42501":
			vs = append(vs, fmt.Sprintf("%s upstream is one pgcloak refuses in a tenant session (%s): %.200q", kind, ref.Message, text))
		case err != nil:
		case plan.Opaque != nil || plan.LexerChange != nil:
			vs = append(vs, fmt.Sprintf("%s upstream is opaque SQL or a lexer change: %.200q", kind, text))
		default:
			for _, sl := range plan.Slots {
				if sl.Value != nil && strings.Contains(*sl.Value, fuzzMarker) {
					vs = append(vs, fmt.Sprintf("%s upstream has the marker as a plaintext value of %s: %.200q", kind, sl.Column, text))
				}
			}
		}
	}
	for _, m := range msgs {
		switch x := m.(type) {
		case *pgproto3.Query:
			check("Query", x.String)
		case *pgproto3.Parse:
			texts[x.Name] = x.Query
			check("Parse", x.Query)
		case *pgproto3.Bind:
			text, ok := texts[x.PreparedStatement]
			if !ok {
				continue
			}
			for i, p := range x.Parameters {
				if !bytes.Contains(p, []byte(fuzzMarker)) {
					continue
				}
				plan, err := schema.Analyze(text)
				if err != nil {
					continue
				}
				for _, ps := range plan.Params {
					if ps.Param == i+1 && ps.Kind != rewrite.ParamPlain {
						vs = append(vs, fmt.Sprintf("Bind upstream carries the marker as plaintext parameter $%d of %s: %.200q", i+1, ps.Column, text))
					}
				}
			}
		}
	}
	return vs
}

// fuzzSeeds are the adversarial corpus's statements with every marker
// replaced by fuzzMarker, each as the client messages that send it.
func fuzzSeeds(tb testing.TB) [][]byte {
	files, err := filepath.Glob("testdata/adversarial/*.yaml")
	if err != nil || len(files) == 0 {
		tb.Fatalf("corpus: %v (%d files)", err, len(files))
	}
	mk := advMarkers{m: fuzzMarker, s: fuzzMarker, p: fuzzMarker}
	var seeds [][]byte
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			tb.Fatal(err)
		}
		var cases []*advCase
		if err := yaml.Unmarshal(b, &cases); err != nil {
			tb.Fatalf("%s: %v", f, err)
		}
		for _, c := range cases {
			if c.Pending != "" || c.Breaks != "" {
				continue // known to fail until fixed; the corpus reports them
			}
			x := func(s string) string { return mk.expand(s, "fuzz") }
			var buf []byte
			if c.SQL != "" {
				buf, _ = (&pgproto3.Query{String: x(c.SQL)}).Encode(buf)
			}
			for _, s := range c.Steps {
				params := make([][]byte, len(s.Params))
				for i, p := range s.Params {
					params[i] = []byte(x(p))
				}
				switch {
				case s.Query != "":
					buf, _ = (&pgproto3.Query{String: x(s.Query)}).Encode(buf)
				case s.Prepare != "":
					buf, _ = (&pgproto3.Parse{Name: x(s.Prepare), Query: x(s.SQL)}).Encode(buf)
					buf, _ = (&pgproto3.Describe{ObjectType: 'S', Name: x(s.Prepare)}).Encode(buf)
					buf, _ = (&pgproto3.Sync{}).Encode(buf)
				case s.Execute != "":
					buf, _ = (&pgproto3.Bind{PreparedStatement: x(s.Execute), Parameters: params}).Encode(buf)
					buf, _ = (&pgproto3.Execute{}).Encode(buf)
					buf, _ = (&pgproto3.Sync{}).Encode(buf)
				case s.ExecSQL != "":
					buf, _ = (&pgproto3.Parse{Query: x(s.ExecSQL)}).Encode(buf)
					buf, _ = (&pgproto3.Bind{Parameters: params}).Encode(buf)
					buf, _ = (&pgproto3.Execute{}).Encode(buf)
					buf, _ = (&pgproto3.Sync{}).Encode(buf)
				case s.Close != "":
					buf, _ = (&pgproto3.Close{ObjectType: 'S', Name: x(s.Close)}).Encode(buf)
					buf, _ = (&pgproto3.Sync{}).Encode(buf)
				case s.CopyFrom != "":
					buf, _ = (&pgproto3.Query{String: x(s.CopyFrom)}).Encode(buf)
					buf, _ = (&pgproto3.CopyData{Data: []byte(x(s.Data))}).Encode(buf)
					buf, _ = (&pgproto3.CopyDone{}).Encode(buf)
				}
			}
			if len(buf) > 0 && len(buf) < 64<<10 {
				seeds = append(seeds, buf)
			}
		}
	}
	return seeds
}

// fuzzDeclaredSchema is the declared table without its format CHECKs, so
// that only pgcloak stands between the client and the column.
const fuzzDeclaredSchema = `
CREATE TABLE patients (
	id serial PRIMARY KEY,
	tenant_id text NOT NULL DEFAULT pgcloak.current_tenant(),
	name text,
	ssn bytea,
	ssn_bidx bytea
);
ALTER TABLE patients ENABLE ROW LEVEL SECURITY;
ALTER TABLE patients FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON patients USING (tenant_id = pgcloak.current_tenant()) WITH CHECK (tenant_id = pgcloak.current_tenant());
GRANT SELECT, INSERT, UPDATE, DELETE ON patients TO trust_user;
GRANT USAGE ON SEQUENCE patients_id_seq TO trust_user;
INSERT INTO patients (tenant_id, name) VALUES ('globex', 'bob-row');
`

// FuzzDeclaredClientLoop feeds arbitrary client messages into a session of
// tenant acme (trust_user) on a declared table, through pgcloak with real
// keys, against PostgreSQL, and checks what pgcloak sent upstream after the
// pin and what PostgreSQL then holds:
//
//   - the tenant setting and the pin's proof setting are never named
//     upstream (save the pin's own statements), and no upstream text is one
//     pgcloak's own analyser refuses in a tenant session (42501: opaque SQL,
//     a lexer change, a tenant change, a reserved name);
//   - the marker never sits upstream where the analyser sees a value of the
//     declared column (a literal slot or a parameter it would encrypt);
//   - no stored ssn value is outside pgcloak's format or holds the marker
//     (the table has no format CHECK: pgcloak is the only wall), and the
//     other tenant's row is untouched;
//   - after the input, a check query through the same session (when the
//     session still answers) sees tenant acme or none, never another.
//
// Seeds are the adversarial corpus (testdata/adversarial) with its markers
// replaced by fuzzMarker, less the cases marked pending or breaks.
func FuzzDeclaredClientLoop(f *testing.F) {
	pg := testenv.Shared(f)
	ctx := context.Background()
	db := testenv.NewDatabase(f, pg)
	pool, err := pgxpool.New(ctx, pg.SuperuserURL(db))
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(pool.Close)
	pinner := installPin(f, pool)
	if _, err := pool.Exec(ctx, fuzzDeclaredSchema); err != nil {
		f.Fatalf("schema: %v", err)
	}
	if _, err := pool.Exec(ctx, fmt.Sprintf(`ALTER ROLE %s IN DATABASE %s SET statement_timeout = '3s'`, testenv.TrustUser, db)); err != nil {
		f.Fatal(err)
	}
	relay := startRecordingRelay(f, pg.Addr())
	logs := &syncBuffer{b: &bytes.Buffer{}} // the proxy's log of the current iteration
	enc := config.Encrypt{
		OnDecryptError: config.DecryptErrorFail,
		Tables: []config.Table{{
			Schema: "public", Name: "patients",
			Columns: []config.Column{{Name: "ssn", Type: "text", Search: config.SearchEquality, IndexColumn: "ssn_bidx", Normalize: config.NormalizeNone}},
		}},
	}
	ten := config.Tenancy{
		Setting: "app.tenant_id",
		Mode:    config.ModeLogin,
		Login:   config.LoginTenancy{Roles: map[string]string{testenv.TrustUser: "acme"}},
	}
	srv, err := NewServer(Config{
		Listen:   config.Listen{MaxMessageSize: 1 << 20},
		Upstream: config.Upstream{Address: relay.ln.Addr().String(), ConnectTimeout: 5 * time.Second, User: testenv.SuperuserName},
		Tenancy:  ten,
		Encrypt:  enc,
	}, zerolog.New(logs).Level(zerolog.InfoLevel), Deps{Pool: pool, Keys: newTestKeys(f, pool), Pinner: pinner})
	if err != nil {
		f.Fatal(err)
	}
	if err := srv.LoadCatalog(ctx); err != nil {
		f.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		f.Fatal(err)
	}
	go srv.Serve(ln)
	f.Cleanup(func() { srv.Close() })
	schema := rewrite.NewSchema(enc, ten.Setting)

	for _, s := range fuzzSeeds(f) {
		f.Add(s)
	}
	var digest string
	if err := pool.QueryRow(ctx, `SELECT md5(string_agg(p::text, '|' ORDER BY id)) FROM patients p WHERE tenant_id = 'globex'`).Scan(&digest); err != nil {
		f.Fatal(err)
	}

	f.Fuzz(func(t *testing.T, data []byte) {
		before := relay.count()
		logs.reset()
		conn, fe, err := declaredFuzzSession(ln.Addr().String(), db)
		if err != nil {
			t.Fatalf("startup: %v; pgcloak's log:\n%s", err, logs.String())
		}
		defer conn.Close()
		conns := relay.since(before)
		if len(conns) != 1 {
			t.Fatalf("upstream connections of the session: %d", len(conns))
		}
		pinned := len(conns[0].bytes()) // the session's pin is complete before its ReadyForQuery
		check, _ := (&pgproto3.Query{String: `SELECT coalesce(pgcloak.current_tenant(), '') AS zz_fuzz_tenant_check`}).Encode(nil)
		// A session that neither reads nor answers is not what this
		// target looks for (FuzzClientLoop does): bound the whole exchange.
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		conn.Write(append(append([]byte(nil), data...), check...))
		conn.(*net.TCPConn).CloseWrite()
		checking := false
		var tenantSeen []string
		for {
			msg, err := fe.Receive()
			if err != nil {
				break
			}
			switch m := msg.(type) {
			case *pgproto3.RowDescription:
				checking = len(m.Fields) == 1 && string(m.Fields[0].Name) == "zz_fuzz_tenant_check"
			case *pgproto3.DataRow:
				if checking && len(m.Values) == 1 {
					tenantSeen = append(tenantSeen, string(m.Values[0]))
				}
			}
		}
		conn.Close()
		// Let pgcloak finish the upstream side before reading it.
		deadline := time.Now().Add(5 * time.Second)
		for activeSessions(srv) > 0 && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}

		var vs []string
		for _, v := range tenantSeen {
			if v != "" && v != "acme" {
				vs = append(vs, fmt.Sprintf("the session's tenant became %q", v))
			}
		}
		b := conns[0].bytes()
		pinTexts := map[string]bool{}
		for _, m := range upstreamMessages(b[:pinned]) {
			switch x := m.(type) {
			case *pgproto3.Query:
				pinTexts[x.String] = true
			case *pgproto3.Parse:
				pinTexts[x.Query] = true
			}
		}
		// The startup message is in the first part; decode the rest alone.
		rest := append(startupPrefix(b[:pinned]), b[pinned:]...)
		vs = append(vs, upstreamViolations(schema, upstreamMessages(rest), pinTexts)...)

		var bad int
		var now string
		err = pool.QueryRow(context.Background(), `SELECT
			(SELECT count(*) FROM patients WHERE ssn IS NOT NULL AND (length(ssn) < 33 OR get_byte(ssn, 0) <> 1 OR position(convert_to('`+fuzzMarker+`', 'UTF8') IN ssn) > 0)),
			(SELECT coalesce(md5(string_agg(p::text, '|' ORDER BY id)), '') FROM patients p WHERE tenant_id = 'globex')`).Scan(&bad, &now)
		if err != nil {
			t.Fatalf("read the table: %v", err)
		}
		if bad > 0 {
			vs = append(vs, fmt.Sprintf("%d stored ssn values are plaintext", bad))
			pool.Exec(context.Background(), `DELETE FROM patients WHERE ssn IS NOT NULL AND (length(ssn) < 33 OR get_byte(ssn, 0) <> 1)`)
		}
		if now != digest {
			vs = append(vs, "the other tenant's row changed")
		}
		if len(vs) > 0 {
			t.Fatalf("invariants broken:\n%s", strings.Join(vs, "\n"))
		}
	})
}

// startupPrefix returns the StartupMessage at the start of b, so that a
// later slice of the same connection can be decoded on its own.
func startupPrefix(b []byte) []byte {
	if len(b) < 4 {
		return nil
	}
	n := int(b[0])<<24 | int(b[1])<<16 | int(b[2])<<8 | int(b[3])
	if n > len(b) || n < 8 {
		return nil
	}
	return b[:n]
}

// declaredFuzzSession logs in as trust_user (tenant acme) and waits for
// the first ReadyForQuery.
func declaredFuzzSession(addr, db string) (net.Conn, *pgproto3.Frontend, error) {
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, nil, err
	}
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	fe := pgproto3.NewFrontend(conn, conn)
	fe.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: map[string]string{"user": testenv.TrustUser, "database": db}})
	if err := fe.Flush(); err != nil {
		conn.Close()
		return nil, nil, err
	}
	for {
		msg, err := fe.Receive()
		if err != nil {
			conn.Close()
			return nil, nil, err
		}
		switch m := msg.(type) {
		case *pgproto3.ErrorResponse:
			conn.Close()
			return nil, nil, fmt.Errorf("%s %s", m.Code, m.Message)
		case *pgproto3.ReadyForQuery:
			conn.SetDeadline(time.Time{})
			return conn, fe, nil
		}
	}
}

// activeSessions is the number of sessions srv is serving.
func activeSessions(srv *Server) int {
	srv.mu.Lock()
	defer srv.mu.Unlock()
	return len(srv.sessions)
}

// TestUpstreamViolations shows that FuzzDeclaredClientLoop's upstream
// checks can fail: each message here is one a tenant session must never
// send upstream.
func TestUpstreamViolations(t *testing.T) {
	schema := rewrite.NewSchema(config.Encrypt{Tables: []config.Table{{
		Schema: "public", Name: "patients",
		Columns: []config.Column{{Name: "ssn", Type: "text", Search: config.SearchEquality, IndexColumn: "ssn_bidx", Normalize: config.NormalizeNone}},
	}}}, "app.tenant_id")
	pin := "SELECT pgcloak.pin($1, $2, $3), pg_catalog.set_config($4, $1, false)"
	for _, tc := range []struct {
		name string
		msgs []pgproto3.FrontendMessage
		bad  bool
	}{
		{"plaintext literal", []pgproto3.FrontendMessage{&pgproto3.Query{String: "INSERT INTO patients (ssn) VALUES ('" + fuzzMarker + "')"}}, true},
		{"plaintext search", []pgproto3.FrontendMessage{&pgproto3.Query{String: "SELECT id FROM patients WHERE ssn = '" + fuzzMarker + "'"}}, true},
		{"plaintext parameter", []pgproto3.FrontendMessage{
			&pgproto3.Parse{Name: "s", Query: "INSERT INTO patients (ssn) VALUES ($1)"},
			&pgproto3.Bind{PreparedStatement: "s", Parameters: [][]byte{[]byte(fuzzMarker)}},
		}, true},
		{"opaque", []pgproto3.FrontendMessage{&pgproto3.Query{String: "DO $$BEGIN NULL; END$$"}}, true},
		{"tenant setting", []pgproto3.FrontendMessage{&pgproto3.Query{String: "SELECT 1; SET app.tenant_id = 'globex'"}}, true},
		{"lexer", []pgproto3.FrontendMessage{&pgproto3.Query{String: "SET client_encoding = 'SJIS'"}}, true},
		{"pin again", []pgproto3.FrontendMessage{&pgproto3.Parse{Query: pin}}, false},
		{"marker elsewhere", []pgproto3.FrontendMessage{&pgproto3.Query{String: "INSERT INTO patients (name) VALUES ('" + fuzzMarker + "')"}}, false},
		{"proof setting", []pgproto3.FrontendMessage{&pgproto3.Query{String: "SET pgcloak.tenant_proof = 'v1:0:00'"}}, true},
		{"names in a comment", []pgproto3.FrontendMessage{&pgproto3.Query{String: "SELECT 1 -- SET app.tenant_id, pgcloak.tenant_proof"}}, false},
		{"own refusal", []pgproto3.FrontendMessage{&pgproto3.Query{String: "SELECT 1;DO $pgcloak$BEGIN RAISE EXCEPTION USING ERRCODE = '42501', MESSAGE = 'pgcloak: statement refused', DETAIL = 'pgcloak refusal 3'; END$pgcloak$"}}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			vs := upstreamViolations(schema, tc.msgs, map[string]bool{pin: true})
			if got := len(vs) > 0; got != tc.bad {
				t.Errorf("violation: got %v (%q), want %v", got, vs, tc.bad)
			}
		})
	}
}

func (s *syncBuffer) reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.b.Reset()
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
