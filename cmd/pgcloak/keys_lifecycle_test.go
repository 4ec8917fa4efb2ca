package main

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/pgcloak/pgcloak/crypto"
	"github.com/pgcloak/pgcloak/testenv"
)

// Tenant roles of the keys fixture (roles are cluster-wide).
const (
	keysAcmeRole    = "cmd_keys_acme"
	keysGlobexRole  = "cmd_keys_globex"
	keysInitechRole = "cmd_keys_initech"
	keysRolePass    = "cmd-keys-tenant-pw"
)

// keysFixture is a database with a declared table patients (ssn in the
// default key class, diagnosis in class phi) under row-level security,
// tenant roles for acme, globex and initech, a master key, and the
// configuration that serve and the keys commands share.
type keysFixture struct {
	pg     *testenv.Postgres
	db     string
	edit   func(string) string // turns checkConfig's output into the shared configuration
	config string              // path of that configuration, for the keys commands
	direct *pgx.Conn           // superuser, bypassing the proxy
}

func newKeysFixture(t *testing.T) *keysFixture {
	t.Helper()
	pg := testenv.Shared(t)
	db := testenv.NewDatabase(t, pg)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	roles := strings.Join([]string{keysAcmeRole, keysGlobexRole, keysInitechRole}, ", ")
	setup := tenantRolesSQL(keysRolePass, keysAcmeRole, keysGlobexRole, keysInitechRole) +
		rlsTableSQL("patients", `id serial primary key,
	tenant_id text not null default pgcloak.current_tenant(),
	name text, ssn bytea, ssn_bidx bytea, diagnosis bytea`) +
		fmt.Sprintf(`grant select, insert, update on patients to %[1]s;
grant usage on sequence patients_id_seq to %[1]s;
grant select on patients to %[3]s;
grant create on database %[2]s to %[3]s;
create table backup (id int, ssn bytea);`, roles, db, testenv.ScramUser)
	if err := pg.Exec(ctx, db, setup); err != nil {
		t.Fatal(err)
	}
	keyFile := initLocalKey(t)
	f := &keysFixture{pg: pg, db: db}
	f.edit = func(cfg string) string {
		return useKeyFile(cfg, keyFile) + fmt.Sprintf(`tenancy:
  login:
    roles:
      %s: acme
      %s: globex
      %s: initech
encrypt:
  tables:
    - name: patients
      columns:
        - name: ssn
          type: text
          search: equality
        - name: diagnosis
          type: text
          key_class: phi
audit:
  output: stdout
`, keysAcmeRole, keysGlobexRole, keysInitechRole)
	}
	f.config = writeFile(t, "pgcloak.yaml", f.edit(checkConfig(pg.Addr(), "disable", "", testenv.ScramUser, testenv.ScramPassword, db)))
	applySchema(t, pg, db, f.edit(checkConfig(pg.Addr(), "disable", "", testenv.ScramUser, testenv.ScramPassword, db)))
	direct, err := pgx.Connect(ctx, pg.SuperuserURL(db))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { direct.Close(context.Background()) })
	f.direct = direct
	return f
}

// useKMS switches the fixture to keys.provider aws against a new KMS
// emulator, with fake AWS credentials: the default KEK alias/pgcloak and,
// for tenant acme, a KEK of its own, alias/acme (keys.tenants). It
// rewrites f.edit and f.config and returns the emulator and the two keys.
func (f *keysFixture) useKMS(t *testing.T) (emu *testenv.KMS, defaultKey, acmeKey testenv.KMSKey) {
	t.Helper()
	testenv.FakeAWSCredentials(t)
	emu = testenv.StartKMS(t)
	defaultKey = emu.CreateKey("pgcloak default")
	acmeKey = emu.CreateKey("acme's own")
	for alias, key := range map[string]string{"alias/pgcloak": defaultKey.ID, "alias/acme": acmeKey.ID} {
		if err := emu.CreateAlias(alias, key); err != nil {
			t.Fatal(err)
		}
	}
	keys := awsKeysYAML(emu.URL, "alias/pgcloak", "  tenants:\n    acme: { key_id: alias/acme }\n")
	localEdit := f.edit
	f.edit = func(cfg string) string { return localEdit(withKeys(t, cfg, keys)) }
	f.config = writeFile(t, "pgcloak.yaml", f.edit(checkConfig(f.pg.Addr(), "disable", "", testenv.ScramUser, testenv.ScramPassword, f.db)))
	return emu, defaultKey, acmeKey
}

