package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/pgcloak/pgcloak/crypto"
	"github.com/pgcloak/pgcloak/testenv"
)

// Tenant role of TestReencryptWhileWritingThroughProxy (roles are
// cluster-wide).
const (
	reencAcmeRole = "cmd_reenc_acme"
	reencRolePass = "cmd-reenc-tenant-pw"
)

// reencRows is how many rows acme writes before the rotation.
const reencRows = 2000

// reencValues are the plaintexts of one row's two encrypted columns.
type reencValues struct{ ssn, diagnosis string }

// reencLedger records, per row, the values whose UPDATE through the proxy
// committed last. A writer holds the row's lock from before its UPDATE
// until after it has recorded the values, so the record of a row follows
// the order in which its UPDATEs committed.
type reencLedger struct {
	rows []sync.Mutex // index id-1: serialises the writers of one row

	mu   sync.Mutex
	last map[int]reencValues // rows written since the rotation
}

// TestReencryptWhileWritingThroughProxy runs "pgcloak reencrypt" after a
// rotation while four writers keep updating acme's rows through serve: an
// interrupted run, a run to the end with the writers still going, and a
// last run once they stop. Every value ends under the active version, and
// every row reads back through the proxy as the last value committed to it
// (or its original one): the compare-and-set of each batch loses no write
// of the application's.
func TestReencryptWhileWritingThroughProxy(t *testing.T) {
	pg := testenv.Shared(t)
	db := testenv.NewDatabase(t, pg)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()

	setup := tenantRolesSQL(reencRolePass, reencAcmeRole) +
		rlsTableSQL("patients", `id int primary key,
	tenant_id text not null default pgcloak.current_tenant(),
	ssn bytea, ssn_bidx bytea, diagnosis bytea`) +
		fmt.Sprintf(`grant select, insert, update on patients to %[1]s;
grant select, update on patients to %[3]s;
grant create on database %[2]s to %[3]s;`, reencAcmeRole, db, testenv.ScramUser)
	if err := pg.Exec(ctx, db, setup); err != nil {
		t.Fatal(err)
	}
	keyFile := initLocalKey(t)
	edit := func(cfg string) string {
		return useKeyFile(cfg, keyFile) + fmt.Sprintf(`tenancy:
  login:
    roles:
      %s: acme
encrypt:
  tables:
    - name: patients
      columns:
        - name: ssn
          type: text
          search: equality
        - name: diagnosis
          type: text
audit:
  output: stdout
`, reencAcmeRole)
	}
	config := writeFile(t, "pgcloak.yaml", edit(checkConfig(pg.Addr(), "disable", "", testenv.ScramUser, testenv.ScramPassword, db)))
	s := startServe(t, pg, db, schemaApplied(t, pg, db, edit))
	direct, err := pgx.Connect(ctx, pg.SuperuserURL(db))
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close(context.Background())

	// acme's rows, sealed under version 1.
	original := func(id int) reencValues {
		return reencValues{fmt.Sprintf("orig-ssn-%04d", id), fmt.Sprintf("orig-dx-%04d", id)}
	}
	acme := s.connectAs(t, reencAcmeRole, reencRolePass, db)
	for from := 1; from <= reencRows; from += 100 {
		var b strings.Builder
		b.WriteString("insert into patients (id, ssn, diagnosis) values ")
		for id := from; id < from+100 && id <= reencRows; id++ {
			if id > from {
				b.WriteString(", ")
			}
			v := original(id)
			fmt.Fprintf(&b, "(%d, '%s', '%s')", id, v.ssn, v.diagnosis)
		}
		if _, err := acme.Exec(ctx, b.String()); err != nil {
			t.Fatalf("insert rows from %d: %v", from, err)
		}
	}

	r := pgcloak(t, "keys", "rotate", "-c", config, "--tenant", "acme")
	if r.code != 0 || !strings.Contains(r.stdout, "version 2 is active") {
		t.Fatalf("keys rotate: exit %d, stdout %q", r.code, r.stdout)
	}
	const active = 2
	waitFor(t, "serve to receive the rotation", func() bool {
		return strings.Contains(s.stdout.String(), `"event":"key_purge_received"`) &&
			strings.Contains(s.stdout.String(), `"kind":"rotate"`)
	})

	// The writers. Each UPDATE sets ssn, diagnosis or both to values
	// never written before; an UPDATE that returns no error has committed
	// (autocommit), and only then is it recorded.
	ledger := &reencLedger{rows: make([]sync.Mutex, reencRows), last: make(map[int]reencValues)}
	var (
		stop    atomic.Bool
		updates atomic.Int64
		writers sync.WaitGroup
	)
	for w := range 4 {
		conn := s.connectAs(t, reencAcmeRole, reencRolePass, db)
		writers.Add(1)
		go func() {
			defer writers.Done()
			for seq := 0; !stop.Load(); seq++ {
				id := 1 + rand.IntN(reencRows)
				ssn, dx := fmt.Sprintf("w%d-ssn-%d", w, seq), fmt.Sprintf("w%d-dx-%d", w, seq)
				var q string
				switch seq % 3 {
				case 0:
					q = fmt.Sprintf("update patients set ssn = '%s' where id = %d", ssn, id)
				case 1:
					q = fmt.Sprintf("update patients set diagnosis = '%s' where id = %d", dx, id)
				default:
					q = fmt.Sprintf("update patients set ssn = '%s', diagnosis = '%s' where id = %d", ssn, dx, id)
				}
				ledger.rows[id-1].Lock()
				tag, err := conn.Exec(ctx, q)
				if err != nil || tag.RowsAffected() != 1 {
					ledger.rows[id-1].Unlock()
					t.Errorf("writer %d: update of row %d: %d rows, %v", w, id, tag.RowsAffected(), err)
					return
				}
				ledger.mu.Lock()
				v, ok := ledger.last[id]
				if !ok {
					v = original(id)
				}
				if seq%3 != 1 {
					v.ssn = ssn
				}
				if seq%3 != 0 {
					v.diagnosis = dx
				}
				ledger.last[id] = v
				ledger.mu.Unlock()
				ledger.rows[id-1].Unlock()
				updates.Add(1)
			}
		}()
	}
	stopWriters := func() {
		if !stop.Swap(true) {
			writers.Wait()
		}
	}
	defer stopWriters()

	// raced counts the rows the runs read but did not rewrite: their
	// compare-and-set lost to a writer. The runs need not race for the
	// test to pass, but the log says whether they did.
	var raced int
	summary := regexp.MustCompile(`re-encrypted (\d+) rows in \d+ batches \((\d+) rows visited\)`)
	reencryptArgs := []string{"reencrypt", "-c", config, "--tenant", "acme", "--batch-size", "50", "--pause", "10ms"}
	countRaced := func(r result) result {
		if m := summary.FindStringSubmatch(r.stdout); m != nil {
			updated, _ := strconv.Atoi(m[1])
			visited, _ := strconv.Atoi(m[2])
			raced += visited - updated
		}
		return r
	}
	reencrypt := func(ctx context.Context) result {
		return countRaced(pgcloakContext(t, ctx, reencryptArgs...))
	}

	// An interrupted run exits 1, still reports what it did, and audits
	// the interruption. It is interrupted a little after it audits its
	// start, when its batches run: on a loaded machine the key store and
	// the privilege check before them can take longer than any fixed delay.
	runCtx, interrupt := context.WithCancel(ctx)
	var runOut, runErr syncBuffer
	go func() {
		for !strings.Contains(runOut.String(), `"event":"reencrypt_started"`) {
			if runCtx.Err() != nil {
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
		time.Sleep(100 * time.Millisecond)
		interrupt()
	}()
	code := run(runCtx, reencryptArgs, &runOut, &runErr)
	interrupt()
	r = countRaced(result{code: code, stdout: runOut.String(), stderr: runErr.String()})
	t.Logf("pgcloak %s: exit %d\nstdout:\n%s\nstderr:\n%s", strings.Join(reencryptArgs, " "), r.code, r.stdout, r.stderr)
	if r.code != 1 || !strings.Contains(r.stderr, "interrupted") {
		t.Fatalf("interrupted reencrypt: exit %d, stderr %q; want 1 and interrupted", r.code, r.stderr)
	}
	if !summary.MatchString(r.stdout) {
		t.Errorf("interrupted reencrypt: stdout %q, want its summary line", r.stdout)
	}
	containsAll(t, "interrupted reencrypt's audit", r.stdout, `"event":"reencrypt_finished"`, `"outcome":"interrupted"`)
	t.Logf("after the interrupted run: %d updates", updates.Load())

	// A run to the end with the writers still going. Rows that race with
	// a writer in a pass are revisited; should one race the last pass, the
	// run says so and the final run below takes it.
	r = reencrypt(ctx)
	if r.code != 0 && !strings.Contains(r.stderr, "changed by the application during the run") {
		t.Fatalf("reencrypt with writers: exit %d, stderr %q", r.code, r.stderr)
	}
	time.Sleep(200 * time.Millisecond) // the writers keep going after it
	stopWriters()
	t.Logf("writers: %d updates of %d rows; %d rows raced with them", updates.Load(), len(ledger.last), raced)
	if updates.Load() < 100 {
		t.Errorf("writers: %d updates, want at least 100 for the test to mean anything", updates.Load())
	}

	r = reencrypt(ctx)
	if r.code != 0 {
		t.Fatalf("final reencrypt: exit %d, stderr %q", r.code, r.stderr)
	}

	t.Run("stored under the active version", func(t *testing.T) {
		rows, err := direct.Query(ctx, "select id, ssn, diagnosis from patients order by id")
		if err != nil {
			t.Fatal(err)
		}
		var (
			id            int
			ssn, dx       []byte
			n, wrongCount int
		)
		if _, err := pgx.ForEachRow(rows, []any{&id, &ssn, &dx}, func() error {
			n++
			for col, v := range map[string][]byte{"ssn": ssn, "diagnosis": dx} {
				if got, err := crypto.KeyVersion(v); err != nil {
					t.Errorf("row %d: stored %s is not in pgcloak's format", id, col)
				} else if got != active {
					if wrongCount++; wrongCount <= 10 {
						t.Errorf("row %d: stored %s has version %d, want %d", id, col, got, active)
					}
				}
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if n != reencRows || wrongCount > 0 {
			t.Errorf("stored: %d rows, %d values under another version; want %d rows, none", n, wrongCount, reencRows)
		}
	})

	t.Run("reads back the last committed values", func(t *testing.T) {
		reader := s.connectAs(t, reencAcmeRole, reencRolePass, db)
		rows, err := reader.Query(ctx, "select id, ssn, diagnosis from patients order by id")
		if err != nil {
			t.Fatal(err)
		}
		seen := make(map[int]bool)
		var (
			id         int
			got        reencValues
			lost, kept int
		)
		if _, err := pgx.ForEachRow(rows, []any{&id, &got.ssn, &got.diagnosis}, func() error {
			seen[id] = true
			want, written := ledger.last[id]
			if !written {
				want = original(id)
				kept++
			}
			if got != want {
				if lost++; lost <= 10 {
					t.Errorf("row %d (written since the rotation: %v): got %+v, want %+v", id, written, got, want)
				}
			}
			return nil
		}); err != nil {
			t.Fatalf("read through the proxy: %v", err)
		}
		if lost > 0 {
			t.Errorf("%d rows do not read back as their last committed values", lost)
		}
		for id := 1; id <= reencRows; id++ {
			if !seen[id] {
				t.Errorf("row %d is missing", id)
			}
		}
		t.Logf("%d rows written by the writers, %d left as inserted", len(seen)-kept, kept)
	})

	if out := s.stdout.String() + s.stderr.String() + r.output(); strings.Contains(out, "-ssn-") || strings.Contains(out, "-dx-") {
		t.Error("serve's or reencrypt's output contains a plaintext value")
	}
}
