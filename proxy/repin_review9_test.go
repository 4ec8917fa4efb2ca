package proxy

import (
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/pgcloak/pgcloak/config"
)

// Ninth review of 2026-12-08, kept as tests: login roles, DISCARD/RESET
// re-pinning, mode jwt's base tenant, the keystore functions. The re-pin
// after RESET or DISCARD pinned the session's (or the jwt login's) tenant
// while a local token held the transaction: PostgreSQL then showed acme's
// rows to a transaction pgcloak held to be globex, and stored its writes
// as acme's.

// r9Look reports what PostgreSQL pins (current_tenant, names) and what
// pgcloak does with a declared column (ssn: its keys' tenant decrypts,
// another's is 39000).
func r9Look(t *testing.T, conn *pgconn.PgConn, label string) (string, []string, error) {
	t.Helper()
	ct, names := rvSees(t, conn)
	res, ssnErr := atkExec(t, conn, `select name, ssn from patients order by name`)
	var rows []string
	if ssnErr == nil {
		for _, r := range res[0].Rows {
			rows = append(rows, string(r[0])+":"+string(r[1]))
		}
	}
	t.Logf("%s: current_tenant %s, names %v, ssn rows %v err %v", label, ct, names, rows, ssnErr)
	return ct, names, ssnErr
}

// r9Exec runs sql and logs its outcome.
func r9Exec(t *testing.T, conn *pgconn.PgConn, sql string) error {
	t.Helper()
	_, err := atkExec(t, conn, sql)
	t.Logf("%.120s -> %v", sql, err)
	return err
}

// Token role: session token acme, local token globex, then the tenant
// setting put back to 'acme' by SQL pgcloak cannot read and a query that
// mentions RESET: pgcloak re-pins the session token (acme) while it still
// holds the local token (globex).
func TestRepinReview9TokenLocalThenRepinSession(t *testing.T) {
	env := startTokenEnv(t)
	atkSeed(t, env)
	drRun(t, env)
	conn := atkRaw(t, env)
	fatalIf(t, r9Exec(t, conn, `SET pgcloak.tenant_token = '`+mintToken(t, "acme", time.Hour)+`'`), "session token")
	r9Look(t, conn, "session acme")
	fatalIf(t, r9Exec(t, conn, `BEGIN`), "begin")
	fatalIf(t, r9Exec(t, conn, `SET LOCAL pgcloak.tenant_token = '`+mintToken(t, "globex", time.Hour)+`'`), "local token")
	r9Look(t, conn, "local globex")
	r9Exec(t, conn, `select public.run('select pg_catalog.set_' || 'config(''app.ten'' || ''ant_id'', ''acme'', true)') /* reset */`)
	ct, names, ssnErr := r9Look(t, conn, "after set_config+reset")
	ct2, names2, ssnErr2 := r9Look(t, conn, "again")
	r9Exec(t, conn, `COMMIT`)
	r9Look(t, conn, "after commit")
	for _, c := range []struct {
		ct    string
		names []string
		err   error
	}{{ct, names, ssnErr}, {ct2, names2, ssnErr2}} {
		if c.ct == "acme" && pgCode(c.err) == "39000" {
			t.Errorf("PostgreSQL pins acme (rows %v) while pgcloak decrypts with another tenant's keys", c.names)
		}
	}
}

func r9JWTEnv(t *testing.T) *encryptedEnv {
	t.Helper()
	env := startTokenEnv(t, func(c *Config) {
		c.Tenancy.TokenRoles = nil
		c.Tenancy.Mode = config.ModeJWT
		c.Tenancy.JWT.UpstreamUser = poolRole
		c.Tenancy.JWT.UpstreamPassword = rolePassword
	})
	return env
}

func r9JWTConn(t *testing.T, env *encryptedEnv, tenant string) *pgconn.PgConn {
	t.Helper()
	conn, err := pgconn.Connect(ctxT(t), env.proxy.url("alice", mintToken(t, tenant, time.Hour), env.db))
	fatalIf(t, err, "jwt connect")
	t.Cleanup(func() { conn.Close(ctxT(t)) })
	return conn
}

// r9JWTSeed stores a row per tenant through mode jwt logins.
func r9JWTSeed(t *testing.T, env *encryptedEnv) {
	for tenant, ssn := range map[string]string{"acme": "123-45-6789", "globex": "987-65-4321"} {
		c := r9JWTConn(t, env, tenant)
		_, err := c.ExecParams(ctxT(t), atkInsert, [][]byte{[]byte("seed-" + tenant), []byte(ssn)}, nil, nil, nil).Close()
		fatalIf(t, err, "seed %s", tenant)
	}
}

