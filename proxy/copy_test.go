package proxy

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/pgcloak/pgcloak/config"
)

// The visits table is declared but not under RLS: PostgreSQL itself
// refuses COPY FROM for a role that row-level security applies to.
const visitsDDL = `
create table visits (
	id int primary key,
	tenant_id text not null default pgcloak.current_tenant(),
	note text,
	ssn bytea, ssn_bidx bytea,
	seen date,
	visit_date bytea,
	amount bytea
);
grant select, insert, update, delete on visits to acme_app, globex_app, migrator;
`

func startVisits(t *testing.T) *encryptedEnv {
	t.Helper()
	env := startEncrypted(t, func(c *Config) {
		c.Encrypt.Tables = append(c.Encrypt.Tables, config.Table{Schema: "public", Name: "visits", Columns: []config.Column{
			{Name: "ssn", Type: "text", Search: config.SearchEquality, IndexColumn: "ssn_bidx", Normalize: config.NormalizeNone},
			{Name: "visit_date", Type: "date", Search: config.SearchNone, Normalize: config.NormalizeNone},
			{Name: "amount", Type: "numeric", Search: config.SearchNone, Normalize: config.NormalizeNone},
		}})
	})
	fatalIf(t, env.pg.Exec(ctxT(t), env.db, visitsDDL), "create visits")
	fatalIf(t, env.proxy.srv.RefreshCatalog(ctxT(t)), "refresh catalog")
	return env
}

func runPsql(t *testing.T, env *encryptedEnv, role, script string) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "script.sql")
	fatalIf(t, os.WriteFile(f, []byte(script), 0o644), "write script")
	cmd := exec.Command(env.pg.Bin("psql"), "-X", "-v", "ON_ERROR_STOP=1", "-At", "-f", f, env.proxy.url(role, rolePassword, env.db))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("psql: %v\n%s", err, out)
	}
	return string(out)
}

// TestCopyCSVAndTextThroughPsql: \copy in and out, CSV with a header,
// quoting, embedded newlines and NULL markers, and text format with
// escapes; what PostgreSQL stores is ciphertext, searchable by the index.
func TestCopyCSVAndTextThroughPsql(t *testing.T) {
	env := startVisits(t)
	dir := t.TempDir()
	csvIn := filepath.Join(dir, "in.csv")
	var in strings.Builder
	in.WriteString("id,note,ssn,visit_date,amount\n")
	for i := range 2000 {
		fmt.Fprintf(&in, "%d,\"note, %d\",\"ssn \"\"%d\"\"\n line2\",%s,%d.50\n", i, i, i, time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC).AddDate(0, 0, i).Format("2006-01-02"), i)
	}
	in.WriteString("2000,null ssn,NULL,NULL,NULL\n")
	in.WriteString("2001,empty ssn,\"\",2024-02-29,-0.001\n")
	fatalIf(t, os.WriteFile(csvIn, []byte(in.String()), 0o644), "write csv")

	textIn := filepath.Join(dir, "in.txt")
	fatalIf(t, os.WriteFile(textIn, []byte("3000\ttab\\there\ta\\\\b\\tc\\nd\t1999-12-31\t1e3\n3001\t\\N\t\\N\t\\N\t\\N\n"), 0o644), "write text")

	csvOut := filepath.Join(dir, "out.csv")
	textOut := filepath.Join(dir, "out.txt")
	out := runPsql(t, env, acmeRole, fmt.Sprintf(`
\copy visits (id, note, ssn, visit_date, amount) from '%s' with (format csv, header, null 'NULL')
\copy visits (id, note, ssn, visit_date, amount) from '%s'
select count(*) from visits where ssn = E'ssn "1234"\n line2';
select count(*) from visits where ssn is null;
\copy (select id, ssn, visit_date, amount from visits where id in (7, 2000, 2001) order by id) to '%s' with (format csv, header)
\copy (select id, note, ssn, visit_date, amount from visits where id >= 3000 order by id) to '%s'
`, csvIn, textIn, csvOut, textOut))
	for _, want := range []string{"COPY 2002", "COPY 2", "1\n", "2\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("psql output lacks %q:\n%s", want, out)
		}
	}
	got, err := os.ReadFile(csvOut)
	fatalIf(t, err, "read csv out")
	mustEqual(t, "CSV out", string(got), "id,ssn,visit_date,amount\n7,\"ssn \"\"7\"\"\n line2\",2020-01-08,7.50\n2000,,,\n2001,\"\",2024-02-29,-0.001\n")
	got, err = os.ReadFile(textOut)
	fatalIf(t, err, "read text out")
	mustEqual(t, "text out", string(got), "3000\ttab\\there\ta\\\\b\\tc\\nd\t1999-12-31\t1000\n3001\t\\N\t\\N\t\\N\t\\N\n")

	// PostgreSQL holds only ciphertext.
	var plain int
	fatalIf(t, env.pool.QueryRow(ctxT(t), `select count(*) from visits where position('line2'::bytea in ssn) > 0 or position('2020-'::bytea in visit_date) > 0`).Scan(&plain), "scan storage")
	mustEqual(t, "plaintext rows in storage", plain, 0)

	// COPY TO of the whole table shows plaintext for the declared
	// columns and leaves the index column out.
	out = runPsql(t, env, acmeRole, `copy visits to stdout with (format csv);`)
	if !strings.Contains(out, "2001,acme,empty ssn,\"\",,2024-02-29,-0.001\n") || strings.Contains(out, `\x`) {
		t.Errorf("COPY visits TO STDOUT:\n%.500s", out)
	}
}

