package proxy

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// evictPatients are the rows TestDeallocatePsycopgEviction seeds, as
// [name, ssn].
var evictPatients = [][]string{{"alice", "123-45-6789"}, {"bob", "222-33-4444"}, {"carol", "555-66-7777"}}

// evictRun is what testdata/python/evict.py reports.
type evictRun struct {
	Settings []int    `json:"settings"` // prepare_threshold, prepared_max
	Runs     int      `json:"runs"`
	Failed   int      `json:"failed"` // runs that raised or returned wrong rows
	Errors   []string `json:"errors"` // the first few
	// Select1 and Found are the rows of SELECT 1 and of a search of
	// alice's ssn at the end, or the error they raised (a string).
	Select1, Found json.RawMessage
	Upstream       []string `json:"upstream"` // pg_prepared_statements
}

// compactJSON is raw without insignificant space.
func compactJSON(raw json.RawMessage) string {
	var b bytes.Buffer
	if json.Compact(&b, raw) != nil {
		return string(raw)
	}
	return b.String()
}

// TestDeallocatePsycopgEviction: psycopg 3 with its default settings
// (prepare_threshold 5, prepared_max 100) runs 160 distinct statements 6
// times each, twice over, on a table with an encrypted column and
// undeclared ones: searches of the encrypted column (which pgcloak prepares
// upstream under names of its own), reads that decrypt it, and statements
// on undeclared columns only. psycopg evicts the oldest prepared statements
// with DEALLOCATE _pg3_N through the extended protocol; every run returns
// its rows, SELECT 1 and a search of the encrypted column still work at the
// end, and PostgreSQL holds no more statements than psycopg keeps.
func TestDeallocatePsycopgEviction(t *testing.T) {
	needPsycopg(t)
	env := startEncrypted(t)
	acme := env.tenantConn(t, acmeRole)
	for _, p := range evictPatients {
		insertPatient(t, acme, p[0], p[1], p[0]+"@example.com", "flu", "1980-01-02")
	}
	const statements, runs = 160, 6
	patients, _ := json.Marshal(evictPatients)
	dir, _ := filepath.Abs(filepath.Join("testdata", "python"))
	cmd := exec.Command(python3, "evict.py")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "PGCLOAK_URL="+env.proxy.url(acmeRole, rolePassword, env.db),
		"PGCLOAK_STATEMENTS="+strconv.Itoa(statements), "PGCLOAK_RUNS="+strconv.Itoa(runs),
		"PGCLOAK_PATIENTS="+string(patients))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("evict.py: %v\nstdout:\n%s\nstderr:\n%s", err, out, stderr.Bytes())
	}
	var got evictRun
	fatalIf(t, json.Unmarshal(out, &got), "decode %s", out)

	if !slices.Equal(got.Settings, []int{5, 100}) {
		t.Errorf("psycopg settings: got prepare_threshold, prepared_max = %v, want the defaults [5 100]", got.Settings)
	}
	mustEqual(t, "runs", got.Runs, 2*statements*runs)
	if got.Failed != 0 {
		t.Errorf("failed runs: got %d of %d, want 0; first: %s", got.Failed, got.Runs, strings.Join(got.Errors, "; "))
	}
	mustEqual(t, "SELECT 1 at the end", compactJSON(got.Select1), `[[1]]`)
	mustEqual(t, "search of the encrypted column at the end", compactJSON(got.Found), `[["alice","123-45-6789"]]`)

	// psycopg keeps at most prepared_max statements; each is PostgreSQL's
	// under psycopg's name or pgcloak's own. More upstream means an
	// evicted statement was not deallocated there.
	var own, plain int
	for _, name := range got.Upstream {
		switch {
		case strings.HasPrefix(name, reservedPrefix+"s"):
			own++
		case strings.HasPrefix(name, "_pg3_"):
			plain++
		}
	}
	if own == 0 || plain == 0 || own+plain > 100 {
		t.Errorf("upstream prepared statements: got %d of pgcloak's and %d of psycopg's, want some of each and at most 100 in all", own, plain)
	}
}

