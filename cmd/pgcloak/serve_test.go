package main

import (
	"context"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/pgcloak/pgcloak/testenv"
)

// TestServe runs serve in-process, queries through it, sends it SIGHUP, and
// stops it the way a signal would (by cancelling its context).
func TestServe(t *testing.T) {
	pg := testenv.Shared(t)
	db := testenv.NewDatabase(t, pg)
	listen := freeAddr(t)
	cfg := checkConfig(pg.Addr(), "disable", "", testenv.ScramUser, testenv.ScramPassword, db)
	cfg = strings.Replace(cfg, "address: 127.0.0.1:6432", "address: "+listen+"\n  shutdown_timeout: 5s", 1)
	cfg = strings.Replace(cfg, "level: warn", "level: info", 1)
	path := writeFile(t, "pgcloak.yaml", cfg)

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var stdout, stderr syncBuffer
	exited := make(chan int, 1)
	go func() { exited <- run(ctx, []string{"serve", "-c", path}, &stdout, &stderr) }()
	defer func() { t.Logf("serve stderr:\n%s", stderr.String()) }()

	url := fmt.Sprintf("postgres://%s:%s@%s/%s?sslmode=disable", testenv.ScramUser, testenv.ScramPassword, listen, db)
	conn := connectRetry(t, url, exited)
	var one int
	if err := conn.QueryRow(ctx, "select 1").Scan(&one); err != nil || one != 1 {
		t.Fatalf("select 1 through the proxy: got %d, %v; want 1, nil", one, err)
	}

	if err := syscall.Kill(syscall.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the SIGHUP log line", func() bool { return strings.Contains(stderr.String(), "reload not yet supported") })
	if err := conn.QueryRow(ctx, "select 1").Scan(&one); err != nil {
		t.Fatalf("query after SIGHUP: %v", err)
	}
	conn.Close(context.Background())

	cancel()
	select {
	case code := <-exited:
		if code != 0 {
			t.Errorf("exit code: got %d, want 0", code)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("serve did not stop within 15s of shutdown")
	}
	if !strings.Contains(stderr.String(), `"message":"pgcloak stopped"`) {
		t.Errorf("log: want a JSON line saying pgcloak stopped")
	}
	if strings.Contains(stdout.String()+stderr.String(), testenv.ScramPassword) {
		t.Errorf("output contains the upstream password")
	}
}

// connectRetry connects to url until it works, failing if serve exits first.
func connectRetry(t *testing.T, url string, exited <-chan int) *pgx.Conn {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		conn, err := pgx.Connect(ctx, url)
		cancel()
		if err == nil {
			return conn
		}
		select {
		case code := <-exited:
			t.Fatalf("serve exited with %d before accepting connections", code)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("connect through the proxy: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitFor polls cond for up to 10 seconds.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
