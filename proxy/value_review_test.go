package proxy

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/pgcloak/pgcloak/rewrite"
)

// vrNumeric builds numeric_send bytes.
func vrNumeric(weight int16, sign, dscale uint16, digits ...uint16) []byte {
	b := make([]byte, 8+2*len(digits))
	binary.BigEndian.PutUint16(b, uint16(len(digits)))
	binary.BigEndian.PutUint16(b[2:], uint16(weight))
	binary.BigEndian.PutUint16(b[4:], sign)
	binary.BigEndian.PutUint16(b[6:], dscale)
	for k, d := range digits {
		binary.BigEndian.PutUint16(b[8+2*k:], d)
	}
	return b
}

// TestValueReviewNumericBinaryRecv: crafted binary numerics (not normalised the
// way numeric_send writes them) read by numericBinaryText and by
// PostgreSQL's numeric_recv + numeric_out.
func TestValueReviewNumericBinaryRecv(t *testing.T) {
	conn := arrayinPG(t)
	cases := map[string][]byte{
		"leading zero digit [0,5] w1":  vrNumeric(1, 0, 0, 0, 5),
		"leading zeros [0,0,7] w2 ds2": vrNumeric(2, 0, 2, 0, 0, 7),
		"zero with weight 5":           vrNumeric(5, 0, 0, 0),
		"no digits weight 300":         vrNumeric(300, 0, 1),
		"negative leading zero [0,5]":  vrNumeric(1, 0x4000, 1, 0, 5),
		"NaN with invalid digit":       vrNumeric(0, 0xC000, 0, 0xFFFF),
		"Inf with dscale 5 and digits": vrNumeric(3, 0xD000, 5, 1, 2),
		"trailing zero digits ds0":     vrNumeric(0, 0, 0, 5, 0, 0),
		"fraction beyond dscale":       vrNumeric(-1, 0x4000, 2, 99, 9999),
		"weight -5 digits [1] ds 24":   vrNumeric(-5, 0, 24, 1),
		"weight -32768 ds 0":           vrNumeric(-32768, 0, 0, 1),
		"dscale 0x3FFF zero":           vrNumeric(0, 0, 0x3FFF),
		"weight 32767 one digit":       vrNumeric(32767, 0, 0, 1),
	}
	big := make([]uint16, 0x8000)
	cases["ndigits 0x8000 zeros"] = vrNumeric(0, 0, 0, big...)
	for name, bin := range cases {
		var want string
		var pgErr error
		rr := conn.PgConn().ExecParams(context.Background(), `SELECT $1::numeric::text`, [][]byte{bin}, []uint32{1700}, []int16{1}, nil).Read()
		pgErr = rr.Err
		if pgErr == nil {
			want = string(rr.Rows[0][0])
		}
		got, err := numericBinaryText(bin)
		short := func(s string) string {
			if len(s) > 40 {
				return fmt.Sprintf("%s...(%d bytes)", s[:40], len(s))
			}
			return s
		}
		switch {
		case pgErr != nil && err == nil:
			t.Errorf("%s: PostgreSQL refuses it (%v), pgcloak reads %q", name, pgErr, short(got))
		case pgErr == nil && err != nil:
			t.Logf("%s: PostgreSQL reads %q, pgcloak refuses (%v) [refusal only]", name, short(want), err)
		case pgErr == nil && got != want:
			t.Errorf("%s: PostgreSQL reads %q, pgcloak %q", name, short(want), short(got))
		default:
			t.Logf("%s: agree (%q / %v)", name, short(want), pgErr)
		}
	}
}