// keys runs a keys command with the fixture's configuration and fails the
// test unless it exits with want.
func (f *keysFixture) keys(t *testing.T, want int, args ...string) result {
	t.Helper()
	r := pgcloak(t, append([]string{"keys", args[0], "-c", f.config}, args[1:]...)...)
	if r.code != want {
		t.Fatalf("keys %s: exit %d, want %d; stderr: %s", strings.Join(args, " "), r.code, want, r.stderr)
	}
	return r
}

// storedVersion is the key version in the header of a stored value.
func storedVersion(t *testing.T, v []byte) uint32 {
	t.Helper()
	version, err := crypto.KeyVersion(v)
	if err != nil {
		t.Fatalf("stored value %x is not in pgcloak's format", v)
	}
	return version
}

// stored returns the stored bytes of column col of the row named name.
func (f *keysFixture) stored(t *testing.T, col, name string) []byte {
	t.Helper()
	var v []byte
	if err := f.direct.QueryRow(t.Context(), fmt.Sprintf("select %s from patients where name = $1", col), name).Scan(&v); err != nil {
		t.Fatalf("stored %s of %s: %v", col, name, err)
	}
	return v
}

// TestKeysCommands runs the key lifecycle against one serve: list, rotate
// (new writes use the new version, old values stay readable), list
// --count, rewrap (rows untouched), shred of class phi only, create, and
// the audit events of each.
func TestKeysCommands(t *testing.T) {
	f := newKeysFixture(t)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	s := startServe(t, f.pg, f.db, f.edit)
	acme := s.connectAs(t, keysAcmeRole, keysRolePass, f.db)

	if _, err := acme.Exec(ctx, "insert into patients (name, ssn, diagnosis) values ('alice', '123-45-6789', 'flu')"); err != nil {
		t.Fatal(err)
	}
	if v := storedVersion(t, f.stored(t, "ssn", "alice")); v != 1 {
		t.Errorf("alice's ssn: version %d, want 1", v)
	}

	r := f.keys(t, 0, "list", "--tenant", "acme")
	containsAll(t, "keys list", r.stdout, "TENANT", "KEK ID", "CREATED AT", "default", "phi", "active")
	if rows := regexp.MustCompile(`(?m)^acme\s`).FindAllString(r.stdout, -1); len(rows) != 3 {
		t.Errorf("keys list: got %d acme rows, want 3 (default data and index, phi data)", len(rows))
	}

	r = f.keys(t, 0, "rotate", "--tenant", "acme", "--actor", "alice (CHG-1)")
	if !strings.Contains(r.stdout, "version 2 is active") {
		t.Errorf("keys rotate: stdout %q, want it to name version 2", r.stdout)
	}
	if !strings.Contains(r.stdout, `"event":"key_rotated"`) {
		t.Errorf("keys rotate: no key_rotated audit event")
	}
	wantActor(t, r.stdout, "key_rotated", "alice (CHG-1)")
	waitFor(t, "the rotate event on serve", func() bool {
		return regexp.MustCompile(`"event":"key_purge_received".*"kind":"rotate"`).MatchString(s.stdout.String())
	})
	if _, err := acme.Exec(ctx, "insert into patients (name, ssn, diagnosis) values ('bob', '987-65-4321', 'cold')"); err != nil {
		t.Fatal(err)
	}
	if v := storedVersion(t, f.stored(t, "ssn", "bob")); v != 2 {
		t.Errorf("bob's ssn after rotate: version %d, want 2", v)
	}
	if v := storedVersion(t, f.stored(t, "diagnosis", "bob")); v != 1 {
		t.Errorf("bob's diagnosis (class phi, not rotated): version %d, want 1", v)
	}
	var ssn string
	if err := acme.QueryRow(ctx, "select ssn from patients where name = 'alice'").Scan(&ssn); err != nil || ssn != "123-45-6789" {
		t.Errorf("alice's ssn (version 1) after rotate: got %q, %v", ssn, err)
	}
	if err := acme.QueryRow(ctx, "select name from patients where ssn = '987-65-4321'").Scan(&ssn); err != nil || ssn != "bob" {
		t.Errorf("search after a data rotation: got %q, %v; want bob", ssn, err)
	}

	r = f.keys(t, 0, "list", "--tenant", "acme", "--count")
	for _, want := range []*regexp.Regexp{
		regexp.MustCompile(`public\.patients\s+ssn\s+default\s+1\s+1\s+tenant acme \(row-level security\)`),
		regexp.MustCompile(`public\.patients\s+ssn\s+default\s+2\s+1\s+tenant acme`),
		regexp.MustCompile(`public\.patients\s+diagnosis\s+phi\s+1\s+2\s+tenant acme`),
		regexp.MustCompile(`(?m)^acme\s+default\s+data\s+1\s+retired`),
		regexp.MustCompile(`(?m)^acme\s+default\s+data\s+2\s+active`),
	} {
		if !want.MatchString(r.stdout) {
			t.Errorf("keys list --count: no line matching %s", want)
		}
	}

	before := f.stored(t, "ssn", "alice")
	r = f.keys(t, 0, "rewrap", "--tenant", "acme")
	// default data 1 and 2, default index 1, phi data 1 (diagnosis is not
	// searchable, so phi has no index key).
	if !strings.Contains(r.stdout, "Rewrapped 4 key versions of tenant acme") {
		t.Errorf("keys rewrap: stdout %q, want 4 versions", r.stdout)
	}
	if n := strings.Count(r.stdout, `"event":"key_rewrapped"`); n != 4 {
		t.Errorf("keys rewrap: %d key_rewrapped events, want 4", n)
	}
	if after := f.stored(t, "ssn", "alice"); string(after) != string(before) {
		t.Error("keys rewrap changed a stored value")
	}

	// Shredding class phi leaves the default class readable and writable.
	f.keys(t, 2, "shred", "--tenant", "acme", "--key-class", "phi")
	r = f.keys(t, 0, "shred", "--tenant", "acme", "--key-class", "phi", "--yes")
	if !strings.Contains(r.stdout, "key class phi") || !strings.Contains(r.stdout, `"event":"tenant_shredded"`) {
		t.Errorf("keys shred --key-class phi: stdout %q", r.stdout)
	}
	waitFor(t, "diagnosis to fail closed", func() bool {
		var d string
		err := acme.QueryRow(ctx, "select diagnosis from patients where name = 'alice'").Scan(&d)
		return sqlstate(err) == "39000"
	})
	if err := acme.QueryRow(ctx, "select ssn from patients where name = 'bob'").Scan(&ssn); err != nil || ssn != "987-65-4321" {
		t.Errorf("ssn (default class) after shredding phi: got %q, %v", ssn, err)
	}
	if _, err := acme.Exec(ctx, "insert into patients (name, ssn) values ('carol', '111-22-3333')"); err != nil {
		t.Errorf("write of the default class after shredding phi: %v", err)
	}
	_, err := acme.Exec(ctx, "insert into patients (name, diagnosis) values ('dave', 'measles')")
	if sqlstate(err) != "55000" {
		t.Errorf("write of class phi after shredding it: got %v, want SQLSTATE 55000", err)
	}
	var n int
	if err := f.direct.QueryRow(ctx, "select count(*) from patients where name = 'dave'").Scan(&n); err != nil || n != 0 {
		t.Errorf("refused write: %d rows stored, %v", n, err)
	}

	r = f.keys(t, 1, "rotate", "--tenant", "acme", "--key-class", "phi")
	if !strings.Contains(r.stderr, "run keys create") {
		t.Errorf("rotate of a shredded class: stderr %q, want it to point at keys create", r.stderr)
	}
	f.keys(t, 1, "create", "--tenant", "acme") // the default class is active
	r = f.keys(t, 0, "create", "--tenant", "acme", "--key-class", "phi")
	if !strings.Contains(r.stdout, "purpose data: version 2 is active") || !strings.Contains(r.stdout, `"event":"key_created"`) {
		t.Errorf("keys create: stdout %q", r.stdout)
	}
	waitFor(t, "class phi to accept writes again", func() bool {
		_, err := acme.Exec(ctx, "insert into patients (name, diagnosis) values ('erin', 'mumps')")
		return err == nil
	})
	var d string
	if err := acme.QueryRow(ctx, "select diagnosis from patients where name = 'erin'").Scan(&d); err != nil || d != "mumps" {
		t.Errorf("diagnosis under the new phi key: got %q, %v", d, err)
	}

	acme.Close(context.Background())
	if code := s.shutdown(t); code != 0 {
		t.Errorf("serve exit code: got %d, want 0", code)
	}
	containsNone(t, "serve's audit or log", s.stdout.String()+s.stderr.String(), "123-45-6789", "flu", keysRolePass, testenv.ScramPassword)
}

