package migrate

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcloak/pgcloak/config"
	"github.com/pgcloak/pgcloak/crypto"
	"github.com/pgcloak/pgcloak/keystore"
	"github.com/pgcloak/pgcloak/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.RunMain(m)) }

// patients is the declared table of these tests: a searchable ssn in the
// default key class and a date of birth in class "phi".
var patients = config.Table{
	Schema: "public",
	Name:   "patients",
	Columns: []config.Column{
		{Name: "ssn", Type: "text", Search: config.SearchEquality, IndexColumn: "ssn_bidx", Normalize: config.NormalizeNone},
		{Name: "dob", Type: "date", Search: config.SearchNone, Normalize: config.NormalizeNone, KeyClass: "phi"},
	},
}

var (
	ssnCol = crypto.Column{Table: "public.patients", Name: "ssn"}
	dobCol = crypto.Column{Table: "public.patients", Name: "dob", KeyClass: "phi"}
)

// env is one test's database with the patients table, a key store and a
// provider.
type env struct {
	pg       *testenv.Postgres
	db       string
	pool     *pgxpool.Pool // superuser: bypasses row-level security
	store    *keystore.Store
	pinner   *keystore.Pinner // pins a tenant as the proxy does
	provider crypto.Provider
}

func newEnv(t *testing.T) *env {
	t.Helper()
	pg := testenv.Shared(t)
	e := &env{pg: pg, db: testenv.NewDatabase(t, pg)}
	ctx := t.Context()
	e.pool = e.connect(t, testenv.SuperuserName, testenv.SuperuserPassword)
	var err error
	if e.pinner, err = keystore.EnsurePin(ctx, e.pool, "app.tenant_id"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.pinner.Close)
	if err := pg.Exec(ctx, e.db, `
create table patients (
	id bigint primary key,
	tenant_id text,
	name text,
	ssn bytea, ssn_bidx bytea,
	dob bytea
);
alter table patients enable row level security;
alter table patients force row level security;
create policy tenant_isolation on patients
	using (tenant_id = pgcloak.current_tenant())
	with check (tenant_id = pgcloak.current_tenant());`); err != nil {
		t.Fatal(err)
	}
	if e.store, err = keystore.Open(ctx, e.pool); err != nil {
		t.Fatal(err)
	}
	key := make([]byte, 32)
	rand.Read(key)
	if e.provider, err = crypto.NewLocalProvider(key); err != nil {
		t.Fatal(err)
	}
	return e
}