// TestValueReviewNumericParamIntoText: a binary numeric parameter the client
// declares numeric, bound for the text column ssn. PostgreSQL would store
// numeric_out's text (assignment cast); what does pgcloak store?
func TestValueReviewNumericParamIntoText(t *testing.T) {
	env := startVisits(t)
	conn, err := pgconn.Connect(ctxT(t), env.proxy.url(acmeRole, rolePassword, env.db))
	fatalIf(t, err, "connect")
	defer conn.Close(context.Background())
	rr := conn.ExecParams(ctxT(t), `INSERT INTO visits (id, ssn) VALUES (1, $1)`,
		[][]byte{vrNumeric(1, 0, 0, 0, 5)}, []uint32{1700}, []int16{1}, nil).Read()
	fatalIf(t, rr.Err, "insert a binary numeric into a text column")
	rr = conn.ExecParams(ctxT(t), `SELECT ssn FROM visits WHERE id = 1`, nil, nil, nil, nil).Read()
	fatalIf(t, rr.Err, "select")
	t.Logf("stored ssn: %q", rr.Rows)
	if len(rr.Rows) != 1 || string(rr.Rows[0][0]) != "5" {
		t.Errorf("a numeric parameter 5 (binary, digits [0,5] weight 1) stored into text ssn reads back %q; PostgreSQL's numeric_recv+numeric_out gives \"5\"", rr.Rows)
	}
	// And a search for it by the text PostgreSQL would have stored.
	res, err := conn.Exec(ctxT(t), `SELECT id FROM visits WHERE ssn = '5'`).ReadAll()
	if err != nil || len(res[0].Rows) != 1 {
		t.Errorf("ssn = '5' after storing numeric 5: %v %v, want the row", err, res)
	}
}

// TestValueReviewArrayTextMore: more array texts against PostgreSQL's array_in.
func TestValueReviewArrayTextMore(t *testing.T) {
	conn := arrayinPG(t)
	var ver string
	fatalIf(t, conn.QueryRow(context.Background(), `show server_version`).Scan(&ver), "version")
	t.Logf("PostgreSQL %s", ver)
	for _, in := range []string{
		`{{1},{{2}}}`, `{{{1}},{2}}`, `{{1,2},{3,4},{5,6}}`, `{{1,2},{3}}`, `{{a},{}}`, `{{},{a}}`,
		`{"a"  }`, `{ "" }`, `{\ }`, `{ \  a }`, `{NULL }`, `{ NULL}`, `{"NULL" }`, `{NU\LL}`, `{NULL\ }`,
		`{a,b}  `, "{a}\n", "  {a}", `{\\}`, `{a\"b}`, `{ab"}`, `{\{}`, `{}}`, `{{a}}}`, `{a}}`,
		`{{"a"},{b}}`, `{ {a} , {b} }`, `{{a,b},{c,d}} x`, `{{{{{{{a}}}}}}}`, `{{{{{{a}}}}}}`,
		"{\u00a0a}", "{a\t}", `{{""},{""}}`, `{é\é}`, "{\\\xc3\xa9}", `{"a",}`, `{,}`, `{ , }`,
		`{a b , c d}`, `{"a b" , "c"}`, `{{a} , {b}}`, `{{a}{b}}`, `{{a},,{b}}`, `{"\\"}`, `{"\a"}`,
		`{ { a } }`, `{{a,b}, {c,d}}`, `{ }`, `{{ }}`, ` {}x`, `{} `, `{"}`, `{"\"}`, `{NULLx}`, `{xNULL}`,
		`{NULL,"NULL",\NULL,nuLL}`, `{{NULL},{NULL}}`, `{{NULL,a},{b,NULL}}`,
	} {
		var pgElems []*string
		pgErr := conn.QueryRow(context.Background(), `SELECT coalesce(array_agg(u), '{}') FROM unnest($1::text[]) u`, in).Scan(&pgElems)
		got, err := arrayTextElements(in)
		switch {
		case pgErr != nil && err == nil:
			t.Errorf("%q: PostgreSQL refuses it (%v), pgcloak reads %v", in, pgErr, showElems(got))
		case pgErr == nil && err != nil:
			t.Logf("%q: PostgreSQL reads %s, pgcloak refuses it: %v [refusal only]", in, showPG(pgElems), err)
		case pgErr == nil:
			if want, have := showPG(pgElems), showElems(got); want != have {
				t.Errorf("%q: PostgreSQL reads %s, pgcloak %s", in, want, have)
			}
		}
	}
}

