package proxy

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// Sixth review of 2026-12-08 (e21fc9f: no token switch in a transaction
// that may hold rows read under its tenant), kept as tests. Each fails when
// a session that pgcloak holds to be globex (current_tenant() globex)
// reads acme's rows, or when a session hangs. What a client holding both
// tokens can carry across a switch by other means (settings, advisory
// locks, large objects) is documented in docs/tenant-tokens.md.

// s6Steps runs each statement as its own simple Query, stopping at the
// first error other than at the switch; it returns the results of the
// last statement and the error of the switch (the step with index sw).
func s6Steps(t *testing.T, conn *pgconn.PgConn, sw int, steps ...string) (last []*pgconn.Result, swErr error, ok bool) {
	t.Helper()
	for i, q := range steps {
		res, err := atkExec(t, conn, q)
		if i == sw {
			swErr = err
			t.Logf("switch: %v", err)
			if err != nil {
				return nil, err, false
			}
			continue
		}
		if err != nil {
			t.Logf("step %d %.90q: %v", i, q, err)
			return nil, swErr, false
		}
		last = res
	}
	return last, swErr, true
}

// s6AcmeUnderGlobex fails the test when conn is globex (for PostgreSQL)
// and text holds acme's names.
func s6AcmeUnderGlobex(t *testing.T, conn *pgconn.PgConn, text, how string) {
	t.Helper()
	res, err := atkExec(t, conn, `select coalesce(pgcloak.current_tenant(), '<null>')`)
	if err != nil {
		t.Logf("%s: current_tenant: %v", how, err)
		return
	}
	ct := string(res[0].Rows[0][0])
	t.Logf("%s: current_tenant %s, read %q", how, ct, text)
	if ct != "acme" && strings.Contains(text, "seed-acme") {
		t.Errorf("%s: a session of tenant %s read acme's rows: %q", how, ct, text)
	}
}

func s6First(res []*pgconn.Result) string {
	var b strings.Builder
	for _, r := range res {
		for _, row := range r.Rows {
			for _, v := range row {
				b.Write(v)
				b.WriteByte(' ')
			}
		}
	}
	return b.String()
}

// The switch pipelined behind a DECLARE in a Query of its own, in the same
// write (the token Bind reaches the client goroutine before the upstream
// goroutine has seen DECLARE CURSOR).
func TestSwitchReview6PipelinedDeclareThenBind(t *testing.T) {
	env := startTokenEnv(t)
	swSeed(t, env)
	conn := atkRaw(t, env)
	acme, globex := mintToken(t, "acme", time.Hour), mintToken(t, "globex", time.Hour)
	_, err := atkExec(t, conn, `BEGIN; SET LOCAL pgcloak.tenant_token = '`+acme+`'`)
	fatalIf(t, err, "begin")
	r := pipeline(t, conn,
		&pgproto3.Query{String: `DECLARE zc CURSOR FOR SELECT name FROM patients ORDER BY name`},
		&pgproto3.Parse{Query: `SELECT pg_catalog.set_config('pgcloak.tenant_token', $1, true)`},
		&pgproto3.Bind{Parameters: [][]byte{[]byte(globex)}},
		&pgproto3.Execute{},
		&pgproto3.Sync{},
		&pgproto3.Query{String: `FETCH ALL FROM zc`})
	t.Logf("rows %v errors %v", r.rows, r.errors)
	var text string
	for _, row := range r.rows {
		text += strings.Join(row, " ") + " "
	}
	s6AcmeUnderGlobex(t, conn, text, "pipelined DECLARE then token Bind")
	atkExec(t, conn, `ROLLBACK`)
}

// An Execute with a row limit of a portal whose statement is an SQL
// EXECUTE of a statement PREPAREd in SQL, in the switch's round.
func TestSwitchReview6SQLExecutePortalSameRound(t *testing.T) {
	env := startTokenEnv(t)
	swSeed(t, env)
	conn := atkRaw(t, env)
	acme, globex := mintToken(t, "acme", time.Hour), mintToken(t, "globex", time.Hour)
	_, err := atkExec(t, conn, `PREPARE zq AS SELECT name FROM patients ORDER BY name`)
	fatalIf(t, err, "prepare")
	_, err = atkExec(t, conn, `BEGIN; SET LOCAL pgcloak.tenant_token = '`+acme+`'`)
	fatalIf(t, err, "begin")
	r := pipeline(t, conn,
		&pgproto3.Parse{Name: "zx", Query: `EXECUTE zq`},
		&pgproto3.Bind{DestinationPortal: "zp", PreparedStatement: "zx"},
		&pgproto3.Execute{Portal: "zp", MaxRows: 1},
		&pgproto3.Parse{Query: `SELECT pg_catalog.set_config('pgcloak.tenant_token', $1, true)`},
		&pgproto3.Bind{Parameters: [][]byte{[]byte(globex)}},
		&pgproto3.Execute{},
		&pgproto3.Execute{Portal: "zp"},
		&pgproto3.Sync{})
	t.Logf("rows %v errors %v", r.rows, r.errors)
	if len(r.rows) > 1 {
		var text string
		for _, row := range r.rows[1:] {
			text += strings.Join(row, " ") + " "
		}
		s6AcmeUnderGlobex(t, conn, text, "SQL EXECUTE portal")
	}
	atkExec(t, conn, `ROLLBACK`)
}

