package proxy

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/pgcloak/pgcloak/testenv"
)

// arrayinPG connects to a real PostgreSQL, the reference for both readers.
func arrayinPG(t *testing.T) *pgx.Conn {
	t.Helper()
	pg := testenv.Shared(t)
	db := testenv.NewDatabase(t, pg)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	conn, err := pgx.Connect(ctx, pg.SuperuserURL(db))
	fatalIf(t, err, "connect")
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// TestArrayTextAsPostgreSQL: every array text is read as PostgreSQL's
// array_in reads it (elements, NULLs), or refused where PostgreSQL refuses it.
func TestArrayTextAsPostgreSQL(t *testing.T) {
	conn := arrayinPG(t)
	for _, in := range []string{
		`{}`, ` { } `, `{a,b}`, `{ a , b }`, `{"a","b"}`, `{ "a" , "b" }`, `{a\,b}`, `{a\ ,b}`, `{ a\  }`,
		`{nUlL}`, `{NULL,null}`, `{"NULL"}`, `{N\ULL}`, `{a b}`, `{"a\"b"}`, `{"a\\b"}`, `{"",a}`,
		`{{a,b},{c,d}}`, `{{a},{b,c}}`, `{a,{b}}`, `{{a},b}`, `{a,,b}`, `{,a}`, `{a,}`, `{"a"b}`, `{a"b"}`,
		`{a{b}`, `{a}x`, `{a`, `a`, `{"a}`, `{a\}`, `{ab\`, `{{}}`, `{{},{}}`, "{\ta\n,\vb\f}",
		`{é, ü }`, `{" x "}`, `{[1]}`, `{1-2}`, `{{{{{{{a}}}}}}}`,
	} {
		var pgElems []*string
		pgErr := conn.QueryRow(context.Background(), `SELECT coalesce(array_agg(u), '{}') FROM unnest($1::text[]) u`, in).Scan(&pgElems)
		got, err := arrayTextElements(in)
		switch {
		case pgErr != nil && err == nil:
			t.Errorf("%q: PostgreSQL refuses it (%v), pgcloak reads %v", in, pgErr, got)
		case pgErr == nil && err != nil:
			t.Errorf("%q: PostgreSQL reads %s, pgcloak refuses it: %v", in, showPG(pgElems), err)
		case pgErr == nil:
			if want, have := showPG(pgElems), showElems(got); want != have {
				t.Errorf("%q: PostgreSQL reads %s, pgcloak %s", in, want, have)
			}
		}
	}
	if _, err := arrayTextElements(`[1:2]={a,b}`); err != errArrayBounds {
		t.Errorf("explicit bounds: %v, want errArrayBounds", err)
	}
}

func showPG(elems []*string) string {
	var parts []string
	for _, e := range elems {
		if e == nil {
			parts = append(parts, "NULL")
		} else {
			parts = append(parts, fmt.Sprintf("%q", *e))
		}
	}
	return "[" + strings.Join(parts, " ") + "]"
}

func showElems(elems []arrayElem) string {
	var parts []string
	for _, e := range elems {
		if e.null {
			parts = append(parts, "NULL")
		} else {
			parts = append(parts, fmt.Sprintf("%q", e.text))
		}
	}
	return "[" + strings.Join(parts, " ") + "]"
}

// TestNumericBinaryAsPostgreSQL: numeric_send's bytes read back as the
// text numeric_out gives, display scale included.
func TestNumericBinaryAsPostgreSQL(t *testing.T) {
	conn := arrayinPG(t)
	for _, in := range []string{
		"0", "0.0", "0.000", "-0.00", "1", "-1", "10000", "12345678.9", "0.0001", "0.00012", "-0.000100",
		"99999999999999999999.99999999999999999999", "1e-20", "123e10", "NaN", "Infinity", "-Infinity",
		"3.14159", "-42.4200", "100000000", "0.1000",
	} {
		var bin []byte
		var want string
		fatalIf(t, conn.QueryRow(context.Background(), `SELECT numeric_send($1::numeric), $1::numeric::text`, in).Scan(&bin, &want), "%s", in)
		got, err := numericBinaryText(bin)
		if err != nil || got != want {
			t.Errorf("numeric %s: pgcloak reads %q (%v), PostgreSQL %q", in, got, err, want)
		}
	}
	for _, bad := range [][]byte{nil, {0, 1, 0, 0, 0, 0, 0, 0}, {0, 1, 0, 0, 0, 0, 0, 0, 0x27, 0x10}, {0, 0, 0, 0, 0x12, 0, 0, 0}} {
		if got, err := numericBinaryText(bad); err == nil {
			t.Errorf("malformed numeric %x read as %q", bad, got)
		}
	}
}

// TestArrayAndNumericThroughProxy: through pgcloak, an array parameter and
// an array literal for = ANY on a searchable column find the rows
// PostgreSQL would find for the same text, and a binary numeric keeps its
// display scale in an encrypted column.
func TestArrayAndNumericThroughProxy(t *testing.T) {
	env := startVisits(t)
	conn, err := pgconn.Connect(ctxT(t), env.proxy.url(acmeRole, rolePassword, env.db))
	fatalIf(t, err, "connect")
	defer conn.Close(context.Background())
	zeroPointZero := []byte{0, 0, 0, 0, 0, 0, 0, 1} // numeric_send('0.0')
	rr := conn.ExecParams(ctxT(t), `INSERT INTO visits (id, ssn, amount) VALUES ($1, $2, $3)`,
		[][]byte{[]byte("1"), []byte("111"), zeroPointZero}, []uint32{20, 25, 1700}, []int16{0, 0, 1}, nil).Read()
	fatalIf(t, rr.Err, "insert")
	rr = conn.ExecParams(ctxT(t), `SELECT amount FROM visits WHERE id = 1`, nil, nil, nil, nil).Read()
	fatalIf(t, rr.Err, "select amount")
	if len(rr.Rows) != 1 || string(rr.Rows[0][0]) != "0.0" {
		t.Errorf("a binary numeric 0.0 reads back as %q, want 0.0", rr.Rows)
	}
	for _, arr := range []string{`{ 111 , x }`, `{"111"}`, `{111,nUlL}`, `{{111},{x}}`, `{1\11}`} {
		rr = conn.ExecParams(ctxT(t), `SELECT id FROM visits WHERE ssn = ANY($1)`, [][]byte{[]byte(arr)}, []uint32{1009}, []int16{0}, nil).Read()
		if rr.Err != nil || len(rr.Rows) != 1 {
			t.Errorf("ssn = ANY($1) with %s: %d rows, %v; want the one row", arr, len(rr.Rows), rr.Err)
		}
		res, err := conn.Exec(ctxT(t), `SELECT id FROM visits WHERE ssn = ANY('`+arr+`')`).ReadAll()
		if err != nil || len(res[0].Rows) != 1 {
			t.Errorf("ssn = ANY('%s'): %v; want the one row", arr, err)
		}
	}
	for _, arr := range []string{`{111,,x}`, `{"111"x}`, `{111`} {
		rr = conn.ExecParams(ctxT(t), `SELECT id FROM visits WHERE ssn = ANY($1)`, [][]byte{[]byte(arr)}, []uint32{1009}, []int16{0}, nil).Read()
		if pgCode(rr.Err) != "22P02" {
			t.Errorf("ssn = ANY($1) with malformed %s: %v, want 22P02 as PostgreSQL", arr, rr.Err)
		}
	}
}
