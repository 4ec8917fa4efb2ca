package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pgcloak/pgcloak/config"
	"github.com/pgcloak/pgcloak/crypto"
	"github.com/pgcloak/pgcloak/testenv"
)

// writeCheckConfig writes content to pgcloak.yaml in a fresh directory,
// next to a new master key, master.key, which checkConfig's relative
// keys.local.master_key_file names: relative to the file, not to the
// working directory. It returns the configuration's path.
func writeCheckConfig(t *testing.T, content string) string {
	t.Helper()
	path := writeFile(t, "pgcloak.yaml", content)
	if err := crypto.WriteLocalMasterKey(filepath.Join(filepath.Dir(path), "master.key")); err != nil {
		t.Fatal(err)
	}
	return path
}

// checkConfig is a minimal valid configuration for upstream at addr.
func checkConfig(addr, sslmode, rootCert, user, password, database string) string {
	s := fmt.Sprintf(`listen:
  address: 127.0.0.1:6432
upstream:
  address: %s
  sslmode: %s
  user: %s
  password: %q
  database: %s
  connect_timeout: 10s
keys:
  local:
    master_key_file: master.key
log:
  level: warn
`, addr, sslmode, user, password, database)
	if rootCert != "" {
		s = strings.Replace(s, "  user:", "  root_cert_file: "+rootCert+"\n  user:", 1)
	}
	return s
}

