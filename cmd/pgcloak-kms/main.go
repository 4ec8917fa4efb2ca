// Command pgcloak-kms serves an emulator of the AWS KMS API, so that
// pgcloak's keys.provider aws can be tried on one machine or in docker
// compose without an AWS account.
//
// It is testenv's emulator (testenv.KMS) as a program: the KMS JSON 1.1
// API over plain HTTP, symmetric keys with AES-256-GCM key material held in
// memory, the encryption context enforced on Decrypt. At start it creates
// the default key-encryption key under an alias (--alias) and, for
// bring-your-own-key tenants, a key of their own each (--tenant-key), and
// prints the key ARNs, the AWS environment and the keys section of a
// pgcloak configuration that uses them. It serves until SIGINT or SIGTERM.
//
// It is not a key service: it authenticates nobody (a request needs an
// Authorization header, whose signature is not checked) and its keys
// vanish when it stops, and with them every value encrypted under them.
// Keep it on loopback, or inside a private network such as a compose
// project's.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"text/tabwriter"

	"github.com/pgcloak/pgcloak/testenv"
	"github.com/spf13/cobra"
)

// Exit codes, as cmd/pgcloak's.
const (
	exitOK       = 0
	exitFailure  = 1
	exitUsageErr = 2
)

// Dummy AWS credentials to print: the emulator checks no signature, but
// the SDK will not sign, and so not send, a request without credentials.
const (
	dummyAccessKeyID     = "pgcloak-kms-dummy"
	dummySecretAccessKey = "pgcloak-kms-dummy"
)

// reportedOps are the operations whose call counts are printed at the end.
var reportedOps = []string{"GenerateDataKey", "Encrypt", "Decrypt", "DescribeKey", "ScheduleKeyDeletion"}

