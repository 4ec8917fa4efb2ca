package proxy

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/pgcloak/pgcloak/audit"
	"github.com/pgcloak/pgcloak/config"
	"github.com/pgcloak/pgcloak/crypto"
	"github.com/pgcloak/pgcloak/keystore"
	"github.com/pgcloak/pgcloak/testenv"
)

// Tenant roles shared by the encryption tests (roles are cluster-wide).
const (
	acmeRole     = "acme_app"
	globexRole   = "globex_app"
	migratorRole = "migrator"
	rolePassword = "tenant-role-password-x1"
)

var rolesOnce sync.Once

// encryptedEnv is a database with the demo table under RLS, and a proxy in
// front of it that encrypts the declared columns.
type encryptedEnv struct {
	pg    *testenv.Postgres
	db    string
	proxy *testProxy
	pool  *pgxpool.Pool // superuser, direct
	audit *syncBuffer
	logs  *syncBuffer
}

func patientsDecl() config.Encrypt {
	return config.Encrypt{
		OnDecryptError: config.DecryptErrorFail,
		Tables: []config.Table{{
			Schema: "public", Name: "patients",
			Columns: []config.Column{
				{Name: "ssn", Type: "text", Search: config.SearchEquality, IndexColumn: "ssn_bidx", Normalize: config.NormalizeNone},
				{Name: "email", Type: "text", Search: config.SearchEquality, IndexColumn: "email_bidx", Normalize: config.NormalizeLower},
				{Name: "diagnosis", Type: "text", Search: config.SearchNone, Normalize: config.NormalizeNone, KeyClass: "phi"},
				{Name: "birth_date", Type: "date", Search: config.SearchNone, Normalize: config.NormalizeNone},
			},
		}},
	}
}

const patientsDDL = `
create table patients (
	id serial primary key,
	tenant_id text not null default pgcloak.current_tenant(),
	name text,
	ssn bytea, ssn_bidx bytea,
	email bytea, email_bidx bytea,
	diagnosis bytea,
	birth_date bytea
);
alter table patients enable row level security;
alter table patients force row level security;
create policy tenant_isolation on patients
	using (tenant_id = pgcloak.current_tenant())
	with check (tenant_id = pgcloak.current_tenant());
grant select, insert, update, delete on patients to acme_app, globex_app, migrator;
grant usage on sequence patients_id_seq to acme_app, globex_app, migrator;
`

func startEncrypted(t testing.TB, mutate ...func(*Config)) *encryptedEnv {
	t.Helper()
	return startEncryptedDeps(t, nil, mutate...)
}

// startEncryptedDeps is startEncrypted with deps changed by withDeps (when
// not nil) before the proxy starts.
func startEncryptedDeps(t testing.TB, withDeps func(*Deps), mutate ...func(*Config)) *encryptedEnv {
	t.Helper()
	pg := testenv.Shared(t)
	ctx := ctxT(t)
	rolesOnce.Do(func() {
		for _, r := range []string{acmeRole, globexRole, migratorRole} {
			pg.Exec(ctx, "", fmt.Sprintf(`create role %s login password '%s'`, r, rolePassword))
		}
	})
	db := testenv.NewDatabase(t, pg)
	pool, err := pgxpool.New(ctx, pg.SuperuserURL(db))
	fatalIf(t, err, "pool")
	t.Cleanup(pool.Close)
	pinner := installPin(t, pool)
	fatalIf(t, pg.Exec(ctx, db, patientsDDL), "create demo schema")

	env := &encryptedEnv{pg: pg, db: db, pool: pool, audit: &syncBuffer{b: &bytes.Buffer{}}, logs: &syncBuffer{b: &bytes.Buffer{}}}
	keys := newTestKeys(t, pool)
	deps := Deps{Pool: pool, Keys: keys, Pinner: pinner, Audit: audit.New(env.audit)}
	if withDeps != nil {
		withDeps(&deps)
	}
	env.proxy = startProxyDeps(t, pg, deps, env.logs, func(c *Config) {
		c.Tenancy = config.Tenancy{
			Setting:       "app.tenant_id",
			Mode:          config.ModeLogin,
			Login:         config.LoginTenancy{Roles: map[string]string{acmeRole: "acme", globexRole: "globex"}},
			UnscopedRoles: []string{migratorRole, "postgres", testenv.TrustUser},
		}
		c.Encrypt = patientsDecl()
		for _, m := range mutate {
			m(c)
		}
	})
	return env
}

