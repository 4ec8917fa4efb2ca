package proxy

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
	_ "github.com/lib/pq"
	"github.com/pgcloak/pgcloak/testenv"
)

var execModes = []pgx.QueryExecMode{
	pgx.QueryExecModeCacheStatement,
	pgx.QueryExecModeCacheDescribe,
	pgx.QueryExecModeDescribeExec,
	pgx.QueryExecModeExec,
	pgx.QueryExecModeSimpleProtocol,
}

func TestPgxExecModes(t *testing.T) {
	pg := testenv.Shared(t)
	db := testenv.NewDatabase(t, pg)
	p := startProxy(t, pg)
	setup := connect(t, p.superURL(db))
	mustExec(t, setup, `create table items (id int8 primary key, name text, price numeric(10,2), at timestamptz, tags text[], doc jsonb, raw bytea)`)

	for _, mode := range execModes {
		t.Run(mode.String(), func(t *testing.T) {
			ctx := ctxT(t)
			cfg, err := pgx.ParseConfig(p.superURL(db))
			fatalIf(t, err, "parse config")
			cfg.DefaultQueryExecMode = mode
			conn, err := pgx.ConnectConfig(ctx, cfg)
			fatalIf(t, err, "connect")
			defer conn.Close(ctx)

			id := int64(len(mode.String()))*1000 + time.Now().UnixNano()%1000
			at := time.Date(2024, 2, 29, 13, 14, 15, 123456000, time.UTC)
			name := "naïve 🐘 '; drop table items; --"
			_, err = conn.Exec(ctx, `insert into items values ($1, $2, $3, $4, $5, $6::text::jsonb, $7)`,
				id, name, "12.34", at, []string{"a", "b,c"}, `{"k": 1}`, []byte{0, 1, 255})
			fatalIf(t, err, "insert")

			var (
				gotName  string
				gotPrice pgtype.Numeric
				gotAt    time.Time
				gotTags  []string
				gotDoc   map[string]any
				gotRaw   []byte
			)
			err = conn.QueryRow(ctx, `select name, price, at, tags, doc, raw from items where id = $1`, id).
				Scan(&gotName, &gotPrice, &gotAt, &gotTags, &gotDoc, &gotRaw)
			fatalIf(t, err, "select")
			mustEqual(t, "name", gotName, name)
			f, _ := gotPrice.Float64Value()
			mustEqual(t, "price", f.Float64, 12.34)
			mustEqual(t, "at", gotAt.UTC(), at)
			mustEqual(t, "tags", strings.Join(gotTags, "|"), "a|b,c")
			mustEqual(t, "doc", fmt.Sprint(gotDoc["k"]), "1")
			mustEqual(t, "raw", fmt.Sprintf("%x", gotRaw), "0001ff")

			// An error leaves the connection usable, as it does directly.
			_, err = conn.Exec(ctx, `select 1/0`)
			var pgErr *pgconn.PgError
			if !errors.As(err, &pgErr) || pgErr.Code != "22012" {
				t.Fatalf("division by zero: got %v, want SQLSTATE 22012", err)
			}
			var n int
			fatalIf(t, conn.QueryRow(ctx, `select count(*) from items where id = $1`, id).Scan(&n), "count after error")
			mustEqual(t, "count", n, 1)
		})
	}
}