// s6ReadUntil reads until n ReadyForQuery or the deadline; it reports
// whether it timed out.
func s6ReadUntil(conn *pgconn.PgConn, n int, d time.Duration) (errs []string, timedOut bool) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	for got := 0; got < n; {
		msg, err := conn.ReceiveMessage(ctx)
		if err != nil {
			return errs, true
		}
		switch m := msg.(type) {
		case *pgproto3.ErrorResponse:
			errs = append(errs, m.Code+" "+m.Message)
		case *pgproto3.ReadyForQuery:
			got++
		}
	}
	return errs, false
}

// A large-object FunctionCall, or a simple Query, inside an extended round
// after an error: PostgreSQL skips it (no ReadyForQuery for it), and the
// next token statement waited in switchAllowed for an answer that never
// came. With a plain statement first, the session goes on as well.
func TestSwitchReview6SkippedMessageThenToken(t *testing.T) {
	lo := &pgproto3.FunctionCall{Function: 957, ArgFormatCodes: []uint16{1}, Arguments: [][]byte{{0, 0, 0x2, 0}}, ResultFormatCode: 1} // lo_creat(mode)
	for _, tc := range []struct {
		name    string
		skipped pgproto3.FrontendMessage
		plain   bool
	}{
		{"FunctionCall", lo, true},
		{"Query", &pgproto3.Query{String: `SELECT 1`}, true},
		{"nothing", nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := startTokenEnv(t)
			atkSeed(t, env)
			conn := atkRaw(t, env)
			globex := mintToken(t, "globex", time.Hour)
			round := func(what string, msgs ...pgproto3.FrontendMessage) bool {
				fe := conn.Frontend()
				for _, m := range msgs {
					fe.Send(m)
				}
				fatalIf(t, fe.Flush(), "flush")
				errs, to := s6ReadUntil(conn, 1, 10*time.Second)
				t.Logf("%s: %v timed out %v", what, errs, to)
				if to && what != "errored round" {
					t.Errorf("the session hangs at %s after a %s in an errored extended round", what, tc.name)
				}
				return !to
			}
			if tc.plain {
				// Since review 13 a Query or FunctionCall inside an
				// unsynced round ends a token session (08P01) before
				// PostgreSQL could skip it: nothing is left to wait for.
				fe := conn.Frontend()
				for _, m := range []pgproto3.FrontendMessage{&pgproto3.Parse{Query: `SELECT 1/0 FROM nosuchtable_zz`}, tc.skipped, &pgproto3.Sync{}} {
					fe.Send(m)
				}
				fatalIf(t, fe.Flush(), "flush")
				conn.Conn().SetReadDeadline(time.Now().Add(10 * time.Second))
				var errs []string
				for {
					msg, err := fe.Receive()
					if err != nil {
						break
					}
					if e, ok := msg.(*pgproto3.ErrorResponse); ok {
						errs = append(errs, e.Severity+" "+e.Code)
					}
				}
				if len(errs) == 0 || errs[len(errs)-1] != "FATAL 08P01" {
					t.Errorf("a %s inside an unsynced round: %v, want the session ended with 08P01", tc.name, errs)
				}
				return
			}
			round("errored round", &pgproto3.Parse{Query: `SELECT 1/0 FROM nosuchtable_zz`}, &pgproto3.Sync{})
			token := `SET pgcloak.tenant_token = '` + globex + `'`
			round("a token statement", &pgproto3.Query{String: token})
		})
	}
}

// Reading a temporary table made in the open transaction: the catalog's
// own connection cannot see its OID, which once ended the session
// (FATAL XX000); such a table is not a declared one.
func TestSwitchReview6TempTableInTransaction(t *testing.T) {
	env := startTokenEnv(t)
	atkSeed(t, env)
	conn := atkRaw(t, env)
	res, err := atkExec(t, conn, `BEGIN; SET LOCAL pgcloak.tenant_token = '`+mintToken(t, "acme", time.Hour)+`'`)
	fatalIf(t, err, "begin")
	for _, q := range []string{`CREATE TEMP TABLE zk (n text) ON COMMIT DROP`, `INSERT INTO zk SELECT name FROM patients`} {
		_, err := atkExec(t, conn, q)
		fatalIf(t, err, "%s", q)
	}
	res, err = atkExec(t, conn, `SELECT n FROM zk`)
	if err != nil || len(res[0].Rows) != 1 || string(res[0].Rows[0][0]) != "seed-acme" {
		t.Errorf("reading a temporary table made in the transaction: %v, want seed-acme", err)
	}
	_, err = atkExec(t, conn, `COMMIT`)
	fatalIf(t, err, "commit: the session must live on")
}