// Wire scripts of DEALLOCATE through the extended protocol. Each script
// runs twice, on a fresh connection straight to PostgreSQL and on one
// through pgcloak as a tenant, and the two transcripts must be the same
// message for message: through pgcloak, the searches of the encrypted
// column (srch) are prepared upstream under pgcloak's own names, straight
// to PostgreSQL under the client's.

const (
	// deallocSearch is rewritten by pgcloak (its parameter becomes a
	// blind index) and returns the same row straight to PostgreSQL.
	deallocSearch = `select count(*) >= 0 from patients where ssn = $1`
	// deallocPlain passes through pgcloak under the client's name.
	deallocPlain = `select $1::text`
	// deallocCount counts the statements PostgreSQL holds, pgcloak's
	// refusal statement aside.
	deallocCount = `select count(*) from pg_prepared_statements where name not like '%raise'`
)

func wParse(name, sql string) *pgproto3.Parse { return &pgproto3.Parse{Name: name, Query: sql} }
func wBind(portal, stmt string, params ...string) *pgproto3.Bind {
	b := &pgproto3.Bind{DestinationPortal: portal, PreparedStatement: stmt}
	for _, p := range params {
		b.Parameters = append(b.Parameters, []byte(p))
	}
	return b
}
func wExecute(portal string) *pgproto3.Execute { return &pgproto3.Execute{Portal: portal} }
func wDescribe(kind byte, name string) *pgproto3.Describe {
	return &pgproto3.Describe{ObjectType: kind, Name: name}
}

// wRun is Parse (unnamed), Bind, Describe of the portal and Execute of
// sql, as libpq's PQsendQueryParams sends it (psycopg 3's DEALLOCATE).
func wRun(sql string, params ...string) []pgproto3.FrontendMessage {
	return []pgproto3.FrontendMessage{wParse("", sql), wBind("", "", params...), wDescribe('P', ""), wExecute("")}
}

// wExec binds stmt to the unnamed portal and executes it.
func wExec(stmt string, params ...string) []pgproto3.FrontendMessage {
	return []pgproto3.FrontendMessage{wBind("", stmt, params...), wExecute("")}
}

// wRound joins message groups into one round, which wTranscript ends with
// a Sync.
func wRound(groups ...[]pgproto3.FrontendMessage) []pgproto3.FrontendMessage {
	var out []pgproto3.FrontendMessage
	for _, g := range groups {
		out = append(out, g...)
	}
	return out
}

func wOne(msgs ...pgproto3.FrontendMessage) []pgproto3.FrontendMessage { return msgs }

// wTranscript sends each round followed by Sync and returns, per round,
// the messages received up to ReadyForQuery: errors by SQLSTATE alone.
func wTranscript(t *testing.T, fe *pgproto3.Frontend, rounds [][]pgproto3.FrontendMessage) [][]string {
	t.Helper()
	var out [][]string
	for i, round := range rounds {
		for _, m := range round {
			fe.Send(m)
		}
		fe.Send(&pgproto3.Sync{})
		fatalIf(t, fe.Flush(), "round %d: send", i)
		var got []string
		for {
			msg, err := fe.Receive()
			fatalIf(t, err, "round %d: receive", i)
			var line string
			switch m := msg.(type) {
			case *pgproto3.ParseComplete:
				line = "ParseComplete"
			case *pgproto3.BindComplete:
				line = "BindComplete"
			case *pgproto3.CloseComplete:
				line = "CloseComplete"
			case *pgproto3.NoData:
				line = "NoData"
			case *pgproto3.ParameterDescription:
				line = fmt.Sprintf("ParameterDescription %v", m.ParameterOIDs)
			case *pgproto3.RowDescription:
				line = "RowDescription"
				for _, f := range m.Fields {
					line += " " + string(f.Name)
				}
			case *pgproto3.DataRow:
				line = "DataRow"
				for _, v := range m.Values {
					line += " " + string(v)
				}
			case *pgproto3.CommandComplete:
				line = "CommandComplete " + string(m.CommandTag)
			case *pgproto3.ErrorResponse:
				line = "ErrorResponse " + m.Code
			case *pgproto3.ReadyForQuery:
				line = "ReadyForQuery " + string(m.TxStatus)
			default:
				continue // notices, parameter status
			}
			got = append(got, line)
			if _, ok := msg.(*pgproto3.ReadyForQuery); ok {
				break
			}
		}
		out = append(out, got)
	}
	return out
}