func TestPgxBatchPipelineAndCopyFrom(t *testing.T) {
	pg := testenv.Shared(t)
	db := testenv.NewDatabase(t, pg)
	p := startProxy(t, pg)
	conn := connect(t, p.superURL(db))
	ctx := ctxT(t)
	mustExec(t, conn, `create table t (id int primary key, v text)`)

	t.Run("batch with error mid-batch", func(t *testing.T) {
		b := &pgx.Batch{}
		b.Queue(`insert into t values (1, 'one')`)
		b.Queue(`insert into t values (1, 'duplicate')`)
		b.Queue(`insert into t values (2, 'two')`)
		br := conn.SendBatch(ctx, b)
		_, err := br.Exec()
		fatalIf(t, err, "first insert")
		_, err = br.Exec()
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "23505" {
			t.Fatalf("duplicate: got %v, want 23505", err)
		}
		br.Close()
		var n int
		fatalIf(t, conn.QueryRow(ctx, `select count(*) from t`).Scan(&n), "count")
		// A batch is one implicit transaction: the error rolled all of it back.
		mustEqual(t, "rows after failed batch", n, 0)
	})

	t.Run("many batches", func(t *testing.T) {
		b := &pgx.Batch{}
		for i := range 500 {
			b.Queue(`insert into t values ($1, $2) returning id`, i+10, fmt.Sprint("v", i))
		}
		br := conn.SendBatch(ctx, b)
		for i := range 500 {
			var id int
			fatalIf(t, br.QueryRow().Scan(&id), "batch row %d", i)
			mustEqual(t, "returned id", id, i+10)
		}
		fatalIf(t, br.Close(), "close batch")
	})

	t.Run("pipeline of sync-separated batches", func(t *testing.T) {
		pipe := conn.PgConn().StartPipeline(ctx)
		for i := range 50 {
			pipe.SendQueryParams(`select $1::int + 1`, [][]byte{[]byte(fmt.Sprint(i))}, nil, nil, nil)
			if i == 25 {
				pipe.SendQueryParams(`select 1/0`, nil, nil, nil, nil)
			}
			fatalIf(t, pipe.Sync(), "sync %d", i)
		}
		got := 0
		errs := 0
		for i := 0; i < 50; {
			res, err := pipe.GetResults()
			var pgErr *pgconn.PgError
			if errors.As(err, &pgErr) {
				mustEqual(t, "pipeline error", pgErr.Code, "22012")
				errs++
				continue
			}
			fatalIf(t, err, "get results")
			switch r := res.(type) {
			case *pgconn.ResultReader:
				_, err := r.Close()
				if err != nil {
					errs++
				} else {
					got++
				}
			case *pgconn.PipelineSync:
				i++
			}
		}
		fatalIf(t, pipe.Close(), "close pipeline")
		mustEqual(t, "successful results", got, 50)
		mustEqual(t, "errors", errs, 1)
	})

	t.Run("CopyFrom", func(t *testing.T) {
		rows := make([][]any, 10000)
		for i := range rows {
			rows[i] = []any{100000 + i, strings.Repeat("x", i%100)}
		}
		n, err := conn.CopyFrom(ctx, pgx.Identifier{"t"}, []string{"id", "v"}, pgx.CopyFromRows(rows))
		fatalIf(t, err, "CopyFrom")
		mustEqual(t, "copied", n, int64(len(rows)))
		var sum int64
		fatalIf(t, conn.QueryRow(ctx, `select sum(length(v)) from t where id >= 100000`).Scan(&sum), "sum")
		mustEqual(t, "sum of lengths", sum, int64(100*99/2*100))
	})
}

func TestLibPQ(t *testing.T) {
	pg := testenv.Shared(t)
	dbName := testenv.NewDatabase(t, pg)
	p := startProxy(t, pg)
	db, err := sql.Open("postgres", p.superURL(dbName))
	fatalIf(t, err, "open")
	defer db.Close()
	ctx := ctxT(t)

	_, err = db.ExecContext(ctx, `create table accounts (id serial primary key, owner text not null, balance int not null)`)
	fatalIf(t, err, "create")

	stmt, err := db.PrepareContext(ctx, `insert into accounts (owner, balance) values ($1, $2) returning id`)
	fatalIf(t, err, "prepare")
	for i := range 20 {
		var id int
		fatalIf(t, stmt.QueryRowContext(ctx, fmt.Sprint("owner", i), i*10).Scan(&id), "insert %d", i)
	}
	stmt.Close()

	tx, err := db.BeginTx(ctx, nil)
	fatalIf(t, err, "begin")
	_, err = tx.ExecContext(ctx, `update accounts set balance = balance - 5 where owner = $1`, "owner3")
	fatalIf(t, err, "update")
	fatalIf(t, tx.Rollback(), "rollback")

	tx, err = db.BeginTx(ctx, nil)
	fatalIf(t, err, "begin")
	_, err = tx.ExecContext(ctx, `update accounts set balance = balance + 1 where owner = $1`, "owner4")
	fatalIf(t, err, "update")
	fatalIf(t, tx.Commit(), "commit")

	var b3, b4 int
	fatalIf(t, db.QueryRowContext(ctx, `select balance from accounts where owner = 'owner3'`).Scan(&b3), "b3")
	fatalIf(t, db.QueryRowContext(ctx, `select balance from accounts where owner = 'owner4'`).Scan(&b4), "b4")
	mustEqual(t, "rolled back balance", b3, 30)
	mustEqual(t, "committed balance", b4, 41)

	// lib/pq reports server errors with their SQLSTATE.
	_, err = db.ExecContext(ctx, `insert into accounts (owner, balance) values (null, 1)`)
	if err == nil || !strings.Contains(err.Error(), "null value") {
		t.Errorf("not-null violation: got %v", err)
	}
}

