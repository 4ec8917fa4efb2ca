package proxy

import (
	"encoding/json"
	"fmt"
	"math"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/pgcloak/pgcloak/config"
)

// The kinds table declares one column of every declared type of SPEC §3,
// four of them searchable.
var kindsColumns = []struct {
	name, typ string
	search    bool
}{
	{"k_text", "text", true}, {"k_varchar", "varchar", false}, {"k_bpchar", "bpchar", false},
	{"k_int2", "int2", false}, {"k_int4", "int4", false}, {"k_int8", "int8", true},
	{"k_numeric", "numeric", false}, {"k_float4", "float4", false}, {"k_float8", "float8", false},
	{"k_bool", "bool", false}, {"k_date", "date", true}, {"k_ts", "timestamp", false},
	{"k_tstz", "timestamptz", false}, {"k_uuid", "uuid", true}, {"k_json", "json", false},
	{"k_jsonb", "jsonb", false}, {"k_bytea", "bytea", false},
}

func kindsNames() string {
	names := make([]string, len(kindsColumns))
	for i, c := range kindsColumns {
		names[i] = c.name
	}
	return strings.Join(names, ", ")
}

// startKinds is startEncrypted with the kinds table declared too.
func startKinds(t *testing.T, mutate ...func(*Config)) *encryptedEnv {
	t.Helper()
	env := startEncrypted(t, append([]func(*Config){func(c *Config) {
		tbl := config.Table{Schema: "public", Name: "kinds"}
		for _, k := range kindsColumns {
			col := config.Column{Name: k.name, Type: k.typ, Search: config.SearchNone, Normalize: config.NormalizeNone}
			if k.search {
				col.Search, col.IndexColumn = config.SearchEquality, k.name+"_bidx"
			}
			tbl.Columns = append(tbl.Columns, col)
		}
		c.Encrypt.Tables = append(c.Encrypt.Tables, tbl)
	}}, mutate...)...)
	var ddl strings.Builder
	ddl.WriteString("create table kinds (id serial primary key, tenant_id text not null default pgcloak.current_tenant(), label text")
	for _, k := range kindsColumns {
		fmt.Fprintf(&ddl, ", %s bytea", k.name)
		if k.search {
			fmt.Fprintf(&ddl, ", %s_bidx bytea", k.name)
		}
	}
	ddl.WriteString(`);
alter table kinds enable row level security;
alter table kinds force row level security;
create policy tenant_isolation on kinds
	using (tenant_id = pgcloak.current_tenant())
	with check (tenant_id = pgcloak.current_tenant());
grant select, insert, update, delete on kinds to acme_app, globex_app, migrator;
grant usage on sequence kinds_id_seq to acme_app, globex_app, migrator;`)
	fatalIf(t, env.pg.Exec(ctxT(t), env.db, ddl.String()), "create kinds")
	fatalIf(t, env.proxy.srv.RefreshCatalog(ctxT(t)), "refresh catalog")
	return env
}

// kindsRow is one row of kinds as Go values, scanned the way applications
// scan them.
type kindsRow struct {
	Text    *string
	Varchar *string
	Bpchar  *string
	Int2    *int16
	Int4    *int32
	Int8    *int64
	Numeric pgtype.Numeric
	Float4  *float32
	Float8  *float64
	Bool    *bool
	Date    pgtype.Date
	Ts      pgtype.Timestamp
	Tstz    pgtype.Timestamptz
	UUID    pgtype.UUID
	JSON    *jsonDoc
	JSONB   map[string]any
	Bytea   []byte
}

type jsonDoc struct {
	Kind  string `json:"kind"`
	Count int    `json:"count"`
}

func (r *kindsRow) args() []any {
	return []any{r.Text, r.Varchar, r.Bpchar, r.Int2, r.Int4, r.Int8, r.Numeric, r.Float4, r.Float8,
		r.Bool, r.Date, r.Ts, r.Tstz, r.UUID, r.JSON, r.JSONB, r.Bytea}
}

