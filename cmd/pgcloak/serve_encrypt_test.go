package main

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/pgcloak/pgcloak/testenv"
)

// Tenant roles of TestServeEncrypted (roles are cluster-wide).
const (
	serveAcmeRole   = "cmd_serve_acme"
	serveGlobexRole = "cmd_serve_globex"
	serveRolePass   = "cmd-serve-tenant-pw"
)

// TestServeEncrypted runs serve with a declared table: a tenant's writes
// are stored as ciphertext, read back as plaintext by that tenant only, key
// events reach the audit stream, and an unmapped role is refused.
func TestServeEncrypted(t *testing.T) {
	pg := testenv.Shared(t)
	db := testenv.NewDatabase(t, pg)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()

	setup := fmt.Sprintf(`
do $$ begin
  if not exists (select from pg_roles where rolname = '%[1]s') then create role %[1]s login password '%[3]s'; end if;
  if not exists (select from pg_roles where rolname = '%[2]s') then create role %[2]s login password '%[3]s'; end if;
end $$;
create table patients (
	id serial primary key,
	tenant_id text not null default current_setting('app.tenant_id'),
	name text, ssn bytea, ssn_bidx bytea
);
alter table patients enable row level security;
alter table patients force row level security;
create policy tenant_isolation on patients
	using (tenant_id = current_setting('app.tenant_id', true))
	with check (tenant_id = current_setting('app.tenant_id', true));
grant select, insert on patients to %[1]s, %[2]s;
grant usage on sequence patients_id_seq to %[1]s, %[2]s;
grant create on database %[4]s to %[5]s;`, serveAcmeRole, serveGlobexRole, serveRolePass, db, testenv.ScramUser)
	if err := pg.Exec(ctx, db, setup); err != nil {
		t.Fatal(err)
	}

	keyFile := filepath.Join(t.TempDir(), "master.key")
	if r := pgcloak(t, "keys", "init-local", "-o", keyFile); r.code != 0 {
		t.Fatalf("keys init-local: exit %d", r.code)
	}
	s := startServe(t, pg, db, func(cfg string) string {
		cfg = strings.Replace(cfg, "master_key_file: master.key", "master_key_file: "+keyFile, 1)
		return cfg + fmt.Sprintf(`tenancy:
  login:
    roles:
      %s: acme
      %s: globex
encrypt:
  tables:
    - name: patients
      columns:
        - name: ssn
          type: text
          search: equality
audit:
  output: stdout
`, serveAcmeRole, serveGlobexRole)
	})

	acme := s.connectAs(t, serveAcmeRole, serveRolePass, db)
	globex := s.connectAs(t, serveGlobexRole, serveRolePass, db)
	for _, w := range []struct {
		conn      *pgx.Conn
		name, ssn string
	}{{acme, "alice", "123-45-6789"}, {globex, "carol", "555-12-3456"}} {
		if _, err := w.conn.Exec(ctx, fmt.Sprintf("insert into patients (name, ssn) values ('%s', '%s')", w.name, w.ssn)); err != nil {
			t.Fatalf("insert %s: %v", w.name, err)
		}
	}

	var name, ssn string
	if err := acme.QueryRow(ctx, "select name, ssn from patients where ssn = '123-45-6789'").Scan(&name, &ssn); err != nil || name != "alice" || ssn != "123-45-6789" {
		t.Errorf("acme's search: got %q %q, %v; want alice 123-45-6789", name, ssn, err)
	}
	var n int
	if err := globex.QueryRow(ctx, "select count(*) from patients where ssn = '123-45-6789'").Scan(&n); err != nil || n != 0 {
		t.Errorf("globex searching acme's SSN: got %d rows, %v; want 0", n, err)
	}

	direct, err := pgx.Connect(ctx, pg.SuperuserURL(db))
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close(context.Background())
	var stored, bidx []byte
	if err := direct.QueryRow(ctx, "select ssn, ssn_bidx from patients where name = 'alice'").Scan(&stored, &bidx); err != nil {
		t.Fatal(err)
	}
	if len(stored) < 33 || stored[0] != 1 || strings.Contains(string(stored), "123-45-6789") || len(bidx) != 16 {
		t.Errorf("stored: ssn %x, ssn_bidx %x; want pgcloak's format and a 16-byte index", stored, bidx)
	}

	// A role that is neither mapped nor unscoped is refused.
	url := fmt.Sprintf("postgres://%s:%s@%s/%s?sslmode=disable", testenv.ScramUser, testenv.ScramPassword, s.listen, db)
	var pgErr *pgconn.PgError
	if c, err := pgx.Connect(ctx, url); err == nil {
		c.Close(context.Background())
		t.Error("unmapped role: got a session, want 28000")
	} else if !errors.As(err, &pgErr) || pgErr.Code != "28000" {
		t.Errorf("unmapped role: got %v, want 28000", err)
	}

	acme.Close(context.Background())
	globex.Close(context.Background())
	if code := s.shutdown(t); code != 0 {
		t.Errorf("exit code: got %d, want 0", code)
	}
	audit := s.stdout.String()
	for _, want := range []string{`"event":"key_created"`, `"tenant":"acme"`, `"tenant":"globex"`, `"event":"session_start"`, `"event":"auth_refused"`} {
		if !strings.Contains(audit, want) {
			t.Errorf("audit (stdout): missing %s", want)
		}
	}
	logs := s.stderr.String()
	if strings.Contains(logs, "not implemented") {
		t.Errorf("log: still says encryption is not implemented")
	}
	for _, secret := range []string{"123-45-6789", "555-12-3456", serveRolePass, testenv.ScramPassword} {
		if strings.Contains(audit+logs, secret) {
			t.Errorf("audit or log contains %q", secret)
		}
	}
}

func (s *serving) connectAs(t *testing.T, role, password, db string) *pgx.Conn {
	t.Helper()
	url := fmt.Sprintf("postgres://%s:%s@%s/%s?sslmode=disable&default_query_exec_mode=simple_protocol", role, password, s.listen, db)
	deadline := time.Now().Add(15 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		conn, err := pgx.Connect(ctx, url)
		cancel()
		if err == nil {
			t.Cleanup(func() { conn.Close(context.Background()) })
			return conn
		}
		if time.Now().After(deadline) {
			t.Fatalf("connect through the proxy as %s: %v", role, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
