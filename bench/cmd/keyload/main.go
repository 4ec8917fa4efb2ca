// Command keyload is bench/keys.sh's multi-tenant workload: it logs in
// through pgcloak as one role per tenant (one session each), and runs
// statements on a declared table patients (name text, ssn encrypted and
// searchable) from a few concurrent clients, while counting the KMS calls
// that kmsenv's emulator receives.
//
// It runs two phases and prints one line for each:
//
//	phase=warmup statements=N seconds=S GenerateDataKey=G Decrypt=D
//	phase=steady ...
//
// The warm-up is every tenant's first insert and first search: its keys
// are created then. The steady phase is -statements more, each on a
// tenant drawn at random: an insert, a blind-index search for a value the
// tenant inserted, or a read of its latest rows, in equal parts.
//
// It is a tool for the benchmark, not part of pgcloak.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"golang.org/x/sync/errgroup"
)

type options struct {
	addr, db, roleFormat, password, kmsControl string
	tenants, statements, clients               int
}

func main() {
	var o options
	flag.StringVar(&o.addr, "addr", "", "pgcloak's host:port")
	flag.StringVar(&o.db, "db", "", "database")
	flag.StringVar(&o.roleFormat, "role", "kt_%03d", "login role of tenant i (1-based), a fmt format")
	flag.StringVar(&o.password, "password", "", "the tenant roles' password")
	flag.StringVar(&o.kmsControl, "kms-control", "", "kmsenv's KMS_CONTROL URL")
	flag.IntVar(&o.tenants, "tenants", 100, "tenants, one session each")
	flag.IntVar(&o.statements, "statements", 10000, "statements after the warm-up")
	flag.IntVar(&o.clients, "clients", 8, "concurrent clients")
	flag.Parse()
	if o.addr == "" || o.db == "" || o.kmsControl == "" || o.tenants < 1 || o.clients < 1 || o.statements < 0 {
		fmt.Fprintln(os.Stderr, "keyload: -addr, -db and -kms-control are required; -tenants and -clients must be positive")
		os.Exit(2)
	}
	if err := run(context.Background(), o); err != nil {
		fmt.Fprintln(os.Stderr, "keyload:", err)
		os.Exit(1)
	}
}

// tenant is one tenant's session. Its statements run one at a time.
type tenant struct {
	mu       sync.Mutex
	conn     *pgx.Conn
	inserted int // values inserted so far; value k of tenant i is ssnOf(i, k)
}

func ssnOf(i, k int) string { return fmt.Sprintf("%03d-%02d-%04d", i, k/10000, k%10000) }

func run(ctx context.Context, o options) error {
	tenants := make([]*tenant, o.tenants)
	defer func() {
		for _, t := range tenants {
			if t != nil && t.conn != nil {
				t.conn.Close(context.Background())
			}
		}
	}()
	err := spread(ctx, o.clients, o.tenants, func(ctx context.Context, i int) error {
		u := url.URL{
			Scheme:   "postgres",
			User:     url.UserPassword(fmt.Sprintf(o.roleFormat, i+1), o.password),
			Host:     o.addr,
			Path:     "/" + o.db,
			RawQuery: "sslmode=disable",
		}
		conn, err := pgx.Connect(ctx, u.String())
		if err != nil {
			return fmt.Errorf("tenant %d: connect: %w", i+1, redact(err, o.password))
		}
		tenants[i] = &tenant{conn: conn}
		return nil
	})
	if err != nil {
		return err
	}

	// phase runs jobs calls of job, which make statements statements in
	// all, and prints the phase's line.
	phase := func(name string, statements, jobs int, job func(ctx context.Context, k int) error) error {
		before, err := kmsCalls(ctx, o.kmsControl)
		if err != nil {
			return err
		}
		start := time.Now()
		if err := spread(ctx, o.clients, jobs, job); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		elapsed := time.Since(start)
		after, err := kmsCalls(ctx, o.kmsControl)
		if err != nil {
			return err
		}
		fmt.Printf("phase=%s statements=%d seconds=%.3f GenerateDataKey=%d Decrypt=%d\n", name, statements, elapsed.Seconds(),
			after["GenerateDataKey"]-before["GenerateDataKey"], after["Decrypt"]-before["Decrypt"])
		return nil
	}
	// Warm-up: job i is tenant i's first insert and first search.
	err = phase("warmup", 2*o.tenants, o.tenants, func(ctx context.Context, i int) error {
		t := tenants[i]
		t.mu.Lock()
		defer t.mu.Unlock()
		if err := insert(ctx, t, i); err != nil {
			return err
		}
		return search(ctx, t, i)
	})
	if err != nil {
		return err
	}
	var seq atomic.Uint64
	return phase("steady", o.statements, o.statements, func(ctx context.Context, _ int) error {
		n := seq.Add(1)
		i := rand.IntN(o.tenants)
		t := tenants[i]
		t.mu.Lock()
		defer t.mu.Unlock()
		switch n % 3 {
		case 0:
			return insert(ctx, t, i)
		case 1:
			return search(ctx, t, i)
		default:
			return readLatest(ctx, t, i)
		}
	})
}