func (r *kindsRow) dests() []any {
	return []any{&r.Text, &r.Varchar, &r.Bpchar, &r.Int2, &r.Int4, &r.Int8, &r.Numeric, &r.Float4, &r.Float8,
		&r.Bool, &r.Date, &r.Ts, &r.Tstz, &r.UUID, &r.JSON, &r.JSONB, &r.Bytea}
}

func ptr[T any](v T) *T { return &v }

// extremeRow holds the values the issue names: non-BMP Unicode and text that
// looks like SQL, the smallest and largest integers, a long numeric,
// extreme floats, a timestamp with a zone far from UTC, binary bytes.
func extremeRow() kindsRow {
	var num pgtype.Numeric
	num.Scan("-123456789012345678901234567890.000000000123")
	return kindsRow{
		Text:    ptr("héllo 😀𝄞 '); drop table kinds; --"),
		Varchar: ptr(""),
		Bpchar:  ptr("ab"),
		Int2:    ptr(int16(math.MinInt16)),
		Int4:    ptr(int32(math.MaxInt32)),
		Int8:    ptr(int64(math.MinInt64)),
		Numeric: num,
		Float4:  ptr(float32(-3.25)),
		Float8:  ptr(-1.5e300),
		Bool:    ptr(false),
		Date:    pgtype.Date{Time: time.Date(1999, 12, 31, 0, 0, 0, 0, time.UTC), Valid: true},
		Ts:      pgtype.Timestamp{Time: time.Date(2024, 2, 29, 23, 59, 59, 123456000, time.UTC), Valid: true},
		Tstz:    pgtype.Timestamptz{Time: time.Date(2024, 7, 1, 8, 30, 0, 5000, time.FixedZone("IST", 5*3600+1800)), Valid: true},
		UUID:    pgtype.UUID{Bytes: [16]byte{0xa0, 0xee, 0xbc, 0x99, 0x9c, 0x0b, 0x4e, 0xf8, 0xbb, 0x6d, 0x6b, 0xb9, 0xbd, 0x38, 0x0a, 0x11}, Valid: true},
		JSON:    &jsonDoc{Kind: "visit \"quoted\"", Count: -7},
		JSONB:   map[string]any{"b": []any{1.0, "x"}, "a": nil},
		Bytea:   []byte{0, 1, 2, 0xfe, 0xff, '\\', '\''},
	}
}

func checkKindsRow(t *testing.T, what string, got, want kindsRow) {
	t.Helper()
	gj, _ := json.Marshal(normalizeKinds(got))
	wj, _ := json.Marshal(normalizeKinds(want))
	if string(gj) != string(wj) {
		t.Errorf("%s:\n got %s\nwant %s", what, gj, wj)
	}
}

// normalizeKinds makes rows comparable: times as UTC instants, the numeric
// as its text.
func normalizeKinds(r kindsRow) map[string]any {
	num, _ := r.Numeric.Value()
	return map[string]any{
		"text": r.Text, "varchar": r.Varchar, "bpchar": r.Bpchar, "int2": r.Int2, "int4": r.Int4, "int8": r.Int8,
		"numeric": num, "float4": r.Float4, "float8": r.Float8, "bool": r.Bool,
		"date": r.Date.Time.Format(time.DateOnly) + fmt.Sprint(r.Date.Valid),
		"ts":   r.Ts.Time.Format(time.RFC3339Nano) + fmt.Sprint(r.Ts.Valid),
		"tstz": r.Tstz.Time.UTC().Format(time.RFC3339Nano) + fmt.Sprint(r.Tstz.Valid),
		"uuid": r.UUID, "json": r.JSON, "jsonb": r.JSONB, "bytea": r.Bytea,
	}
}

func kindsInsert() string {
	ph := make([]string, len(kindsColumns))
	for i := range ph {
		ph[i] = fmt.Sprintf("$%d", i+2)
	}
	return fmt.Sprintf("insert into kinds (label, %s) values ($1, %s)", kindsNames(), strings.Join(ph, ", "))
}