// TestValueReviewArrayNullsOff: with array_nulls off PostgreSQL reads
// {NULL} as the string "NULL", pgcloak as NULL: the setting may not be
// turned off where pgcloak sees it (SET, set_config, startup), and with it
// on both read a NULL element.
func TestValueReviewArrayNullsOff(t *testing.T) {
	env := startVisits(t)
	conn, err := pgconn.Connect(ctxT(t), env.proxy.url(acmeRole, rolePassword, env.db))
	fatalIf(t, err, "connect")
	defer conn.Close(context.Background())
	_, err = conn.Exec(ctxT(t), `INSERT INTO visits (id, ssn) VALUES (1, 'NULL')`).ReadAll()
	fatalIf(t, err, "insert")
	// pgcloak reads the arrays itself, as array_nulls on reads them: the
	// setting may not change where pgcloak can see it.
	for _, q := range []string{`SET array_nulls = off`, `SELECT set_config('array_nulls', 'off', false)`, `SET LOCAL Array_Nulls TO false`} {
		if _, err := conn.Exec(ctxT(t), q).ReadAll(); pgCode(err) != "42501" {
			t.Errorf("%s: %v, want 42501", q, err)
		}
	}
	for _, opts := range []string{"array_nulls=off", "options=-c%20array_nulls%3Doff"} {
		if c, err := pgconn.Connect(ctxT(t), env.proxy.url(acmeRole, rolePassword, env.db, opts)); err == nil {
			c.Close(ctxT(t))
			t.Errorf("startup %s accepted, want refused", opts)
		}
	}
	res, err := conn.Exec(ctxT(t), `SELECT id FROM visits WHERE ssn = ANY('{NULL}')`).ReadAll()
	t.Logf("literal: %v %v", err, res)
	if err != nil || len(res[0].Rows) != 0 {
		t.Errorf("ssn = ANY('{NULL}'): %d rows, %v; with array_nulls on, PostgreSQL reads a NULL element and finds nothing", len(res[0].Rows), err)
	}
	rr := conn.ExecParams(ctxT(t), `SELECT id FROM visits WHERE ssn = ANY($1)`, [][]byte{[]byte(`{NULL}`)}, []uint32{1009}, []int16{0}, nil).Read()
	t.Logf("param: %v %d rows", rr.Err, len(rr.Rows))
	if rr.Err != nil || len(rr.Rows) != 0 {
		t.Errorf("ssn = ANY($1 = '{NULL}'): %d rows, %v; PostgreSQL finds nothing", len(rr.Rows), rr.Err)
	}
}

