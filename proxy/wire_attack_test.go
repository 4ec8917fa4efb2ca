package proxy

// Adversarial review of the wire and data paths (fourth review,
// 2026-12-07): COPY line ends, skipped unnamed statements, binary json.

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/pgcloak/pgcloak/config"
)

// TestWireAttackCopyHeaderBareCR: PostgreSQL's COPY ends lines at a bare \r
// when the first line ends so (EOL_CR); pgcloak cut rows at \n only and
// forwarded the HEADER line raw, so a header line that carried \r smuggled
// data rows past the seal. A bare \r outside a quoted field is now refused.
func TestWireAttackCopyHeaderBareCR(t *testing.T) {
	for _, c := range []struct{ name, opts, data string }{
		{"csv", "format csv, header", "id,ssn\r7,111-22-3333,\r"},
		{"text", "format text, header", "id\tssn\r8\t444-55-6666\t\\N\r"},
	} {
		t.Run(c.name, func(t *testing.T) {
			env := startVisits(t)
			ctx := ctxT(t)
			conn := connect(t, env.proxy.url(acmeRole, rolePassword, env.db))
			_, err := conn.PgConn().CopyFrom(ctx, strings.NewReader(c.data), `copy visits (id, ssn) from stdin with (`+c.opts+`)`)
			t.Logf("copy err: %v", err)
			var n int
			var raw []byte
			fatalIf(t, env.pool.QueryRow(ctx, `select count(*) from visits`).Scan(&n), "count")
			if n > 0 {
				fatalIf(t, env.pool.QueryRow(ctx, `select ssn from visits limit 1`).Scan(&raw), "raw")
				t.Errorf("%d row(s) stored; ssn as stored: %q", n, raw)
			}
		})
	}
}

// TestWireAttackCopyHeaderBareCRWithCheck: with a format CHECK on ssn the
// smuggled row was refused by PostgreSQL, but its plaintext reached
// PostgreSQL (and its error DETAIL, hence its log); it must not.
func TestWireAttackCopyHeaderBareCRWithCheck(t *testing.T) {
	env := startVisits(t)
	ctx := ctxT(t)
	fatalIf(t, env.pg.Exec(ctx, env.db, `alter table visits add constraint ssn_fmt check (ssn is null or (length(ssn) >= 33 and get_byte(ssn, 0) = 1))`), "check")
	conn := connect(t, env.proxy.url(acmeRole, rolePassword, env.db))
	_, err := conn.PgConn().CopyFrom(ctx, strings.NewReader("id,ssn\r7,111-22-3333,\r"), `copy visits (id, ssn) from stdin with (format csv, header)`)
	t.Logf("copy err: %v / detail %q", err, pgDetail(err))
	if strings.Contains(pgDetail(err), `\x3131312d32322d33333333`) {
		t.Errorf("the plaintext reached PostgreSQL: %q", pgDetail(err))
	}
}

// noPlainSSN fails the test when a stored visits.ssn holds plain, as
// written by a client.
func noPlainSSN(t *testing.T, env *encryptedEnv, plain string) {
	t.Helper()
	rows, err := env.pool.Query(ctxT(t), `select id, ssn from visits`)
	fatalIf(t, err, "q")
	for rows.Next() {
		var id int
		var raw []byte
		fatalIf(t, rows.Scan(&id, &raw), "scan")
		if strings.Contains(string(raw), plain) {
			t.Errorf("row %d stored plaintext %q", id, raw)
		}
	}
}

func pgDetail(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Detail
	}
	return ""
}

// TestWireAttackBindToSQLPrepared: a protocol Bind naming a statement that SQL
// PREPARE defined must not pass plaintext for a declared column (the
// PREPARE is refused).
func TestWireAttackBindToSQLPrepared(t *testing.T) {
	env := startVisits(t)
	conn := connect(t, env.proxy.url(acmeRole, rolePassword, env.db))
	pc := conn.PgConn()
	for _, sql := range []string{
		`prepare s1 (int, text) as insert into visits (id, ssn) values ($1, $2)`,
		`prepare s2 as insert into visits (id, ssn) values ($1, $2)`,
		`prepare s3 (int, bytea) as insert into visits (id, ssn) values ($1, $2)`,
	} {
		r := pipeline(t, pc, &pgproto3.Query{String: sql})
		t.Logf("%s -> %v", sql, r.errors)
	}
	for i, name := range []string{"s1", "s2", "s3"} {
		r := pipeline(t, pc,
			&pgproto3.Bind{PreparedStatement: name, Parameters: [][]byte{[]byte(fmt.Sprint(10 + i)), []byte("999-88-7777")}},
			&pgproto3.Execute{}, &pgproto3.Sync{})
		t.Logf("bind %s -> %v", name, r.errors)
	}
	noPlainSSN(t, env, "999-88")
}

