package main

import (
	"context"
	"net"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/pgcloak/pgcloak/testenv"
)

// demoProcess is a `pgcloak demo` run in-process by startDemo.
type demoProcess struct {
	stdout, stderr syncBuffer
	exited         chan int
	cancel         context.CancelFunc
	out            string // stdout up to the end of "Try it yourself"
	dir            string // its temporary directory
	acmeURL        string // the printed psql string of tenant acme
}

// startDemo runs pgcloak with args until the demo has printed its psql
// connection strings.
func startDemo(t *testing.T, args ...string) *demoProcess {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	d := &demoProcess{exited: make(chan int, 1), cancel: cancel}
	go func() { d.exited <- run(ctx, args, &d.stdout, &d.stderr) }()
	t.Cleanup(func() {
		cancel()
		select {
		case code := <-d.exited:
			d.exited <- code
		case <-time.After(30 * time.Second):
			t.Error("demo did not stop within 30s")
		}
		t.Logf("demo stdout:\n%s\nstderr:\n%s", d.stdout.String(), d.stderr.String())
	})

	acmeURL := regexp.MustCompile(`psql "(postgres://acme_app:acme@127\.0\.0\.1:\d+/demo\?sslmode=disable)"`)
	removed := regexp.MustCompile(`(/\S*pgcloak-demo-\d+) is removed`)
	deadline := time.Now().Add(2 * time.Minute)
	for !removed.MatchString(d.stdout.String()) {
		select {
		case code := <-d.exited:
			d.exited <- code
			t.Fatalf("demo exited with %d before printing its connection strings", code)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatal("demo did not print its connection strings within 2 minutes")
		}
	}
	d.out = d.stdout.String()
	m := acmeURL.FindStringSubmatch(d.out)
	if m == nil {
		t.Fatal("stdout: no psql connection string for tenant acme")
	}
	d.acmeURL = m[1]
	d.dir = removed.FindStringSubmatch(d.out)[1]
	if !strings.Contains(d.out, `psql "postgres://globex_app:globex@127.0.0.1:`) {
		t.Error("stdout: no psql connection string for tenant globex")
	}
	return d
}