// TestValueReviewPortalSealedLiterals: a statement whose only encrypted values
// are literals (sealed or indexed at Parse, no keyed parameters) goes to
// PostgreSQL as a plain statement; its portal, bound under acme, executed
// after a switch to globex.
func TestValueReviewPortalSealedLiterals(t *testing.T) {
	env := startTokenEnv(t)
	atkSeed(t, env)
	conn, err := pgconn.Connect(ctxT(t), env.proxy.url(poolRole, rolePassword, env.db))
	fatalIf(t, err, "connect")
	defer conn.Close(ctxT(t))
	tokA, tokB := mintToken(t, "acme", time.Hour), mintToken(t, "globex", time.Hour)
	r := pipeline(t, conn,
		&pgproto3.Query{String: `BEGIN; SET LOCAL pgcloak.tenant_token = '` + tokA + `'`},
		&pgproto3.Parse{Name: "ins", Query: `INSERT INTO patients (name, ssn) VALUES ('zzlit', '555-55-5555')`},
		&pgproto3.Bind{DestinationPortal: "p", PreparedStatement: "ins"}, &pgproto3.Sync{},
		&pgproto3.Query{String: `SET LOCAL pgcloak.tenant_token = '` + tokB + `'`},
		&pgproto3.Execute{Portal: "p"}, &pgproto3.Sync{},
		&pgproto3.Query{String: `COMMIT`})
	t.Logf("insert literal bound under acme, executed under globex: errors %v", r.errors)
	if len(r.errors) == 0 {
		var tenant string
		fatalIf(t, env.pool.QueryRow(ctxT(t), `select tenant_id from patients where name = 'zzlit'`).Scan(&tenant), "stored")
		t.Errorf("Execute of a portal whose literal was sealed for acme ran after the switch to globex: row stamped %q", tenant)
		for _, tok := range []string{tokA, tokB} {
			c, err := pgconn.Connect(ctxT(t), env.proxy.url(poolRole, rolePassword, env.db))
			fatalIf(t, err, "connect")
			res, err := c.Exec(ctxT(t), `SET pgcloak.tenant_token = '`+tok+`'; SELECT name, ssn FROM patients WHERE name = 'zzlit'`).ReadAll()
			t.Logf("reading it back: %v %v", err, res)
			c.Close(ctxT(t))
		}
	}
	// Search by literal: globex's own ssn, indexed at Parse under acme.
	r = pipeline(t, conn,
		&pgproto3.Query{String: `BEGIN; SET LOCAL pgcloak.tenant_token = '` + tokA + `'`},
		&pgproto3.Parse{Name: "find", Query: `SELECT name FROM patients WHERE ssn = '987-65-4321'`},
		&pgproto3.Bind{DestinationPortal: "q", PreparedStatement: "find"}, &pgproto3.Sync{},
		&pgproto3.Query{String: `SET LOCAL pgcloak.tenant_token = '` + tokB + `'`},
		&pgproto3.Execute{Portal: "q"}, &pgproto3.Sync{}, &pgproto3.Query{String: `ROLLBACK`})
	t.Logf("search literal bound under acme, executed under globex: errors %v rows %v", r.errors, r.rows)
	if len(r.errors) == 0 && len(r.rows) == 0 {
		t.Errorf("search of globex's ssn bound under acme and executed under globex silently found nothing (want 0A000 or seed-globex)")
	}
}

// TestValueReviewPortalSwitchInPipeline: the switch through the extended
// protocol's set_config form, in the same pipeline without Sync.
func TestValueReviewPortalSwitchInPipeline(t *testing.T) {
	env := startTokenEnv(t)
	atkSeed(t, env)
	conn, err := pgconn.Connect(ctxT(t), env.proxy.url(poolRole, rolePassword, env.db))
	fatalIf(t, err, "connect")
	defer conn.Close(ctxT(t))
	tokA, tokB := mintToken(t, "acme", time.Hour), mintToken(t, "globex", time.Hour)
	setcfg := `SELECT set_config('pgcloak.tenant_token', $1, true)`
	r := pipeline(t, conn,
		&pgproto3.Query{String: `BEGIN`},
		&pgproto3.Parse{Name: "", Query: setcfg},
		&pgproto3.Bind{Parameters: [][]byte{[]byte(tokA)}}, &pgproto3.Execute{},
		&pgproto3.Parse{Name: "find", Query: `SELECT name FROM patients WHERE ssn = $1`},
		&pgproto3.Bind{DestinationPortal: "q", PreparedStatement: "find", Parameters: [][]byte{[]byte("987-65-4321")}},
		&pgproto3.Execute{Portal: "q", MaxRows: 1},
		&pgproto3.Parse{Name: "", Query: setcfg},
		&pgproto3.Bind{Parameters: [][]byte{[]byte(tokB)}}, &pgproto3.Execute{},
		&pgproto3.Execute{Portal: "q"},
		&pgproto3.Sync{}, &pgproto3.Query{String: `ROLLBACK`})
	t.Logf("errors %v rows %v", r.errors, r.rows)
	found := false
	for _, row := range r.rows {
		if len(row) == 1 && row[0] == "seed-globex" {
			found = true
		}
	}
	refused := false
	for _, e := range r.errors {
		if strings.HasPrefix(e, "0A000") {
			refused = true
		}
	}
	if !refused && !found {
		t.Errorf("portal indexed under acme executed after set_config switch to globex: neither refused nor found: %v %v", r.errors, r.rows)
	}
	// Legitimate: unnamed portal, data statement then token switch then a
	// fresh unnamed data statement, all in one pipeline.
	r = pipeline(t, conn,
		&pgproto3.Query{String: `BEGIN`},
		&pgproto3.Parse{Name: "", Query: setcfg},
		&pgproto3.Bind{Parameters: [][]byte{[]byte(tokA)}}, &pgproto3.Execute{},
		&pgproto3.Parse{Name: "", Query: `SELECT name FROM patients WHERE ssn = $1`},
		&pgproto3.Bind{Parameters: [][]byte{[]byte("123-45-6789")}}, &pgproto3.Execute{},
		&pgproto3.Parse{Name: "", Query: setcfg},
		&pgproto3.Bind{Parameters: [][]byte{[]byte(tokB)}}, &pgproto3.Execute{},
		&pgproto3.Parse{Name: "", Query: `SELECT name FROM patients WHERE ssn = $1`},
		&pgproto3.Bind{Parameters: [][]byte{[]byte("987-65-4321")}}, &pgproto3.Execute{},
		&pgproto3.Sync{}, &pgproto3.Query{String: `ROLLBACK`})
	t.Logf("legit: errors %v rows %v", r.errors, r.rows)
	if len(r.errors) != 0 {
		t.Errorf("legitimate pipeline refused: %v", r.errors)
	}
}