// TestCopyMalformedRowsStoreNothing: a row PostgreSQL would reject gets its
// error and context, and the whole COPY is rolled back.
func TestCopyMalformedRowsStoreNothing(t *testing.T) {
	env := startVisits(t)
	ctx := ctxT(t)
	conn := connect(t, env.proxy.url(acmeRole, rolePassword, env.db))
	cases := []struct {
		name, data, code, msg, where string
	}{
		{"missing column", "1,a,111,2020-01-01,1\n2,b,222\n", "22P04", `missing data for column "visit_date"`, "COPY visits, line 2"},
		{"extra column", "1,a,111,2020-01-01,1,9\n", "22P04", "extra data after last expected column", "COPY visits, line 1"},
		{"bad date", "1,a,111,2020-01-01,1\n2,b,222,2020-13-01,1\n", "22008", "", "COPY visits, line 2, column visit_date"},
		{"bad numeric", "1,a,111,2020-01-01,abc\n", "22P02", "", "COPY visits, line 1, column amount"},
		{"plain column error from PostgreSQL", "x,a,111,2020-01-01,1\n", "22P02", "", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := conn.PgConn().CopyFrom(ctx, strings.NewReader(c.data), `copy visits (id, note, ssn, visit_date, amount) from stdin with (format csv)`)
			mustEqual(t, "SQLSTATE", pgCode(err), c.code)
			if c.msg != "" && !strings.Contains(pgMessage(err), c.msg) {
				t.Errorf("message %q lacks %q", pgMessage(err), c.msg)
			}
			if c.where != "" {
				mustEqual(t, "context", pgWhere(err), c.where)
			}
			var n int
			fatalIf(t, conn.QueryRow(ctx, `select count(*) from visits`).Scan(&n), "count")
			mustEqual(t, "rows stored", n, 0)
		})
	}
}