// stop stops the demo as Ctrl-C does and checks that it exits 0, logs no
// error and removes its temporary directory.
func (d *demoProcess) stop(t *testing.T) {
	t.Helper()
	d.cancel()
	select {
	case code := <-d.exited:
		d.exited <- code
		if code != 0 {
			t.Errorf("exit code: got %d, want 0", code)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("demo did not stop within 30s")
	}
	if _, err := os.Stat(d.dir); !os.IsNotExist(err) {
		t.Errorf("temporary directory %s: got %v, want it removed", d.dir, err)
	}
	if strings.Contains(d.stderr.String(), "ERR") {
		t.Errorf("stderr: want no errors logged")
	}
}

// checkDemoShows checks what every variant of the demo shows: each tenant
// its own plaintext, ciphertext in storage, search, refusals, RLS off.
func checkDemoShows(t *testing.T, out string) {
	t.Helper()
	acmePlain := []string{"Alice Jones", "123-45-6789", "987-65-4321", "Alice.Jones@Example.com", "asthma", "hypertension", "1980-01-02"}
	globexPlain := []string{"Carol White", "222-33-4444", "carol@globex.test", "migraine", "diabetes type 2", "1968-11-12"}
	allSSNs := []string{"123-45-6789", "987-65-4321", "222-33-4444"}

	acme := demoSection(t, out, "What acme_app (tenant acme) sees through pgcloak")
	globex := demoSection(t, out, "What globex_app (tenant globex) sees through pgcloak")
	containsAll(t, "acme's section", acme, acmePlain...)
	containsNone(t, "acme's section", acme, globexPlain...)
	containsAll(t, "globex's section", globex, globexPlain...)
	containsNone(t, "globex's section", globex, "Alice Jones", "987-65-4321", "asthma", "hypertension")

	stored := demoSection(t, out, "What PostgreSQL actually stores")
	containsAll(t, "stored values", stored, `\x0100000001`, "Alice Jones", "Carol White", "differ")
	containsNone(t, "stored values", stored, append(allSSNs, "asthma", "migraine", "EQUAL")...)

	search := demoSection(t, out, "Searching encrypted columns")
	containsAll(t, "search", search, "-> 1 Alice Jones", "-> 3 Carol White")
	refused := demoSection(t, out, "What pgcloak refuses")
	containsAll(t, "refusals", refused, "ERROR 0A000: pgcloak: public.patients.ssn is encrypted", "ERROR 42501: pgcloak:")
	rls := demoSection(t, out, "If row-level security fails")
	containsAll(t, "RLS off", rls, "Carol White", "ERROR 39000: pgcloak: cannot decrypt", "(restored)")
	containsNone(t, "RLS off", rls, "222-33-4444", "migraine", "diabetes")

	// The pooled part: one connection of app_pool, acme's transaction,
	// then globex's (which writes Erin Green), no tenant before, between
	// and after them.
	pooled := demoSection(t, out, "One pool role, a tenant per transaction")
	txs := regexp.MustCompile(`(?s)the same connection \(PostgreSQL backend (\d+)\):\n    BEGIN;\n    SET LOCAL pgcloak\.tenant_token = '[^']+';\n(.*?)\n    COMMIT;`).FindAllStringSubmatch(pooled, -1)
	if len(txs) != 2 {
		t.Fatalf("pooled part: got %d token transactions, want 2:\n%s", len(txs), pooled)
	}
	if txs[0][1] != txs[1][1] {
		t.Errorf("pooled part: backends %s and %s, want one connection", txs[0][1], txs[1][1])
	}
	containsAll(t, "acme's pooled transaction", txs[0][2], "Alice Jones", "123-45-6789", "987-65-4321", "asthma", "hypertension", " acme")
	containsNone(t, "acme's pooled transaction", txs[0][2], append(globexPlain, "Erin Green", "globex")...)
	containsAll(t, "globex's pooled transaction", txs[1][2], "Carol White", "Dan Brown", "222-33-4444", "migraine", "diabetes type 2", "Erin Green", "555-66-7777", "sprained ankle", " globex")
	containsNone(t, "globex's pooled transaction", txs[1][2], "Alice Jones", "987-65-4321", "asthma", "hypertension", " acme")
	if n := strings.Count(pooled, "-> (no rows)"); n != 2 {
		t.Errorf("pooled part: %d selects without a token saw no rows, want 2 (before the first token, after the last COMMIT):\n%s", n, pooled)
	}
	containsAll(t, "pooled part", pooled,
		"no token yet: insert into patients (name, ssn) values (...)\n    -> ERROR 42501: pgcloak: this session has no tenant",
		"-> ERROR 28000: pgcloak: tenant token refused: bad signature",
		"-> globex Erin Green")
}

// wantPoolRows logs in with the printed string of the pool role, mints a
// token with the printed pgcloak token command, and wants the token's
// tenant's rows in that transaction and none after it.
func wantPoolRows(ctx context.Context, t *testing.T, out string) {
	t.Helper()
	m := regexp.MustCompile(`psql "(postgres://app_pool:app_pool@127\.0\.0\.1:\d+/demo\?sslmode=disable)"\n.*\n  with a token \(10 minutes\) from: go run \./cmd/pgcloak (token --tenant acme -c \S+)\n`).FindStringSubmatch(out)
	if m == nil {
		t.Fatal("stdout: no psql connection string and token command for app_pool")
	}
	var tok, stderr syncBuffer
	args := strings.Fields(strings.Replace(m[2], "--tenant acme", "--tenant globex", 1))
	if code := run(ctx, args, &tok, &stderr); code != 0 {
		t.Fatalf("pgcloak %s: exit code %d; stderr:\n%s", strings.Join(args, " "), code, stderr.String())
	}
	conn, err := pgx.Connect(ctx, m[1])
	if err != nil {
		t.Fatalf("connect with the printed string of app_pool: %v", err)
	}
	defer conn.Close(context.Background())
	names := func() []string {
		t.Helper()
		rows, err := conn.Query(ctx, "select name, ssn from patients order by id")
		if err != nil {
			t.Fatalf("select as app_pool: %v", err)
		}
		var got []string
		for rows.Next() {
			var name, ssn string
			if err := rows.Scan(&name, &ssn); err != nil {
				t.Fatal(err)
			}
			got = append(got, name+"|"+ssn)
		}
		if err := rows.Err(); err != nil {
			t.Fatalf("select as app_pool: %v", err)
		}
		return got
	}
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "SET LOCAL pgcloak.tenant_token = '"+strings.TrimSpace(tok.String())+"'"); err != nil {
		t.Fatalf("SET LOCAL with the minted token: %v", err)
	}
	want := []string{"Carol White|123-45-6789", "Dan Brown|222-33-4444", "Erin Green|555-66-7777"}
	if got := names(); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("app_pool with globex's token: got %q, want %q", got, want)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if got := names(); len(got) != 0 {
		t.Errorf("app_pool after COMMIT: got %q, want no rows", got)
	}
}