// installPin installs the verified tenant pin in pool's database, as the
// proxy's upstream.user would: patientsDDL's policies call
// pgcloak.current_tenant().
func installPin(t testing.TB, pool *pgxpool.Pool) *keystore.Pinner {
	t.Helper()
	pinner, err := keystore.EnsurePin(ctxT(t), pool, "app.tenant_id")
	fatalIf(t, err, "install the verified tenant pin")
	t.Cleanup(pinner.Close)
	return pinner
}

// syncBuffer lets the audit logger and the test share a buffer.
type syncBuffer struct {
	mu sync.Mutex
	b  *bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (e *encryptedEnv) tenantConn(t *testing.T, role string, params ...string) *pgx.Conn {
	t.Helper()
	params = append([]string{"default_query_exec_mode=simple_protocol"}, params...)
	return connect(t, e.proxy.url(role, rolePassword, e.db, params...))
}

func pgCode(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code
	}
	return ""
}

func pgMessage(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Message
	}
	return ""
}

// secrets are the plaintexts and passwords the tests use; none may appear
// in what PostgreSQL stores, in the logs, or in the audit stream.
var secrets = []string{"123-45-6789", "987-65-4321", "Alice@Example.com", "alice@example.com", "influenza", "fractured femur", "1980-01-02", rolePassword}

func insertPatient(t *testing.T, conn *pgx.Conn, name, ssn, email, diagnosis, birth string) {
	t.Helper()
	_, err := conn.Exec(ctxT(t), fmt.Sprintf(`insert into patients (name, ssn, email, diagnosis, birth_date) values ('%s', '%s', '%s', '%s', '%s')`, name, ssn, email, diagnosis, birth))
	fatalIf(t, err, "insert %s", name)
}