func main() {
	os.Exit(run(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
}

// usageError is a command-line mistake; it exits exitUsageErr.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }

// run executes the command line and returns the process exit code. Tests
// call it instead of main.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var o options
	cmd := &cobra.Command{
		Use:   "pgcloak-kms",
		Short: "Serve an AWS KMS emulator for trying pgcloak locally",
		Long: `pgcloak-kms serves an emulator of the AWS KMS API (testenv's) on --listen,
creates the default key-encryption key under --alias and a key of its own
for each --tenant-key, prints their ARNs, the AWS environment and the keys
section of a pgcloak configuration, and serves until Ctrl-C or SIGTERM.

It authenticates nobody and keeps its keys in memory: when it stops, every
value encrypted under them is lost. Never use it for real data.`,
		Example: `  pgcloak-kms
  pgcloak-kms --listen 127.0.0.1:4599 --alias alias/pgcloak --tenant-key acme=alias/acme`,
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return serve(ctx, o, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	cmd.Flags().StringVar(&o.listen, "listen", "127.0.0.1:4599", "address to serve the KMS API on")
	cmd.Flags().StringVar(&o.alias, "alias", "alias/pgcloak", "alias of the default key-encryption key (keys.aws.key_id)")
	cmd.Flags().StringArrayVar(&o.tenantKeys, "tenant-key", nil, "`TENANT[=alias/NAME]`: a key of the tenant's own (keys.tenants), alias/TENANT when no alias is given; repeatable")
	cmd.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	cmd.SetArgs(args)
	cmd.SetOut(stdout)
	cmd.SetErr(stderr)

	err := cmd.ExecuteContext(ctx)
	var ue usageError
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &ue) || strings.HasPrefix(err.Error(), "unknown command"):
		fmt.Fprintf(stderr, "pgcloak-kms: %v\nRun 'pgcloak-kms --help' for usage.\n", err)
		return exitUsageErr
	default:
		fmt.Fprintf(stderr, "pgcloak-kms: %v\n", err)
		return exitFailure
	}
}

// options are the command's flags.
type options struct {
	listen     string
	alias      string
	tenantKeys []string // TENANT[=ALIAS]
}

// tenantKey is a parsed --tenant-key.
type tenantKey struct{ tenant, alias string }

// parseTenantKeys parses --tenant-key values, refusing a tenant named twice.
func parseTenantKeys(values []string) ([]tenantKey, error) {
	var tks []tenantKey
	seen := make(map[string]bool)
	for _, v := range values {
		tenant, alias, named := strings.Cut(v, "=")
		if !named {
			alias = "alias/" + tenant
		}
		switch {
		case tenant == "":
			return nil, usageError{fmt.Errorf("--tenant-key %q: want TENANT or TENANT=alias/NAME", v)}
		case !validAlias(alias):
			return nil, usageError{fmt.Errorf("--tenant-key %q: the alias must be alias/NAME, not under alias/aws/", v)}
		case seen[tenant]:
			return nil, usageError{fmt.Errorf("--tenant-key: tenant %q is given twice", tenant)}
		}
		seen[tenant] = true
		tks = append(tks, tenantKey{tenant, alias})
	}
	return tks, nil
}

// validAlias reports whether KMS would accept alias as an alias name of a
// customer key.
func validAlias(alias string) bool {
	name, ok := strings.CutPrefix(alias, "alias/")
	return ok && name != "" && !strings.HasPrefix(alias, "alias/aws/")
}

// serve runs the emulator until ctx is done.
func serve(ctx context.Context, o options, out, errOut io.Writer) error {
	if !validAlias(o.alias) {
		return usageError{fmt.Errorf("--alias %q: want alias/NAME, not under alias/aws/", o.alias)}
	}
	tks, err := parseTenantKeys(o.tenantKeys)
	if err != nil {
		return err
	}
	host, _, err := net.SplitHostPort(o.listen)
	if err != nil {
		return usageError{fmt.Errorf("--listen %q: %w", o.listen, err)}
	}

	kms, err := testenv.NewKMSAt(o.listen)
	if err != nil {
		return err
	}
	defer kms.Close()

	type created struct{ alias, arn, what string }
	var keys []created
	newKey := func(alias, description, what string) error {
		key := kms.CreateKey(description)
		if err := kms.CreateAlias(alias, key.ID); err != nil {
			return fmt.Errorf("create %s: %w", alias, err)
		}
		keys = append(keys, created{alias, key.ARN, what})
		return nil
	}
	if err := newKey(o.alias, "pgcloak default key-encryption key", "default KEK (keys.aws.key_id)"); err != nil {
		return err
	}
	for _, tk := range tks {
		if err := newKey(tk.alias, "pgcloak key-encryption key of tenant "+tk.tenant, "tenant "+tk.tenant+"'s own KEK (keys.tenants."+tk.tenant+".key_id)"); err != nil {
			return err
		}
	}

	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		fmt.Fprintf(errOut, "pgcloak-kms: listening on %s, beyond loopback: whoever reaches it can use these keys; keep it inside a private network\n", o.listen)
	}

	fmt.Fprintf(out, `pgcloak-kms: an AWS KMS emulator for trying pgcloak locally.
Not for real data: it authenticates nobody and keeps its keys in memory,
so when it stops every value encrypted under them is lost.

Endpoint  %s
Region    %s

Keys:
`, kms.URL, testenv.KMSRegion)
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	for _, k := range keys {
		fmt.Fprintf(tw, "  %s\t%s\t%s\n", k.alias, k.arn, k.what)
	}
	tw.Flush()

	fmt.Fprintf(out, `
Environment for pgcloak (the emulator checks no signature; these are dummies):
  export AWS_REGION=%s
  export AWS_ACCESS_KEY_ID=%s
  export AWS_SECRET_ACCESS_KEY=%s
  export AWS_EC2_METADATA_DISABLED=true

In pgcloak's configuration:
  keys:
    provider: aws
    aws:
      region: %s
      endpoint: %s
      key_id: %s
`, testenv.KMSRegion, dummyAccessKeyID, dummySecretAccessKey, testenv.KMSRegion, kms.URL, o.alias)
	if len(tks) > 0 {
		fmt.Fprintln(out, "    tenants:")
		for _, tk := range tks {
			fmt.Fprintf(out, "      %s: { key_id: %s }\n", tk.tenant, tk.alias)
		}
	}
	fmt.Fprint(out, "\nServing until Ctrl-C or SIGTERM.\n")

	<-ctx.Done()
	if err := kms.Close(); err != nil {
		return fmt.Errorf("stop: %w", err)
	}
	var counts []string
	for _, op := range reportedOps {
		if n := kms.Calls(op); n > 0 {
			counts = append(counts, fmt.Sprintf("%s %d", op, n))
		}
	}
	if len(counts) == 0 {
		counts = []string{"none"}
	}
	fmt.Fprintf(out, "\nStopped; the keys are gone. Calls served: %s.\n", strings.Join(counts, ", "))
	return nil
}