// demoKEKRows returns the rows of the demo's table of data keys as
// tenant -> the kek_id of each of its keys.
func demoKEKRows(t *testing.T, out string) map[string][]string {
	t.Helper()
	section := demoSection(t, out, "Which key-encryption key protects each tenant")
	rows := regexp.MustCompile(`(?m)^  (acme|globex) +\S+ +(data|index) +\d+ +(\S+)$`).FindAllStringSubmatch(section, -1)
	keks := make(map[string][]string)
	for _, r := range rows {
		keks[r[1]] = append(keks[r[1]], r[3])
	}
	// Each tenant has a data and an index key of the default class and a
	// data key of class phi.
	for _, tenant := range []string{"acme", "globex"} {
		if len(keks[tenant]) != 3 {
			t.Errorf("data keys of %s: got %d rows, want 3:\n%s", tenant, len(keks[tenant]), section)
		}
	}
	return keks
}

// wantAcmeRows reads through the proxy with the printed string, with
// pgx's default (extended) protocol, and wants acme's own rows only.
func wantAcmeRows(ctx context.Context, t *testing.T, url string) {
	t.Helper()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatalf("connect with the printed string: %v", err)
	}
	defer conn.Close(context.Background())
	rows, err := conn.Query(ctx, "select name, ssn, diagnosis from patients order by id")
	if err != nil {
		t.Fatalf("select through the proxy as acme: %v", err)
	}
	var got []string
	for rows.Next() {
		var name, ssn, diagnosis string
		if err := rows.Scan(&name, &ssn, &diagnosis); err != nil {
			t.Fatal(err)
		}
		got = append(got, name+"|"+ssn+"|"+diagnosis)
	}
	if err := rows.Err(); err != nil {
		t.Fatalf("select through the proxy as acme: %v", err)
	}
	want := []string{"Alice Jones|123-45-6789|asthma", "Bob Smith|987-65-4321|hypertension"}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("acme's rows through the printed string: got %q, want %q", got, want)
	}
}

// TestDemo runs the demo until it prints its psql connection strings,
// checks what it showed, connects as tenant acme with the printed string,
// stops the demo, and checks that its temporary directory is gone.
func TestDemo(t *testing.T) {
	d := startDemo(t, "demo")
	checkDemoShows(t, d.out)

	// One local master key wraps every tenant's keys.
	keks := demoKEKRows(t, d.out)
	local := regexp.MustCompile(`^local:[0-9a-f]{16}$`)
	for tenant, ids := range keks {
		for _, id := range ids {
			if !local.MatchString(id) || id != keks["acme"][0] {
				t.Errorf("kek_id of a data key of %s: got %q, want the one local master key", tenant, id)
			}
		}
	}
	containsAll(t, "KEK summary", demoSection(t, d.out, "Which key-encryption key protects each tenant"),
		"acme: 3 data keys, wrapped by local:", "globex: 3 data keys, wrapped by local:", "(the local master key, master.key, for every tenant)")
	containsNone(t, "stdout", d.out, "KMS", "alias/")

	wantAcmeRows(t.Context(), t, d.acmeURL)
	wantPoolRows(t.Context(), t, d.out)
	wantRecommendedSchema(t, d.out)
	wantEveryRoleConnects(t.Context(), t, d.out)
	wantCheckPasses(t.Context(), t, d.out)
	d.stop(t)
}

// wantCheckPasses runs pgcloak check on the demo's printed configuration:
// the schema the demo prepared is what check wants, without a FAIL or a
// WARN.
func wantCheckPasses(ctx context.Context, t *testing.T, out string) {
	t.Helper()
	m := regexp.MustCompile(`go run \./cmd/pgcloak schema -c (\S+)`).FindStringSubmatch(out)
	if m == nil {
		t.Fatal("stdout: no configuration path")
	}
	var stdout, stderr syncBuffer
	code := run(ctx, []string{"check", "-c", m[1]}, &stdout, &stderr)
	if code != 0 || strings.Contains(stdout.String(), "WARN") || strings.Contains(stdout.String(), "FAIL") {
		t.Errorf("pgcloak check -c %s on the demo: exit %d\n%s%s", m[1], code, stdout.String(), stderr.String())
	}
}