func TestEncryptedRoundTrip(t *testing.T) {
	env := startEncrypted(t)
	ctx := ctxT(t)
	acme := env.tenantConn(t, acmeRole)
	globex := env.tenantConn(t, globexRole)

	insertPatient(t, acme, "alice", "123-45-6789", "Alice@Example.com", "influenza", "1980-01-02")
	insertPatient(t, globex, "bob", "123-45-6789", "bob@globex.test", "fractured femur", "1975-06-30")

	t.Run("each tenant reads its own plaintext", func(t *testing.T) {
		var name, ssn, email, diagnosis string
		var birth time.Time
		err := acme.QueryRow(ctx, `select name, ssn, email, diagnosis, birth_date from patients`).Scan(&name, &ssn, &email, &diagnosis, &birth)
		fatalIf(t, err, "acme select")
		mustEqual(t, "ssn", ssn, "123-45-6789")
		mustEqual(t, "email", email, "Alice@Example.com")
		mustEqual(t, "diagnosis", diagnosis, "influenza")
		mustEqual(t, "birth_date", birth.Format("2006-01-02"), "1980-01-02")
		err = globex.QueryRow(ctx, `select name, diagnosis from patients`).Scan(&name, &diagnosis)
		fatalIf(t, err, "globex select")
		mustEqual(t, "globex name", name, "bob")
		mustEqual(t, "globex diagnosis", diagnosis, "fractured femur")
	})

	t.Run("postgres stores only ciphertext", func(t *testing.T) {
		rows, err := env.pool.Query(ctx, `select ssn, ssn_bidx, email, diagnosis, birth_date, tenant_id from patients order by id`)
		fatalIf(t, err, "direct select")
		var bidx [][]byte
		for rows.Next() {
			var ssn, sb, email, diag, birth []byte
			var tenant string
			fatalIf(t, rows.Scan(&ssn, &sb, &email, &diag, &birth, &tenant), "scan")
			for _, v := range [][]byte{ssn, email, diag, birth} {
				if len(v) < 17 || v[0] != 0x01 {
					t.Errorf("stored value %x is not in pgcloak's format", v)
				}
			}
			mustEqual(t, "index length", len(sb), 16)
			bidx = append(bidx, sb)
		}
		if len(bidx) != 2 {
			t.Fatalf("rows: got %d, want 2", len(bidx))
		}
		if bytes.Equal(bidx[0], bidx[1]) {
			t.Error("the same SSN in two tenants has the same index value")
		}
		dump, err := exec.Command(env.pg.Bin("pg_dump"), "--data-only", env.pg.SuperuserURL(env.db)).CombinedOutput()
		fatalIf(t, err, "pg_dump: %s", dump)
		for _, s := range secrets {
			if bytes.Contains(dump, []byte(s)) {
				t.Errorf("pg_dump contains plaintext %q", s)
			}
		}
	})

	t.Run("search", func(t *testing.T) {
		insertPatient(t, acme, "carol", "555-55-5555", "carol@acme.test", "asthma", "1990-03-04")
		cases := []struct {
			sql  string
			want string
		}{
			{`select name from patients where ssn = '123-45-6789'`, "alice"},
			{`select name from patients where '555-55-5555' = ssn`, "carol"},
			{`select name from patients where ssn in ('000-00-0000', '555-55-5555')`, "carol"},
			{`select name from patients where email = 'ALICE@example.COM'`, "alice"},
			{`select name from patients where ssn <> '123-45-6789' and name is not null`, "carol"},
			{`select name from patients p where p.ssn = '123-45-6789' and p.id > 0`, "alice"},
			{`select name from public.patients where public.patients.ssn = '123-45-6789'`, "alice"},
		}
		for _, c := range cases {
			var got []string
			rows, err := acme.Query(ctx, c.sql)
			fatalIf(t, err, "%s", c.sql)
			for rows.Next() {
				var n string
				rows.Scan(&n)
				got = append(got, n)
			}
			fatalIf(t, rows.Err(), "%s", c.sql)
			mustEqual(t, c.sql, strings.Join(got, ","), c.want)
		}
		var n int
		fatalIf(t, globex.QueryRow(ctx, `select count(*) from patients where ssn = '555-55-5555'`).Scan(&n), "globex search")
		mustEqual(t, "globex finds acme's ssn", n, 0)
		_, err := acme.Exec(ctx, `insert into patients (name) values ('nobody')`)
		fatalIf(t, err, "insert null")
		var who string
		fatalIf(t, acme.QueryRow(ctx, `select name from patients where ssn is null`).Scan(&who), "is null")
		mustEqual(t, "is null", who, "nobody")
	})

	t.Run("update returning and delete", func(t *testing.T) {
		var ssn, diag string
		err := acme.QueryRow(ctx, `update patients set ssn = '999-99-9999', diagnosis = 'recovered' where ssn = '555-55-5555' returning ssn, diagnosis`).Scan(&ssn, &diag)
		fatalIf(t, err, "update returning")
		mustEqual(t, "returned ssn", ssn, "999-99-9999")
		mustEqual(t, "returned diagnosis", diag, "recovered")
		var n int
		fatalIf(t, acme.QueryRow(ctx, `select count(*) from patients where ssn = '999-99-9999'`).Scan(&n), "search updated")
		mustEqual(t, "found by new ssn", n, 1)
		tag, err := acme.Exec(ctx, `delete from patients where ssn = '999-99-9999'`)
		fatalIf(t, err, "delete")
		mustEqual(t, "deleted", tag.RowsAffected(), int64(1))
	})

	t.Run("multi-statement query", func(t *testing.T) {
		results := acme.PgConn().Exec(ctx, `begin; insert into patients (name, ssn) values ('dave', '444-44-4444'); select name from patients where ssn = '444-44-4444'; commit`)
		all, err := results.ReadAll()
		fatalIf(t, err, "multi-statement")
		mustEqual(t, "results", len(all), 4)
		mustEqual(t, "selected", string(all[2].Rows[0][0]), "dave")
	})

	t.Run("refusal in the middle aborts like a postgres error", func(t *testing.T) {
		results := acme.PgConn().Exec(ctx, `begin; insert into patients (name) values ('eve'); select name from patients where ssn < '5'; commit`)
		_, err := results.ReadAll()
		mustEqual(t, "SQLSTATE", pgCode(err), "0A000")
		mustEqual(t, "message", pgMessage(err), `pgcloak: public.patients.ssn is encrypted; operator "<" is not supported (supported: =, <>, IN, IS NULL)`)
		mustEqual(t, "transaction status after refusal", acme.PgConn().TxStatus(), byte('E'))
		mustExec(t, acme, `rollback`)
		var n int
		fatalIf(t, acme.QueryRow(ctx, `select count(*) from patients where name = 'eve'`).Scan(&n), "count eve")
		mustEqual(t, "eve rolled back", n, 0)
	})

	t.Run("invalid value for declared type is refused and not stored", func(t *testing.T) {
		_, err := acme.Exec(ctx, `insert into patients (name, birth_date) values ('frank', '1980-02-30')`)
		if c := pgCode(err); c != "22008" && c != "22007" {
			t.Errorf("invalid date: got %v, want 22007/22008", err)
		}
		var n int
		fatalIf(t, acme.QueryRow(ctx, `select count(*) from patients where name = 'frank'`).Scan(&n), "count")
		mustEqual(t, "frank stored", n, 0)
	})
}