func TestCheck(t *testing.T) {
	pg := testenv.Shared(t)
	db := testenv.NewDatabase(t, pg)

	t.Run("ok", func(t *testing.T) {
		path := writeFile(t, "pgcloak.yaml", checkConfig(pg.Addr(), "disable", "", testenv.ScramUser, testenv.ScramPassword, db))
		r := pgcloak(t, "check", "-c", path)
		if r.code != 0 {
			t.Fatalf("exit code: got %d, want 0", r.code)
		}
		containsAll(t, "stdout", r.stdout,
			"ok    config: "+path+" is valid",
			"ok    upstream: connected to "+pg.Addr()+" user="+testenv.ScramUser+" database="+db+" sslmode=disable",
			"ok    upstream server: PostgreSQL ",
			"encrypted tables: none declared",
			"check passed",
		)
		if strings.Contains(r.output(), testenv.ScramPassword) {
			t.Errorf("output contains the upstream password")
		}
	})

	t.Run("wrong password", func(t *testing.T) {
		const wrong = "not-the-password-7c1f"
		path := writeFile(t, "pgcloak.yaml", checkConfig(pg.Addr(), "disable", "", testenv.ScramUser, wrong, db))
		r := pgcloak(t, "check", "-c", path)
		if r.code != 1 {
			t.Errorf("exit code: got %d, want 1", r.code)
		}
		containsAll(t, "stdout", r.stdout, "FAIL  upstream:", "28P01", "check FAILED")
		if strings.Contains(r.output(), wrong) {
			t.Errorf("output contains the password from the configuration")
		}
	})

	t.Run("unreachable", func(t *testing.T) {
		path := writeFile(t, "pgcloak.yaml", checkConfig(freeAddr(t), "disable", "", testenv.ScramUser, testenv.ScramPassword, db))
		r := pgcloak(t, "check", "-c", path)
		if r.code != 1 {
			t.Errorf("exit code: got %d, want 1", r.code)
		}
		if !strings.Contains(r.stdout, "FAIL  upstream:") {
			t.Errorf("stdout: missing the upstream failure")
		}
	})

	t.Run("listen tls", func(t *testing.T) {
		_, certFile, keyFile, err := testenv.WriteTLSCerts(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		cfg := checkConfig(pg.Addr(), "disable", "", testenv.ScramUser, testenv.ScramPassword, db)
		cfg = strings.Replace(cfg, "listen:\n", "listen:\n  tls:\n    cert_file: "+certFile+"\n    key_file: "+keyFile+"\n", 1)
		r := pgcloak(t, "check", "-c", writeFile(t, "pgcloak.yaml", cfg))
		if r.code != 0 {
			t.Errorf("exit code: got %d, want 0", r.code)
		}
		if want := "ok    listen: 127.0.0.1:6432, TLS certificate " + certFile + " loads"; !strings.Contains(r.stdout, want) {
			t.Errorf("stdout: missing %q", want)
		}
	})

	t.Run("listen tls files missing", func(t *testing.T) {
		cfg := checkConfig(pg.Addr(), "disable", "", testenv.ScramUser, testenv.ScramPassword, db)
		cfg = strings.Replace(cfg, "listen:\n", "listen:\n  tls:\n    cert_file: /nonexistent/server.crt\n    key_file: /nonexistent/server.key\n", 1)
		r := pgcloak(t, "check", "-c", writeFile(t, "pgcloak.yaml", cfg))
		if r.code != 1 {
			t.Errorf("exit code: got %d, want 1", r.code)
		}
		if !strings.Contains(r.stdout, "FAIL  listen: listen.tls: open /nonexistent/server.crt") {
			t.Errorf("stdout: missing the listen.tls failure")
		}
	})
}

// Roles of TestCheckTables (roles are cluster-wide).
const (
	checkAcmeRole   = "cmd_check_acme"
	checkGlobexRole = "cmd_check_globex"
	checkBypassRole = "cmd_check_bypass" // BYPASSRLS
	checkOwnerRole  = "cmd_check_owner"  // owns table owned_by_tenant
	checkGoneRole   = "cmd_check_no_such_role"
)

// TestCheckTables runs check on declared tables: column types, row-level
// security and the roles that bypass it.
func TestCheckTables(t *testing.T) {
	pg := testenv.Shared(t)
	db := testenv.NewDatabase(t, pg)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()

	// Every table is created by the superuser, so owned by postgres unless
	// altered; the policy is the one of the README, and pgcloak schema's
	// DDL adds the format CHECKs.
	installPin(t, pg, db)
	table := func(name, ssnType, rls string) string {
		return fmt.Sprintf(`
create table %[1]s (id int primary key, tenant_id text not null default pgcloak.current_tenant(), ssn %[2]s, ssn_bidx bytea, diagnosis bytea);
%[3]s
create policy tenant_isolation on %[1]s using (tenant_id = pgcloak.current_tenant());`, name, ssnType, rls)
	}
	const forced = "alter table %s enable row level security; alter table %[1]s force row level security;"
	setup := fmt.Sprintf(`
do $$ begin
  if not exists (select from pg_roles where rolname = '%[1]s') then create role %[1]s login; end if;
  if not exists (select from pg_roles where rolname = '%[2]s') then create role %[2]s login; end if;
  if not exists (select from pg_roles where rolname = '%[3]s') then create role %[3]s login bypassrls; end if;
  if not exists (select from pg_roles where rolname = '%[4]s') then create role %[4]s login; end if;
end $$;`, checkAcmeRole, checkGlobexRole, checkBypassRole, checkOwnerRole) +
		table("patients", "bytea", fmt.Sprintf(forced, "patients")) +
		table("plain_ssn", "text", fmt.Sprintf(forced, "plain_ssn")) +
		table("no_rls", "bytea", "") +
		table("not_forced", "bytea", "alter table not_forced enable row level security;") +
		table("owned_by_upstream", "bytea", "alter table owned_by_upstream enable row level security;") +
		table("owned_by_tenant", "bytea", "alter table owned_by_tenant enable row level security;") +
		table("plain_varchar", "varchar(11)", fmt.Sprintf(forced, "plain_varchar")) +
		table("no_grants", "bytea", fmt.Sprintf(forced, "no_grants")) +
		table("read_only", "bytea", fmt.Sprintf(forced, "read_only")) + fmt.Sprintf(`
alter table owned_by_upstream owner to %[1]s;
alter table owned_by_tenant owner to %[2]s;
revoke temp on database %[3]s from public;
grant select, update on patients, plain_ssn, plain_varchar, no_rls, not_forced, owned_by_tenant to %[1]s;
grant select, insert, update, delete on patients, plain_ssn, plain_varchar, no_rls, not_forced, owned_by_upstream, owned_by_tenant to %[4]s, %[5]s, %[6]s, %[2]s;
grant select on read_only to %[1]s, %[4]s;
grant update (ssn, ssn_bidx, diagnosis) on read_only to %[4]s;`, testenv.ScramUser, checkOwnerRole, db, checkAcmeRole, checkGlobexRole, checkBypassRole)
	if err := pg.Exec(ctx, db, setup); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"patients", "no_rls", "not_forced", "owned_by_upstream", "owned_by_tenant", "no_grants", "read_only"} {
		if err := pg.Exec(ctx, db, schemaDDL(t, config.Table{Schema: "public", Name: name, Columns: []config.Column{{Name: "ssn", IndexColumn: "ssn_bidx"}, {Name: "diagnosis"}}})); err != nil {
			t.Fatal(err)
		}
	}

	// configFor declares table with ssn (searchable, so ssn_bidx) and
	// diagnosis, and maps roles (role: tenant) for mode login.
	configFor := func(table string, roles ...string) string {
		cfg := checkConfig(pg.Addr(), "disable", "", testenv.ScramUser, testenv.ScramPassword, db)
		cfg += "tenancy:\n  login:\n    roles:\n"
		for i := 0; i < len(roles); i += 2 {
			cfg += fmt.Sprintf("      %s: %s\n", roles[i], roles[i+1])
		}
		return cfg + fmt.Sprintf(`encrypt:
  tables:
    - name: %s
      columns:
        - name: ssn
          type: text
          search: equality
        - name: diagnosis
          type: text
`, table)
	}
	tenants := []string{checkAcmeRole, "acme", checkGlobexRole, "globex"}
	upstream := "role " + testenv.ScramUser + " (upstream.user)"

	for _, tt := range []struct {
		name     string
		config   string
		code     int
		want     []string // whole lines
		unwanted []string // substrings
	}{{
		name:   "good",
		config: configFor("patients", tenants...),
		want: []string{
			"ok    table public.patients: exists (owner postgres)",
			"ok    table public.patients column ssn: bytea",
			"ok    table public.patients column ssn_bidx: bytea (blind index of ssn)",
			"ok    table public.patients column diagnosis: bytea",
			"ok    table public.patients column ssn format CHECK: patients_ssn_pgcloak_format",
			"ok    table public.patients column ssn_bidx format CHECK: patients_ssn_bidx_pgcloak_format",
			"ok    table public.patients column diagnosis format CHECK: patients_diagnosis_pgcloak_format",
			"ok    table public.patients rls: enabled and forced",
			"ok    table public.patients policies: use pgcloak.current_tenant() (tenant_isolation)",
			"ok    upstream.user scram_user: is not a tenant or unscoped role",
			"ok    role cmd_check_acme (tenant acme): creates no objects, executes no SECURITY DEFINER function (but pgcloak's) or dynamic SQL that check could find",
			"ok    table public.patients " + upstream + ": does not bypass RLS (encrypt-existing then needs --tenant)",
			"ok    table public.patients role cmd_check_acme (tenant acme): does not bypass RLS",
			"ok    table public.patients role cmd_check_globex (tenant globex): does not bypass RLS",
			"ok    keys: master key file " + dirMarker + "/master.key loads",
			"ok    table public.patients privileges of upstream.user scram_user: SELECT, UPDATE (pgcloak reencrypt and pgcloak encrypt-existing need them)",
			"ok    table public.patients privileges of role cmd_check_acme (tenant acme): SELECT, INSERT, UPDATE, DELETE",
			"check passed",
		},
		unwanted: []string{"WARN", "FAIL"},
	}, {
		name:   "text column",
		config: configFor("plain_ssn", tenants...),
		code:   1,
		want: []string{
			"FAIL  table public.plain_ssn column ssn: is text, want bytea: it holds plaintext, and pgcloak schema | psql would fail on it (function get_byte(text, integer) does not exist); encrypt it in place with: " +
				"pgcloak encrypt-existing -c " + pathMarker + ` --table public.plain_ssn --print-prepare | psql "$DATABASE_URL", then pgcloak encrypt-existing -c ` + pathMarker + " --table public.plain_ssn",
			"ok    table public.plain_ssn column ssn_bidx: bytea (blind index of ssn)",
			"FAIL  table public.plain_ssn column ssn_bidx format CHECK: missing (no CHECK with pgcloak's format definition): serve refuses to start; add plain_ssn_ssn_bidx_pgcloak_format with: pgcloak encrypt-existing -c " + pathMarker + ` --table public.plain_ssn --print-prepare | psql "$DATABASE_URL"`,
			"check FAILED",
		},
		unwanted: []string{"plain_ssn column ssn format CHECK", "pgcloak schema -c"},
	}, {
		name:   "varchar column",
		config: configFor("plain_varchar", tenants...),
		code:   1,
		want: []string{
			"FAIL  table public.plain_varchar column ssn: is character varying(11), want bytea: it holds plaintext, and pgcloak schema | psql would fail on it (function get_byte(character varying, integer) does not exist); encrypt it in place with: " +
				"pgcloak encrypt-existing -c " + pathMarker + ` --table public.plain_varchar --print-prepare | psql "$DATABASE_URL", then pgcloak encrypt-existing -c ` + pathMarker + " --table public.plain_varchar",
			"check FAILED",
		},
	}, {
		name:   "no privileges",
		config: configFor("no_grants", tenants...),
		code:   1,
		want: []string{
			"FAIL  table public.no_grants privileges of upstream.user scram_user: lacks SELECT, which pgcloak reencrypt and pgcloak encrypt-existing need (to read the rows still to do); as the table's owner run: GRANT SELECT, UPDATE ON public.no_grants TO scram_user",
			"FAIL  table public.no_grants privileges of upstream.user scram_user: lacks UPDATE, which pgcloak reencrypt and pgcloak encrypt-existing need (to write each row's sealed values); as the table's owner run: GRANT SELECT, UPDATE ON public.no_grants TO scram_user",
			"WARN  table public.no_grants privileges of role cmd_check_acme (tenant acme): lacks SELECT, INSERT, UPDATE, DELETE: its sessions through pgcloak get 42501 for them; if the application needs them, run: GRANT SELECT, INSERT, UPDATE, DELETE ON public.no_grants TO cmd_check_acme",
			"check FAILED",
		},
	}, {
		name:   "read-only upstream.user, column grants",
		config: configFor("read_only", tenants...),
		code:   1,
		want: []string{
			"FAIL  table public.read_only privileges of upstream.user scram_user: lacks UPDATE, which pgcloak reencrypt and pgcloak encrypt-existing need (to write each row's sealed values); as the table's owner run: GRANT UPDATE ON public.read_only TO scram_user",
			// UPDATE of the declared and index columns is enough.
			"WARN  table public.read_only privileges of role cmd_check_acme (tenant acme): lacks INSERT, DELETE: its sessions through pgcloak get 42501 for them; if the application needs them, run: GRANT INSERT, DELETE ON public.read_only TO cmd_check_acme",
			"check FAILED",
		},
		unwanted: []string{"scram_user: lacks SELECT"},
	}, {
		name:   "rls disabled",
		config: configFor("no_rls", tenants...),
		want: []string{
			"WARN  table public.no_rls rls: disabled: rows are not isolated by tenant, only by encryption (ALTER TABLE ... ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY)",
			"ok    table public.no_rls role cmd_check_acme (tenant acme): does not bypass RLS",
			"check passed (1 warning)",
		},
	}, {
		name:   "tenant role with BYPASSRLS",
		config: configFor("patients", append(tenants, checkBypassRole, "initech")...),
		code:   1,
		want: []string{
			"ok    table public.patients rls: enabled and forced",
			"ok    table public.patients role cmd_check_acme (tenant acme): does not bypass RLS",
			"FAIL  table public.patients role cmd_check_bypass (tenant initech): bypasses RLS (BYPASSRLS): a tenant could read other tenants' rows, still as ciphertext, but the RLS wall is gone",
			"check FAILED",
		},
	}, {
		name:   "missing table",
		config: configFor("no_such_table", tenants...),
		code:   1,
		want: []string{
			"FAIL  table public.no_such_table: does not exist (create it, then run pgcloak schema for its bytea columns)",
			"check FAILED",
		},
		unwanted: []string{"column ssn", "rls:"},
	}, {
		name:   "missing role",
		config: configFor("patients", checkAcmeRole, "acme", checkGoneRole, "gone"),
		want: []string{
			"WARN  table public.patients role cmd_check_no_such_role (tenant gone): role does not exist",
			"check passed (1 warning)",
		},
	}, {
		name:   "not forced, owned by postgres",
		config: configFor("not_forced", tenants...),
		want: []string{
			"ok    table public.not_forced rls: enabled, not forced (the table owner postgres bypasses it; none of pgcloak's roles is the owner)",
			"check passed",
		},
	}, {
		name:   "not forced, owned by upstream.user",
		config: configFor("owned_by_upstream", tenants...),
		want: []string{
			"WARN  table public.owned_by_upstream rls: enabled, not forced (the table owner bypasses it), and scram_user (upstream.user) has the owner's privileges (ALTER TABLE ... FORCE ROW LEVEL SECURITY)",
			"ok    table public.owned_by_upstream " + upstream + ": bypasses RLS (owns the table (as scram_user) without FORCE ROW LEVEL SECURITY): allowed for pgcloak's own login; encrypt-existing without --tenant needs it",
			"check passed (1 warning)",
		},
	}, {
		name:   "not forced, owned by a tenant role",
		config: configFor("owned_by_tenant", append(tenants, checkOwnerRole, "owner")...),
		code:   1,
		want: []string{
			"WARN  table public.owned_by_tenant rls: enabled, not forced (the table owner bypasses it), and cmd_check_owner (tenant owner) has the owner's privileges (ALTER TABLE ... FORCE ROW LEVEL SECURITY)",
			"FAIL  table public.owned_by_tenant role cmd_check_owner (tenant owner): bypasses RLS (owns the table (as cmd_check_owner) without FORCE ROW LEVEL SECURITY): a tenant could read other tenants' rows, still as ciphertext, but the RLS wall is gone",
			"check FAILED",
		},
	}} {
		t.Run(tt.name, func(t *testing.T) {
			path := writeCheckConfig(t, tt.config)
			r := pgcloak(t, "check", "-c", path)
			if r.code != tt.code {
				t.Errorf("exit code: got %d, want %d", r.code, tt.code)
			}
			lines := strings.Split(r.stdout, "\n")
			for _, want := range tt.want {
				want = strings.ReplaceAll(want, pathMarker, path)
				want = strings.ReplaceAll(want, dirMarker, filepath.Dir(path))
				if !slices.Contains(lines, want) {
					t.Errorf("stdout: missing the line %q", want)
				}
			}
			containsNone(t, "stdout", r.stdout, tt.unwanted...)
			if strings.Contains(r.output(), testenv.ScramPassword) {
				t.Errorf("output contains the upstream password")
			}
		})
	}
}