// insert stores the tenant's next value.
func insert(ctx context.Context, t *tenant, i int) error {
	k := t.inserted
	if _, err := t.conn.Exec(ctx, "insert into patients (name, ssn) values ($1, $2)", "p"+strconv.Itoa(k), ssnOf(i, k)); err != nil {
		return fmt.Errorf("tenant %d: insert: %w", i+1, err)
	}
	t.inserted++
	return nil
}

// search finds one of the tenant's values by its blind index.
func search(ctx context.Context, t *tenant, i int) error {
	k := rand.IntN(t.inserted)
	var name string
	if err := t.conn.QueryRow(ctx, "select name from patients where ssn = $1", ssnOf(i, k)).Scan(&name); err != nil {
		return fmt.Errorf("tenant %d: search: %w", i+1, err)
	}
	if name != "p"+strconv.Itoa(k) {
		return fmt.Errorf("tenant %d: search found the wrong row", i+1)
	}
	return nil
}

// readLatest reads the tenant's latest values, which decrypts them.
func readLatest(ctx context.Context, t *tenant, i int) error {
	rows, err := t.conn.Query(ctx, "select ssn from patients order by id desc limit 5")
	if err != nil {
		return fmt.Errorf("tenant %d: read: %w", i+1, err)
	}
	got, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return fmt.Errorf("tenant %d: read: %w", i+1, err)
	}
	if len(got) == 0 || got[0] != ssnOf(i, t.inserted-1) {
		return fmt.Errorf("tenant %d: read: the latest value is not the one inserted last", i+1)
	}
	return nil
}

// spread runs fn(0) ... fn(n-1) on clients goroutines and stops at the
// first error.
func spread(ctx context.Context, clients, n int, fn func(ctx context.Context, k int) error) error {
	g, ctx := errgroup.WithContext(ctx)
	var next atomic.Int64
	for range min(clients, max(n, 1)) {
		g.Go(func() error {
			for {
				k := int(next.Add(1) - 1)
				if k >= n || ctx.Err() != nil {
					return nil
				}
				if err := fn(ctx, k); err != nil {
					return err
				}
			}
		})
	}
	return g.Wait()
}

// kmsCalls reads kmsenv's call counts.
func kmsCalls(ctx context.Context, control string) (map[string]int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, control+"/calls", nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("kms call counts: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("kms call counts: %s", resp.Status)
	}
	calls := make(map[string]int)
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		op, n, ok := strings.Cut(sc.Text(), " ")
		v, err := strconv.Atoi(n)
		if !ok || err != nil {
			return nil, fmt.Errorf("kms call counts: bad line %q", sc.Text())
		}
		calls[op] = v
	}
	return calls, sc.Err()
}

// redact removes the password from an error's text (pgx may quote the
// connection string).
func redact(err error, password string) error {
	if password == "" || !strings.Contains(err.Error(), password) {
		return err
	}
	return errors.New(strings.ReplaceAll(err.Error(), password, "xxxxx"))
}