func TestEncryptedRefusals(t *testing.T) {
	env := startEncrypted(t)
	ctx := ctxT(t)
	acme := env.tenantConn(t, acmeRole)
	insertPatient(t, acme, "alice", "123-45-6789", "Alice@Example.com", "influenza", "1980-01-02")
	cases := []struct {
		sql, code, contains string
	}{
		{`select * from patients where ssn < '2'`, "0A000", `public.patients.ssn is encrypted; operator "<"`},
		{`select * from patients where ssn like '1%'`, "0A000", "public.patients.ssn is encrypted"},
		{`select * from patients order by ssn`, "0A000", "public.patients.ssn is encrypted"},
		{`select ssn, count(*) from patients group by ssn`, "0A000", "public.patients.ssn is encrypted"},
		{`select distinct email from patients`, "0A000", "public.patients.email is encrypted"},
		{`select upper(diagnosis) from patients`, "0A000", "public.patients.diagnosis is encrypted"},
		{`select max(ssn) from patients`, "0A000", "public.patients.ssn is encrypted"},
		{`select * from patients a join patients b on a.ssn = b.ssn`, "0A000", "public.patients.ssn is encrypted"},
		{`insert into patients (name, ssn) select name, ssn from patients`, "0A000", "public.patients.ssn"},
		{`select * from patients where diagnosis = 'flu'`, "0A000", "public.patients.diagnosis is encrypted"},
		{`set app.tenant_id = 'globex'`, "42501", "tenant"},
		{`reset app.tenant_id`, "42501", "tenant"},
		{`select set_config('app.tenant_id', 'globex', false)`, "42501", "tenant"},
		{`with x as (select pg_catalog.set_config('app.tenant_id', 'globex', false)) select * from x`, "42501", "tenant"},
		{`select length(set_config('App.Tenant_Id', 'globex', false))`, "42501", "tenant"},
		{`do $$ begin perform set_config('app.tenant_id', 'globex', false); end $$`, "42501", "tenant"},
		{`create function f() returns void language sql as $$ select set_config('app.tenant_id', 'globex', false) $$`, "42501", "tenant"},
		{`prepare p as select set_config('app.tenant_id', 'globex', false)`, "42501", "tenant"},
		{`explain analyze select set_config('app.tenant_id', 'globex', false)`, "42501", "tenant"},
		{`copy (select set_config('app.tenant_id', 'globex', false)) to stdout`, "42501", "tenant"},
		// SQL inside a string constant, run by a function of the client's:
		// simple-protocol texts with constants take the shape path first.
		{`select my_exec('set app.tenant_id = ''globex''')`, "42501", "tenant"},
		{`select my_exec('select set_config(''app.'' || ''tenant_id'', ''globex'', false)')`, "42501", "tenant"},
		{`set role globex_app`, "42501", "tenant"},
		{`set session authorization globex_app`, "42501", "tenant"},
		{`set pgcloak.tenant_token = 'eyJhbGciOi.fake.token'`, "42501", "token roles"},
	}
	for _, c := range cases {
		t.Run(c.sql, func(t *testing.T) {
			_, err := acme.Exec(ctx, c.sql)
			mustEqual(t, "SQLSTATE", pgCode(err), c.code)
			if msg := pgMessage(err); !strings.HasPrefix(msg, "pgcloak: ") || !strings.Contains(msg, c.contains) {
				t.Errorf("message: got %q, want pgcloak: ...%s...", msg, c.contains)
			}
			var tenant string
			fatalIf(t, acme.QueryRow(ctx, `select current_setting('app.tenant_id')`).Scan(&tenant), "session still usable")
			mustEqual(t, "tenant", tenant, "acme")
		})
	}
	t.Run("audit records refused tenant changes", func(t *testing.T) {
		if n := strings.Count(env.audit.String(), `"event":"tenant_change_refused"`); n < 10 {
			t.Errorf("tenant_change_refused events: got %d, want at least 10", n)
		}
	})
	t.Run("reset all and discard all keep the tenant", func(t *testing.T) {
		for _, stmt := range []string{"reset all", "discard all", "set session authorization default", "reset role"} {
			mustExec(t, acme, stmt)
			var tenant string
			fatalIf(t, acme.QueryRow(ctx, `select current_setting('app.tenant_id')`).Scan(&tenant), "after %s", stmt)
			mustEqual(t, "tenant after "+stmt, tenant, "acme")
		}
	})
	t.Run("startup parameters cannot choose the tenant", func(t *testing.T) {
		for _, p := range []string{"app.tenant_id=globex", "options=-c%20app.tenant_id%3Dglobex"} {
			_, err := pgx.Connect(ctx, env.proxy.url(acmeRole, rolePassword, env.db, p))
			mustEqual(t, "SQLSTATE for "+p, pgCode(err), "42501")
		}
	})
	t.Run("unmapped role is refused after authentication", func(t *testing.T) {
		_, err := pgx.Connect(ctx, env.proxy.url(testenv.ScramUser, testenv.ScramPassword, env.db))
		mustEqual(t, "SQLSTATE", pgCode(err), "28000")
		_, err = pgx.Connect(ctx, env.proxy.url(testenv.ScramUser, "wrong", env.db))
		mustEqual(t, "wrong password still gets PostgreSQL's error", pgCode(err), "28P01")
	})
	t.Run("fast-path function calls", func(t *testing.T) {
		_, fe := rawSession(t, env.proxy) // trust_user, unscoped
		call := func(fn uint32, args ...[]byte) pgproto3.BackendMessage {
			t.Helper()
			fe.Send(&pgproto3.FunctionCall{Function: fn, ArgFormatCodes: []uint16{1}, Arguments: args, ResultFormatCode: 1})
			fatalIf(t, fe.Flush(), "send")
			var first pgproto3.BackendMessage
			for {
				msg, err := fe.Receive()
				fatalIf(t, err, "receive")
				if first == nil {
					switch m := msg.(type) {
					case *pgproto3.ErrorResponse:
						first = &pgproto3.ErrorResponse{Code: m.Code, Message: m.Message}
					case *pgproto3.FunctionCallResponse:
						first = &pgproto3.FunctionCallResponse{}
					}
				}
				if _, ok := msg.(*pgproto3.ReadyForQuery); ok {
					return first
				}
			}
		}
		// 1299 is now(): not a large-object function.
		if e, ok := call(1299).(*pgproto3.ErrorResponse); !ok || e.Code != "0A000" || !strings.HasPrefix(e.Message, "pgcloak: ") {
			t.Errorf("non-LO fast-path call: got %#v, want a pgcloak 0A000 error", e)
		}
		// 957 is lo_creat(mode int4).
		if _, ok := call(957, []byte{0, 0, 0, 0}).(*pgproto3.FunctionCallResponse); !ok {
			t.Error("lo_creat fast-path call was not relayed")
		}
	})
}