// wantRecommendedSchema wants the demo's schema section to show what the
// README recommends, as read back from the catalog: RLS enabled and
// forced, the policy and the tenant column's default on
// pgcloak.current_tenant(), a format CHECK on every declared and index
// column, and an index on each index column.
func wantRecommendedSchema(t *testing.T, out string) {
	t.Helper()
	schema := demoSection(t, out, "The schema, as pgcloak recommends it")
	containsAll(t, "schema", schema,
		"Row-level security on public.patients: enabled yes, forced yes",
		"Policy tenant_isolation (ALL): using (tenant_id = ( SELECT pgcloak.current_tenant() AS current_tenant)), with check (tenant_id = ( SELECT pgcloak.current_tenant() AS current_tenant))",
		"Column tenant_id defaults to pgcloak.current_tenant()",
		"pgcloak schema -c ")
	for _, col := range []string{"ssn", "ssn_bidx", "email", "email_bidx", "diagnosis", "birth_date"} {
		if !regexp.MustCompile(`(?m)^  patients_` + col + `_pgcloak_format$`).MatchString(schema) {
			t.Errorf("schema: no format CHECK on %s:\n%s", col, schema)
		}
	}
	for _, col := range []string{"ssn_bidx", "email_bidx"} {
		if !regexp.MustCompile(`(?m)^  patients_` + col + `_idx$`).MatchString(schema) {
			t.Errorf("schema: no index on %s:\n%s", col, schema)
		}
	}
}

// wantEveryRoleConnects wants a printed connection string for every role
// the demo mentions, and each to log in and read as that role should:
// tenants and the pool role through pgcloak, the unscoped dba through
// pgcloak seeing ciphertext, pgcloak's own role and the superuser
// directly.
func wantEveryRoleConnects(ctx context.Context, t *testing.T, out string) {
	t.Helper()
	tryIt := demoSection(t, out, "Try it yourself")
	urls := map[string]string{}
	for _, m := range regexp.MustCompile(`psql "(postgres://([^:@"]+)[^"]*)"`).FindAllStringSubmatch(tryIt, -1) {
		urls[m[2]] = m[1]
	}
	for _, role := range []string{"acme_app", "globex_app", "app_pool", demoDBARole, demoProxyRole, "postgres"} {
		u, ok := urls[role]
		if !ok {
			t.Errorf("try it yourself: no connection string for role %s:\n%s", role, tryIt)
			continue
		}
		conn, err := pgx.Connect(ctx, u)
		if err != nil {
			t.Errorf("connect as %s with the printed string: %v", role, err)
			continue
		}
		var who string
		if err := conn.QueryRow(ctx, "select current_user").Scan(&who); err != nil || who != role {
			t.Errorf("as %s: current_user %q, %v", role, who, err)
		}
		if role == demoDBARole {
			// Unscoped through pgcloak: every tenant's rows, ssn as ciphertext.
			var n int
			var ssn []byte
			if err := conn.QueryRow(ctx, "select count(*) over (), ssn from patients order by id limit 1").Scan(&n, &ssn); err != nil {
				t.Errorf("as %s: %v", role, err)
			} else if n < 4 || len(ssn) == 0 || ssn[0] != 0x01 {
				t.Errorf("as %s: %d rows, first ssn %x; want every tenant's rows and ciphertext", role, n, ssn)
			}
		}
		conn.Close(ctx)
	}
}

