package main

import (
	"context"
	"os"
	"regexp"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// TestDemo runs the demo until it prints its psql connection string,
// connects with that string, stops the demo, and checks that its temporary
// directory is gone.
func TestDemo(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var stdout, stderr syncBuffer
	exited := make(chan int, 1)
	go func() { exited <- run(ctx, []string{"demo"}, &stdout, &stderr) }()
	defer func() { t.Logf("demo stdout:\n%s\nstderr:\n%s", stdout.String(), stderr.String()) }()

	psql := regexp.MustCompile(`psql "(postgres://demo:demo@127\.0\.0\.1:\d+/demo\?sslmode=disable)"`)
	var url string
	deadline := time.Now().Add(2 * time.Minute)
	for url == "" {
		if m := psql.FindStringSubmatch(stdout.String()); m != nil {
			url = m[1]
			break
		}
		select {
		case code := <-exited:
			t.Fatalf("demo exited with %d before printing a psql connection string", code)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatal("demo did not print a psql connection string within 2 minutes")
		}
	}
	for _, want := range []string{"Alice Jones", "NOT implemented yet"} {
		if !regexp.MustCompile(regexp.QuoteMeta(want)).MatchString(stdout.String()) {
			t.Errorf("stdout: missing %q", want)
		}
	}
	dir := regexp.MustCompile(`(/\S*pgcloak-demo-\d+) is removed`).FindStringSubmatch(stdout.String())
	if dir == nil {
		t.Fatal("stdout: does not name the temporary directory")
	}

	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatalf("connect with the printed string: %v", err)
	}
	var n int
	if err := conn.QueryRow(ctx, "select count(*) from patients").Scan(&n); err != nil || n != 4 {
		t.Errorf("count patients through the proxy: got %d, %v; want 4, nil", n, err)
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
	if _, err := os.Stat(dir[1]); !os.IsNotExist(err) {
		t.Errorf("temporary directory %s: got %v, want it removed", dir[1], err)
	}
}