func TestEncryptedIsolationWithoutRLS(t *testing.T) {
	for _, mode := range []config.OnDecryptError{config.DecryptErrorFail, config.DecryptErrorNull} {
		t.Run(string(mode), func(t *testing.T) {
			env := startEncrypted(t, func(c *Config) { c.Encrypt.OnDecryptError = mode })
			ctx := ctxT(t)
			acme := env.tenantConn(t, acmeRole)
			globex := env.tenantConn(t, globexRole)
			insertPatient(t, acme, "alice", "123-45-6789", "Alice@Example.com", "influenza", "1980-01-02")
			insertPatient(t, globex, "bob", "987-65-4321", "bob@globex.test", "fractured femur", "1975-06-30")
			fatalIf(t, env.pg.Exec(ctx, env.db, `alter table patients disable row level security`), "disable RLS")

			rows, err := acme.Query(ctx, `select name, ssn from patients order by id`)
			var got []string
			if err == nil {
				for rows.Next() {
					var name string
					var ssn *string
					rows.Scan(&name, &ssn)
					if ssn == nil {
						got = append(got, name+":NULL")
					} else {
						got = append(got, name+":"+*ssn)
					}
				}
				err = rows.Err()
			}
			if mode == config.DecryptErrorFail {
				mustEqual(t, "SQLSTATE", pgCode(err), "39000")
				if !strings.Contains(pgMessage(err), "public.patients.ssn") {
					t.Errorf("message %q does not name the column", pgMessage(err))
				}
			} else {
				fatalIf(t, err, "select with on_decrypt_error null")
				mustEqual(t, "rows", strings.Join(got, ","), "alice:123-45-6789,bob:NULL")
			}
			for _, g := range got {
				if strings.Contains(g, "987-65-4321") {
					t.Fatalf("acme read globex's plaintext: %v", got)
				}
			}
			if !strings.Contains(env.audit.String(), `"event":"decrypt_failed"`) {
				t.Error("no decrypt_failed audit event")
			}

			// A ciphertext copied from globex's row into acme's row does not open for acme.
			fatalIf(t, env.pg.Exec(ctx, env.db, `update patients set ssn = (select ssn from patients where name = 'bob') where name = 'alice'`), "copy ciphertext")
			var ssn *string
			err = acme.QueryRow(ctx, `select ssn from patients where name = 'alice'`).Scan(&ssn)
			if mode == config.DecryptErrorFail {
				mustEqual(t, "copied ciphertext SQLSTATE", pgCode(err), "39000")
			} else if err != nil || ssn != nil {
				t.Errorf("copied ciphertext: got %v, %v; want NULL", ssn, err)
			}
		})
	}
}

