// Command benchenv starts a throwaway PostgreSQL for the benchmark scripts in
// bench/ (bench/lib.sh starts it for each of them) and keeps it running until
// its standard input closes or it receives SIGINT or SIGTERM; then it stops
// the server and removes its files.
//
// Once the server is up it prints KEY=VALUE lines on standard output, ending
// with READY=1:
//
//	PGHOST, PGPORT        the server (127.0.0.1 only)
//	BENCH_USER, BENCH_PASSWORD, BENCH_DB
//	                      a login role (SCRAM) owning the benchmark database
//	BINDIR                the PostgreSQL binaries (pgbench, psql)
//	PGCLOAK_PORT, PGBOUNCER_PORT, SPARE_PORT
//	                      three more 127.0.0.1 ports that were free just now
//
// It is a tool for the benchmark, not part of pgcloak.
package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/pgcloak/pgcloak/testenv"
)

const (
	benchUser     = "bench"
	benchPassword = "bench"
	benchDB       = "bench"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "benchenv:", err)
		os.Exit(1)
	}
}

func run() (err error) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	startCtx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	pg, err := testenv.Start(startCtx, testenv.Options{})
	if err != nil {
		return err
	}
	defer func() {
		if serr := pg.Stop(); serr != nil && err == nil {
			err = serr
		}
	}()
	for _, sql := range []string{
		fmt.Sprintf("create role %s login createrole password '%s'", benchUser, benchPassword),
		fmt.Sprintf("create database %s owner %s", benchDB, benchUser),
	} {
		if err := pg.Exec(startCtx, "postgres", sql); err != nil {
			return err
		}
	}
	ports, err := freePorts(3)
	if err != nil {
		return err
	}

	fmt.Printf("PGHOST=%s\nPGPORT=%d\n", pg.Host, pg.Port)
	fmt.Printf("BENCH_USER=%s\nBENCH_PASSWORD=%s\nBENCH_DB=%s\n", benchUser, benchPassword, benchDB)
	fmt.Printf("BINDIR=%s\n", pg.BinDir)
	fmt.Printf("PGCLOAK_PORT=%d\nPGBOUNCER_PORT=%d\nSPARE_PORT=%d\n", ports[0], ports[1], ports[2])
	fmt.Println("READY=1")

	stdinClosed := make(chan struct{})
	go func() {
		io.Copy(io.Discard, os.Stdin)
		close(stdinClosed)
	}()
	select {
	case <-ctx.Done():
	case <-stdinClosed:
	}
	return nil
}

// freePorts returns n distinct 127.0.0.1 ports that were free when it ran.
// All listeners stay open until the end so that the ports differ.
func freePorts(n int) ([]int, error) {
	var ports []int
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		defer ln.Close()
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}