func (e *env) connect(t *testing.T, user, password string) *pgxpool.Pool {
	t.Helper()
	pc, err := pgxpool.ParseConfig(e.pg.URL(user, password, e.db))
	if err != nil {
		t.Fatal(err)
	}
	pc.MaxConns = 3
	pool, err := pgxpool.NewWithConfig(t.Context(), pc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// cache returns a fresh key cache, as a new process would have.
func (e *env) cache(t *testing.T) *crypto.KeyCache {
	t.Helper()
	c := crypto.NewKeyCache(e.store, e.provider, crypto.CacheOptions{})
	t.Cleanup(c.Close)
	return c
}

// patient is a row in plaintext.
type patient struct {
	id          int64
	tenant, ssn string
	dob         string
}

func tenantOf(i int) string {
	if i%2 == 0 {
		return "acme"
	}
	return "globex"
}

func makePatients(n int) []patient {
	ps := make([]patient, n)
	for i := range ps {
		ps[i] = patient{id: int64(i + 1), tenant: tenantOf(i), ssn: fmt.Sprintf("%03d-45-%04d", i%1000, i), dob: fmt.Sprintf("19%02d-01-%02d", 50+i%50, 1+i%28)}
	}
	return ps
}

// write seals ps with the tenants' active keys and loads them with COPY.
func (e *env) write(t *testing.T, ps []patient) {
	t.Helper()
	ctx := t.Context()
	c := e.cache(t)
	rows := make([][]any, len(ps))
	for i, p := range ps {
		kr := c.Keyring(p.tenant)
		ssn, err := kr.Seal(ctx, nil, []byte(p.ssn), ssnCol)
		if err != nil {
			t.Fatal(err)
		}
		idx, err := kr.BlindIndex(ctx, nil, []byte(p.ssn), ssnCol, crypto.NormalizeNone)
		if err != nil {
			t.Fatal(err)
		}
		dob, err := kr.Seal(ctx, nil, []byte(p.dob), dobCol)
		if err != nil {
			t.Fatal(err)
		}
		rows[i] = []any{p.id, p.tenant, "name", ssn, idx, dob}
	}
	if _, err := e.pool.CopyFrom(ctx, pgx.Identifier{"patients"}, []string{"id", "tenant_id", "name", "ssn", "ssn_bidx", "dob"}, pgx.CopyFromRows(rows)); err != nil {
		t.Fatal(err)
	}
}

// rotate makes a new active data key for both classes of every tenant.
func (e *env) rotate(t *testing.T, purpose crypto.Purpose, tenants ...string) {
	t.Helper()
	for _, tenant := range tenants {
		classes := []string{"", "phi"}
		if purpose == crypto.PurposeIndex {
			classes = []string{""}
		}
		for _, class := range classes {
			if _, err := e.store.Rotate(t.Context(), e.provider, tenant, class, purpose); err != nil {
				t.Fatal(err)
			}
		}
	}
}

type stored struct {
	tenant         string
	ssn, idx, dob  []byte
	ssnVer, dobVer uint32
}

func (e *env) read(t *testing.T) map[int64]stored {
	t.Helper()
	rows, err := e.pool.Query(t.Context(), "select id, tenant_id, ssn, ssn_bidx, dob from patients")
	if err != nil {
		t.Fatal(err)
	}
	out := map[int64]stored{}
	var (
		id int64
		s  stored
	)
	_, err = pgx.ForEachRow(rows, []any{&id, &s.tenant, &s.ssn, &s.idx, &s.dob}, func() error {
		s.ssnVer, _ = crypto.KeyVersion(s.ssn)
		s.dobVer, _ = crypto.KeyVersion(s.dob)
		out[id] = s
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// check opens every row with a fresh cache and compares it with ps, and
// checks the data key versions.
func (e *env) check(t *testing.T, ps []patient, wantVersion uint32) {
	t.Helper()
	ctx := t.Context()
	c := e.cache(t)
	got := e.read(t)
	if len(got) != len(ps) {
		t.Fatalf("rows: got %d, want %d", len(got), len(ps))
	}
	bad := 0
	for _, p := range ps {
		s := got[p.id]
		kr := c.Keyring(p.tenant)
		ssn, err1 := kr.Open(ctx, nil, s.ssn, ssnCol)
		dob, err2 := kr.Open(ctx, nil, s.dob, dobCol)
		idx, err3 := kr.BlindIndex(ctx, nil, []byte(p.ssn), ssnCol, crypto.NormalizeNone)
		if err := errors.Join(err1, err2, err3); err != nil || string(ssn) != p.ssn || string(dob) != p.dob ||
			!bytes.Equal(idx, s.idx) || s.ssnVer != wantVersion || s.dobVer != wantVersion {
			if bad++; bad <= 5 {
				t.Errorf("row %d: versions %d/%d, opens %v, same plaintext %v, index matches %v; want version %d, same plaintext and index",
					p.id, s.ssnVer, s.dobVer, err, string(ssn) == p.ssn && string(dob) == p.dob, bytes.Equal(idx, s.idx), wantVersion)
			}
		}
	}
	if bad > 0 {
		t.Errorf("%d of %d rows wrong", bad, len(ps))
	}
}

// countingProgress records what a run reported.
type countingProgress struct{ total, done int64 }

func (p *countingProgress) AddTotal(n int64) { p.total += n }
func (p *countingProgress) Done(n int64)     { p.done += n }

func (e *env) reencrypt(t *testing.T, ctx context.Context, o ReencryptOptions) (Stats, error) {
	t.Helper()
	o.Pool = e.pool
	o.Keys = e.cache(t)
	o.Store = e.store
	o.Pinner = e.pinner
	if o.Tables == nil {
		o.Tables = []config.Table{patients}
	}
	return Reencrypt(ctx, o)
}

func TestReencrypt(t *testing.T) {
	e := newEnv(t)
	ps := makePatients(120)
	e.write(t, ps)
	e.check(t, ps, 1)
	e.rotate(t, crypto.PurposeData, "acme", "globex")

	var p countingProgress
	st, err := e.reencrypt(t, t.Context(), ReencryptOptions{Options: Options{BatchSize: 7, Progress: &p}})
	if err != nil {
		t.Fatal(err)
	}
	if st.Updated != 120 || st.Left() != 0 || st.Visited != 120 {
		t.Errorf("stats: got %+v, want 120 rows updated and visited, none left", st)
	}
	if p.total != 120 || p.done != 120 {
		t.Errorf("progress: got %d of %d, want 120 of 120", p.done, p.total)
	}
	e.check(t, ps, 2)

	t.Run("second run has nothing to do", func(t *testing.T) {
		st, err := e.reencrypt(t, t.Context(), ReencryptOptions{Options: Options{BatchSize: 7}})
		if err != nil || st.Updated != 0 || st.Visited != 0 {
			t.Errorf("got %+v, %v; want nothing visited", st, err)
		}
	})

	t.Run("one tenant", func(t *testing.T) {
		e.rotate(t, crypto.PurposeData, "acme")
		st, err := e.reencrypt(t, t.Context(), ReencryptOptions{Options: Options{Tenant: "acme", BatchSize: 50}})
		if err != nil || st.Updated != 60 {
			t.Errorf("got %+v, %v; want acme's 60 rows updated", st, err)
		}
		got := e.read(t)
		for _, p := range ps {
			want := uint32(2)
			if p.tenant == "acme" {
				want = 3
			}
			if s := got[p.id]; s.ssnVer != want || s.dobVer != want {
				t.Fatalf("row %d of %s: versions %d/%d, want %d", p.id, p.tenant, s.ssnVer, s.dobVer, want)
			}
		}
	})
}

// TestReencryptResume cancels a run after two batches and finishes the
// work with a second run.
func TestReencryptResume(t *testing.T) {
	e := newEnv(t)
	ps := makePatients(100)
	e.write(t, ps)
	e.rotate(t, crypto.PurposeData, "acme", "globex")

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	o := ReencryptOptions{Options: Options{BatchSize: 10, beforeWrite: func(_ context.Context, batch int) {
		if batch == 3 {
			cancel() // batch 3's updates never commit
		}
	}}}
	st, err := e.reencrypt(t, ctx, o)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("interrupted run: got %v, want context.Canceled", err)
	}
	if st.Updated != 20 || st.Batches != 2 {
		t.Errorf("interrupted run: got %+v, want 2 batches and 20 rows committed", st)
	}
	old := 0
	for _, s := range e.read(t) {
		if s.ssnVer == 1 {
			old++
		}
	}
	if old != 80 {
		t.Errorf("after the interruption: %d rows at version 1, want 80", old)
	}

	st, err = e.reencrypt(t, t.Context(), ReencryptOptions{Options: Options{BatchSize: 10}})
	if err != nil || st.Updated != 80 || st.Left() != 0 {
		t.Errorf("second run: got %+v, %v; want the other 80 rows updated", st, err)
	}
	e.check(t, ps, 2)
}

// TestReencryptConcurrentUpdate races the application's writes with a
// batch: one committed between the batch's SELECT and its UPDATEs, one
// holding its row lock while the batch's UPDATE waits for it. Both writes
// must survive.
func TestReencryptConcurrentUpdate(t *testing.T) {
	e := newEnv(t)
	ps := makePatients(30)
	e.write(t, ps)
	e.rotate(t, crypto.PurposeData, "acme", "globex")

	ctx := t.Context()
	app := e.cache(t).Keyring("acme") // rows 1 and 3 are acme's
	seal := func(ssn string) []byte {
		v, err := app.Seal(ctx, nil, []byte(ssn), ssnCol)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	var wg sync.WaitGroup
	o := ReencryptOptions{Options: Options{BatchSize: 10, beforeWrite: func(_ context.Context, batch int) {
		if batch != 1 {
			return
		}
		if _, err := e.pool.Exec(ctx, "update patients set ssn = $1 where id = 1", seal("new-1")); err != nil {
			t.Error(err)
		}
		tx, err := e.pool.Begin(ctx)
		if err != nil {
			t.Error(err)
			return
		}
		if _, err := tx.Exec(ctx, "update patients set ssn = $1 where id = 3", seal("new-3")); err != nil {
			t.Error(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			time.Sleep(300 * time.Millisecond) // the batch's UPDATE of row 3 waits for this
			if err := tx.Commit(ctx); err != nil {
				t.Error(err)
			}
		}()
	}}}
	st, err := e.reencrypt(t, ctx, o)
	wg.Wait()
	if err != nil {
		t.Fatal(err)
	}
	// Rows 1 and 3 race in the first pass; the second pass re-encrypts
	// their dob, which the application did not write.
	if st.Updated != 30 || st.Visited != 32 || st.Left() != 0 {
		t.Errorf("stats: got %+v, want 30 rows updated (2 in a second pass), 32 visited, none left", st)
	}
	got := e.read(t)
	for id, want := range map[int64]string{1: "new-1", 3: "new-3"} {
		v, err := app.Open(ctx, nil, got[id].ssn, ssnCol)
		if err != nil || string(v) != want {
			t.Errorf("row %d: got %q, %v; want the application's %q", id, v, err, want)
		}
	}
	for _, p := range ps {
		if s := got[p.id]; s.ssnVer != 2 || s.dobVer != 2 {
			t.Errorf("row %d: versions %d/%d, want 2", p.id, s.ssnVer, s.dobVer)
		}
	}
}

// TestReencryptReindex rotates acme's index key: without --reindex the
// index columns stay; with it, acme's are recomputed and globex's, already
// current, are not written.
func TestReencryptReindex(t *testing.T) {
	e := newEnv(t)
	ps := makePatients(40)
	e.write(t, ps)
	before := e.read(t)
	e.rotate(t, crypto.PurposeIndex, "acme")

	st, err := e.reencrypt(t, t.Context(), ReencryptOptions{Options: Options{BatchSize: 6}})
	if err != nil || st.Updated != 0 {
		t.Errorf("without reindex: got %+v, %v; want nothing updated", st, err)
	}
	st, err = e.reencrypt(t, t.Context(), ReencryptOptions{Options: Options{BatchSize: 6}, Reindex: true})
	if err != nil || st.Updated != 20 || st.Visited != 40 || st.Left() != 0 {
		t.Errorf("reindex: got %+v, %v; want 40 rows visited, acme's 20 updated", st, err)
	}
	after := e.read(t)
	for _, p := range ps {
		if !bytes.Equal(after[p.id].ssn, before[p.id].ssn) {
			t.Errorf("row %d: ciphertext changed, want it kept (data key not rotated)", p.id)
		}
		changed := !bytes.Equal(after[p.id].idx, before[p.id].idx)
		if changed != (p.tenant == "acme") {
			t.Errorf("row %d of %s: index changed %v", p.id, p.tenant, changed)
		}
	}
	e.check(t, ps, 1) // the index matches the active index key everywhere
}

// TestReencryptLeavesWhatItCannotOpen: a value moved to another tenant's
// row does not open and is left alone; a shredded tenant is skipped.
func TestReencryptLeavesWhatItCannotOpen(t *testing.T) {
	e := newEnv(t)
	ps := makePatients(10)
	e.write(t, ps)
	ctx := t.Context()
	// Row 1 is acme's; give it globex's row 2 ciphertext.
	if _, err := e.pool.Exec(ctx, "update patients set ssn = (select ssn from patients where id = 2) where id = 1"); err != nil {
		t.Fatal(err)
	}
	e.rotate(t, crypto.PurposeData, "acme", "globex")
	if _, err := e.store.Shred(ctx, "globex"); err != nil {
		t.Fatal(err)
	}
	before := e.read(t)
	st, err := e.reencrypt(t, ctx, ReencryptOptions{Options: Options{BatchSize: 3}})
	if err != nil {
		t.Fatal(err)
	}
	if st.Undecryptable != 1 || !slices.Equal(st.ShreddedTenants, []string{"globex"}) || st.Updated != 5 {
		t.Errorf("stats: got %+v, want 1 undecryptable, globex shredded, acme's 5 rows updated", st)
	}
	after := e.read(t)
	if !bytes.Equal(after[1].ssn, before[1].ssn) || !bytes.Equal(after[2].ssn, before[2].ssn) {
		t.Errorf("values that do not open were changed")
	}
	if after[1].dobVer != 2 {
		t.Errorf("row 1's dob: version %d, want 2 (its other value opens)", after[1].dobVer)
	}
}

// TestReencryptUnderRowSecurity: reencrypt visits one tenant at a time
// with tenancy.setting set, so a login subject to row-level security
// re-encrypts every tenant's rows.
func TestReencryptUnderRowSecurity(t *testing.T) {
	e := newEnv(t)
	ps := makePatients(20)
	e.write(t, ps)
	e.rotate(t, crypto.PurposeData, "acme", "globex")
	pool := e.rlsRole(t, "patients")
	st, err := Reencrypt(t.Context(), ReencryptOptions{
		Options: Options{Pool: pool, Keys: e.cache(t), Pinner: e.pinner, BatchSize: 4},
		Tables:  []config.Table{patients},
		Store:   e.store,
	})
	if err != nil || st.Updated != 20 {
		t.Errorf("got %+v, %v; want all 20 rows", st, err)
	}
	e.check(t, ps, 2)
}

// rlsRole returns a pool of a login that is subject to row-level security
// on table and may read and update it.
func (e *env) rlsRole(t *testing.T, table string) *pgxpool.Pool {
	t.Helper()
	const role, password = "migrate_rls_user", "migrate-rls-pw"
	if err := e.pg.Exec(t.Context(), e.db, fmt.Sprintf(`
do $$ begin
  if not exists (select from pg_roles where rolname = '%[1]s') then create role %[1]s login password '%[2]s'; end if;
end $$;
grant select, update on %[3]s to %[1]s;`, role, password, table)); err != nil {
		t.Fatal(err)
	}
	return e.connect(t, role, password)
}

func TestSchemaRefusals(t *testing.T) {
	e := newEnv(t)
	if err := e.pg.Exec(t.Context(), e.db, `create table nokey (tenant_id text, ssn bytea, ssn_bidx bytea);
create table texty (id int primary key, tenant_id text, ssn text, ssn_bidx bytea);`); err != nil {
		t.Fatal(err)
	}
	decl := func(name string) config.Table {
		d := patients
		d.Name = name
		d.Columns = d.Columns[:1]
		return d
	}
	tests := []struct {
		name    string
		table   config.Table
		tcol    string
		problem string
	}{
		{"missing table", decl("nosuch"), "", "no such table"},
		{"no primary key", decl("nokey"), "", "has no primary key"},
		{"missing tenant column", patients, "org_id", "no such column"},
		{"plaintext column", decl("texty"), "", "is text, not bytea"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := e.reencrypt(t, t.Context(), ReencryptOptions{Options: Options{TenantColumn: tt.tcol}, Tables: []config.Table{tt.table}})
			var se *SchemaError
			if !errors.As(err, &se) || !bytes.Contains([]byte(se.Problem), []byte(tt.problem)) {
				t.Errorf("got %v, want a SchemaError saying %q", err, tt.problem)
			}
		})
	}
}