func TestUnscopedSessionSeesCiphertext(t *testing.T) {
	env := startEncrypted(t)
	ctx := ctxT(t)
	acme := env.tenantConn(t, acmeRole)
	insertPatient(t, acme, "alice", "123-45-6789", "Alice@Example.com", "influenza", "1980-01-02")
	fatalIf(t, env.pg.Exec(ctx, env.db, `alter table patients no force row level security; grant all on patients to migrator; alter table patients owner to migrator`), "let migrator read")
	mig := env.tenantConn(t, migratorRole)
	var ssn []byte
	fatalIf(t, mig.QueryRow(ctx, `select ssn from patients`).Scan(&ssn), "unscoped select")
	if len(ssn) == 0 || ssn[0] != 0x01 || bytes.Contains(ssn, []byte("123-45-6789")) {
		t.Errorf("unscoped session got %q, want ciphertext", ssn)
	}
	_, err := mig.Exec(ctx, `insert into patients (tenant_id, name, ssn) values ('acme', 'x', 'plain')`)
	mustEqual(t, "unscoped write SQLSTATE", pgCode(err), "42501")
	_, err = mig.Exec(ctx, `select * from patients where ssn = '123-45-6789'`)
	mustEqual(t, "unscoped search SQLSTATE", pgCode(err), "42501")
}

