package proxy

import (
	"testing"
)

// TestVerifiedTenantPin: through the proxy, pgcloak.current_tenant() is the
// session's tenant, row-level security on it shows each tenant its own
// rows, and no SQL a tenant sends makes it another tenant.
func TestVerifiedTenantPin(t *testing.T) {
	env := startEncrypted(t, func(c *Config) { c.Tenancy.AllowDynamicSQL = true })
	ctx := ctxT(t)
	acme := env.tenantConn(t, acmeRole)
	globex := env.tenantConn(t, globexRole)
	insertPatient(t, acme, "alice", "123-45-6789", "alice@example.com", "flu", "1980-01-02")
	insertPatient(t, globex, "bob", "987-65-4321", "bob@example.com", "cold", "1970-03-04")

	for _, c := range []struct {
		role, want string
	}{{acmeRole, "acme"}, {globexRole, "globex"}} {
		conn := env.tenantConn(t, c.role)
		var got *string
		fatalIf(t, conn.QueryRow(ctx, `select pgcloak.current_tenant()`).Scan(&got), "current_tenant")
		if got == nil || *got != c.want {
			t.Fatalf("%s: current_tenant() = %v, want %s", c.role, got, c.want)
		}
		var names []string
		rows, err := conn.Query(ctx, `select name from patients order by name`)
		fatalIf(t, err, "select")
		for rows.Next() {
			var n string
			fatalIf(t, rows.Scan(&n), "scan")
			names = append(names, n)
		}
		if len(names) != 1 {
			t.Fatalf("%s sees %v, want its own row only", c.role, names)
		}
		// RESET ALL and DISCARD PLANS keep the tenant.
		_, err = conn.Exec(ctx, `reset all`)
		fatalIf(t, err, "reset all")
		fatalIf(t, conn.QueryRow(ctx, `select pgcloak.current_tenant()`).Scan(&got), "current_tenant after reset all")
		if got == nil || *got != c.want {
			t.Fatalf("%s: current_tenant() after RESET ALL = %v, want %s", c.role, got, c.want)
		}
	}

	// With dynamic SQL allowed, a DO block may set the bare setting; the
	// verified tenant does not follow it.
	_, err := acme.Exec(ctx, `do $$ begin execute format('set %s = %L', 'app.' || 'tenant_id', 'glo' || 'bex'); end $$`)
	fatalIf(t, err, "do block")
	var setting string
	var verified *string
	fatalIf(t, acme.QueryRow(ctx, `select current_setting('app.tenant_id'), pgcloak.current_tenant()`).Scan(&setting, &verified), "after the DO block")
	if setting != "globex" || verified != nil {
		t.Fatalf("after a DO block set the setting: setting %q, current_tenant() %v; want globex and NULL", setting, verified)
	}
	var n int
	fatalIf(t, acme.QueryRow(ctx, `select count(*) from patients`).Scan(&n), "count")
	if n != 0 {
		t.Fatalf("acme sees %d rows after setting the bare setting to globex, want 0", n)
	}
}
