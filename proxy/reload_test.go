package proxy

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgcloak/pgcloak/config"
)

// TestReload: new sessions get the reloaded tenancy and declarations; open
// sessions keep the ones they started with.
func TestReload(t *testing.T) {
	env := startEncrypted(t)
	ctx := ctxT(t)
	const newRole = "reload_initech_app"
	env.pg.Exec(ctx, "", fmt.Sprintf(`create role %s login password '%s'`, newRole, rolePassword))
	fatalIf(t, env.pg.Exec(ctx, env.db, `grant select, insert on patients to `+newRole+`; grant usage on sequence patients_id_seq to `+newRole), "grant")

	before := env.tenantConn(t, acmeRole)
	insertPatient(t, before, "alice", "123-45-6789", "Alice@Example.com", "influenza", "1980-01-02")
	if _, err := connectErr(env.proxy.url(newRole, rolePassword, env.db)); pgCode(err) != "28000" {
		t.Fatalf("unmapped role before the reload: got %v, want 28000", err)
	}

	// Map the new role, and stop declaring email.
	tenancy := config.Tenancy{Setting: "app.tenant_id", Mode: config.ModeLogin,
		Login:         config.LoginTenancy{Roles: map[string]string{acmeRole: "acme", globexRole: "globex", newRole: "initech"}},
		UnscopedRoles: []string{migratorRole, "postgres"}}
	enc := patientsDecl()
	cols := enc.Tables[0].Columns[:0]
	for _, c := range enc.Tables[0].Columns {
		if c.Name != "email" {
			cols = append(cols, c)
		}
	}
	enc.Tables[0].Columns = cols
	fatalIf(t, env.proxy.srv.Reload(ctx, tenancy, enc), "reload")

	initech := env.tenantConn(t, newRole)
	var tenant string
	fatalIf(t, initech.QueryRow(ctx, `select current_setting('app.tenant_id')`).Scan(&tenant), "tenant")
	mustEqual(t, "new role's tenant", tenant, "initech")

	// The open session still decrypts email; a new one sees the bytea.
	var email string
	fatalIf(t, before.QueryRow(ctx, `select email from patients where name = 'alice'`).Scan(&email), "old session")
	mustEqual(t, "email in the session opened before the reload", email, "Alice@Example.com")
	after := env.tenantConn(t, acmeRole)
	var raw []byte
	fatalIf(t, after.QueryRow(ctx, `select email from patients where name = 'alice'`).Scan(&raw), "new session")
	if len(raw) < 33 || raw[0] != 1 {
		t.Errorf("email in a new session: got %q, want the stored ciphertext", raw)
	}
	var ssn string
	fatalIf(t, after.QueryRow(ctx, `select ssn from patients where ssn = '123-45-6789'`).Scan(&ssn), "search after reload")
	mustEqual(t, "ssn still declared", ssn, "123-45-6789")
}

func connectErr(url string) (*pgx.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err == nil {
		conn.Close(ctx)
	}
	return conn, err
}
