package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/pgcloak/pgcloak/keystore"
	"github.com/pgcloak/pgcloak/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.RunMain(m)) }

// result is what one pgcloak command line produced.
type result struct {
	code           int
	stdout, stderr string
}

// output is stdout and stderr together, for "never printed" checks.
func (r result) output() string { return r.stdout + r.stderr }

// pgcloak runs the command line in-process, as main would, and waits for it.
func pgcloak(t *testing.T, args ...string) result {
	t.Helper()
	return pgcloakContext(t, t.Context(), args...)
}

func pgcloakContext(t *testing.T, ctx context.Context, args ...string) result {
	t.Helper()
	var stdout, stderr syncBuffer
	code := run(ctx, args, &stdout, &stderr)
	r := result{code: code, stdout: stdout.String(), stderr: stderr.String()}
	t.Logf("pgcloak %s: exit %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
	return r
}

// syncBuffer is a bytes.Buffer that goroutines may write to concurrently
// (the proxy logs from its session goroutines).
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// writeFile writes content to name in a fresh temporary directory and
// returns its path.
func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// freeAddr returns a 127.0.0.1 address that was free a moment ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// patientsSSNDecl declares the column ssn of table patients, searchable,
// and sends the audit stream to stdout.
const patientsSSNDecl = `encrypt:
  tables:
    - name: patients
      columns:
        - name: ssn
          type: text
          search: equality
audit:
  output: stdout
`

// tenantRolesSQL creates the login roles, each with password, unless they
// exist (roles are cluster-wide, and the tests share one server).
func tenantRolesSQL(password string, roles ...string) string {
	var b strings.Builder
	b.WriteString("do $$ begin\n")
	for _, role := range roles {
		fmt.Fprintf(&b, "  if not exists (select from pg_roles where rolname = '%[1]s') then create role %[1]s login password '%[2]s'; end if;\n", role, password)
	}
	b.WriteString("end $$;\n")
	return b.String()
}

// rlsTableSQL creates table with the given column definitions, under a
// forced row-level security policy that shows a session the rows of the
// tenant pgcloak.current_tenant() verifies (the column tenant_id). It first
// installs the verified tenant pin as testenv.ScramUser, the upstream.user
// of most tests here (serve completes it with the key).
func rlsTableSQL(table, columns string) string {
	return pinSQL(testenv.ScramUser) + fmt.Sprintf(`create table %[1]s (
	%[2]s
);
alter table %[1]s enable row level security;
alter table %[1]s force row level security;
create policy tenant_isolation on %[1]s
	using (tenant_id = pgcloak.current_tenant())
	with check (tenant_id = pgcloak.current_tenant());
`, table, columns)
}

// pinSQL installs the verified tenant pin for app.tenant_id owned by
// owner, as the superuser running it.
func pinSQL(owner string) string {
	return fmt.Sprintf(`do $$ begin execute format('grant create on database %%I to %[1]s', current_database()); end $$;
set role %[1]s;
create schema if not exists pgcloak;
grant usage on schema pgcloak to public;
%[2]s
reset role;
`, owner, keystore.PinSchema("app.tenant_id"))
}

// initLocalKey writes a new master key with "pgcloak keys init-local" into
// a temporary directory and returns its path.
func initLocalKey(t *testing.T) string {
	t.Helper()
	keyFile := filepath.Join(t.TempDir(), "master.key")
	if r := pgcloak(t, "keys", "init-local", "-o", keyFile); r.code != 0 {
		t.Fatalf("keys init-local: exit %d", r.code)
	}
	return keyFile
}

// useKeyFile points checkConfig's keys.local.master_key_file at keyFile.
func useKeyFile(cfg, keyFile string) string {
	return strings.Replace(cfg, "master_key_file: master.key", "master_key_file: "+keyFile, 1)
}

// sqlstate is the SQLSTATE of err, "" when it is not a server error.
func sqlstate(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code
	}
	return ""
}

// containsAll reports each of want that s lacks.
func containsAll(t *testing.T, what, s string, want ...string) {
	t.Helper()
	for _, w := range want {
		if !strings.Contains(s, w) {
			t.Errorf("%s: missing %q", what, w)
		}
	}
}

// containsNone reports each of unwanted that s contains.
func containsNone(t *testing.T, what, s string, unwanted ...string) {
	t.Helper()
	for _, u := range unwanted {
		if strings.Contains(s, u) {
			t.Errorf("%s: contains %q", what, u)
		}
	}
}

// auditEvents returns the audit records of kind event in out (JSON lines
// among other output), decoded.
func auditEvents(t *testing.T, out, event string) []map[string]any {
	t.Helper()
	var found []map[string]any
	for _, line := range strings.Split(out, "\n") {
		if !strings.Contains(line, `"stream":"audit"`) {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("audit line %q: %v", line, err)
		}
		if m["event"] == event {
			found = append(found, m)
		}
	}
	return found
}

// wantActor checks that every audit record of kind event in out names the
// process's OS user and name (none when name is "") as its actor, and that
// there is at least one.
func wantActor(t *testing.T, out, event, name string) {
	t.Helper()
	u, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	evs := auditEvents(t, out, event)
	if len(evs) == 0 {
		t.Fatalf("no %s audit event", event)
	}
	for _, ev := range evs {
		a, _ := ev["actor"].(map[string]any)
		if a["os_user"] != u.Username {
			t.Errorf("%s: actor.os_user: got %v, want %q", event, a["os_user"], u.Username)
		}
		if got, _ := a["name"].(string); got != name {
			t.Errorf("%s: actor.name: got %q, want %q", event, got, name)
		}
	}
}