// pathMarker stands for the configuration file's path in expected lines,
// dirMarker for its directory.
const (
	pathMarker = "<CONFIG>"
	dirMarker  = "<DIR>"
)

// installPin installs the verified tenant pin (pgcloak.current_tenant())
// in database db as serve does, as upstream.user (the testenv SCRAM role,
// which it lets create the pgcloak schema).
func installPin(t *testing.T, pg *testenv.Postgres, db string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	if err := pg.Exec(ctx, db, fmt.Sprintf("grant create on database %s to %s", db, testenv.ScramUser)); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(writeFile(t, "pin.yaml", checkConfig(pg.Addr(), "disable", "", testenv.ScramUser, testenv.ScramPassword, db)))
	if err != nil {
		t.Fatal(err)
	}
	pool, err := upstreamPool(cfg.Upstream, "pgcloak test", 1)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	pinner, err := openPinner(ctx, cfg, pool)
	if err != nil {
		t.Fatal(err)
	}
	pinner.Close()
}

// Roles of TestCheckTenancy (roles are cluster-wide).
const (
	checkPlainRole = "cmd_check_plain" // may do none of what check warns about
	checkRiskyRole = "cmd_check_risky" // may do all of it
)

// TestCheckTenancy runs check on what isolates tenants below the proxy:
// policies that read the bare setting instead of pgcloak.current_tenant(),
// on declared tables and others; upstream.user configured as a tenant or
// unscoped role; and tenant roles that may create objects, run SECURITY
// DEFINER functions or dynamic SQL, or read the pin key.
func TestCheckTenancy(t *testing.T) {
	pg := testenv.Shared(t)
	db := testenv.NewDatabase(t, pg)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	installPin(t, pg, db)
	ssnTable := func(name string) config.Table {
		return config.Table{Schema: "public", Name: name, Columns: []config.Column{{Name: "ssn", IndexColumn: "ssn_bidx"}}}
	}
	setup := fmt.Sprintf(`
do $$ begin
  if not exists (select from pg_roles where rolname = '%[1]s') then create role %[1]s login; end if;
  if not exists (select from pg_roles where rolname = '%[2]s') then create role %[2]s login; end if;
end $$;
revoke temp on database %[3]s from public;
grant temp on database %[3]s to %[2]s;
create schema app;
grant usage, create on schema app to %[2]s;

create table pinned (id int, tenant_id text not null default pgcloak.current_tenant(), ssn bytea, ssn_bidx bytea);
alter table pinned enable row level security, force row level security;
create policy isolation on pinned using (tenant_id = pgcloak.current_tenant()) with check (tenant_id = pgcloak.current_tenant());

create table bare (id int, tenant_id text not null default current_setting('app.tenant_id'), ssn bytea, ssn_bidx bytea);
alter table bare enable row level security, force row level security;
create policy isolation on bare using (tenant_id = current_setting('app.tenant_id', true));

create table mixed (id int, tenant_id text, ssn bytea, ssn_bidx bytea);
alter table mixed enable row level security, force row level security;
create policy isolation on mixed as restrictive using (tenant_id = pgcloak.current_tenant());
create policy pinned on mixed using (tenant_id = pgcloak.current_tenant());
create policy everyone on mixed using (true);
create policy other_setting on mixed as restrictive using (current_setting('app.region', true) = 'eu');

create table unpinned (id int, tenant_id text, ssn bytea, ssn_bidx bytea);
alter table unpinned enable row level security, force row level security;
create policy isolation on unpinned using (tenant_id = session_user);

create table no_policy (id int, ssn bytea, ssn_bidx bytea);
alter table no_policy enable row level security;

create table app.undeclared (id int, tenant_id text);
alter table app.undeclared enable row level security;
create policy by_setting on app.undeclared with check (tenant_id = current_setting('APP.TENANT_ID'));

create function app.definer() returns int language sql security definer as 'select 1';
create function app.dynamic(t text) returns void language plpgsql as $f$ begin execute format('delete from %%I', t); end $f$;
create function app.setter(v text) returns text language sql as $f$ select set_config('app.tenant_id', v, false) $f$;
create function app.harmless() returns int language sql as 'select 2';
create function app.crosstab(text) returns setof record as '$libdir/tablefunc', 'crosstab' language c stable strict;
create function app.hidden() returns int language plpgsql security definer as $f$ begin execute 'select 1'; return 1; end $f$;
revoke execute on function app.hidden() from public;
grant select on pgcloak.pin_key to %[2]s;
grant select, update on pinned, bare, mixed, unpinned, no_policy to %[4]s;
grant select, insert, update, delete on pinned, bare, mixed, unpinned, no_policy to %[1]s, %[2]s;
`, checkPlainRole, checkRiskyRole, db, testenv.ScramUser)
	if err := pg.Exec(ctx, db, setup); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"pinned", "bare", "mixed", "unpinned", "no_policy"} {
		if err := pg.Exec(ctx, db, schemaDDL(t, ssnTable(name))); err != nil {
			t.Fatal(err)
		}
	}

	configFor := func(tenancy, table string) string {
		return checkConfig(pg.Addr(), "disable", "", testenv.ScramUser, testenv.ScramPassword, db) + tenancy + fmt.Sprintf(`encrypt:
  tables:
    - name: %s
      columns:
        - name: ssn
          type: text
          search: equality
`, table)
	}
	plain := "tenancy:\n  login:\n    roles:\n      " + checkPlainRole + ": acme\n"
	undeclaredWarn := "WARN  table app.undeclared policy by_setting: not declared, reads the bare setting (current_setting('app.tenant_id')), which SQL in a session can change; read pgcloak.current_tenant() instead"
	for _, tt := range []struct {
		name     string
		config   string
		code     int
		want     []string // whole lines
		unwanted []string // substrings
	}{{
		name:   "pinned",
		config: configFor(plain, "pinned"),
		want: []string{
			"ok    table public.pinned policies: use pgcloak.current_tenant() (isolation)",
			"ok    role cmd_check_plain (tenant acme): creates no objects, executes no SECURITY DEFINER function (but pgcloak's) or dynamic SQL that check could find",
			undeclaredWarn,
			"WARN  table public.bare policy isolation: not declared, reads the bare setting (current_setting('app.tenant_id')), which SQL in a session can change; read pgcloak.current_tenant() instead",
			"check passed (2 warnings)",
		},
		unwanted: []string{"FAIL", "pinned policy", "pinned column tenant_id"},
	}, {
		name:   "bare setting",
		config: configFor(plain, "bare"),
		code:   1,
		want: []string{
			"FAIL  table public.bare policy isolation: reads the bare setting (current_setting('app.tenant_id')), which SQL in a session can change; read pgcloak.current_tenant() instead: USING (tenant_id = pgcloak.current_tenant())",
			"WARN  table public.bare policies: none calls pgcloak.current_tenant(): rows are not isolated by the tenant pgcloak pinned (CREATE POLICY ... USING (tenant_id = pgcloak.current_tenant()))",
			"WARN  table public.bare column tenant_id: its default reads the bare setting (current_setting('app.tenant_id')); use DEFAULT pgcloak.current_tenant()",
			undeclaredWarn,
			"check FAILED",
		},
		unwanted: []string{"table public.bare policy isolation: not declared"},
	}, {
		name:   "mixed",
		config: configFor(plain, "mixed"),
		want: []string{
			"ok    table public.mixed policies: use pgcloak.current_tenant() (isolation, pinned)",
			"WARN  table public.mixed policy everyone: permissive and does not call pgcloak.current_tenant(): permissive policies are ORed, so it may show rows of other tenants (make it AS RESTRICTIVE, or drop it)",
			"WARN  table public.mixed policy other_setting: reads a setting with current_setting(), which SQL in a session can change; isolate tenants by pgcloak.current_tenant()",
		},
	}, {
		name:   "unpinned",
		config: configFor(plain, "unpinned"),
		want: []string{
			"WARN  table public.unpinned policies: none calls pgcloak.current_tenant(): rows are not isolated by the tenant pgcloak pinned (CREATE POLICY ... USING (tenant_id = pgcloak.current_tenant()))",
		},
	}, {
		name:   "no policy",
		config: configFor(plain, "no_policy"),
		want: []string{
			"WARN  table public.no_policy policies: none: row-level security hides every row from roles that do not bypass it; add USING (tenant_id = pgcloak.current_tenant())",
		},
	}, {
		name:   "risky tenant role",
		config: configFor("tenancy:\n  login:\n    roles:\n      "+checkRiskyRole+": initech\n", "pinned"),
		code:   1,
		want: []string{
			"FAIL  role cmd_check_risky (tenant initech): may read pgcloak.pin_key: a session as this role could pin any tenant (REVOKE ALL ON pgcloak.pin_key FROM \"cmd_check_risky\")",
			"WARN  role cmd_check_risky (tenant initech): may create objects (CREATE on schema app; TEMP on database " + db + "): functions, views, rules or triggers whose SQL pgcloak never reads (REVOKE CREATE ON SCHEMA ...; REVOKE TEMP ON DATABASE ... FROM PUBLIC and the role)",
			"WARN  role cmd_check_risky (tenant initech): may execute SECURITY DEFINER functions, which run as their owner: app.definer()",
			"WARN  role cmd_check_risky (tenant initech): may execute functions whose body runs dynamic SQL (EXECUTE or set_config, by a text search of the body; or a C function of tablefunc or dblink): app.crosstab(text), app.dynamic(text), app.setter(text)",
		},
		unwanted: []string{"harmless", "hidden"},
	}, {
		name:   "risky token role",
		config: configFor("tenancy:\n  token_roles: ["+checkRiskyRole+"]\n  jwt:\n    hs256_secret: "+strings.Repeat("k", 32)+"\n", "pinned"),
		code:   1,
		want: []string{
			"WARN  role cmd_check_risky (token role): may create temporary tables (TEMP on database " + db + "): one made under a tenant token stays on the connection after the token's transaction, readable by the next tenant's; pgcloak refuses CREATE TEMPORARY TABLE and WITH HOLD where it reads them, REVOKE TEMP ON DATABASE \"" + db + "\" FROM PUBLIC, \"cmd_check_risky\" makes PostgreSQL refuse the rest",
		},
	}, {
		name:   "upstream.user as a tenant",
		config: configFor("tenancy:\n  login:\n    roles:\n      "+testenv.ScramUser+": acme\n      "+checkPlainRole+": globex\n", "pinned"),
		code:   1,
		want: []string{
			"FAIL  upstream.user scram_user: tenancy.login.roles maps it to tenant acme: no client session may run as upstream.user, which owns the tenant pin's key (pgcloak refuses its login with 28000); map another role",
		},
		unwanted: []string{"is not a tenant or unscoped role"},
	}, {
		name:   "upstream.user unscoped",
		config: configFor(plain+"  unscoped_roles: [migrator, 'scram_*']\n", "pinned"),
		code:   1,
		want: []string{
			`FAIL  upstream.user scram_user: tenancy.unscoped_roles entry "scram_*" matches it: no client session may run as upstream.user, which owns the tenant pin's key (pgcloak refuses its login with 28000)`,
		},
		unwanted: []string{`entry "migrator"`},
	}} {
		t.Run(tt.name, func(t *testing.T) {
			r := pgcloak(t, "check", "-c", writeCheckConfig(t, tt.config))
			if r.code != tt.code {
				t.Errorf("exit code: got %d, want %d", r.code, tt.code)
			}
			lines := strings.Split(r.stdout, "\n")
			for _, want := range tt.want {
				if !slices.Contains(lines, want) {
					t.Errorf("stdout: missing the line %q", want)
				}
			}
			containsNone(t, "stdout", r.stdout, tt.unwanted...)
		})
	}
}