// TestPgxCopyFromAndBinaryCopyTo: pgx's CopyFrom (binary COPY) into a
// declared table, and binary COPY TO decrypted.
func TestPgxCopyFromAndBinaryCopyTo(t *testing.T) {
	env := startVisits(t)
	ctx := ctxT(t)
	conn := connect(t, env.proxy.url(acmeRole, rolePassword, env.db))
	const n = 5000
	rows := make([][]any, n)
	for i := range rows {
		var ssn any = fmt.Sprintf("ssn-%05d", i)
		if i%100 == 0 {
			ssn = nil
		}
		rows[i] = []any{int32(i), ssn, time.Date(2001, 1, 1, 0, 0, 0, 0, time.UTC).AddDate(0, 0, i), fmt.Sprintf("%d.25", i)}
	}
	copied, err := conn.CopyFrom(ctx, pgx.Identifier{"visits"}, []string{"id", "ssn", "visit_date", "amount"}, pgx.CopyFromRows(rows))
	fatalIf(t, err, "CopyFrom")
	mustEqual(t, "copied", copied, int64(n))

	var ssn string
	var day time.Time
	fatalIf(t, conn.QueryRow(ctx, `select ssn, visit_date from visits where ssn = $1`, "ssn-04321").Scan(&ssn, &day), "search copied row")
	mustEqual(t, "ssn", ssn, "ssn-04321")
	mustEqual(t, "visit_date", day.Format("2006-01-02"), time.Date(2001, 1, 1, 0, 0, 0, 0, time.UTC).AddDate(0, 0, 4321).Format("2006-01-02"))

	// Binary COPY TO: pgx's CopyTo hands over the raw stream; check the
	// decrypted date of one row in it.
	var buf bytes.Buffer
	_, err = conn.PgConn().CopyTo(ctx, &buf, `copy (select ssn, visit_date from visits where id = 4321) to stdout with (format binary)`)
	fatalIf(t, err, "binary CopyTo")
	if !bytes.Contains(buf.Bytes(), []byte("ssn-04321")) {
		t.Errorf("binary COPY TO lacks the plaintext ssn: %q", buf.Bytes())
	}
	// 2001-01-01 + 4321 days as days since 2000-01-01, big-endian int32.
	days := int32(time.Date(2001, 1, 1, 0, 0, 0, 0, time.UTC).AddDate(0, 0, 4321).Sub(time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)).Hours() / 24)
	want := []byte{0, 0, 0, 4, byte(days >> 24), byte(days >> 16), byte(days >> 8), byte(days)}
	if !bytes.Contains(buf.Bytes(), want) {
		t.Errorf("binary COPY TO lacks the binary date %x", want)
	}

	// Another tenant copies out: its own rows only (none), and a row of
	// acme's read through globex fails to decrypt.
	globex := connect(t, env.proxy.url(globexRole, rolePassword, env.db))
	buf.Reset()
	_, err = globex.PgConn().CopyTo(ctx, &buf, `copy (select ssn from visits where id = 1) to stdout`)
	mustEqual(t, "other tenant SQLSTATE", pgCode(err), "39000")
	if bytes.Contains(buf.Bytes(), []byte("ssn-")) {
		t.Errorf("another tenant's COPY TO returned plaintext: %q", buf.Bytes())
	}
}

func pgWhere(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Where
	}
	return ""
}

// TestRefusedCopyDropsPipelinedData: COPY data a client pipelines behind a
// refused COPY is dropped by the proxy, and the session goes on.
func TestRefusedCopyDropsPipelinedData(t *testing.T) {
	env := startVisits(t)
	ctx := ctxT(t)
	conn := connect(t, env.proxy.url(acmeRole, rolePassword, env.db))
	pc := conn.PgConn()
	fe := pc.Frontend()
	fe.Send(&pgproto3.Query{String: `copy visits (id, ssn) from stdin with (format csv, force_null (ssn))`})
	fe.Send(&pgproto3.CopyData{Data: []byte("1,111-22-3333\n")})
	fe.Send(&pgproto3.CopyDone{})
	fatalIf(t, fe.Flush(), "flush")
	var gotErr *pgproto3.ErrorResponse
	for {
		msg, err := pc.ReceiveMessage(ctx)
		fatalIf(t, err, "receive")
		if e, ok := msg.(*pgproto3.ErrorResponse); ok {
			gotErr = e
		}
		if _, ok := msg.(*pgproto3.ReadyForQuery); ok {
			break
		}
	}
	if gotErr == nil || gotErr.Code != "0A000" {
		t.Fatalf("refused COPY: got %+v, want 0A000", gotErr)
	}
	var n int
	fatalIf(t, conn.QueryRow(ctx, `select count(*) from visits`).Scan(&n), "session after the refusal")
	mustEqual(t, "rows", n, 0)
}

// TestCopyThroughExtendedProtocolRefused: COPY on a declared table is only
// transformed in the simple protocol; a Parse of one is refused (0A000)
// and the session goes on.
func TestCopyThroughExtendedProtocolRefused(t *testing.T) {
	env := startVisits(t)
	ctx := ctxT(t)
	conn := connect(t, env.proxy.url(acmeRole, rolePassword, env.db))
	for _, sql := range []string{`copy visits (id, ssn) from stdin`, `copy visits to stdout`} {
		_, err := conn.Prepare(ctx, "", sql)
		mustEqual(t, sql, pgCode(err), "0A000")
	}
	var one int
	fatalIf(t, conn.QueryRow(ctx, `select 1`).Scan(&one), "session after the refusals")
}
