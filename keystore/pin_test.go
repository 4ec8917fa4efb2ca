package keystore

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

const testSetting = "app.tenant_id"

// pinDB is a test database with the pin installed by a non-superuser
// owner (as upstream.user would be) and a tenant role "app".
type pinDB struct {
	testDB
	pinner *Pinner
}

func newPinDB(t *testing.T) pinDB {
	t.Helper()
	db := newTestDB(t)
	ctx := context.Background()
	for _, sql := range []string{
		`DO $$ BEGIN
		   IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'pin_owner') THEN CREATE ROLE pin_owner LOGIN PASSWORD 'owner'; END IF;
		   IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'pin_app') THEN CREATE ROLE pin_app LOGIN PASSWORD 'app'; END IF;
		 END $$`,
		`GRANT CREATE ON DATABASE "` + db.name + `" TO pin_owner`,
	} {
		if err := db.pg.Exec(ctx, db.name, sql); err != nil {
			t.Fatal(err)
		}
	}
	pinner, err := EnsurePin(ctx, db.poolURL(t, db.pg.URL("pin_owner", "owner", db.name)), testSetting)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pinner.Close)
	return pinDB{testDB: db, pinner: pinner}
}

// app connects as the tenant role with the given startup parameters.
func (db pinDB) app(t *testing.T, params map[string]string) *pgx.Conn {
	t.Helper()
	cfg, err := pgx.ParseConfig(db.pg.URL("pin_app", "app", db.name))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range params {
		cfg.RuntimeParams[k] = v
	}
	conn, err := pgx.ConnectConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// pin does what the proxy does: proof and tenant as startup parameters,
// then a challenge and pgcloak.pin.
func (db pinDB) pin(t *testing.T, tenant string, expires int64) (*pgx.Conn, string) {
	t.Helper()
	proof, err := NewProof(expires)
	if err != nil {
		t.Fatal(err)
	}
	conn := db.app(t, map[string]string{testSetting: tenant, ProofSetting: proof})
	var c int64
	if err := conn.QueryRow(context.Background(), `SELECT pgcloak.pin_challenge()`).Scan(&c); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(context.Background(), `SELECT pgcloak.pin($1, $2, $3)`, tenant, proof, db.pinner.MAC(c, tenant, proof)); err != nil {
		t.Fatalf("pin: %v", err)
	}
	return conn, proof
}

func currentTenant(t *testing.T, conn *pgx.Conn) string {
	t.Helper()
	var tenant *string
	if err := conn.QueryRow(context.Background(), `SELECT pgcloak.current_tenant()`).Scan(&tenant); err != nil {
		t.Fatal(err)
	}
	if tenant == nil {
		return "<NULL>"
	}
	return *tenant
}

func mustExec(t *testing.T, conn *pgx.Conn, sql string, args ...any) {
	t.Helper()
	if _, err := conn.Exec(context.Background(), sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

func wantCode(t *testing.T, err error, code string) {
	t.Helper()
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != code {
		t.Fatalf("got %v, want SQLSTATE %s", err, code)
	}
}

func TestPinVerifiedByPostgreSQL(t *testing.T) {
	db := newPinDB(t)
	conn, proof := db.pin(t, "acme", 0)
	if got := currentTenant(t, conn); got != "acme" {
		t.Fatalf("current_tenant() after the pin = %s, want acme", got)
	}

	t.Run("a changed setting is not trusted", func(t *testing.T) {
		mustExec(t, conn, `SELECT set_config('app.tenant_id', 'globex', false)`)
		if got := currentTenant(t, conn); got != "<NULL>" {
			t.Fatalf("current_tenant() after set_config to globex = %s, want NULL", got)
		}
		mustExec(t, conn, `DO $$ BEGIN EXECUTE format('SET %I.%I = %L', 'app', 'tenant_id', 'globex'); END $$`)
		if got := currentTenant(t, conn); got != "<NULL>" {
			t.Fatalf("current_tenant() after a DO block's SET = %s, want NULL", got)
		}
		mustExec(t, conn, `SELECT set_config('app.tenant_id', 'acme', false)`)
		if got := currentTenant(t, conn); got != "acme" {
			t.Fatalf("current_tenant() with the pinned values back = %s, want acme", got)
		}
	})

	t.Run("RESET ALL keeps the pin", func(t *testing.T) {
		mustExec(t, conn, `SET app.tenant_id = 'globex'`)
		mustExec(t, conn, `RESET ALL`)
		if got := currentTenant(t, conn); got != "acme" {
			t.Fatalf("current_tenant() after RESET ALL = %s, want acme", got)
		}
	})

	t.Run("the proof is useless on another backend", func(t *testing.T) {
		other := db.app(t, map[string]string{testSetting: "acme", ProofSetting: proof})
		if got := currentTenant(t, other); got != "<NULL>" {
			t.Fatalf("current_tenant() with a copied proof = %s, want NULL", got)
		}
		// Replaying the pin's arguments fails too, whatever the challenge.
		var c int64
		if err := other.QueryRow(context.Background(), `SELECT pgcloak.pin_challenge()`).Scan(&c); err != nil {
			t.Fatal(err)
		}
		_, err := other.Exec(context.Background(), `SELECT pgcloak.pin($1, $2, $3)`, "acme", proof, db.pinner.MAC(c-1, "acme", proof))
		wantCode(t, err, "42501")
		if got := currentTenant(t, other); got != "<NULL>" {
			t.Fatalf("current_tenant() after a refused pin = %s, want NULL", got)
		}
	})

	t.Run("a pin of another tenant needs the key", func(t *testing.T) {
		other := db.app(t, nil)
		var c int64
		if err := other.QueryRow(context.Background(), `SELECT pgcloak.pin_challenge()`).Scan(&c); err != nil {
			t.Fatal(err)
		}
		forged := (&Pinner{key: make([]byte, pinKeySize)}).MAC(c, "globex", "v1:0:00")
		_, err := other.Exec(context.Background(), `SELECT pgcloak.pin('globex', 'v1:0:00', $1)`, forged)
		wantCode(t, err, "42501")
		// A challenge pins once.
		mac := db.pinner.MAC(c, "globex", "v1:0:00")
		literal := LiteralPin(mac, `SELECT pgcloak.pin('globex', 'v1:0:00', '`+mac+`')`)
		_, err = other.Exec(context.Background(), literal)
		if err != nil {
			t.Fatalf("the right MAC was refused: %v", err)
		}
		_, err = other.Exec(context.Background(), literal)
		wantCode(t, err, "42501")
	})

	// A MAC is not secret once sent (pg_stat_activity shows a literal
	// pin's text): pin() and pin_next() accept it only while the
	// top-level text is pgcloak's, which dynamic SQL does not change. (A
	// client text holding PinWord as written, a string constant with the
	// marker for one, is the proxy's to refuse: rewrite.PinWord.)
	t.Run("a MAC counts only in pgcloak's own text", func(t *testing.T) {
		// A function a DBA made that runs any text it is given.
		for _, sql := range []string{
			`CREATE FUNCTION public.run(q text) RETURNS void LANGUAGE plpgsql AS $$ BEGIN EXECUTE q; END $$`,
			`GRANT EXECUTE ON FUNCTION public.run(text) TO pin_app`,
		} {
			if err := db.pg.Exec(context.Background(), db.name, sql); err != nil {
				t.Fatal(err)
			}
		}
		other := db.app(t, nil)
		var c int64
		if err := other.QueryRow(context.Background(), `SELECT pgcloak.pin_challenge()`).Scan(&c); err != nil {
			t.Fatal(err)
		}
		mac := db.pinner.MAC(c, "globex", "v1:0:00")
		call := `SELECT pgcloak.pin('globex', 'v1:0:00', '` + mac + `')`
		for _, sql := range []string{
			call, // no marker
			`SELECT pgcloak.pin('globex', 'v1:0:00', '` + mac + `') /*pgcloak.pin:` + mac[:63] + `*/`, // another MAC's marker
			`SELECT public.run('/*pgcloak' || ` + QuoteLiteral(LiteralPin(mac, call)[9:]) + `)`,       // marker built at run time
		} {
			_, err := other.Exec(context.Background(), sql)
			wantCode(t, err, "42501")
		}
		_, err := other.Exec(context.Background(), `SELECT public.run($1)`, LiteralPin(mac, call))
		wantCode(t, err, "42501")
		// Unspent by all that: pgcloak's own text still pins.
		mustExec(t, other, LiteralPin(mac, call))

		// pin_next: the same, and the parameterised statement is pgcloak's too.
		mac1 := db.pinner.NextMAC(c+1, 1, false, "globex", "v1:0:00")
		sql := fmt.Sprintf(`SELECT pgcloak.pin_next('globex', 'v1:0:00', %d, 1, false, '%s')`, c+1, mac1)
		for _, q := range []string{sql, `SELECT public.run('/*pgcloak' || ` + QuoteLiteral(LiteralPin(mac1, sql)[9:]) + `)`} {
			_, err := other.Exec(context.Background(), q)
			wantCode(t, err, "42501")
		}
		mustExec(t, other, LiteralPin(mac1, sql))
		mac2 := db.pinner.NextMAC(c+1, 2, false, "globex", "v1:0:00")
		mustExec(t, other, NextStatement(false, "x"), "globex", "v1:0:00", c+1, 2, mac2, testSetting, ProofSetting)
		if got := currentTenant(t, other); got != "globex" {
			t.Fatalf("current_tenant() after pgcloak's parameterised pin = %s, want globex", got)
		}
	})

	t.Run("the tenant role cannot read the key or move the marker", func(t *testing.T) {
		other := db.app(t, nil)
		for _, sql := range []string{
			`SELECT ikey FROM pgcloak.pin_key`,
			`SELECT setval('pgcloak.pin_marker', 1)`,
			`SELECT nextval('pgcloak.pin_marker')`,
			`SELECT currval('pgcloak.pin_marker')`,
			`CREATE OR REPLACE FUNCTION pgcloak.current_tenant() RETURNS text LANGUAGE sql AS $$ SELECT 'globex' $$`,
		} {
			_, err := other.Exec(context.Background(), sql)
			wantCode(t, err, "42501")
		}
	})

	t.Run("DISCARD ALL drops the pin", func(t *testing.T) {
		c2, _ := db.pin(t, "acme", 0)
		mustExec(t, c2, `DISCARD ALL`)
		if got := currentTenant(t, c2); got != "<NULL>" {
			t.Fatalf("current_tenant() after DISCARD ALL = %s, want NULL until the proxy pins again", got)
		}
	})

	t.Run("unpin", func(t *testing.T) {
		c2, _ := db.pin(t, "acme", 0)
		mustExec(t, c2, `SELECT pgcloak.unpin()`)
		if got := currentTenant(t, c2); got != "<NULL>" {
			t.Fatalf("current_tenant() after unpin = %s, want NULL", got)
		}
	})

	t.Run("a ROLLBACK does not undo unpin", func(t *testing.T) {
		c2, _ := db.pin(t, "acme", 0)
		mustExec(t, c2, `BEGIN`)
		mustExec(t, c2, `SELECT pgcloak.unpin()`)
		mustExec(t, c2, `ROLLBACK`)
		if got := currentTenant(t, c2); got != "<NULL>" {
			t.Fatalf("current_tenant() after a rolled-back unpin = %s, want NULL", got)
		}
	})
}

func TestPinExpires(t *testing.T) {
	db := newPinDB(t)
	conn, _ := db.pin(t, "acme", time.Now().Add(2*time.Second).Unix())
	if got := currentTenant(t, conn); got != "acme" {
		t.Fatalf("current_tenant() before expiry = %s, want acme", got)
	}
	time.Sleep(3 * time.Second)
	if got := currentTenant(t, conn); got != "<NULL>" {
		t.Fatalf("current_tenant() after expiry = %s, want NULL", got)
	}
}

// TestEnsurePinConcurrent: replicas that start together install the pin
// once and agree on the key.
func TestEnsurePinConcurrent(t *testing.T) {
	db := newTestDB(t)
	pool := db.pool(t)
	var wg sync.WaitGroup
	pinners := make([]*Pinner, 6)
	errs := make([]error, len(pinners))
	for i := range pinners {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pinners[i], errs[i] = EnsurePin(context.Background(), pool, testSetting)
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("EnsurePin %d: %v", i, err)
		}
		if got, want := pinners[i].MAC(1, "a", "v1:0:0"), pinners[0].MAC(1, "a", "v1:0:0"); got != want {
			t.Fatalf("replica %d has another key", i)
		}
	}
	// A second start with another setting replaces the functions.
	if _, err := EnsurePin(context.Background(), pool, "other.tenant"); err != nil {
		t.Fatal(err)
	}
	var src string
	if err := pool.QueryRow(context.Background(), `SELECT prosrc FROM pg_proc WHERE oid = 'pgcloak.current_tenant()'::regprocedure`).Scan(&src); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(src, "'other.tenant'") {
		t.Fatalf("current_tenant() does not read other.tenant after a restart with it:\n%s", src)
	}
}