// TestCheckRolePosture covers the verdicts that need roles the shared
// server does not have (superusers) or a mode jwt upstream_user that
// bypasses RLS.
func TestCheckRolePosture(t *testing.T) {
	forced := tableRLS{enabled: true, forced: true, owner: "app"}
	notForced := tableRLS{enabled: true, owner: "app"}
	upstream := checkedRole{name: "pgcloak", label: "upstream.user"}
	tenant := checkedRole{name: "acme_app", label: "tenant acme", tenant: true}
	jwt := checkedRole{name: "app_jwt", label: "jwt.upstream_user, tenant sessions in mode jwt", tenant: true}
	for _, tt := range []struct {
		name string
		role checkedRole
		f    roleFacts
		rls  tableRLS
		want level
		says string
	}{
		{"tenant plain", tenant, roleFacts{exists: true}, forced, levelOK, "does not bypass RLS"},
		{"tenant superuser", tenant, roleFacts{exists: true, superuser: true, bypassRLS: true}, forced, levelFail, "superuser, BYPASSRLS"},
		{"tenant owner, forced", tenant, roleFacts{exists: true, owner: true}, forced, levelOK, "does not bypass"},
		{"tenant owner, not forced", tenant, roleFacts{exists: true, owner: true}, notForced, levelFail, "owns the table (as app)"},
		{"tenant owner, rls off", tenant, roleFacts{exists: true, owner: true}, tableRLS{owner: "app"}, levelOK, "does not bypass"},
		{"tenant missing", tenant, roleFacts{}, forced, levelWarn, "does not exist"},
		{"upstream superuser", upstream, roleFacts{exists: true, superuser: true, bypassRLS: true}, forced, levelWarn, "BYPASSRLS would do without superuser"},
		{"upstream BYPASSRLS", upstream, roleFacts{exists: true, bypassRLS: true}, forced, levelOK, "encrypt-existing without --tenant needs it"},
		{"upstream plain", upstream, roleFacts{exists: true}, forced, levelOK, "encrypt-existing then needs --tenant"},
		{"jwt upstream_user BYPASSRLS", jwt, roleFacts{exists: true, bypassRLS: true}, forced, levelFail, "a tenant could read other tenants' rows"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, says := rolePosture(tt.role, tt.f, tt.rls)
			if got != tt.want || !strings.Contains(says, tt.says) {
				t.Errorf("rolePosture: got %d %q, want %d and %q", got, says, tt.want, tt.says)
			}
		})
	}
}