func TestPsqlScript(t *testing.T) {
	pg := testenv.Shared(t)
	db := testenv.NewDatabase(t, pg)
	p := startProxy(t, pg)
	dir := t.TempDir()
	csvIn := filepath.Join(dir, "in.csv")
	csvOut := filepath.Join(dir, "out.csv")
	var in strings.Builder
	in.WriteString("id,name\n")
	for i := range 1000 {
		fmt.Fprintf(&in, "%d,\"name, %d\"\n", i, i)
	}
	fatalIf(t, os.WriteFile(csvIn, []byte(in.String()), 0o644), "write csv")
	script := fmt.Sprintf(`
create table people (id int primary key, name text);
begin; insert into people values (-1, 'a'); insert into people values (-2, 'b'); commit;
select count(*) as two from people; select 'multi' as m \; select 'statement' as s;
\copy people from '%s' with (format csv, header)
\copy (select * from people where id >= 0 order by id) to '%s' with (format csv)
select count(*) as total from people;
`, csvIn, csvOut)
	scriptFile := filepath.Join(dir, "script.sql")
	fatalIf(t, os.WriteFile(scriptFile, []byte(script), 0o644), "write script")

	cmd := exec.Command(pg.Bin("psql"), "-X", "-v", "ON_ERROR_STOP=1", "-At", "-f", scriptFile, p.superURL(db))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("psql: %v\n%s", err, out)
	}
	for _, want := range []string{"2", "multi", "statement", "COPY 1000", "1002"} {
		if !regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(want) + `$`).Match(out) {
			t.Errorf("psql output lacks line %q:\n%s", want, out)
		}
	}
	got, err := os.ReadFile(csvOut)
	fatalIf(t, err, "read copy out")
	lines := strings.Split(strings.TrimSpace(string(got)), "\n")
	mustEqual(t, "copied out lines", len(lines), 1000)
	mustEqual(t, "last line", lines[len(lines)-1], `999,"name, 999"`)
}