// hijack returns the frontend of a new protocol-level connection.
func hijack(t *testing.T, url string) *pgproto3.Frontend {
	t.Helper()
	conn, err := pgconn.Connect(ctxT(t), url)
	fatalIf(t, err, "connect")
	hc, err := conn.Hijack()
	fatalIf(t, err, "hijack")
	t.Cleanup(func() { hc.Conn.Close() })
	return hc.Frontend
}

// TestDeallocateExtendedTranscripts: DEALLOCATE name, DEALLOCATE PREPARE
// name and DEALLOCATE ALL through the extended protocol, as the unnamed and
// as a named statement, described, in pipelines of several statements
// before one Sync, of statements pgcloak prepared under its own names and
// of plain ones, and of unknown names: pgcloak answers as PostgreSQL does,
// message for message, and PostgreSQL ends up holding as many statements
// (deallocCount) through pgcloak as without it.
func TestDeallocateExtendedTranscripts(t *testing.T) {
	env := startEncrypted(t)
	insertPatient(t, env.tenantConn(t, acmeRole), "alice", "123-45-6789", "alice@example.com", "flu", "1980-01-02")
	const ssn = "123-45-6789"
	// setup prepares srch and keep (rewritten through pgcloak) and p1
	// (plain), and runs each once.
	setup := wRound(
		wOne(wParse("srch", deallocSearch), wParse("keep", deallocSearch), wParse("p1", deallocPlain)),
		wExec("srch", ssn), wExec("keep", ssn), wExec("p1", "x"))
	// after runs what is left, and counts what PostgreSQL holds.
	after := wRound(wExec("keep", ssn), wRun(deallocCount))
	scripts := []struct {
		name   string
		rounds [][]pgproto3.FrontendMessage
	}{
		{"unnamed", [][]pgproto3.FrontendMessage{setup,
			wRun(`DEALLOCATE srch`),
			wExec("srch", ssn),
			wRun(`DEALLOCATE p1`),
			wExec("p1", "x"),
			wRound(wOne(wParse("srch", deallocSearch)), wExec("srch", ssn)),
			after}},
		{"prepare form", [][]pgproto3.FrontendMessage{setup,
			wRun(`deallocate prepare "srch"`),
			wExec("srch", ssn),
			wRun(`DEALLOCATE PREPARE p1`),
			after}},
		{"unknown name", [][]pgproto3.FrontendMessage{setup,
			wRun(`DEALLOCATE nosuch`),
			wRun(`DEALLOCATE "pgcloak"`),
			after}},
		{"named and described", [][]pgproto3.FrontendMessage{setup,
			wOne(wParse("d", `DEALLOCATE srch`), wDescribe('S', "d"), wParse("dp", `DEALLOCATE p1`), wDescribe('S', "dp")),
			wRound(wOne(wBind("", "d"), wDescribe('P', ""), wExecute("")), wExec("dp")),
			wExec("srch", ssn),
			wExec("d"), // twice: the statement is gone
			wExec("dp"),
			wRound(wOne(wParse("srch", deallocSearch)), wExec("srch", ssn)),
			wOne(&pgproto3.Close{ObjectType: 'S', Name: "d"}, wParse("d", `DEALLOCATE srch`)),
			wRound(wExec("d"), wExec("srch", ssn)),
			after}},
		{"named portal", [][]pgproto3.FrontendMessage{setup,
			wOne(wParse("d", `DEALLOCATE srch`), wBind("pd", "d"), wBind("", "keep", ssn), wExecute(""), wExecute("pd")),
			wExec("srch", ssn),
			after}},
		{"all", [][]pgproto3.FrontendMessage{setup,
			wRun(`DEALLOCATE ALL`),
			wExec("srch", ssn),
			wExec("keep", ssn),
			wExec("p1", "x"),
			wRound(wOne(wParse("srch", deallocSearch), wParse("keep", deallocSearch), wParse("p1", deallocPlain)),
				wExec("srch", ssn), wExec("p1", "y")),
			wOne(wParse("da", `deallocate prepare all`), wDescribe('S', "da"), wBind("", "da"), wExecute("")),
			wExec("srch", ssn),
			wRound(wOne(wParse("keep", deallocSearch)), after)}},
		{"pipeline", [][]pgproto3.FrontendMessage{setup,
			// Several statements before one Sync: the name is free
			// again for the Parse after the DEALLOCATE.
			wRound(wExec("srch", ssn),
				wRun(`DEALLOCATE srch`),
				wRun(`DEALLOCATE PREPARE p1`),
				wOne(wParse("srch", deallocSearch), wParse("p1", deallocPlain)),
				wExec("srch", ssn), wExec("p1", "y"),
				wRun(`DEALLOCATE srch`),
				wExec("keep", ssn)),
			wExec("srch", ssn),
			// An unknown name fails the rest of the pipeline; what ran
			// before it stays done, and the name of a Parse skipped
			// after it is free.
			wRound(wRun(`DEALLOCATE p1`), wRun(`DEALLOCATE nosuch`), wOne(wParse("srch", deallocSearch))),
			wExec("p1", "z"),
			wExec("srch", ssn),
			wRound(wOne(wParse("srch", deallocSearch)), wExec("srch", ssn)),
			after}},
		{"pipeline in a transaction", [][]pgproto3.FrontendMessage{setup,
			wRound(wRun(`BEGIN`), wRun(`DEALLOCATE srch`), wOne(wParse("srch", deallocSearch)), wExec("srch", ssn), wRun(`DEALLOCATE ALL`), wRun(`COMMIT`)),
			wExec("keep", ssn),
			wRun(deallocCount)}},
	}
	for _, sc := range scripts {
		t.Run(sc.name, func(t *testing.T) {
			want := wTranscript(t, hijack(t, env.pg.SuperuserURL(env.db)), sc.rounds)
			got := wTranscript(t, hijack(t, env.proxy.url(acmeRole, rolePassword, env.db)), sc.rounds)
			for i := range want {
				if !slices.Equal(got[i], want[i]) {
					t.Errorf("round %d: got %v, want PostgreSQL's %v", i, got[i], want[i])
				}
			}
		})
	}
}

