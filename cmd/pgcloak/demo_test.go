package main

import (
	"context"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// TestDemo runs the demo until it prints its psql connection strings,
// checks what it showed, connects as tenant acme with the printed string,
// stops the demo, and checks that its temporary directory is gone.
func TestDemo(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var stdout, stderr syncBuffer
	exited := make(chan int, 1)
	go func() { exited <- run(ctx, []string{"demo"}, &stdout, &stderr) }()
	defer func() { t.Logf("demo stdout:\n%s\nstderr:\n%s", stdout.String(), stderr.String()) }()

	acmeURL := regexp.MustCompile(`psql "(postgres://acme_app:acme@127\.0\.0\.1:\d+/demo\?sslmode=disable)"`)
	removed := regexp.MustCompile(`(/\S*pgcloak-demo-\d+) is removed`)
	deadline := time.Now().Add(2 * time.Minute)
	for !removed.MatchString(stdout.String()) {
		select {
		case code := <-exited:
			t.Fatalf("demo exited with %d before printing its connection strings", code)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatal("demo did not print its connection strings within 2 minutes")
		}
	}
	out := stdout.String()
	m := acmeURL.FindStringSubmatch(out)
	if m == nil {
		t.Fatal("stdout: no psql connection string for tenant acme")
	}
	url := m[1]
	dir := removed.FindStringSubmatch(out)[1]
	if !strings.Contains(out, `psql "postgres://globex_app:globex@127.0.0.1:`) {
		t.Error("stdout: no psql connection string for tenant globex")
	}

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

	// The printed string works through the proxy, with pgx's default
	// (extended) protocol, and shows acme its own rows only.
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatalf("connect with the printed string: %v", err)
	}
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
	conn.Close(context.Background())

	cancel()
	select {
	case code := <-exited:
		if code != 0 {
			t.Errorf("exit code: got %d, want 0", code)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("demo did not stop within 30s")
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("temporary directory %s: got %v, want it removed", dir, err)
	}
	if strings.Contains(stderr.String(), "ERR") {
		t.Errorf("stderr: want no errors logged")
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

func containsAll(t *testing.T, what, s string, want ...string) {
	t.Helper()
	for _, w := range want {
		if !strings.Contains(s, w) {
			t.Errorf("%s: missing %q", what, w)
		}
	}
}

func containsNone(t *testing.T, what, s string, unwanted ...string) {
	t.Helper()
	for _, u := range unwanted {
		if strings.Contains(s, u) {
			t.Errorf("%s: contains %q", what, u)
		}
	}
}
