package main

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/pgcloak/pgcloak/config"
	"github.com/pgcloak/pgcloak/tenanttoken"
)

const (
	tokenPoolRole    = "cmd_token_pool"
	serveTokenSecret = "serve-token-test-secret-of-32-bytes-or-more"
)

// TestServeTenantTokens: serve with tenancy.token_roles and an HS256
// secret; one connection of the pool role switches tenant per transaction
// with tokens minted as pgcloak token mints them, and sees only that
// tenant's rows and plaintext.
func TestServeTenantTokens(t *testing.T) {
	f := newKeysFixture(t)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	if err := f.pg.Exec(ctx, f.db, tenantRolesSQL(keysRolePass, tokenPoolRole)+fmt.Sprintf(`
grant select, insert, update on patients to %[1]s;
grant usage on sequence patients_id_seq to %[1]s;`, tokenPoolRole)); err != nil {
		t.Fatal(err)
	}
	s := startServe(t, f.pg, f.db, func(cfg string) string {
		return strings.Replace(f.edit(cfg), "tenancy:\n", fmt.Sprintf("tenancy:\n  token_roles: [%s]\n  jwt:\n    hs256_secret: %s\n", tokenPoolRole, serveTokenSecret), 1)
	})
	var minted []string
	mint := func(tenant string) string {
		tok, err := tenanttoken.Mint(config.JWTTenancy{Claim: config.DefaultJWTClaim, HS256Secret: serveTokenSecret}, tenant, 10*time.Minute, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		minted = append(minted, tok)
		return tok
	}
	conn := s.connectAs(t, tokenPoolRole, keysRolePass, f.db)
	defer conn.Close(context.Background())
	for _, w := range []struct{ tenant, name, ssn string }{{"acme", "alice", "123-45-6789"}, {"globex", "carol", "555-12-3456"}} {
		if _, err := conn.Exec(ctx, "BEGIN; SET LOCAL pgcloak.tenant_token = '"+mint(w.tenant)+"'; "+
			fmt.Sprintf("INSERT INTO patients (name, ssn) VALUES ('%s', '%s'); COMMIT", w.name, w.ssn)); err != nil {
			t.Fatalf("insert for %s: %v", w.tenant, err)
		}
	}
	for _, w := range []struct{ tenant, want string }{{"acme", "alice 123-45-6789"}, {"globex", "carol 555-12-3456"}} {
		tx, err := conn.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(ctx, "SET LOCAL pgcloak.tenant_token = '"+mint(w.tenant)+"'"); err != nil {
			t.Fatal(err)
		}
		var got []string
		rows, err := tx.Query(ctx, "select name, ssn from patients", pgx.QueryExecModeSimpleProtocol)
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
			var name, ssn string
			if err := rows.Scan(&name, &ssn); err != nil {
				t.Fatal(err)
			}
			got = append(got, name+" "+ssn)
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
		tx.Commit(ctx)
		if strings.Join(got, ",") != w.want {
			t.Errorf("%s sees %v, want %s", w.tenant, got, w.want)
		}
	}
	var stamped string
	if err := f.direct.QueryRow(ctx, "select string_agg(tenant_id || ':' || name, ',' order by name) from patients").Scan(&stamped); err != nil {
		t.Fatal(err)
	}
	if stamped != "acme:alice,globex:carol" {
		t.Errorf("stored rows: %s", stamped)
	}
	conn.Close(context.Background())
	if code := s.shutdown(t); code != 0 {
		t.Errorf("exit code: got %d, want 0", code)
	}
	containsAll(t, "audit", s.stdout.String(), `"event":"tenant_token_accepted"`)
	containsNone(t, "audit or log", s.stdout.String()+s.stderr.String(), append(minted, "123-45-6789", serveTokenSecret)...)
}