// pipelineOutcomes reads a pgconn pipeline's results up to and including
// its next sync: "prepared", a command tag with the rows' first fields, or
// the error's SQLSTATE.
func pipelineOutcomes(t *testing.T, p *pgconn.Pipeline) []string {
	t.Helper()
	var out []string
	for {
		res, err := p.GetResults()
		if err != nil {
			out = append(out, "error "+pgCode(err))
			continue
		}
		switch r := res.(type) {
		case *pgconn.StatementDescription:
			out = append(out, "prepared")
		case *pgconn.ResultReader:
			rr := r.Read()
			if rr.Err != nil {
				out = append(out, "error "+pgCode(rr.Err))
				continue
			}
			line := rr.CommandTag.String()
			for _, row := range rr.Rows {
				line += " " + string(row[0])
			}
			out = append(out, line)
		case *pgconn.PipelineSync:
			return append(out, "sync")
		case nil:
			t.Fatalf("pipeline ended without a sync after %v", out)
		}
	}
}

// TestDeallocateExtendedPgconn: pgconn's own calls (ExecParams, Prepare,
// ExecPrepared, a pipeline) through pgcloak: SQL DEALLOCATE of a statement
// pgcloak prepared under its own name drops that statement upstream and
// the name is free again; a SQL DEALLOCATE, EXECUTE or PREPARE naming one
// of pgcloak's own statements is refused over the extended protocol too,
// named, unnamed and in a pipeline, and the statement stays the client's.
func TestDeallocateExtendedPgconn(t *testing.T) {
	conn := aliceConn(t)
	ctx := ctxT(t)
	const search = `select name from patients where ssn = $1`
	ssn := [][]byte{[]byte("123-45-6789")}
	find := func(stmt string) (string, error) {
		res := conn.ExecPrepared(ctx, stmt, ssn, nil, nil).Read()
		if res.Err != nil {
			return "", res.Err
		}
		if len(res.Rows) != 1 {
			return "", fmt.Errorf("%s: %d rows, want 1", stmt, len(res.Rows))
		}
		return string(res.Rows[0][0]), nil
	}
	// own lists pgcloak's own statements upstream.
	own := func() []string {
		t.Helper()
		res := conn.ExecParams(ctx, `select name from pg_prepared_statements where name like 'pgcloak:s%' order by name`, nil, nil, nil, nil).Read()
		fatalIf(t, res.Err, "pg_prepared_statements")
		var names []string
		for _, r := range res.Rows {
			names = append(names, string(r[0]))
		}
		return names
	}
	exec := func(sql string) (string, error) {
		res := conn.ExecParams(ctx, sql, nil, nil, nil, nil).Read()
		return res.CommandTag.String(), res.Err
	}

	t.Run("unnamed", func(t *testing.T) {
		_, err := conn.Prepare(ctx, "s", search, nil)
		fatalIf(t, err, "prepare s")
		upstream := own()
		tag, err := exec(`DEALLOCATE s`)
		fatalIf(t, err, "DEALLOCATE s")
		mustEqual(t, "tag", tag, "DEALLOCATE")
		_, err = find("s")
		mustEqual(t, "execute s after DEALLOCATE", pgCode(err), "26000")
		if got := own(); len(got) != len(upstream)-1 {
			t.Errorf("pgcloak's statements upstream: got %v, want one fewer than %v", got, upstream)
		}
		_, err = conn.Prepare(ctx, "s", search, nil)
		fatalIf(t, err, "prepare s again")
		name, err := find("s")
		fatalIf(t, err, "execute s again")
		mustEqual(t, "found", name, "alice")
	})
	t.Run("named and described", func(t *testing.T) {
		sd, err := conn.Prepare(ctx, "d", `DEALLOCATE PREPARE "s"`, nil)
		fatalIf(t, err, "prepare d")
		if len(sd.ParamOIDs) != 0 || len(sd.Fields) != 0 {
			t.Errorf("description of d: got parameters %v and fields %v, want none", sd.ParamOIDs, sd.Fields)
		}
		res := conn.ExecPrepared(ctx, "d", nil, nil, nil).Read()
		fatalIf(t, res.Err, "execute d")
		mustEqual(t, "tag", res.CommandTag.String(), "DEALLOCATE")
		res = conn.ExecPrepared(ctx, "d", nil, nil, nil).Read()
		mustEqual(t, "execute d again", pgCode(res.Err), "26000")
		_, err = find("s")
		mustEqual(t, "execute s after DEALLOCATE", pgCode(err), "26000")
	})
	t.Run("unknown name", func(t *testing.T) {
		_, err := exec(`DEALLOCATE nosuch`)
		mustEqual(t, "code", pgCode(err), "26000")
		mustEqual(t, "message", pgMessage(err), `prepared statement "nosuch" does not exist`)
	})
	t.Run("all", func(t *testing.T) {
		_, err := conn.Prepare(ctx, "s", search, nil)
		fatalIf(t, err, "prepare s")
		tag, err := exec(`DEALLOCATE ALL`)
		fatalIf(t, err, "DEALLOCATE ALL")
		mustEqual(t, "tag", tag, "DEALLOCATE ALL")
		if got := own(); len(got) != 0 {
			t.Errorf("pgcloak's statements upstream after DEALLOCATE ALL: got %v, want none", got)
		}
		_, err = find("s")
		mustEqual(t, "execute s after DEALLOCATE ALL", pgCode(err), "26000")
	})
	t.Run("pipeline", func(t *testing.T) {
		p := conn.StartPipeline(ctx)
		p.SendPrepare("s", search, nil)
		p.SendQueryPrepared("s", ssn, nil, nil)
		p.SendQueryParams(`DEALLOCATE s`, nil, nil, nil, nil)
		p.SendPrepare("s", search, nil)
		p.SendQueryPrepared("s", ssn, nil, nil)
		p.SendQueryParams(`DEALLOCATE PREPARE s`, nil, nil, nil, nil)
		p.SendPrepare("s", search, nil)
		p.SendQueryParams(`SELECT 1`, nil, nil, nil, nil)
		fatalIf(t, p.Sync(), "sync")
		got := pipelineOutcomes(t, p)
		want := []string{"prepared", "SELECT 1 alice", "DEALLOCATE", "prepared", "SELECT 1 alice", "DEALLOCATE", "prepared", "SELECT 1 1", "sync"}
		if !slices.Equal(got, want) {
			t.Errorf("pipeline: got %v, want %v", got, want)
		}
		fatalIf(t, p.Close(), "close pipeline")
		if got := own(); len(got) != 1 {
			t.Errorf("pgcloak's statements upstream: got %v, want the one s", got)
		}
		name, err := find("s")
		fatalIf(t, err, "execute s after the pipeline")
		mustEqual(t, "found", name, "alice")
	})
	t.Run("reserved names", func(t *testing.T) {
		names := own()
		if len(names) != 1 {
			t.Fatalf("pgcloak's statements upstream: got %v, want the one s", names)
		}
		quoted := `"` + names[0] + `"`
		refused := []string{
			`DEALLOCATE ` + quoted,
			`DEALLOCATE PREPARE ` + quoted,
			`deallocate U&"pgcloak\003a` + names[0][len(reservedPrefix):] + `"`,
			`EXECUTE ` + quoted + `('999-99-9999')`,
			`PREPARE "pgcloak:s999" AS SELECT 1`,
		}
		for _, sql := range refused {
			_, err := exec(sql)
			wantRefusal(t, "unnamed "+sql, err, "42501")
			_, err = conn.Prepare(ctx, "r", sql, nil)
			wantRefusal(t, "named "+sql, err, "42501")
			p := conn.StartPipeline(ctx)
			p.SendQueryParams(`SELECT 1`, nil, nil, nil, nil)
			p.SendQueryParams(sql, nil, nil, nil, nil)
			p.SendQueryParams(`SELECT 2`, nil, nil, nil, nil)
			fatalIf(t, p.Sync(), "sync")
			got := pipelineOutcomes(t, p)
			if len(got) < 2 || got[0] != "SELECT 1 1" || got[1] != "error 42501" || got[len(got)-1] != "sync" {
				t.Errorf("pipeline with %s: got %v, want SELECT 1, a 42501 refusal, and nothing run up to the sync", sql, got)
			}
			fatalIf(t, p.Close(), "close pipeline")
		}
		if got := own(); !slices.Equal(got, names) {
			t.Errorf("pgcloak's statements upstream: got %v, want %v as before", got, names)
		}
		name, err := find("s")
		fatalIf(t, err, "execute s afterwards")
		mustEqual(t, "found", name, "alice")
	})
}