// TestWireAttackSkippedUnnamedParse: a plain Parse of the unnamed statement
// that PostgreSQL skips (an error earlier in the batch) made pgcloak forget
// the rewritten unnamed statement PostgreSQL still had; the next Bind of ""
// then passed the client's values, untransformed, to the rewritten
// statement that expects ciphertext. Rewritten unnamed statements now live
// upstream under a reserved name.
func TestWireAttackSkippedUnnamedParse(t *testing.T) {
	env := startVisits(t)
	ctx := ctxT(t)
	conn := connect(t, env.proxy.url(acmeRole, rolePassword, env.db))
	pc := conn.PgConn()
	r := pipeline(t, pc,
		&pgproto3.Parse{Query: `insert into visits (id, amount, ssn) values ($1, $2, $3)`},
		&pgproto3.Sync{})
	t.Logf("round 1: %v", r.errors)
	r = pipeline(t, pc,
		&pgproto3.Bind{PreparedStatement: "nope"},
		&pgproto3.Parse{Query: `select $1::text, $2::text, $3::text`},
		&pgproto3.Sync{})
	t.Logf("round 2: %v", r.errors)
	r = pipeline(t, pc,
		&pgproto3.Bind{Parameters: [][]byte{[]byte("11"), []byte("12345.67"), []byte("999-88-7777"), nil}},
		&pgproto3.Execute{}, &pgproto3.Sync{})
	t.Logf("round 3: %v rows %v", r.errors, r.rows)
	rows, err := env.pool.Query(ctx, `select id, amount, ssn from visits`)
	fatalIf(t, err, "q")
	for rows.Next() {
		var id int
		var amount, ssn []byte
		fatalIf(t, rows.Scan(&id, &amount, &ssn), "scan")
		t.Logf("stored: id %d amount %q ssn %q", id, amount, ssn)
		if string(amount) == "12345.67" || string(ssn) == "999-88-7777" {
			t.Errorf("plaintext stored in a declared column: amount %q ssn %q", amount, ssn)
		}
	}
}

// TestWireAttackSkippedUnnamedClose: the same with a Close of the unnamed
// statement that PostgreSQL skips; and the same with an unnamed statement
// that searches (a Bind with the client's own parameter count).
func TestWireAttackSkippedUnnamedClose(t *testing.T) {
	env := startVisits(t)
	ctx := ctxT(t)
	conn := connect(t, env.proxy.url(acmeRole, rolePassword, env.db))
	pc := conn.PgConn()
	r := pipeline(t, pc, &pgproto3.Parse{Query: `insert into visits (id, amount) values ($1, $2)`}, &pgproto3.Sync{})
	t.Logf("round 1: %v", r.errors)
	r = pipeline(t, pc, &pgproto3.Bind{PreparedStatement: "nope"}, &pgproto3.Close{ObjectType: 'S'}, &pgproto3.Sync{})
	t.Logf("round 2: %v", r.errors)
	r = pipeline(t, pc,
		&pgproto3.Bind{Parameters: [][]byte{[]byte("12"), []byte("777.01")}},
		&pgproto3.Execute{}, &pgproto3.Sync{})
	t.Logf("round 3 (client's own parameter count): %v", r.errors)
	var amount []byte
	if err := env.pool.QueryRow(ctx, `select amount from visits where id = 12`).Scan(&amount); err == nil {
		t.Errorf("plaintext stored in visits.amount: %q", amount)
	}
}

// TestWireAttackJSONBinaryRoundTrip: a json/jsonb value written in binary
// (a Bind in binary format, pgx's CopyFrom) read back altered (decoded into
// Go values and encoded again); it must read back as written.
func TestWireAttackJSONBinaryRoundTrip(t *testing.T) {
	env := startEncrypted(t, func(c *Config) {
		c.Encrypt.Tables = append(c.Encrypt.Tables, config.Table{Schema: "public", Name: "docs", Columns: []config.Column{
			{Name: "j", Type: "json", Search: config.SearchNone, Normalize: config.NormalizeNone},
			{Name: "jb", Type: "jsonb", Search: config.SearchNone, Normalize: config.NormalizeNone},
		}})
	})
	ctx := ctxT(t)
	fatalIf(t, env.pg.Exec(ctx, env.db, `create table docs (id int primary key, tenant_id text not null default pgcloak.current_tenant(), j bytea, jb bytea);
		grant select, insert on docs to acme_app`), "ddl")
	fatalIf(t, env.proxy.srv.RefreshCatalog(ctx), "refresh")
	conn := connect(t, env.proxy.url(acmeRole, rolePassword, env.db))
	pc := conn.PgConn()
	j := `{"n": 12345678901234567890, "n": 1}`
	jb := `{"x": 0.12345678901234567890123}`
	r := pipeline(t, pc,
		&pgproto3.Parse{Query: `insert into docs (id, j, jb) values ($1, $2, $3)`},
		&pgproto3.Bind{ParameterFormatCodes: []int16{0, 1, 1}, Parameters: [][]byte{[]byte("1"), []byte(j), append([]byte{1}, jb...)}},
		&pgproto3.Execute{}, &pgproto3.Sync{})
	t.Logf("binary bind: %v", r.errors)
	_, err := conn.CopyFrom(ctx, pgx.Identifier{"docs"}, []string{"id", "j", "jb"}, pgx.CopyFromRows([][]any{{2, j, jb}}))
	t.Logf("copy from: %v", err)
	r = pipeline(t, pc, &pgproto3.Query{String: `select id, j, jb from docs order by id`})
	for _, row := range r.rows {
		t.Logf("read back: %q", row)
		if row[1] != j || !strings.Contains(row[2], "0.12345678901234567890123") {
			t.Errorf("row %s wrote j=%s jb=%s, reads %q / %q", row[0], j, jb, row[1], row[2])
		}
	}
}

