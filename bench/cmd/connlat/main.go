// Command connlat measures connection latency for bench/connect.sh: for
// each target it runs -n sequential connections (connect, authenticate,
// `SELECT 1`, disconnect) and reports the 50th and 99th percentile of their
// durations. Rounds alternate the targets, so drift on the machine hits
// them alike.
//
//	connlat -n 200 -rounds 3 direct=postgres://... pgcloak=postgres://...
//
// Each connection first asks for SSL and goes on in plaintext on the same
// connection when refused, as libpq's default sslmode=prefer does against a
// server without TLS (-sslrequest=false: straight to the StartupMessage).
// pgx would open a second connection instead, so connlat sends the
// SSLRequest itself in its dial function.
//
// It prints one line per target and round, then one summary line per
// target: "SUMMARY NAME p50_ms p99_ms mean_ms samples".
//
// It is a tool for the benchmark, not part of pgcloak.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

func main() {
	n := flag.Int("n", 200, "connections per target and round")
	rounds := flag.Int("rounds", 3, "rounds; each runs every target once")
	timeout := flag.Duration("timeout", 10*time.Second, "bound on one connection")
	sslRequest := flag.Bool("sslrequest", true, "send an SSLRequest first and expect N, as libpq's sslmode=prefer")
	ports := flag.Int("ports", 0, "print this many free 127.0.0.1 ports, one a line, and exit")
	flag.Parse()
	if *ports > 0 {
		freePorts(*ports)
		return
	}
	type target struct {
		name string
		cfg  *pgconn.Config
		all  []time.Duration
	}
	var targets []*target
	for _, arg := range flag.Args() {
		name, url, ok := strings.Cut(arg, "=")
		if !ok {
			fail(fmt.Errorf("target %q: want NAME=URL", arg))
		}
		cfg, err := pgconn.ParseConfig(url)
		if err != nil {
			fail(fmt.Errorf("target %s: %w", name, err))
		}
		if cfg.TLSConfig != nil {
			fail(fmt.Errorf("target %s: use sslmode=disable; -sslrequest asks for SSL", name))
		}
		if *sslRequest {
			cfg.DialFunc = dialAskingSSL
		}
		targets = append(targets, &target{name: name, cfg: cfg})
	}
	if len(targets) == 0 {
		fail(fmt.Errorf("no targets"))
	}
	for r := 1; r <= *rounds; r++ {
		for _, t := range targets {
			d := make([]time.Duration, 0, *n)
			for i := 0; i < *n; i++ {
				took, err := once(t.cfg, *timeout)
				if err != nil {
					fail(fmt.Errorf("%s, round %d, connection %d: %w", t.name, r, i, err))
				}
				d = append(d, took)
			}
			t.all = append(t.all, d...)
			p50, p99, mean := stats(d)
			fmt.Printf("round %d %-18s p50 %6.2f ms  p99 %6.2f ms  mean %6.2f ms\n", r, t.name, ms(p50), ms(p99), ms(mean))
		}
	}
	for _, t := range targets {
		p50, p99, mean := stats(t.all)
		fmt.Printf("SUMMARY %s %.3f %.3f %.3f %d\n", t.name, ms(p50), ms(p99), ms(mean), len(t.all))
	}
}

// once connects, runs SELECT 1, disconnects, and returns how long it took.
func once(cfg *pgconn.Config, timeout time.Duration) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	start := time.Now()
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return 0, err
	}
	if _, err := conn.Exec(ctx, "SELECT 1").ReadAll(); err != nil {
		conn.Close(ctx)
		return 0, err
	}
	err = conn.Close(ctx)
	return time.Since(start), err
}

// dialAskingSSL connects and sends an SSLRequest, which the server must
// refuse with N; the connection then carries the StartupMessage.
func dialAskingSSL(ctx context.Context, network, addr string) (net.Conn, error) {
	conn, err := (&net.Dialer{}).DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	if deadline, ok := ctx.Deadline(); ok {
		conn.SetDeadline(deadline)
	}
	req, _ := (&pgproto3.SSLRequest{}).Encode(nil)
	var answer [1]byte
	if _, err = conn.Write(req); err == nil {
		_, err = io.ReadFull(conn, answer[:])
	}
	if err == nil && answer[0] != 'N' {
		err = fmt.Errorf("SSLRequest answered %q, want N", answer[0])
	}
	if err != nil {
		conn.Close()
		return nil, err
	}
	conn.SetDeadline(time.Time{})
	return conn, nil
}

func stats(d []time.Duration) (p50, p99, mean time.Duration) {
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	var sum time.Duration
	for _, x := range s {
		sum += x
	}
	at := func(p float64) time.Duration { return s[min(len(s)-1, int(p*float64(len(s))))] }
	return at(0.50), at(0.99), sum / time.Duration(len(s))
}

// freePorts prints n ports that were free just now.
func freePorts(n int) {
	var lns []net.Listener
	for i := 0; i < n; i++ {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			fail(err)
		}
		lns = append(lns, ln)
		fmt.Println(ln.Addr().(*net.TCPAddr).Port)
	}
	for _, ln := range lns {
		ln.Close()
	}
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func fail(err error) {
	fmt.Fprintln(os.Stderr, "connlat:", err)
	os.Exit(1)
}