// Mode jwt: login acme (the base), local token globex, RESET ALL in the
// transaction puts the startup settings (acme) back; pgcloak re-pins.
func TestRepinReview9JWTResetAllInLocal(t *testing.T) {
	env := r9JWTEnv(t)
	r9JWTSeed(t, env)
	for _, reset := range []string{`RESET ALL`, `DISCARD SEQUENCES`, `RESET ALL; DISCARD SEQUENCES`} {
		t.Run(reset, func(t *testing.T) {
			conn := r9JWTConn(t, env, "acme")
			r9Look(t, conn, "login acme")
			fatalIf(t, r9Exec(t, conn, `BEGIN`), "begin")
			fatalIf(t, r9Exec(t, conn, `SET LOCAL pgcloak.tenant_token = '`+mintToken(t, "globex", time.Hour)+`'`), "local")
			r9Look(t, conn, "local globex")
			r9Exec(t, conn, reset)
			ct, names, err := r9Look(t, conn, "after "+reset)
			if ct == "acme" && pgCode(err) == "39000" {
				t.Errorf("PostgreSQL pins acme (rows %v) while pgcloak holds another tenant", names)
			}
			if ct == "globex" && pgCode(err) == "39000" {
				t.Errorf("PostgreSQL pins globex (rows %v) while pgcloak holds another tenant", names)
			}
			// A write in that state: pgcloak seals with its tenant's keys,
			// PostgreSQL stamps its own.
			r9Exec(t, conn, `insert into patients (name) values ('r9-intruder')`)
			r9Exec(t, conn, `update patients set name = name || '-touched' where name = 'seed-acme'`)
			r9Exec(t, conn, `COMMIT`)
			var stamped []string
			rows, qerr := env.pool.Query(ctxT(t), `select tenant_id || ':' || name from patients where name like 'r9-intruder%' or name like '%-touched'`)
			fatalIf(t, qerr, "direct read")
			for rows.Next() {
				var s string
				fatalIf(t, rows.Scan(&s), "scan")
				stamped = append(stamped, s)
			}
			rows.Close()
			t.Logf("stored by the session holding globex: %v", stamped)
			if _, e := env.pool.Exec(ctxT(t), `delete from patients where name like 'r9-intruder%'; update patients set name = 'seed-acme' where name like 'seed-acme%'`); e != nil {
				t.Logf("cleanup: %v", e)
			}
			ct, names, err = r9Look(t, conn, "after commit")
			if ct != "acme" && ct != "<null>" || pgCode(err) == "39000" {
				t.Errorf("after commit: PostgreSQL %s rows %v, ssn %v", ct, names, err)
			}
		})
	}
	_ = fmt.Sprint
}

// Login role acme with a DBA's run(q): forget the pin where pgcloak cannot
// see it, draw challenges, set the settings to globex's, DISCARD ALL,
// RESET ALL: PostgreSQL must pin acme or nothing, never globex. An
// unscoped role sees nothing.
func TestRepinReview9LoginRoleKeystore(t *testing.T) {
	env := startEncrypted(t)
	ctx := ctxT(t)
	for _, sql := range []string{
		`CREATE FUNCTION public.run(q text) RETURNS void LANGUAGE plpgsql AS $$ BEGIN EXECUTE q; END $$`,
		`GRANT EXECUTE ON FUNCTION public.run(text) TO ` + acmeRole + `, ` + migratorRole,
	} {
		fatalIf(t, env.pg.Exec(ctx, env.db, sql), "%s", sql)
	}
	g := env.tenantConn(t, globexRole)
	insertPatient(t, g, "gus", "987-65-4321", "g@x.test", "flu", "1970-01-01")
	a := env.tenantConn(t, acmeRole)
	insertPatient(t, a, "ann", "123-45-6789", "a@x.test", "flu", "1970-01-01")
	acme, err := pgconn.Connect(ctx, env.proxy.url(acmeRole, rolePassword, env.db))
	fatalIf(t, err, "connect")
	defer acme.Close(ctx)
	check := func(label string) {
		ct, names, _ := r9Look(t, acme, label)
		for _, n := range names {
			if n == "gus" || ct == "globex" {
				t.Errorf("%s: acme's login session reads globex (%s, %v)", label, ct, names)
			}
		}
	}
	steps := []string{
		`select public.run('DIS' || 'CARD SEQUENCES')`,
		`select public.run('select pgcloak.pin_' || 'challenge()')`,
		`select public.run('select pg_catalog.set_' || 'config(''app.ten'' || ''ant_id'', ''globex'', false)')`,
		`select public.run('select pg_catalog.set_' || 'config(''pgcloak.tenant_' || 'proof'', ''v1:0:00'', false)')`,
		`DISCARD SEQUENCES`,
		`select public.run('select pg_catalog.set_' || 'config(''app.ten'' || ''ant_id'', ''globex'', false)')`,
		`RESET ALL`,
		`BEGIN; DISCARD SEQUENCES`,
		`ROLLBACK`,
		`DISCARD ALL`,
		`select public.run('DIS' || 'CARD SEQUENCES'); select 'discard'`,
	}
	for _, s := range steps {
		r9Exec(t, acme, s)
		check("after " + s)
	}
	mig, err := pgconn.Connect(ctx, env.proxy.url(migratorRole, rolePassword, env.db))
	fatalIf(t, err, "connect migrator")
	defer mig.Close(ctx)
	for _, s := range []string{`select public.run('select pg_catalog.set_' || 'config(''app.ten'' || ''ant_id'', ''acme'', false)')`, `DISCARD ALL`} {
		r9Exec(t, mig, s)
		ct, names := rvSees(t, mig)
		t.Logf("unscoped after %s: %s %v", s, ct, names)
		if len(names) > 0 || ct != "<null>" {
			t.Errorf("an unscoped role's session sees tenant %s rows %v", ct, names)
		}
	}
}
