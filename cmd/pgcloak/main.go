// Command pgcloak is the pgcloak binary: the proxy (serve), its operational
// tools (check, schema, keys, reencrypt, encrypt-existing, token) and a
// self-contained demo. Each subcommand lives in its own file.
package main

import (
	"context"
	"os"
)

func main() {
	os.Exit(run(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
}
