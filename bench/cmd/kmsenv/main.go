// Command kmsenv serves testenv's KMS emulator for bench/keys.sh, with one
// enabled key under alias/pgcloak, until its standard input closes or it
// receives SIGINT or SIGTERM. The script holds its standard input (a FIFO)
// open, so that the emulator also ends when the script is killed.
//
// Once the emulator is up it prints KEY=VALUE lines on standard output,
// ending with READY=1:
//
//	KMS_URL       the emulator's endpoint (keys.aws.endpoint)
//	KMS_KEY_ARN   the ARN of the key alias/pgcloak names
//	KMS_CONTROL   a plain-HTTP control endpoint on 127.0.0.1
//
// GET KMS_CONTROL/calls answers with the calls the emulator has counted
// since it started, one "OPERATION COUNT" line per operation it knows,
// for the script to take differences of. With -latency every KMS call is
// delayed that long, as a round trip to a KMS region would be.
//
// It is a tool for the benchmark, not part of pgcloak.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/pgcloak/pgcloak/testenv"
)

// countedOps are the operations GET /calls reports, in this order.
var countedOps = []string{"GenerateDataKey", "Decrypt", "Encrypt", "DescribeKey", "ScheduleKeyDeletion"}

func main() {
	latency := flag.Duration("latency", 0, "delay of every KMS call")
	flag.Parse()
	if err := run(*latency); err != nil {
		fmt.Fprintln(os.Stderr, "kmsenv:", err)
		os.Exit(1)
	}
}

func run(latency time.Duration) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	emu, err := testenv.NewKMS()
	if err != nil {
		return err
	}
	defer emu.Close()
	key := emu.CreateKey("pgcloak bench default")
	if err := emu.CreateAlias("alias/pgcloak", key.ID); err != nil {
		return err
	}
	emu.SetLatency("", latency)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /calls", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		for _, op := range countedOps {
			fmt.Fprintf(w, "%s %d\n", op, emu.Calls(op))
		}
	})
	control := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	served := make(chan error, 1)
	go func() { served <- control.Serve(ln) }()
	defer control.Close()

	fmt.Printf("KMS_URL=%s\nKMS_KEY_ARN=%s\nKMS_CONTROL=http://%s\n", emu.URL, key.ARN, ln.Addr())
	fmt.Println("READY=1")

	stdinClosed := make(chan struct{})
	go func() {
		io.Copy(io.Discard, os.Stdin)
		close(stdinClosed)
	}()
	select {
	case <-ctx.Done():
	case <-stdinClosed:
	case err := <-served:
		if !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("control endpoint: %w", err)
		}
	}
	return nil
}