func TestNoSecretsInLogsOrAudit(t *testing.T) {
	env := startEncrypted(t)
	acme := env.tenantConn(t, acmeRole)
	insertPatient(t, acme, "alice", "123-45-6789", "Alice@Example.com", "influenza", "1980-01-02")
	// A refused statement's text never reaches PostgreSQL: the last
	// statement acme's backend ran is the proxy's stand-in, in the simple
	// and in the extended protocol.
	lastQuery := func(conn *pgx.Conn) string {
		t.Helper()
		var q string
		fatalIf(t, env.pool.QueryRow(ctxT(t), `select query from pg_stat_activity where pid = $1`, conn.PgConn().PID()).Scan(&q), "pg_stat_activity")
		return q
	}
	_, err := acme.Exec(ctxT(t), `select * from patients where ssn < '123-45-6789'`)
	mustEqual(t, "simple refusal", pgCode(err), "0A000")
	if q := lastQuery(acme); strings.Contains(q, "123-45-6789") || !strings.Contains(q, "$pgcloak$") {
		t.Errorf("a refused simple query reached PostgreSQL: %s", q)
	}
	extended := connect(t, env.proxy.url(acmeRole, rolePassword, env.db))
	_, err = extended.Exec(ctxT(t), `select * from patients where ssn < '987-65-4321' and id > $1`, 0)
	mustEqual(t, "extended refusal", pgCode(err), "0A000")
	if q := lastQuery(extended); strings.Contains(q, "987-65-4321") || !strings.Contains(q, "$pgcloak$") {
		t.Errorf("a refused Parse reached PostgreSQL: %s", q)
	}
	acme.Exec(ctxT(t), `set app.tenant_id = '987-65-4321'`)
	pgx.Connect(ctxT(t), env.proxy.url(acmeRole, "wrong-"+rolePassword, env.db))
	for _, s := range secrets {
		for name, buf := range map[string]string{"audit": env.audit.String(), "log": env.logs.String()} {
			if strings.Contains(buf, s) {
				t.Errorf("%s contains secret %q", name, s)
			}
		}
	}
	if !strings.Contains(env.audit.String(), `"event":"session_start"`) {
		t.Error("audit has no session_start")
	}
	// Session events name the client's address.
	for _, line := range strings.Split(env.audit.String(), "\n") {
		if strings.Contains(line, `"event":"session_start"`) && !strings.Contains(line, `"client":"127.0.0.1:`) {
			t.Errorf("session_start without the client's address: %s", line)
		}
	}
}

// newTestKeys is the production key stack over the test database: wrapped
// keys in pgcloak.data_keys, a local master key, and the shared cache.
func newTestKeys(t testing.TB, pool *pgxpool.Pool) Keys {
	t.Helper()
	store, err := keystore.Open(ctxT(t), pool)
	fatalIf(t, err, "keystore")
	master := make([]byte, 32)
	rand.Read(master)
	provider, err := crypto.NewLocalProvider(master)
	fatalIf(t, err, "local provider")
	cache := crypto.NewKeyCache(store, provider, crypto.CacheOptions{TTL: time.Minute, MaxEntries: 100})
	t.Cleanup(cache.Close)
	return CacheKeys{Cache: cache}
}

// TestEncryptedReadsExtendedProtocol reads encrypted columns through every
// pgx exec mode: rows of cached statements arrive with no RowDescription of
// their own, and pgx asks for binary results for dates, so the proxy must
// track statements and portals and encode binary.
func TestEncryptedReadsExtendedProtocol(t *testing.T) {
	env := startEncrypted(t)
	ctx := ctxT(t)
	acme := env.tenantConn(t, acmeRole)
	insertPatient(t, acme, "alice", "123-45-6789", "Alice@Example.com", "influenza", "1980-01-02")
	var id int
	fatalIf(t, acme.QueryRow(ctx, `select id from patients where name = 'alice'`).Scan(&id), "id")

	for _, mode := range execModes {
		t.Run(mode.String(), func(t *testing.T) {
			conn := connect(t, env.proxy.url(acmeRole, rolePassword, env.db, "default_query_exec_mode="+queryExecModeParam(mode)))
			for i := range 3 { // repeated: cached statements skip Describe
				var ssn, diagnosis string
				var birth time.Time
				err := conn.QueryRow(ctx, `select ssn, diagnosis, birth_date from patients where id = $1`, id).Scan(&ssn, &diagnosis, &birth)
				fatalIf(t, err, "read %d", i)
				mustEqual(t, "ssn", ssn, "123-45-6789")
				mustEqual(t, "diagnosis", diagnosis, "influenza")
				mustEqual(t, "birth_date", birth.Format("2006-01-02"), "1980-01-02")
			}
			b := &pgx.Batch{}
			b.Queue(`select ssn from patients where id = $1`, id)
			b.Queue(`select email from patients where id = $1`, id)
			br := conn.SendBatch(ctx, b)
			var ssn, email string
			fatalIf(t, br.QueryRow().Scan(&ssn), "batch 1")
			fatalIf(t, br.QueryRow().Scan(&email), "batch 2")
			fatalIf(t, br.Close(), "batch close")
			mustEqual(t, "batch ssn", ssn, "123-45-6789")
			mustEqual(t, "batch email", email, "Alice@Example.com")
		})
	}
}

