package testenv

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// RunMain runs the tests and then stops every server this test binary
// started and did not stop, Shared's included. Use it from TestMain:
//
//	func TestMain(m *testing.M) { os.Exit(testenv.RunMain(m)) }
//
// On SIGINT or SIGTERM it stops the servers and exits with status 1. A
// failure to stop a server turns a passing run into a failing one.
func RunMain(m *testing.M) int {
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	done := make(chan struct{})
	go func() {
		select {
		case sig := <-sigs:
			fmt.Fprintf(os.Stderr, "testenv: %v: stopping PostgreSQL\n", sig)
			if err := stopAll(); err != nil {
				fmt.Fprintln(os.Stderr, err)
			}
			os.Exit(1)
		case <-done:
		}
	}()

	code := m.Run()

	signal.Stop(sigs)
	close(done)
	if err := stopAll(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		if code == 0 {
			code = 1
		}
	}
	return code
}

// sharedStartTimeout bounds Shared's Start, initdb included.
const sharedStartTimeout = 2 * time.Minute

var shared struct {
	once sync.Once
	pg   *Postgres
	err  error
}

// Shared returns this test binary's server, starting it on first use. If it
// cannot start, every caller fails with the reason (never a skip: a missing
// PostgreSQL is a broken environment, and the error says what to install).
// RunMain stops it; without RunMain the kernel does when the binary exits,
// and the next Start removes the directory left behind.
//
// Tests share the server, so each should work in a database of its own
// (NewDatabase) and not change server-wide state such as roles it did not
// create.
func Shared(t testing.TB) *Postgres {
	t.Helper()
	shared.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), sharedStartTimeout)
		defer cancel()
		shared.pg, shared.err = Start(ctx, Options{})
	})
	if shared.err != nil {
		t.Fatal(shared.err)
	}
	return shared.pg
}

// databaseTimeout bounds CREATE DATABASE and DROP DATABASE in NewDatabase.
const databaseTimeout = time.Minute

var databaseSeq atomic.Int64

// NewDatabase creates a database on p for t alone and drops it, with any
// sessions still connected to it, when t and its subtests have finished.
// Its name is derived from t.Name() and unique within the test binary.
func NewDatabase(t testing.TB, p *Postgres) string {
	t.Helper()
	name := databaseName(t.Name(), databaseSeq.Add(1))
	ctx, cancel := context.WithTimeout(context.Background(), databaseTimeout)
	defer cancel()
	if err := p.CreateDatabase(ctx, name); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Not t.Context(): it is cancelled before cleanups run.
		ctx, cancel := context.WithTimeout(context.Background(), databaseTimeout)
		defer cancel()
		if err := p.DropDatabase(ctx, name); err != nil {
			t.Errorf("drop test database: %v", err)
		}
	})
	return name
}

// databaseName turns "TestFoo/bar_Baz" and 7 into "t_testfoo_bar_baz_7":
// lower case, runs of other characters folded into '_', and short enough for
// PostgreSQL's 63-byte identifiers.
func databaseName(testName string, seq int64) string {
	const maxStem = 40
	var b strings.Builder
	b.WriteString("t_")
	underscore := true
	for _, r := range strings.ToLower(testName) {
		if b.Len() >= maxStem {
			break
		}
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
			b.WriteRune(r)
			underscore = false
		} else if !underscore {
			b.WriteByte('_')
			underscore = true
		}
	}
	if !underscore {
		b.WriteByte('_')
	}
	fmt.Fprintf(&b, "%d", seq)
	return b.String()
}