// TestTypedRoundTripEveryMode writes every declared type with typed Go
// values in each pgx exec mode (text and binary parameters), reads them
// back typed, and searches by the searchable ones.
func TestTypedRoundTripEveryMode(t *testing.T) {
	env := startKinds(t)
	ctx := ctxT(t)
	want := extremeRow()
	for _, mode := range execModes {
		t.Run(mode.String(), func(t *testing.T) {
			conn := connect(t, env.proxy.url(acmeRole, rolePassword, env.db, "default_query_exec_mode="+queryExecModeParam(mode)))
			label := "row-" + mode.String()
			args := want.args()
			if mode == pgx.QueryExecModeExec || mode == pgx.QueryExecModeSimpleProtocol {
				// Without a Describe pgx cannot know the columns are
				// json: applications pass the documents as text.
				j, _ := json.Marshal(want.JSON)
				jb, _ := json.Marshal(want.JSONB)
				args[14], args[15] = string(j), string(jb)
			}
			_, err := conn.Exec(ctx, kindsInsert(), append([]any{label}, args...)...)
			fatalIf(t, err, "insert")
			nullLabel := "null-" + mode.String()
			var nulls kindsRow
			_, err = conn.Exec(ctx, kindsInsert(), append([]any{nullLabel}, nulls.args()...)...)
			fatalIf(t, err, "insert NULLs")

			for i := range 2 { // the second time from the statement cache
				var got kindsRow
				err = conn.QueryRow(ctx, "select "+kindsNames()+" from kinds where label = $1", label).Scan(got.dests()...)
				fatalIf(t, err, "select %d", i)
				checkKindsRow(t, "round trip", got, want)
			}
			var gotNulls kindsRow
			fatalIf(t, conn.QueryRow(ctx, "select "+kindsNames()+" from kinds where label = $1", nullLabel).Scan(gotNulls.dests()...), "select NULLs")
			checkKindsRow(t, "NULLs", gotNulls, nulls)

			// Searches by each searchable type, one with an array.
			var n int
			fatalIf(t, conn.QueryRow(ctx, `select count(*) from kinds where k_text = $1 and label = $2`, *want.Text, label).Scan(&n), "search text")
			mustEqual(t, "rows by text", n, 1)
			fatalIf(t, conn.QueryRow(ctx, `select count(*) from kinds where k_int8 = $1 and k_date = $2 and label = $3`, *want.Int8, want.Date, label).Scan(&n), "search int8/date")
			mustEqual(t, "rows by int8 and date", n, 1)
			other := pgtype.UUID{Bytes: [16]byte{1}, Valid: true}
			if mode != pgx.QueryExecModeSimpleProtocol {
				// pgx's simple protocol inlines the array as a literal,
				// which the proxy refuses (see the README).
				fatalIf(t, conn.QueryRow(ctx, `select count(*) from kinds where k_uuid = any($1) and label = $2`, []pgtype.UUID{other, want.UUID}, label).Scan(&n), "search uuid = any")
				mustEqual(t, "rows by uuid = any", n, 1)
			}
			fatalIf(t, conn.QueryRow(ctx, `select count(*) from kinds where k_text is null and label = $1`, nullLabel).Scan(&n), "is null")
			mustEqual(t, "rows with k_text null", n, 1)

			// Update through a parameter, then read it in the same mode.
			_, err = conn.Exec(ctx, `update kinds set k_int4 = $1, k_text = $2 where label = $3 and k_int8 = $4`, int32(-42), "updated", label, *want.Int8)
			fatalIf(t, err, "update")
			var i4 int32
			var txt string
			fatalIf(t, conn.QueryRow(ctx, `select k_int4, k_text from kinds where k_text = $1 and label = $2`, "updated", label).Scan(&i4, &txt), "read update")
			mustEqual(t, "updated int4", i4, -42)
			mustEqual(t, "updated text", txt, "updated")
		})
	}

	// What PostgreSQL stores is ciphertext only.
	var plain int
	err := env.pool.QueryRow(ctx, `select count(*) from kinds where position(convert_to('drop table', 'UTF8') in k_text) > 0`).Scan(&plain)
	fatalIf(t, err, "scan storage")
	mustEqual(t, "rows with plaintext in storage", plain, 0)
}

