package keystore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcloak/pgcloak/crypto"
	"github.com/pgcloak/pgcloak/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.RunMain(m)) }

// testDB is one test's database on the shared server.
type testDB struct {
	pg   *testenv.Postgres
	name string
}

func newTestDB(t *testing.T) testDB {
	t.Helper()
	pg := testenv.Shared(t)
	return testDB{pg: pg, name: testenv.NewDatabase(t, pg)}
}

// pool opens a pool on the test database as the superuser, closed when
// the test ends.
func (db testDB) pool(t *testing.T) *pgxpool.Pool {
	t.Helper()
	return db.poolURL(t, db.pg.SuperuserURL(db.name))
}

// store opens the key store (its schema ensured) over a pool on the test
// database as the superuser.
func (db testDB) store(t *testing.T) *Store {
	t.Helper()
	store, err := Open(context.Background(), db.pool(t))
	if err != nil {
		t.Fatal(err)
	}
	return store
}

func (db testDB) poolURL(t *testing.T, url string) *pgxpool.Pool {
	t.Helper()
	pool, err := pgxpool.New(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

func testProvider(t *testing.T) *crypto.LocalProvider {
	t.Helper()
	key := make([]byte, crypto.KeySize)
	for i := range key {
		key[i] = byte(i * 3)
	}
	p, err := crypto.NewLocalProvider(key)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func countRows(t *testing.T, pool *pgxpool.Pool, where string, args ...any) int {
	t.Helper()
	var n int
	if err := pool.QueryRow(context.Background(), "SELECT count(*) FROM pgcloak.data_keys WHERE "+where, args...).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestEnsureSchemaConcurrent starts eight "replicas" at once on a fresh
// database: all succeed, one table results, and a second round is a no-op.
func TestEnsureSchemaConcurrent(t *testing.T) {
	db := newTestDB(t)
	ctx := context.Background()
	pools := make([]*pgxpool.Pool, 8)
	for i := range pools {
		pools[i] = db.pool(t)
	}
	for round := range 2 {
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i, pool := range pools {
			wg.Go(func() {
				<-start
				if err := EnsureSchema(ctx, pool); err != nil {
					t.Errorf("round %d, replica %d: %v", round, i, err)
				}
			})
		}
		close(start)
		wg.Wait()
	}
	var n int
	if err := pools[0].QueryRow(ctx, `SELECT count(*) FROM pg_tables WHERE schemaname = 'pgcloak' AND tablename = 'data_keys'`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 1 {
		t.Errorf("pgcloak.data_keys tables: got %d, want 1", n)
	}
}

// TestEnsureSchemaPrecreated: a login without CREATE on the database works
// once a DBA has created the table from Schema and granted it DML.
func TestEnsureSchemaPrecreated(t *testing.T) {
	db := newTestDB(t)
	ctx := context.Background()
	admin := db.pool(t)
	role := fmt.Sprintf("keystore_%d", time.Now().UnixNano())
	if _, err := admin.Exec(ctx, Schema); err != nil {
		t.Fatal(err)
	}
	stmts := []string{
		fmt.Sprintf(`CREATE ROLE %s LOGIN PASSWORD 'pw'`, role),
		fmt.Sprintf(`REVOKE CREATE ON DATABASE %s FROM PUBLIC`, db.name),
		fmt.Sprintf(`GRANT USAGE ON SCHEMA pgcloak TO %s`, role),
		fmt.Sprintf(`GRANT SELECT, INSERT, UPDATE ON pgcloak.data_keys TO %s`, role),
	}
	for _, s := range stmts {
		if _, err := admin.Exec(ctx, s); err != nil {
			t.Fatalf("%s: %v", s, err)
		}
	}
	t.Cleanup(func() {
		admin.Exec(context.Background(), fmt.Sprintf(`DROP OWNED BY %s; DROP ROLE %s`, role, role))
	})
	pool := db.poolURL(t, db.pg.URL(role, "pw", db.name))
	store, err := Open(ctx, pool)
	if err != nil {
		t.Fatalf("Open as a login without CREATE: %v", err)
	}
	cache := crypto.NewKeyCache(store, testProvider(t), crypto.CacheOptions{})
	defer cache.Close()
	if _, err := cache.Active(ctx, "acme", "", crypto.PurposeData); err != nil {
		t.Errorf("create a key as that login: %v", err)
	}
}

// TestCreateRace has eight replicas (a pool and a cache each) race for a
// new tenant's key: exactly one row results and every replica got the same
// key.
func TestCreateRace(t *testing.T) {
	db := newTestDB(t)
	ctx := context.Background()
	if err := EnsureSchema(ctx, db.pool(t)); err != nil {
		t.Fatal(err)
	}
	p := testProvider(t)
	const replicas = 8
	caches := make([]*crypto.KeyCache, replicas)
	for i := range caches {
		caches[i] = crypto.NewKeyCache(New(db.pool(t)), p, crypto.CacheOptions{})
		defer caches[i].Close()
	}
	keys := make([]*crypto.DataKey, replicas)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i, c := range caches {
		wg.Go(func() {
			<-start
			k, err := c.Active(ctx, "new-tenant", "phi", crypto.PurposeData)
			if err != nil {
				t.Errorf("replica %d: %v", i, err)
				return
			}
			keys[i] = k
		})
	}
	close(start)
	wg.Wait()

	if n := countRows(t, db.pool(t), "tenant = 'new-tenant'"); n != 1 {
		t.Errorf("rows for the new tenant: got %d, want 1", n)
	}
	// Same key bytes, shown by behaviour: what one replica seals, every
	// other opens.
	id := crypto.ValueID{Tenant: "new-tenant", Table: "public.t", Column: "c"}
	for i, k := range keys {
		if k == nil {
			continue
		}
		if k.ID().Version != 1 {
			t.Errorf("replica %d: got version %d, want 1", i, k.ID().Version)
		}
		sealed := k.Envelope().Seal(nil, []byte("v"), id)
		for j, other := range keys {
			if other == nil {
				continue
			}
			if pt, err := other.Envelope().Open(nil, sealed, id); err != nil || string(pt) != "v" {
				t.Errorf("sealed by replica %d, opened by %d: got %q, %v, want %q, nil", i, j, pt, err, "v")
			}
		}
	}
}

func TestStoreLifecycle(t *testing.T) {
	db := newTestDB(t)
	ctx := context.Background()
	store := db.store(t)
	pool := store.pool
	p := testProvider(t)

	if _, err := store.Active(ctx, "acme", "", crypto.PurposeData); !errors.Is(err, crypto.ErrKeyNotFound) {
		t.Fatalf("Active of a new tenant: got %v, want ErrKeyNotFound", err)
	}
	if _, err := store.Version(ctx, crypto.KeyID{Tenant: "acme", Purpose: crypto.PurposeData, Version: 1}); !errors.Is(err, crypto.ErrKeyNotFound) {
		t.Fatalf("Version of a new tenant: got %v, want ErrKeyNotFound", err)
	}

	// Just-in-time creation, then a loser's attempt returns the winner.
	kc := crypto.KeyContext{Tenant: "acme", Purpose: crypto.PurposeData}
	_, w1, kek, _ := p.GenerateDataKey(ctx, kc)
	first := crypto.WrappedKey{ID: crypto.KeyID{Tenant: "acme", Purpose: crypto.PurposeData, Version: 1}, Wrapped: w1, KEKID: kek}
	got, err := store.CreateIfMissing(ctx, first)
	if err != nil || got.ID != first.ID || string(got.Wrapped) != string(w1) || got.KEKID != kek {
		t.Fatalf("CreateIfMissing: got %+v, %v, want the key given", got.ID, err)
	}
	_, w2, _, _ := p.GenerateDataKey(ctx, kc)
	got, err = store.CreateIfMissing(ctx, crypto.WrappedKey{ID: first.ID, Wrapped: w2, KEKID: kek})
	if err != nil || string(got.Wrapped) != string(w1) {
		t.Fatalf("CreateIfMissing again: got %v, want the first key back", err)
	}
	if _, err := store.CreateIfMissing(ctx, crypto.WrappedKey{ID: crypto.KeyID{Tenant: "acme", Purpose: crypto.PurposeData, Version: 2}, Wrapped: w2}); err == nil {
		t.Error("CreateIfMissing of version 2: got nil error, want one")
	}

	// Rotation: version 2 becomes active, version 1 retired and readable.
	id2, err := store.Rotate(ctx, p, "acme", "", crypto.PurposeData)
	if err != nil {
		t.Fatal(err)
	}
	if id2.Version != 2 {
		t.Errorf("Rotate: got version %d, want 2", id2.Version)
	}
	if a, err := store.Active(ctx, "acme", "", crypto.PurposeData); err != nil || a.ID != id2 {
		t.Errorf("Active after rotation: got %v, %v, want %v", a.ID, err, id2)
	}
	if v1, err := store.Version(ctx, first.ID); err != nil || string(v1.Wrapped) != string(w1) {
		t.Errorf("Version 1 after rotation: got %v, want the first key", err)
	}
	infos, err := store.List(ctx, "acme")
	if err != nil {
		t.Fatal(err)
	}
	if len(infos) != 2 || infos[0].State != StateRetired || infos[1].State != StateActive || infos[1].KEKID != p.KEKID() || infos[0].CreatedAt.IsZero() {
		t.Errorf("List: got %+v, want version 1 retired and version 2 active", infos)
	}

	// Other tenants are untouched by shredding.
	if _, err := store.Rotate(ctx, p, "globex", "", crypto.PurposeIndex); err != nil {
		t.Fatal(err)
	}
	n, err := store.Shred(ctx, "acme")
	if err != nil || n != 2 {
		t.Fatalf("Shred: got %d, %v, want 2, nil", n, err)
	}
	if n := countRows(t, pool, "tenant = 'acme' AND (wrapped IS NOT NULL OR state <> 'shredded')"); n != 0 {
		t.Errorf("acme rows with key material after shred: got %d, want 0", n)
	}
	if _, err := store.Active(ctx, "acme", "", crypto.PurposeData); !errors.Is(err, crypto.ErrKeyShredded) {
		t.Errorf("Active after shred: got %v, want ErrKeyShredded", err)
	}
	if _, err := store.Version(ctx, first.ID); !errors.Is(err, crypto.ErrKeyShredded) {
		t.Errorf("Version after shred: got %v, want ErrKeyShredded", err)
	}
	if _, err := store.CreateIfMissing(ctx, first); !errors.Is(err, crypto.ErrKeyShredded) {
		t.Errorf("CreateIfMissing after shred: got %v, want ErrKeyShredded", err)
	}
	if _, err := store.Active(ctx, "globex", "", crypto.PurposeIndex); err != nil {
		t.Errorf("other tenant after shred: got %v, want its key", err)
	}
	if n, err := store.Shred(ctx, "acme"); err != nil || n != 0 {
		t.Errorf("Shred again: got %d, %v, want 0, nil", n, err)
	}

	// An explicit rotation starts a shredded tenant afresh.
	id3, err := store.Rotate(ctx, p, "acme", "", crypto.PurposeData)
	if err != nil || id3.Version != 3 {
		t.Fatalf("Rotate after shred: got %v, %v, want version 3", id3, err)
	}
	if a, err := store.Active(ctx, "acme", "", crypto.PurposeData); err != nil || a.ID != id3 {
		t.Errorf("Active after the fresh start: got %v, %v, want %v", a.ID, err, id3)
	}
}

// TestKeyringThroughStore runs the keyring on two replicas over the real
// table: values written by one are read by the other, and after a shred
// neither reads them.
func TestKeyringThroughStore(t *testing.T) {
	db := newTestDB(t)
	ctx := context.Background()
	store := db.store(t)
	p := testProvider(t)
	r1 := crypto.NewKeyCache(store, p, crypto.CacheOptions{})
	defer r1.Close()
	r2 := crypto.NewKeyCache(New(db.pool(t)), p, crypto.CacheOptions{})
	defer r2.Close()

	col := crypto.Column{Table: "public.patients", Name: "ssn"}
	sealed, err := r1.Keyring("acme").Seal(ctx, nil, []byte("123-45-6789"), col)
	if err != nil {
		t.Fatal(err)
	}
	if pt, err := r2.Keyring("acme").Open(ctx, nil, sealed, col); err != nil || string(pt) != "123-45-6789" {
		t.Fatalf("replica 2 opens: got %q, %v", pt, err)
	}
	if _, err := r2.Keyring("globex").Open(ctx, nil, sealed, col); err != crypto.ErrDecrypt {
		t.Errorf("another tenant opens: got %v, want ErrDecrypt", err)
	}
	i1, err1 := r1.Keyring("acme").BlindIndex(ctx, nil, []byte("123-45-6789"), col, crypto.NormalizeNone)
	i2, err2 := r2.Keyring("acme").BlindIndex(ctx, nil, []byte("123-45-6789"), col, crypto.NormalizeNone)
	if err1 != nil || err2 != nil {
		t.Fatalf("blind index on two replicas: got errors %v and %v", err1, err2)
	}
	if string(i1) != string(i2) {
		t.Error("blind index on two replicas: got different values")
	}

	if _, err := store.Shred(ctx, "acme"); err != nil {
		t.Fatal(err)
	}
	r1.Purge("acme")
	r2.Purge("acme")
	for i, r := range []*crypto.KeyCache{r1, r2} {
		if _, err := r.Keyring("acme").Open(ctx, nil, sealed, col); err != crypto.ErrDecrypt {
			t.Errorf("replica %d after shred: got %v, want ErrDecrypt", i+1, err)
		}
	}
}

func TestListen(t *testing.T) {
	db := newTestDB(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	store := db.store(t)
	conn, err := pgx.Connect(ctx, db.pg.SuperuserURL(db.name))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())

	events := make(chan Event, 10)
	listenCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	defer func() { stop(); <-done }() // before conn.Close, even on failure
	listening := make(chan struct{})
	go func() {
		// Listen's LISTEN must be in place before the events are sent:
		// signal once the first (probe) notification arrives.
		var once sync.Once
		done <- Listen(listenCtx, conn, func(ev Event) {
			if ev.Tenant == "probe" {
				once.Do(func() { close(listening) })
				return
			}
			events <- ev
		})
	}()
	probe := time.NewTicker(50 * time.Millisecond)
	defer probe.Stop()
wait:
	for {
		store.pool.Exec(ctx, `SELECT pg_notify($1, '{"event":"shred","tenant":"probe"}')`, NotifyChannel)
		select {
		case <-listening:
			break wait
		case <-probe.C:
		case <-ctx.Done():
			t.Fatal("listener never received the probe")
		}
	}

	store.pool.Exec(ctx, `SELECT pg_notify($1, 'not json')`, NotifyChannel)
	if _, err := store.Rotate(ctx, testProvider(t), "acme", "phi", crypto.PurposeData); err != nil {
		t.Fatal(err)
	}
	if _, err := store.Shred(ctx, "acme"); err != nil {
		t.Fatal(err)
	}
	want := []Event{
		{Kind: EventRotate, Tenant: "acme", KeyClass: "phi", Purpose: crypto.PurposeData, Version: 1},
		{Kind: EventShred, Tenant: "acme"},
	}
	for _, w := range want {
		select {
		case got := <-events:
			if got != w {
				t.Errorf("event: got %+v, want %+v", got, w)
			}
		case <-ctx.Done():
			t.Fatalf("event %+v: not received", w)
		}
	}
	stop()
	err = <-done
	done <- err // for the deferred wait
	if !errors.Is(err, context.Canceled) {
		t.Errorf("Listen after cancel: got %v, want context.Canceled", err)
	}
}