// TestDemoKMS runs `pgcloak demo --kms`: the KEKs live in the in-process
// KMS emulator, acme's data keys under its own key and globex's under the
// default one, as the key store records and the demo says. The printed
// `keys shred` hint then works against the running demo: acme's KMS key is
// scheduled for deletion and acme's values become unreadable while
// globex's stay readable. The demo restores the AWS environment it set.
func TestDemoKMS(t *testing.T) {
	testenv.FakeAWSCredentials(t)
	d := startDemo(t, "demo", "--kms")
	checkDemoShows(t, d.out)
	ctx := t.Context()

	arns := make(map[string]string)
	for _, m := range regexp.MustCompile(`(?m)^  (alias/\w+) = (arn:aws:kms:\S+:key/\S+)  \(`).FindAllStringSubmatch(d.out, -1) {
		arns[m[1]] = m[2]
	}
	if len(arns) != 2 || arns["alias/pgcloak"] == "" || arns["alias/acme"] == "" || arns["alias/pgcloak"] == arns["alias/acme"] {
		t.Fatalf("stdout: got KEKs %v, want two keys, alias/pgcloak and alias/acme", arns)
	}
	keks := demoKEKRows(t, d.out)
	for tenant, want := range map[string]string{"acme": arns["alias/acme"], "globex": arns["alias/pgcloak"]} {
		for _, id := range keks[tenant] {
			if id != want {
				t.Errorf("kek_id of a data key of %s: got %q, want %s", tenant, id, want)
			}
		}
	}
	containsAll(t, "KEK summary", demoSection(t, d.out, "Which key-encryption key protects each tenant"),
		"acme: 3 data keys, wrapped by alias/acme (acme's own KEK: bring your own key)",
		"globex: 3 data keys, wrapped by alias/pgcloak (the default KEK",
		"crypto-shredding")
	containsNone(t, "stdout", d.out, "master.key", "local:")

	wantAcmeRows(ctx, t, d.acmeURL)

	// The environment the demo prints is the one it set for itself.
	tryIt := demoSection(t, d.out, "Try it yourself")
	containsAll(t, "try it yourself", tryIt,
		"export AWS_ACCESS_KEY_ID="+demoAWSAccessKeyID+" AWS_SECRET_ACCESS_KEY="+demoAWSSecretAccessKey,
		"--tenant acme --yes")
	if got := os.Getenv("AWS_ACCESS_KEY_ID"); got != demoAWSAccessKeyID {
		t.Errorf("AWS_ACCESS_KEY_ID while the demo runs: got %q, want %q", got, demoAWSAccessKeyID)
	}
	m := regexp.MustCompile(`(?m)^  go run \./cmd/pgcloak (keys shred -c \S+ --tenant acme --yes)$`).FindStringSubmatch(tryIt)
	if m == nil {
		t.Fatalf("try it yourself: no keys shred command:\n%s", tryIt)
	}
	var shredOut, shredErr syncBuffer
	if code := run(ctx, strings.Fields(m[1]), &shredOut, &shredErr); code != 0 {
		t.Fatalf("%s: exit code %d; stderr:\n%s", m[1], code, shredErr.String())
	}
	containsAll(t, "keys shred", shredOut.String(), "Shredded tenant acme", "Scheduled the deletion of the tenant's KMS key "+arns["alias/acme"])

	// The proxy purges acme's keys on the shred's notification.
	conn, err := pgx.Connect(ctx, d.acmeURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	deadline := time.Now().Add(15 * time.Second)
	for {
		var ssn string
		err := conn.QueryRow(ctx, "select ssn from patients where id = 1").Scan(&ssn)
		if sqlstate(err) == "39000" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("acme's ssn after the shred: got %q, %v; want SQLSTATE 39000", ssn, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	globexURL := strings.Replace(d.acmeURL, "acme_app:acme@", "globex_app:globex@", 1)
	globex, err := pgx.Connect(ctx, globexURL)
	if err != nil {
		t.Fatal(err)
	}
	defer globex.Close(context.Background())
	var name, ssn string
	if err := globex.QueryRow(ctx, "select name, ssn from patients where ssn = '222-33-4444'").Scan(&name, &ssn); err != nil || name != "Dan Brown" {
		t.Errorf("globex after acme's shred: got %q %q, %v; want Dan Brown", name, ssn, err)
	}

	d.stop(t)
	endpoint := regexp.MustCompile(`The KMS emulator is at http://(\S+)\.`).FindStringSubmatch(d.out)
	if endpoint == nil {
		t.Fatal("stdout: no KMS emulator endpoint")
	}
	if c, err := net.DialTimeout("tcp", endpoint[1], time.Second); err == nil {
		c.Close()
		t.Errorf("the KMS emulator at %s still accepts connections after the demo stopped", endpoint[1])
	}
	if got := os.Getenv("AWS_ACCESS_KEY_ID"); got != testenv.FakeAWSAccessKeyID {
		t.Errorf("AWS_ACCESS_KEY_ID after the demo: got %q, want the value it had before", got)
	}
}

// demoSection returns the demo output's section under "== title ==", up to
// the next section.
func demoSection(t *testing.T, out, title string) string {
	t.Helper()
	head := "\n== " + title
	i := strings.Index(out, head)
	if i < 0 {
		t.Fatalf("stdout: no section %q", title)
	}
	rest := out[i+len(head):]
	if j := strings.Index(rest, "\n== "); j >= 0 {
		rest = rest[:j]
	}
	return rest
}