func TestPgbench(t *testing.T) {
	pg := testenv.Shared(t)
	db := testenv.NewDatabase(t, pg)
	p := startProxy(t, pg)
	host, port := splitHostPort(t, p.addr)
	env := append(os.Environ(), "PGPASSWORD="+testenv.SuperuserPassword, "PGSSLMODE=disable")
	run := func(t *testing.T, args ...string) string {
		t.Helper()
		cmd := exec.Command(pg.Bin("pgbench"), append([]string{"-h", host, "-p", port, "-U", "postgres"}, append(args, db)...)...)
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("pgbench %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	run(t, "-i", "-s", "1", "-q")
	for _, mode := range []string{"simple", "extended", "prepared"} {
		t.Run(mode, func(t *testing.T) {
			out := run(t, "-M", mode, "-c", "4", "-j", "2", "-t", "150")
			m := regexp.MustCompile(`number of transactions actually processed: (\d+)`).FindStringSubmatch(out)
			if m == nil || m[1] != "600" {
				t.Errorf("processed transactions: got %v, want 600\n%s", m, out)
			}
			if m := regexp.MustCompile(`number of failed transactions: (\d+)`).FindStringSubmatch(out); m != nil && m[1] != "0" {
				t.Errorf("failed transactions: got %s, want 0\n%s", m[1], out)
			}
		})
	}
}

func TestListenNotify(t *testing.T) {
	pg := testenv.Shared(t)
	db := testenv.NewDatabase(t, pg)
	p := startProxy(t, pg)
	listener := connect(t, p.superURL(db))
	notifier := connect(t, p.superURL(db))
	ctx := ctxT(t)
	mustExec(t, listener, `listen events`)
	mustExec(t, notifier, `select pg_notify('events', 'hello through the proxy')`)
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	n, err := listener.WaitForNotification(wctx)
	fatalIf(t, err, "wait for notification")
	mustEqual(t, "channel", n.Channel, "events")
	mustEqual(t, "payload", n.Payload, "hello through the proxy")
	mustEqual(t, "sender pid", n.PID, notifier.PgConn().PID())
}

func TestNoticeAndParameterStatus(t *testing.T) {
	pg := testenv.Shared(t)
	db := testenv.NewDatabase(t, pg)
	p := startProxy(t, pg)
	cfg, err := pgx.ParseConfig(p.superURL(db, "application_name=pgcloak-test", "search_path=myschema,public", "options=-c%20statement_timeout%3D4321"))
	fatalIf(t, err, "parse")
	var notices []string
	cfg.OnNotice = func(_ *pgconn.PgConn, n *pgconn.Notice) { notices = append(notices, n.Message) }
	conn, err := pgx.ConnectConfig(ctxT(t), cfg)
	fatalIf(t, err, "connect")
	defer conn.Close(context.Background())
	ctx := ctxT(t)

	for setting, want := range map[string]string{
		"application_name":  "pgcloak-test",
		"search_path":       "myschema,public",
		"statement_timeout": "4321ms",
	} {
		var got string
		fatalIf(t, conn.QueryRow(ctx, "select current_setting($1)", setting).Scan(&got), "show %s", setting)
		mustEqual(t, setting, got, want)
	}
	mustEqual(t, "ParameterStatus application_name", conn.PgConn().ParameterStatus("application_name"), "pgcloak-test")
	mustExec(t, conn, `set application_name = 'changed'`)
	mustEqual(t, "ParameterStatus after SET", conn.PgConn().ParameterStatus("application_name"), "changed")
	mustExec(t, conn, `do $$ begin raise notice 'notice from the server'; end $$`)
	if len(notices) != 1 || notices[0] != "notice from the server" {
		t.Errorf("notices: got %q, want [notice from the server]", notices)
	}
}

// A statement with more than 65535 parameters can be prepared: PostgreSQL's
// ParameterDescription then carries a wrapped-around count, and the proxy
// must relay it as it is (pgx's own suite: TestConnExecPreparedTooManyParams).
func TestPrepareMoreThan65535Params(t *testing.T) {
	pg := testenv.Shared(t)
	p := startProxy(t, pg, func(c *Config) { c.Listen.MaxMessageSize = 8 << 20 })
	ctx := ctxT(t)
	conn, err := pgconn.Connect(ctx, p.superURL("postgres"))
	fatalIf(t, err, "connect")
	defer conn.Close(context.Background())

	const n = 65536
	params := make([]string, n)
	for i := range params {
		params[i] = fmt.Sprintf("($%d::int4)", i+1)
	}
	sd, err := conn.Prepare(ctx, "wide", "values "+strings.Join(params, ", "), nil)
	fatalIf(t, err, "prepare")
	mustEqual(t, "parameters", len(sd.ParamOIDs), n)
	mustEqual(t, "last parameter type", sd.ParamOIDs[n-1], uint32(pgtype.Int4OID))
	res := conn.ExecParams(ctx, "select 1", nil, nil, nil, nil).Read()
	fatalIf(t, res.Err, "connection unusable after prepare")
}