// TestCheckRoles checks which roles check looks at and how it names them.
func TestCheckRoles(t *testing.T) {
	cfg := &config.Config{
		Upstream: config.Upstream{User: "pgcloak"},
		Tenancy:  config.Tenancy{Mode: config.ModeLogin, Login: config.LoginTenancy{Roles: map[string]string{"globex_app": "globex", "acme_app": "acme"}}},
	}
	want := []checkedRole{
		{name: "pgcloak", label: "upstream.user"},
		{name: "acme_app", label: "tenant acme", tenant: true},
		{name: "globex_app", label: "tenant globex", tenant: true},
	}
	if got := checkedRoles(cfg); !slices.Equal(got, want) {
		t.Errorf("mode login: got %+v, want %+v", got, want)
	}
	cfg.Tenancy.Mode = config.ModeJWT
	cfg.Tenancy.Login.Roles = nil
	cfg.Tenancy.JWT.UpstreamUser = "app_jwt"
	want = []checkedRole{
		{name: "pgcloak", label: "upstream.user"},
		{name: "app_jwt", label: "jwt.upstream_user, tenant sessions in mode jwt", tenant: true},
	}
	if got := checkedRoles(cfg); !slices.Equal(got, want) {
		t.Errorf("mode jwt: got %+v, want %+v", got, want)
	}
}