// TestKeysShredKMSNewKey: after shredding a tenant with a KMS key of its
// own, keys create alone fails (that key is pending deletion), and the
// steps shred prints - a new KMS key in keys.tenants, then keys create -
// give the tenant keys again.
func TestKeysShredKMSNewKey(t *testing.T) {
	f := newKeysFixture(t)
	emu, _, acmeKey := f.useKMS(t)

	r := f.keys(t, 0, "shred", "--tenant", "acme", "--yes")
	containsAll(t, "keys shred", r.stdout,
		"Scheduled the deletion of the tenant's KMS key "+acmeKey.ARN,
		"To accept new writes for tenant acme again, it needs a new KMS key (keys create\nalone fails: the old one is pending deletion)",
		`  1. create one:  aws kms create-key --region `+testenv.KMSRegion+` --endpoint-url `+emu.URL+` --description "pgcloak tenant acme" --query KeyMetadata.Arn --output text`,
		"  2. set keys.tenants.acme.key_id ("+f.config+":",
		"  3. run:         pgcloak keys create -c "+f.config+" --tenant acme",
	)
	// The line it names is where the file sets acme's key.
	line := regexp.MustCompile(`keys\.tenants\.acme\.key_id \(` + regexp.QuoteMeta(f.config) + `:(\d+)\)`).FindStringSubmatch(r.stdout)
	if line == nil {
		t.Fatalf("keys shred: no file:line for keys.tenants.acme.key_id")
	}
	data, err := os.ReadFile(f.config)
	if err != nil {
		t.Fatal(err)
	}
	n, _ := strconv.Atoi(line[1])
	if lines := strings.Split(string(data), "\n"); n < 1 || n > len(lines) || !strings.Contains(lines[n-1], "acme: { key_id: alias/acme }") {
		t.Errorf("line %d of the configuration is not acme's key_id", n)
	}

	r = f.keys(t, 1, "create", "--tenant", "acme")
	if !strings.Contains(r.stderr, "pgcloak:") {
		t.Errorf("keys create with the old key: stderr %q, want a failure", r.stderr)
	}

	// The steps: a new key, its ARN in keys.tenants, keys create.
	newKey := emu.CreateKey("acme's second")
	edit := f.edit
	f.edit = func(cfg string) string { return strings.Replace(edit(cfg), "alias/acme", newKey.ARN, 1) }
	f.config = writeFile(t, "pgcloak.yaml", f.edit(checkConfig(f.pg.Addr(), "disable", "", testenv.ScramUser, testenv.ScramPassword, f.db)))
	r = f.keys(t, 0, "create", "--tenant", "acme")
	containsAll(t, "keys create with a new key", r.stdout, "Created tenant acme, key class default, purpose data: version")
	if evs := auditEvents(t, r.stdout, "key_created"); len(evs) == 0 || evs[0]["kek_id"] != newKey.ARN {
		t.Errorf("key_created: got %v, want kek_id %s", evs, newKey.ARN)
	}
	wantActor(t, r.stdout, "key_created", "")
}