// TestTextAndBinaryWritesStoreTheSameCanonicalText: the same values written
// as SQL literals (simple protocol), as text parameters (lib/pq style) and
// as binary parameters (pgx) read back identically through psql.
func TestTextAndBinaryWritesStoreTheSameCanonicalText(t *testing.T) {
	env := startKinds(t)
	ctx := ctxT(t)
	want := extremeRow()
	binary := connect(t, env.proxy.url(acmeRole, rolePassword, env.db))
	_, err := binary.Exec(ctx, kindsInsert(), append([]any{"binary"}, want.args()...)...)
	fatalIf(t, err, "binary insert")

	// The same values in PostgreSQL's text format.
	texts := []string{*want.Text, "", "ab", "-32768", "2147483647", "-9223372036854775808",
		"-123456789012345678901234567890.000000000123", "-3.25", "-1.5e+300", "f", "1999-12-31",
		"2024-02-29 23:59:59.123456", "2024-07-01 08:30:00.000005+05:30", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
		`{"kind":"visit \"quoted\"","count":-7}`, `{"a": null, "b": [1, "x"]}`, `\x000102feff5c27`}
	textConn := connect(t, env.proxy.url(acmeRole, rolePassword, env.db, "default_query_exec_mode=exec"))
	args := []any{"text-params"}
	for _, s := range texts {
		args = append(args, s)
	}
	_, err = textConn.Exec(ctx, kindsInsert(), args...)
	fatalIf(t, err, "text-parameter insert")

	simple := env.tenantConn(t, acmeRole)
	lits := make([]string, len(texts))
	for i, s := range texts {
		lits[i] = "'" + strings.ReplaceAll(s, "'", "''") + "'"
	}
	_, err = simple.Exec(ctx, fmt.Sprintf("insert into kinds (label, %s) values ('literals', %s)", kindsNames(), strings.Join(lits, ", ")))
	fatalIf(t, err, "literal insert")

	cmd := exec.Command(env.pg.Bin("psql"), "-X", "-At", "-v", "ON_ERROR_STOP=1", "-c",
		"select "+kindsNames()+" from kinds where label in ('binary', 'text-params', 'literals') order by label",
		env.proxy.url(acmeRole, rolePassword, env.db))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("psql: %v\n%s", err, out)
	}
	lines := strings.Split(strings.TrimRight(string(out), "\n"), "\n")
	if len(lines) != 3 {
		t.Fatalf("psql: want 3 rows, got:\n%s", out)
	}
	for _, l := range lines[1:] {
		if l != lines[0] {
			t.Errorf("rows differ through psql:\n%s\n%s", lines[0], l)
		}
	}
	if !strings.Contains(lines[0], "2024-07-01 03:00:00.000005+00") {
		t.Errorf("timestamptz not canonical UTC: %s", lines[0])
	}
}

