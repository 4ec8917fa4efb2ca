package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/user"

	"github.com/pgcloak/pgcloak/audit"
	"github.com/spf13/cobra"
)

// Exit codes. A failed command exits 1; a usage mistake exits 2.
const (
	exitOK       = 0
	exitFailure  = 1
	exitUsageErr = 2
)

// exitError carries the process exit code out of a command. An exitError
// whose err is nil has already said everything on stdout/stderr.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string {
	if e.err == nil {
		return fmt.Sprintf("exit status %d", e.code)
	}
	return e.err.Error()
}

func (e *exitError) Unwrap() error { return e.err }

// failed reports a command failure whose details were already printed.
func failed() error { return &exitError{code: exitFailure} }

// usageError wraps a command-line mistake so that it exits 2 with a hint.
func usageError(cmd *cobra.Command, err error) error {
	return &exitError{
		code: exitUsageErr,
		err:  fmt.Errorf("pgcloak: %w\nRun '%s --help' for usage.", err, cmd.CommandPath()),
	}
}

// run executes the pgcloak command line and returns the process exit code.
// Tests call it instead of main.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	root := newRootCmd()
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return exitOK
	}
	var ee *exitError
	if errors.As(err, &ee) {
		if ee.err != nil {
			fmt.Fprintln(stderr, ee.err)
		}
		return ee.code
	}
	// Anything else comes from cobra itself: an unknown command or a bad
	// argument count.
	fmt.Fprintf(stderr, "pgcloak: %v\nRun 'pgcloak --help' for usage.\n", err)
	return exitUsageErr
}

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "pgcloak",
		Short: "Transparent PostgreSQL proxy for per-tenant cryptographic isolation",
		Long: `pgcloak is a PostgreSQL wire-protocol proxy. Applications keep their SQL and
their driver and only point the connection string at pgcloak.

Sessions are mapped to tenants by their login role; the columns declared in
the configuration are stored as per-tenant AES-256-GCM ciphertext and
decrypted for the session's own tenant only. Try it with "pgcloak demo"
(or "pgcloak demo --kms" for the AWS KMS provider against an emulator).`,
		SilenceErrors: true,
		SilenceUsage:  true,
		Version:       version,
	}
	// --version prints what the version command prints.
	root.SetVersionTemplate(versionText())
	root.CompletionOptions.DisableDefaultCmd = true
	root.SetFlagErrorFunc(usageError)
	root.AddCommand(
		newServeCmd(),
		newCheckCmd(),
		newSchemaCmd(),
		newKeysCmd(),
		newDemoCmd(),
		newVersionCmd(),
	)
	root.AddCommand(newReencryptCmd(), newEncryptExistingCmd())
	root.AddCommand(newTokenCmd())
	return root
}

// configEnv names the environment variable that is the default of -c.
const configEnv = "PGCLOAK_CONFIG"

// configFlag registers the -c/--config flag every config-reading command
// takes. Its default is $PGCLOAK_CONFIG; without that it is required.
func configFlag(cmd *cobra.Command, path *string) {
	def := os.Getenv(configEnv)
	cmd.Flags().StringVarP(path, "config", "c", def, "configuration file (YAML); default $"+configEnv)
	if def == "" {
		cmd.MarkFlagRequired("config")
	}
}

// actorEnv names the environment variable that is the default of --actor.
const actorEnv = "PGCLOAK_ACTOR"

// actorFlag registers --actor on a command that writes audit events of
// its own (keys rotate, create, rewrap, shred; reencrypt;
// encrypt-existing). Its default is $PGCLOAK_ACTOR.
func actorFlag(cmd *cobra.Command) {
	cmd.Flags().String("actor", os.Getenv(actorEnv), "who runs this, for the audit events (a person, a ticket); default $"+actorEnv)
}

// cliActor is who runs cmd, for its audit events: the operating-system
// user and the --actor flag (or $PGCLOAK_ACTOR when cmd has no such flag).
func cliActor(cmd *cobra.Command) audit.Actor {
	var a audit.Actor
	if u, err := user.Current(); err == nil {
		a.OSUser = u.Username
	} else {
		a.OSUser = os.Getenv("USER")
	}
	if f := cmd.Flags().Lookup("actor"); f != nil {
		a.Name = f.Value.String()
	} else {
		a.Name = os.Getenv(actorEnv)
	}
	return a
}