func queryExecModeParam(m pgx.QueryExecMode) string {
	return map[pgx.QueryExecMode]string{
		pgx.QueryExecModeCacheStatement: "cache_statement",
		pgx.QueryExecModeCacheDescribe:  "cache_describe",
		pgx.QueryExecModeDescribeExec:   "describe_exec",
		pgx.QueryExecModeExec:           "exec",
		pgx.QueryExecModeSimpleProtocol: "simple_protocol",
	}[m]
}

// TestCatalogRefresh: a declared column recreated after start gets a new
// attribute number; until the catalog is refreshed its values are not
// recognised, and after RefreshCatalog (SIGHUP) they decrypt again.
func TestCatalogRefresh(t *testing.T) {
	env := startEncrypted(t)
	ctx := ctxT(t)
	acme := env.tenantConn(t, acmeRole)
	insertPatient(t, acme, "alice", "123-45-6789", "Alice@Example.com", "influenza", "1980-01-02")
	var diag string
	fatalIf(t, acme.QueryRow(ctx, `select diagnosis from patients`).Scan(&diag), "read before DDL")
	fatalIf(t, env.pg.Exec(ctx, env.db, `alter table patients rename column diagnosis to diagnosis_old; alter table patients add column diagnosis bytea`), "recreate column")
	_, err := acme.Exec(ctx, `update patients set diagnosis = 'asthma'`)
	fatalIf(t, err, "update")
	var raw []byte
	fatalIf(t, acme.QueryRow(ctx, `select diagnosis from patients`).Scan(&raw), "read before refresh")
	if len(raw) == 0 || raw[0] != 0x01 {
		t.Fatalf("before refresh: got %q, want the ciphertext of an unknown column", raw)
	}
	fatalIf(t, env.proxy.srv.RefreshCatalog(ctx), "refresh")
	fatalIf(t, acme.QueryRow(ctx, `select diagnosis from patients`).Scan(&diag), "read after refresh")
	mustEqual(t, "diagnosis after refresh", diag, "asthma")
}

// TestSetConfigWithParametersRefused: set_config whose arguments are bound
// parameters cannot be checked from the text, so it is refused at Parse and
// nothing reaches PostgreSQL.
func TestSetConfigWithParametersRefused(t *testing.T) {
	env := startEncrypted(t)
	ctx := ctxT(t)
	conn := connect(t, env.proxy.url(acmeRole, rolePassword, env.db)) // extended protocol
	_, err := conn.Exec(ctx, `select set_config($1, $2, false)`, "app.tenant_id", "globex")
	mustEqual(t, "SQLSTATE", pgCode(err), "42501")
	var tenant string
	fatalIf(t, conn.QueryRow(ctx, `select current_setting('app.tenant_id')`).Scan(&tenant), "after refusal")
	mustEqual(t, "tenant", tenant, "acme")
}

// TestNewTenantKeysCreatedOnce: two sessions of a tenant with no keys yet
// write at the same time; the tenant ends with one version per purpose and
// both rows read back.
func TestNewTenantKeysCreatedOnce(t *testing.T) {
	env := startEncrypted(t)
	ctx := ctxT(t)
	a := env.tenantConn(t, acmeRole)
	b := env.tenantConn(t, acmeRole)
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i, conn := range []*pgx.Conn{a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = conn.Exec(ctx, fmt.Sprintf(`insert into patients (name, ssn, diagnosis) values ('racer%d', '%d', 'x')`, i, i))
		}()
	}
	wg.Wait()
	fatalIf(t, errors.Join(errs...), "concurrent first writes")
	var versions int
	fatalIf(t, env.pool.QueryRow(ctx, `select count(*) from pgcloak.data_keys where tenant = 'acme' and version > 1`).Scan(&versions), "versions")
	mustEqual(t, "key versions above 1", versions, 0)
	var purposes int
	fatalIf(t, env.pool.QueryRow(ctx, `select count(distinct (key_class, purpose)) from pgcloak.data_keys where tenant = 'acme'`).Scan(&purposes), "purposes")
	if purposes < 2 {
		t.Errorf("key (class, purpose) pairs: got %d, want data and index keys", purposes)
	}
	for i, conn := range []*pgx.Conn{a, b} {
		var ssn string
		fatalIf(t, conn.QueryRow(ctx, fmt.Sprintf(`select ssn from patients where ssn = '%d'`, 1-i)).Scan(&ssn), "read the other's row")
		mustEqual(t, "ssn", ssn, fmt.Sprint(1-i))
	}
}