// TestParameterAndRowDescriptionShowDeclaredTypes: Describe of a rewritten
// statement shows the application's view.
func TestParameterAndRowDescriptionShowDeclaredTypes(t *testing.T) {
	env := startKinds(t)
	ctx := ctxT(t)
	conn := connect(t, env.proxy.url(acmeRole, rolePassword, env.db))
	sd, err := conn.Prepare(ctx, "ins", `insert into kinds (label, k_date, k_int8, k_uuid) values ($1, $2, $3, $4) returning k_date, id`)
	fatalIf(t, err, "prepare insert")
	mustEqual(t, "parameter types", fmt.Sprint(sd.ParamOIDs), fmt.Sprint([]uint32{pgtype.TextOID, pgtype.DateOID, pgtype.Int8OID, pgtype.UUIDOID}))
	mustEqual(t, "returned k_date type", sd.Fields[0].DataTypeOID, uint32(pgtype.DateOID))
	mustEqual(t, "returned id type", sd.Fields[1].DataTypeOID, uint32(pgtype.Int4OID))

	sd, err = conn.Prepare(ctx, "sel", `select k_numeric, k_jsonb from kinds where k_uuid = any($1) and id > $2`)
	fatalIf(t, err, "prepare select")
	mustEqual(t, "search parameter types", fmt.Sprint(sd.ParamOIDs), fmt.Sprint([]uint32{pgtype.UUIDArrayOID, pgtype.Int4OID}))
	mustEqual(t, "numeric type", sd.Fields[0].DataTypeOID, uint32(pgtype.NumericOID))
	mustEqual(t, "jsonb type", sd.Fields[1].DataTypeOID, uint32(pgtype.JSONBOID))

	// A second Parse of a name in use fails as PostgreSQL's does.
	_, err = conn.PgConn().Prepare(ctx, "ins", `insert into kinds (k_text) values ($1)`, nil)
	mustEqual(t, "duplicate statement SQLSTATE", pgCode(err), "42P05")
	// Closing frees the name.
	fatalIf(t, conn.Deallocate(ctx, "ins"), "deallocate")
	_, err = conn.PgConn().Prepare(ctx, "ins", `insert into kinds (k_text) values ($1)`, nil)
	fatalIf(t, err, "prepare after close")
	// Statement names of the proxy's own are out of reach.
	_, err = conn.PgConn().Prepare(ctx, "pgcloak:s1", `select 1`, nil)
	mustEqual(t, "reserved name SQLSTATE", pgCode(err), "26000")
}

// TestOutOfRangeParameterRefused: a bound value PostgreSQL would reject for
// the declared type is rejected with its SQLSTATE, and nothing is stored.
func TestOutOfRangeParameterRefused(t *testing.T) {
	env := startKinds(t)
	ctx := ctxT(t)
	conn := connect(t, env.proxy.url(acmeRole, rolePassword, env.db, "default_query_exec_mode=exec"))
	cases := []struct {
		col, value, code string
	}{
		{"k_int2", "40000", "22003"},
		{"k_int4", "12x", "22P02"},
		{"k_date", "2023-02-29", "22008"},
		{"k_uuid", "not-a-uuid", "22P02"},
		{"k_jsonb", "{", "22P02"},
		{"k_text", "nul\x00byte", "22021"},
	}
	for _, c := range cases {
		_, err := conn.Exec(ctx, fmt.Sprintf(`insert into kinds (label, %s) values ('bad', $1)`, c.col), c.value)
		if pgCode(err) != c.code {
			t.Errorf("%s = %q: got %v, want SQLSTATE %s", c.col, c.value, err, c.code)
		}
		if err != nil && !strings.HasPrefix(pgMessage(err), "pgcloak: public.kinds."+c.col) {
			t.Errorf("%s: message %q does not name the column", c.col, pgMessage(err))
		}
	}
	// The session is still usable and nothing was stored.
	var n int
	fatalIf(t, conn.QueryRow(ctx, `select count(*) from kinds where label = 'bad'`).Scan(&n), "count")
	mustEqual(t, "rows stored", n, 0)
}