// TestWireAttackCopyInMultiStatementQuery: COPY FROM STDIN as one statement
// of a multi-statement Query.
func TestWireAttackCopyInMultiStatementQuery(t *testing.T) {
	env := startVisits(t)
	ctx := ctxT(t)
	conn := connect(t, env.proxy.url(acmeRole, rolePassword, env.db))
	pc := conn.PgConn()
	for i, q := range []string{
		`select 1; copy visits (id, ssn) from stdin with (format csv)`,
		`copy visits (id, ssn) from stdin with (format csv); select 1`,
		`copy visits (id, ssn) from stdin with (format csv); copy visits (id, ssn) from stdin with (format csv)`,
		`begin; copy visits (id, ssn) from stdin with (format csv); commit`,
	} {
		fe := pc.Frontend()
		fe.Send(&pgproto3.Query{String: q})
		fe.Send(&pgproto3.CopyData{Data: []byte(fmt.Sprintf("%d,111-22-3333\n", 100+i))})
		fe.Send(&pgproto3.CopyDone{})
		fe.Send(&pgproto3.CopyData{Data: []byte(fmt.Sprintf("%d,111-22-4444\n", 200+i))})
		fe.Send(&pgproto3.CopyDone{})
		fatalIf(t, fe.Flush(), "flush")
		var msgs []string
		for {
			msg, err := pc.ReceiveMessage(ctx)
			fatalIf(t, err, "receive")
			switch m := msg.(type) {
			case *pgproto3.ErrorResponse:
				msgs = append(msgs, "E:"+m.Code+" "+m.Message)
			case *pgproto3.CommandComplete:
				msgs = append(msgs, "C:"+string(m.CommandTag))
			}
			if _, ok := msg.(*pgproto3.ReadyForQuery); ok {
				break
			}
		}
		t.Logf("%s -> %v", q, msgs)
	}
	noPlainSSN(t, env, "111-22")
}

// TestWireAttackQueryDuringCopyIn: a Query sent while PostgreSQL is in COPY
// FROM STDIN is consumed by PostgreSQL as the message that aborts the COPY
// (no ReadyForQuery of its own); the proxy still waits for one.
func TestWireAttackQueryDuringCopyIn(t *testing.T) {
	env := startVisits(t)
	ctx := ctxT(t)
	conn := connect(t, env.proxy.url(acmeRole, rolePassword, env.db))
	_, err := conn.Exec(ctx, `insert into visits (id, ssn, amount) values (1, '123-45-6789', 5)`)
	fatalIf(t, err, "seed")
	pc := conn.PgConn()
	fe := pc.Frontend()
	fe.Send(&pgproto3.Query{String: `copy visits (id, ssn) from stdin with (format csv)`})
	fe.Send(&pgproto3.Query{String: `select 'x'`})
	fatalIf(t, fe.Flush(), "flush")
	var got []string
	for n := 0; n < 1; {
		msg, err := pc.ReceiveMessage(ctx)
		if err != nil {
			t.Logf("held: PostgreSQL ends the session: %v", err)
			return
		}
		switch m := msg.(type) {
		case *pgproto3.ErrorResponse:
			got = append(got, "E:"+m.Message)
		case *pgproto3.CopyInResponse:
			got = append(got, "CopyIn")
		case *pgproto3.ReadyForQuery:
			n++
		}
	}
	t.Logf("after copy + query: %v", got)
	done := make(chan struct{})
	go func() {
		defer close(done)
		var ssn string
		var amount string
		err := conn.QueryRow(ctx, `select ssn, amount::text from visits where id = 1`).Scan(&ssn, &amount)
		t.Logf("extended read after: ssn %q amount %q err %v", ssn, amount, err)
		rows, err := conn.Query(ctx, `select id, ssn from visits where ssn = $1`, "123-45-6789")
		if err == nil {
			for rows.Next() {
				v, _ := rows.Values()
				t.Logf("search row %v", v)
			}
			err = rows.Err()
		}
		t.Logf("search err %v", err)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Errorf("session hung after a Query during COPY")
	}
}

func derefAll(ss []*string) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		if s == nil {
			out[i] = "<NULL>"
		} else {
			out[i] = fmt.Sprintf("%q", *s)
		}
	}
	return out
}
