package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/jackc/pgx/v5"
	"github.com/spf13/cobra"

	"github.com/pgcloak/pgcloak/audit"
	"github.com/pgcloak/pgcloak/config"
	"github.com/pgcloak/pgcloak/migrate"
)

// encryptExistingBatch is encrypt-existing's default --batch-size: its rows
// are new work for the table's indexes, but still short transactions.
const encryptExistingBatch = 1000

func newEncryptExistingCmd() *cobra.Command {
	var (
		f            batchFlags
		table        string
		suffix       string
		printPrepare bool
		printFinish  bool
	)
	cmd := &cobra.Command{
		Use:   "encrypt-existing -c FILE --table T [--tenant-column tenant_id]",
		Short: "Encrypt a table's existing plaintext in place, online and in batches",
		Long: `Move the existing plaintext of a declared table into pgcloak's layout, online:
every row's plaintext is sealed under its own tenant's key (the tenant is
read from --tenant-column) into the declared bytea column, its blind index
computed when the column is searchable, and the plaintext column set to
NULL, in one compare-and-set UPDATE per row.

The migration has three steps:

  1. Prepare (one short transaction, as the table's owner):
       pgcloak encrypt-existing -c FILE --table T --print-prepare | psql ...
     renames each declared column ssn to ssn_plain (--plaintext-suffix),
     adds the bytea columns "pgcloak schema" prints, and a trigger that
     clears ssn_plain whenever ssn is written. Then point the application
     at pgcloak (or send SIGHUP to running replicas). From now on its writes
     are encrypted; rows not moved yet read as NULL in declared columns.
  2. Encrypt (this command, any number of times):
       pgcloak encrypt-existing -c FILE --table T
     batches of --batch-size rows, each one short transaction, --pause
     between them; interrupted runs are continued by running it again. A
     value the application wrote through pgcloak meanwhile wins.
  3. Finish (as the table's owner):
       pgcloak encrypt-existing -c FILE --table T --print-finish | psql ...
     checks that no plaintext is left and drops the trigger and the
     plaintext columns.

Rows whose tenant column is NULL and plaintext that is not valid for the
declared type are counted and left as they are; the command then exits 1.
Without --tenant every row is visited with row_security off, which needs
upstream.user to bypass row-level security on the table; with --tenant
only that tenant's rows are visited.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := f.check(cmd); err != nil {
				return err
			}
			if printPrepare && printFinish {
				return usageError(cmd, fmt.Errorf("--print-prepare and --print-finish are two steps; give one"))
			}
			if suffix == "" {
				return usageError(cmd, fmt.Errorf("--plaintext-suffix must not be empty"))
			}
			var opts []config.Option
			if printPrepare || printFinish {
				// Printing SQL needs no upstream password.
				opts = append(opts, config.WithoutSecrets())
			}
			cfg, err := config.Load(f.config, opts...)
			if err != nil {
				return &exitError{code: exitFailure, err: err}
			}
			decls, err := selectTables(cmd, cfg, []string{table})
			if err != nil {
				return err
			}
			t := decls[0]
			switch {
			case printPrepare:
				writePrepare(cmd.OutOrStdout(), cfg, t, suffix)
				return nil
			case printFinish:
				writeFinish(cmd.OutOrStdout(), cfg, t, suffix)
				return nil
			}
			return runEncryptExisting(cmd, cfg, f, t, suffix)
		},
	}
	f.register(cmd, encryptExistingBatch)
	cmd.Flags().StringVar(&table, "table", "", "the declared table to encrypt (schema.table or table)")
	cmd.MarkFlagRequired("table")
	cmd.Flags().StringVar(&suffix, "plaintext-suffix", migrate.DefaultPlaintextSuffix, "the plaintext of declared column C is in column C+suffix")
	cmd.Flags().BoolVar(&printPrepare, "print-prepare", false, "print the SQL of step 1 (prepare the table) and exit")
	cmd.Flags().BoolVar(&printFinish, "print-finish", false, "print the SQL of step 3 (drop the plaintext) and exit")
	return cmd
}

func runEncryptExisting(cmd *cobra.Command, cfg *config.Config, f batchFlags, t config.Table, suffix string) error {
	ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	stdout, stderr := cmd.OutOrStdout(), cmd.ErrOrStderr()

	rt, err := openMigration(ctx, cfg, "pgcloak encrypt-existing", cliActor(cmd), stdout, stderr)
	if err != nil {
		return setupError(ctx, "encrypt-existing", err)
	}
	defer rt.close()
	if err := preflight(ctx, rt, "encrypt-existing", f.tenantColumn, []config.Table{t}); err != nil {
		return err
	}

	ev := audit.EncryptExisting{Table: t.QualifiedName(), Tenant: f.tenant}
	rt.audit.EncryptExistingStarted(ev)
	progress := newProgress(stderr, "encrypt-existing "+t.QualifiedName())
	st, err := migrate.EncryptExisting(ctx, migrate.EncryptOptions{
		Options:         rt.options(f, progress),
		Table:           &t,
		PlaintextSuffix: suffix,
	})
	progress.finish(err)
	ev.Updated, ev.Left, ev.Outcome = st.Updated, st.Left(), outcome(ctx, st, err)
	rt.audit.EncryptExistingFinished(ev)
	fmt.Fprintf(stdout, "encrypt-existing: %s: encrypted %d rows in %d batches (%d rows visited)\n", t.QualifiedName(), st.Updated, st.Batches, st.Visited)
	if err == nil && st.Left() == 0 {
		fmt.Fprintf(stdout, "encrypt-existing: no plaintext left; finish with: pgcloak encrypt-existing -c %s --table %s --print-finish\n", cfg.File, t.QualifiedName())
	}
	var se *migrate.SchemaError
	if errors.As(err, &se) {
		err = fmt.Errorf("%w (prepare the table first: pgcloak encrypt-existing --print-prepare)", err)
	}
	return reportEnd(ctx, "encrypt-existing", cfg, st, err, "undecryptable values")
}

// writePrepare prints step 1 for table t: the plaintext columns renamed,
// the encrypted columns added, and the triggers that keep a write through
// the proxy from being overwritten by older plaintext.
func writePrepare(w io.Writer, cfg *config.Config, t config.Table, suffix string) {
	table := pgx.Identifier{t.Schema, t.Name}.Sanitize()
	fn := pgx.Identifier{t.Schema, clearFunction(t)}.Sanitize()
	fmt.Fprintf(w, `-- Step 1 of encrypting the existing plaintext of %s (declared in %s),
-- printed by "pgcloak encrypt-existing --print-prepare". Run it as the
-- table's owner; it is one transaction and may be run again.
-- Then point the application at pgcloak (or send SIGHUP to running
-- replicas) and run "pgcloak encrypt-existing".
BEGIN;

-- Keep each declared column's plaintext under a new name, nullable: from
-- now on the application writes the encrypted column through pgcloak.
`, t.QualifiedName(), cfg.File)
	for _, c := range t.Columns {
		plain := migrate.PlaintextColumn(c.Name, suffix)
		fmt.Fprintf(w, `DO $pgcloak$ BEGIN
  IF EXISTS (SELECT 1 FROM pg_catalog.pg_attribute
             WHERE attrelid = %[1]s::regclass AND attname = %[2]s AND NOT attisdropped
               AND atttypid <> 'bytea'::regtype)
     AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute
             WHERE attrelid = %[1]s::regclass AND attname = %[3]s AND NOT attisdropped) THEN
    ALTER TABLE %[4]s RENAME COLUMN %[5]s TO %[6]s;
    ALTER TABLE %[4]s ALTER COLUMN %[6]s DROP NOT NULL, ALTER COLUMN %[6]s DROP DEFAULT;
  END IF;
END $pgcloak$;
`, quoteLiteral(table), quoteLiteral(c.Name), quoteLiteral(plain), table, ident(c.Name), ident(plain))
	}
	fmt.Fprint(w, "\n-- The encrypted columns, as \"pgcloak schema\" prints them.")
	writeTableSchema(w, t)
	fmt.Fprintf(w, `
-- A write of a declared column through pgcloak makes its plaintext
-- obsolete: clear it, so that encrypt-existing never puts the older value
-- back. TG_ARGV[0] names the plaintext column.
CREATE OR REPLACE FUNCTION %s() RETURNS trigger
LANGUAGE plpgsql AS $pgcloak$
BEGIN
  NEW := jsonb_populate_record(NEW, jsonb_build_object(TG_ARGV[0], NULL));
  RETURN NEW;
END $pgcloak$;
`, fn)
	for _, c := range t.Columns {
		plain := migrate.PlaintextColumn(c.Name, suffix)
		trigger := ident(constraintName(t.Name, c.Name, "pgcloak_clear"))
		fmt.Fprintf(w, `DO $pgcloak$ BEGIN
  IF EXISTS (SELECT 1 FROM pg_catalog.pg_attribute
             WHERE attrelid = %[1]s::regclass AND attname = %[2]s AND NOT attisdropped) THEN
    DROP TRIGGER IF EXISTS %[3]s ON %[4]s;
    CREATE TRIGGER %[3]s BEFORE UPDATE OF %[5]s ON %[4]s
      FOR EACH ROW EXECUTE FUNCTION %[6]s(%[2]s);
  END IF;
END $pgcloak$;
`, quoteLiteral(table), quoteLiteral(plain), trigger, table, ident(c.Name), fn)
	}
	fmt.Fprintln(w, "\nCOMMIT;")
}

// writeFinish prints step 3 for table t: refuse while plaintext is left,
// else drop the triggers, the function and the plaintext columns.
func writeFinish(w io.Writer, cfg *config.Config, t config.Table, suffix string) {
	table := pgx.Identifier{t.Schema, t.Name}.Sanitize()
	var plains []string
	for _, c := range t.Columns {
		plains = append(plains, quoteLiteral(migrate.PlaintextColumn(c.Name, suffix)))
	}
	fmt.Fprintf(w, `-- Step 3 of encrypting the existing plaintext of %[1]s (declared in %[2]s),
-- printed by "pgcloak encrypt-existing --print-finish". Run it as the
-- table's owner. It refuses while any plaintext is left.
BEGIN;
SET LOCAL row_security = off;

DO $pgcloak$
DECLARE
  col text;
  left_over boolean;
BEGIN
  FOREACH col IN ARRAY ARRAY[%[3]s] LOOP
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_attribute
               WHERE attrelid = %[4]s::regclass AND attname = col AND NOT attisdropped) THEN
      EXECUTE format('SELECT EXISTS (SELECT 1 FROM %%s WHERE %%I IS NOT NULL)', %[4]s::regclass, col) INTO left_over;
      IF left_over THEN
        RAISE EXCEPTION 'pgcloak: %%.%% still holds plaintext; run pgcloak encrypt-existing (again) first', %[4]s, col;
      END IF;
    END IF;
  END LOOP;
END $pgcloak$;

`, t.QualifiedName(), cfg.File, strings.Join(plains, ", "), quoteLiteral(table))
	for _, c := range t.Columns {
		fmt.Fprintf(w, "DROP TRIGGER IF EXISTS %s ON %s;\n", ident(constraintName(t.Name, c.Name, "pgcloak_clear")), table)
	}
	fmt.Fprintf(w, "DROP FUNCTION IF EXISTS %s();\n", pgx.Identifier{t.Schema, clearFunction(t)}.Sanitize())
	for _, c := range t.Columns {
		fmt.Fprintf(w, "ALTER TABLE %s DROP COLUMN IF EXISTS %s;\n", table, ident(migrate.PlaintextColumn(c.Name, suffix)))
	}
	fmt.Fprint(w, `
COMMIT;
-- Dropped columns stay in the table's files until the table is rewritten
-- (VACUUM FULL, pg_repack), and in WAL and backups taken before: treat
-- those as holding plaintext until they expire.
`)
}

// clearFunction is the name of t's trigger function, in t's schema.
func clearFunction(t config.Table) string {
	return constraintName("pgcloak_"+t.Name, "clear", "plaintext")
}