// TestLongValuesRoundTrip: a 1 MB text parameter and result.
func TestLongValuesRoundTrip(t *testing.T) {
	env := startKinds(t, func(c *Config) { c.Listen.MaxMessageSize = 8 << 20 })
	ctx := ctxT(t)
	conn := connect(t, env.proxy.url(acmeRole, rolePassword, env.db))
	long := strings.Repeat("0123456789abcdef😀", 1<<20/20)
	_, err := conn.Exec(ctx, `insert into kinds (label, k_text, k_bytea) values ('long', $1, $2)`, long, []byte(long))
	fatalIf(t, err, "insert 1 MB")
	var got string
	var gotBytes []byte
	fatalIf(t, conn.QueryRow(ctx, `select k_text, k_bytea from kinds where k_text = $1`, long).Scan(&got, &gotBytes), "read 1 MB")
	if got != long || string(gotBytes) != long {
		t.Errorf("1 MB values differ: %d and %d bytes back, %d sent", len(got), len(gotBytes), len(long))
	}
}

// TestPgxBatchMixedEncrypted: encrypted writes and reads in one pipeline,
// and an error mid-batch skipping the rest as PostgreSQL does.
func TestPgxBatchMixedEncrypted(t *testing.T) {
	env := startEncrypted(t)
	ctx := ctxT(t)
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeCacheStatement, pgx.QueryExecModeExec} {
		t.Run(mode.String(), func(t *testing.T) {
			conn := connect(t, env.proxy.url(acmeRole, rolePassword, env.db, "default_query_exec_mode="+queryExecModeParam(mode)))
			tag := mode.String()
			b := &pgx.Batch{}
			for i := range 20 {
				b.Queue(`insert into patients (name, ssn, email, birth_date) values ($1, $2, $3, $4)`,
					fmt.Sprintf("%s-%d", tag, i), fmt.Sprintf("ssn-%s-%d", tag, i), fmt.Sprintf("U%d@X.org", i), time.Date(2000, 1, i+1, 0, 0, 0, 0, time.UTC))
			}
			b.Queue(`select name from patients where ssn = $1`, "ssn-"+tag+"-7")
			b.Queue(`select count(*) from patients where email = $1 and name like $2`, "u3@x.ORG", tag+"%")
			fatalIf(t, conn.SendBatch(ctx, b).Close(), "batch")
			var name string
			var n int
			fatalIf(t, conn.QueryRow(ctx, `select name from patients where ssn = $1`, "ssn-"+tag+"-7").Scan(&name), "search")
			mustEqual(t, "found", name, tag+"-7")
			fatalIf(t, conn.QueryRow(ctx, `select count(*) from patients where email = any($1) and name like $2`, []string{"u3@x.org", "U4@X.ORG", "nobody"}, tag+"%").Scan(&n), "email any")
			mustEqual(t, "normalised matches", n, 2)

			// An error mid-batch: the refused statement fails, the rest of
			// the batch does not run, earlier statements are rolled back.
			b = &pgx.Batch{}
			b.Queue(`insert into patients (name, ssn) values ($1, $2)`, tag+"-before", "ssn-before")
			b.Queue(`select name from patients where ssn < $1`, "x")
			b.Queue(`insert into patients (name, ssn) values ($1, $2)`, tag+"-after", "ssn-after")
			br := conn.SendBatch(ctx, b)
			var errs []error
			for range 3 {
				_, err := br.Exec()
				errs = append(errs, err)
			}
			br.Close()
			// pgx prepares every statement of a cached batch first, so
			// the refusal may surface on the first result.
			first := slices.IndexFunc(errs, func(err error) bool { return err != nil })
			if first < 0 || pgCode(errs[first]) != "0A000" {
				t.Fatalf("batch errors %v: want the first to be SQLSTATE 0A000", errs)
			}
			if errs[2] == nil {
				t.Error("statement after the error ran")
			}
			var names []string
			rows, err := conn.Query(ctx, `select name from patients where name in ($1, $2)`, tag+"-before", tag+"-after")
			fatalIf(t, err, "query")
			names, err = pgx.CollectRows(rows, pgx.RowTo[string])
			fatalIf(t, err, "collect")
			slices.Sort(names)
			// pgx pipelines a batch in one implicit transaction.
			mustEqual(t, "rows after failed batch", strings.Join(names, ","), "")
		})
	}
}