// TestCheckUpstreamTLS runs check against a server with TLS, verifying its
// certificate (verify-full) and not (require).
func TestCheckUpstreamTLS(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	pg, err := testenv.Start(ctx, testenv.Options{TLS: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := pg.Stop(); err != nil {
			t.Error(err)
		}
	})

	for _, tt := range []struct{ sslmode, rootCert string }{
		{"require", ""},
		{"verify-full", pg.CAFile},
	} {
		t.Run(tt.sslmode, func(t *testing.T) {
			path := writeFile(t, "pgcloak.yaml", checkConfig(pg.Addr(), tt.sslmode, tt.rootCert, testenv.ScramUser, testenv.ScramPassword, "postgres"))
			r := pgcloak(t, "check", "-c", path)
			if r.code != 0 {
				t.Fatalf("exit code: got %d, want 0", r.code)
			}
		})
	}

	t.Run("client certificates", func(t *testing.T) {
		own := pg.Clients[testenv.CertUser]
		cfg := checkConfig(pg.Addr(), "verify-full", pg.CAFile, testenv.ScramUser, testenv.ScramPassword, "postgres")
		cfg = strings.Replace(cfg, "upstream:\n", fmt.Sprintf(`  tls: {cert_file: %s, key_file: %s, client_ca_file: %s}
upstream:
  client_certs:
    - {user: %s, cert_file: %s, key_file: %s}
`, pg.CertFile, pg.KeyFile, pg.CAFile, testenv.CertUser, own.CertFile, own.KeyFile), 1)
		r := pgcloak(t, "check", "-c", writeFile(t, "pgcloak.yaml", cfg))
		if r.code != 0 || !strings.Contains(r.stdout, "presented for role "+testenv.CertUser) {
			t.Fatalf("exit code %d, stdout:\n%s", r.code, r.stdout)
		}
		// The key of another certificate: the pair does not load.
		bad := strings.Replace(cfg, "key_file: "+own.KeyFile, "key_file: "+pg.Clients[testenv.CertStranger].KeyFile, 1)
		r = pgcloak(t, "check", "-c", writeFile(t, "pgcloak.yaml", bad))
		if r.code != 1 || !strings.Contains(r.stdout, "tls: private key does not match public key") {
			t.Errorf("mismatched key: exit code %d, stdout:\n%s", r.code, r.stdout)
		}
	})
	t.Run("verify-full wrong CA", func(t *testing.T) {
		caFile, _, _, err := testenv.WriteTLSCerts(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		path := writeFile(t, "pgcloak.yaml", checkConfig(pg.Addr(), "verify-full", caFile, testenv.ScramUser, testenv.ScramPassword, "postgres"))
		r := pgcloak(t, "check", "-c", path)
		if r.code != 1 {
			t.Errorf("exit code: got %d, want 1", r.code)
		}
		if !strings.Contains(r.stdout, "certificate") {
			t.Errorf("stdout: want a certificate verification failure")
		}
	})
}

// TestConfigErrors checks that serve and check print config's own error,
// which names the file and line, unchanged, and exit 1.
func TestConfigErrors(t *testing.T) {
	const bad = `listen:
  address: 127.0.0.1:6432
upstream:
  adress: 127.0.0.1:5432
  password: hunter2-secret
log:
  level: loud
`
	path := writeFile(t, "bad.yaml", bad)
	_, loadErr := config.Load(path)
	var verr *config.ValidationError
	if !errors.As(loadErr, &verr) {
		t.Fatalf("config.Load: got %v, want a *config.ValidationError", loadErr)
	}

	for _, cmd := range []string{"check", "serve"} {
		t.Run(cmd, func(t *testing.T) {
			r := pgcloak(t, cmd, "-c", path)
			if r.code != 1 {
				t.Errorf("exit code: got %d, want 1", r.code)
			}
			if want := loadErr.Error() + "\n"; r.stderr != want {
				t.Errorf("stderr: got %q, want config's error %q", r.stderr, want)
			}
			if want := path + ":4: upstream.adress"; !strings.Contains(r.stderr, want) {
				t.Errorf("stderr: want it to name %q", want)
			}
			if strings.Contains(r.output(), "hunter2-secret") {
				t.Errorf("output contains the password")
			}
		})
	}

	t.Run("missing file", func(t *testing.T) {
		r := pgcloak(t, "check", "-c", "/nonexistent/pgcloak.yaml")
		if r.code != 1 {
			t.Errorf("exit code: got %d, want 1", r.code)
		}
		if !strings.Contains(r.stderr, "/nonexistent/pgcloak.yaml") {
			t.Errorf("stderr: got %q, want it to name the file", r.stderr)
		}
	})
}

// TestCheckKeys: check loads the key provider as serve does when tables
// are declared; a master key file that is missing or unusable fails,
// naming its path, where the configuration sets it and, when missing, the
// command that creates it, which then makes the line pass.
func TestCheckKeys(t *testing.T) {
	pg := testenv.Shared(t)
	db := testenv.NewDatabase(t, pg)
	cfg := checkConfig(pg.Addr(), "disable", "", testenv.ScramUser, testenv.ScramPassword, db) + patientsSSNDecl
	// keys.local.master_key_file is on line 12 of checkConfig's output.
	const keyLine = 12

	t.Run("missing", func(t *testing.T) {
		path := writeFile(t, "pgcloak.yaml", cfg)
		key := filepath.Join(filepath.Dir(path), "master.key")
		r := pgcloak(t, "check", "-c", path)
		if r.code != 1 {
			t.Errorf("exit code: got %d, want 1", r.code)
		}
		init := "pgcloak keys init-local -o " + key
		want := fmt.Sprintf("FAIL  keys: master key file %s (keys.local.master_key_file, %s:%d) does not exist; create it with: %s", key, path, keyLine, init)
		if !slices.Contains(strings.Split(r.stdout, "\n"), want) {
			t.Fatalf("stdout: missing the line %q", want)
		}

		// The command it names, run from another working directory.
		t.Chdir(t.TempDir())
		if r := pgcloak(t, strings.Fields(init)[1:]...); r.code != 0 {
			t.Fatalf("%s: exit %d", init, r.code)
		}
		r = pgcloak(t, "check", "-c", path)
		if want := "ok    keys: master key file " + key + " loads"; !slices.Contains(strings.Split(r.stdout, "\n"), want) {
			t.Errorf("after %s: stdout missing the line %q", init, want)
		}
	})

	t.Run("unusable", func(t *testing.T) {
		path := writeCheckConfig(t, cfg)
		key := filepath.Join(filepath.Dir(path), "master.key")
		if err := os.Chmod(key, 0o644); err != nil {
			t.Fatal(err)
		}
		r := pgcloak(t, "check", "-c", path)
		if r.code != 1 {
			t.Errorf("exit code: got %d, want 1", r.code)
		}
		containsAll(t, "stdout", r.stdout, fmt.Sprintf("FAIL  keys: master key file %s (keys.local.master_key_file, %s:%d) cannot be used: crypto: master key file %s has mode 0644", key, path, keyLine, key))
		containsNone(t, "stdout", r.stdout, "init-local")
	})

	t.Run("no tables", func(t *testing.T) {
		// A pure passthrough proxy loads no key, as serve does not.
		r := pgcloak(t, "check", "-c", writeFile(t, "pgcloak.yaml", checkConfig(pg.Addr(), "disable", "", testenv.ScramUser, testenv.ScramPassword, db)))
		if r.code != 0 {
			t.Errorf("exit code: got %d, want 0", r.code)
		}
		containsNone(t, "stdout", r.stdout, "keys:")
	})
}