// TestValueReviewCopyBinaryFieldCount: a binary tuple announcing 32767
// fields (the table has 3) is refused at its field count, as PostgreSQL
// refuses it, before its fields come: sent in 4-byte CopyData messages it
// was read again from its start, its field slice allocated again, for each.
func TestValueReviewCopyBinaryFieldCount(t *testing.T) {
	p := &rewrite.CopyPlan{Format: rewrite.CopyBinary, Columns: make([]rewrite.ColumnRef, 3)}
	ci := &copyIn{plan: p, header: true}
	_, err := ci.feed(nil, []byte{0x7f, 0xff}, false)
	var ce *clientError
	if !errors.As(err, &ce) || ce.code != "22P04" {
		t.Errorf("a tuple of 32767 fields for 3 columns: %v, want 22P04 at once", err)
	}
}

// TestValueReviewArrayLiteralForms: = ANY with array literals in other string
// forms (E”, dollar quotes, U&”, a cast) find what PostgreSQL would find.
func TestValueReviewArrayLiteralForms(t *testing.T) {
	env := startVisits(t)
	conn, err := pgconn.Connect(ctxT(t), env.proxy.url(acmeRole, rolePassword, env.db))
	fatalIf(t, err, "connect")
	defer conn.Close(context.Background())
	_, err = conn.Exec(ctxT(t), `INSERT INTO visits (id, ssn) VALUES (1, 'a"b'), (2, E'a\\b'), (3, '1,1'), (4, 'x y'), (5, 'é')`).ReadAll()
	fatalIf(t, err, "insert")
	for q, want := range map[string]int{
		`SELECT id FROM visits WHERE ssn = ANY(E'{"a\\"b"}')`:            1,
		`SELECT id FROM visits WHERE ssn = ANY(E'{"a\\\\b"}')`:           1,
		`SELECT id FROM visits WHERE ssn = ANY($${1\,1, "x y"}$$)`:       2,
		`SELECT id FROM visits WHERE ssn = ANY('{1\,1}'::text[])`:        1,
		`SELECT id FROM visits WHERE ssn = ANY(U&'{"\00e9"}')`:           1,
		`SELECT id FROM visits WHERE ssn = ANY('{ x y ,"a\"b"}')`:        2,
		`SELECT id FROM visits WHERE ssn <> ALL('{ x y ,"a\"b", NULL}')`: 0,
		`SELECT id FROM visits WHERE ssn <> ALL('{ x y ,"a\"b"}')`:       3,
		`SELECT id FROM visits WHERE ssn = ANY('{{1\,1},{x y}}')`:        2,
		`SELECT id FROM visits WHERE ssn = ANY('{"1,1" , "x y"  }')`:     2,
	} {
		res, err := conn.Exec(ctxT(t), q).ReadAll()
		switch {
		case err != nil:
			t.Logf("%s: refused %v", q, err)
		case len(res[0].Rows) != want:
			t.Errorf("%s: %d rows, PostgreSQL finds %d", q, len(res[0].Rows), want)
		}
	}
}
