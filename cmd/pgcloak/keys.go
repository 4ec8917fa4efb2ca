package main

import (
	"fmt"
	"strings"

	"github.com/pgcloak/pgcloak/crypto"
	"github.com/spf13/cobra"
)

func newKeysCmd() *cobra.Command {
	keys := &cobra.Command{
		Use:   "keys",
		Short: "Create and manage keys",
		Long: `Create and manage pgcloak's keys. Every command but init-local reads the
configuration (-c FILE), works on pgcloak.data_keys as upstream.user and
writes its audit events to audit.output.

  init-local  write a new local master key file (keys.provider: local)
  list        list a tenant's key versions (--count: values per version)
  rotate      make a new active data key version for a tenant
  rewrap      wrap a tenant's data keys again under its current KEK
  shred       destroy a tenant's keys (crypto-shredding), with --yes
  create      give a tenant new keys after a shred

Running replicas learn of rotate and shred at once (LISTEN/NOTIFY on
pgcloak_key_events) and purge their caches.`,
		// A bare "keys" or an unknown subcommand is a usage mistake.
		Args: cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				return usageError(cmd, fmt.Errorf("unknown keys command %q", args[0]))
			}
			return usageError(cmd, fmt.Errorf("keys needs a command: %s", strings.Join(keysCommandNames(cmd), ", ")))
		},
	}
	keys.AddCommand(
		newKeysInitLocalCmd(),
		newKeysListCmd(),
		newKeysRotateCmd(),
		newKeysRewrapCmd(),
		newKeysShredCmd(),
		newKeysCreateCmd(),
	)
	return keys
}

func keysCommandNames(cmd *cobra.Command) []string {
	var names []string
	for _, c := range cmd.Commands() {
		if c.IsAvailableCommand() {
			names = append(names, c.Name())
		}
	}
	return names
}

func newKeysInitLocalCmd() *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "init-local -o FILE",
		Short: "Write a new local master key file",
		Long: `Write a new random 256-bit master key to FILE, readable and writable by its
owner only (mode 0600), for keys.provider: local (keys.local.master_key_file).

It refuses to overwrite an existing file: losing the master key makes every
value encrypted under it unreadable. Keep a copy somewhere safe, apart from
the database's backups.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := crypto.WriteLocalMasterKey(output); err != nil {
				return &exitError{code: exitFailure, err: fmt.Errorf("pgcloak: %w", err)}
			}
			fmt.Fprintf(cmd.OutOrStdout(), `Wrote a new master key to %s (mode 0600).
Point the configuration at it:

  keys:
    provider: local
    local:
      master_key_file: %s

Back it up apart from the database: without it, the data keys it wraps and
every value encrypted under them are unreadable.
`, output, output)
			return nil
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "", "master key file to create")
	cmd.MarkFlagRequired("output")
	return cmd
}
