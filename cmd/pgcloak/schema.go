package main

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/pgcloak/pgcloak/config"
	"github.com/pgcloak/pgcloak/keystore"
	"github.com/spf13/cobra"
)

func newSchemaCmd() *cobra.Command {
	var (
		path         string
		withKeystore bool
	)
	cmd := &cobra.Command{
		Use:   "schema -c FILE",
		Short: "Print the DDL for the declared encrypted columns",
		Long: `Print SQL that prepares the tables declared in FILE's encrypt.tables:

  - every declared column and every index column is added as bytea
    (ADD COLUMN IF NOT EXISTS; an existing column is left as it is);
  - an index on every index column, for WHERE col = ... lookups;
  - a CHECK constraint on every declared column that admits only NULL or a
    value in pgcloak's format (format byte 1, a key version from 1 to
    2^31-1, at least 33 bytes in all), and on every index column one that
    admits only NULL or 16 bytes, so that plaintext written around the
    proxy is rejected by PostgreSQL. serve refuses to start without them
    (unless encrypt.require_format_checks is false). A CHECK sees the shape
    of a value, not its origin: it stops accidents, not a forger, since any
    value with that header and length passes.

The script runs in one transaction and is idempotent: running it again, or
after declaring more columns, adds only what is missing. A constraint of
pgcloak's name with another definition (such as the looser one of earlier
versions, which did not check the key version) is replaced, and the table
scanned once to validate it. Run it as the tables' owner, e.g.
  pgcloak schema -c pgcloak.yaml | psql "$DATABASE_URL"

With --keystore it also prints the DDL of pgcloak.data_keys, where the proxy
keeps the tenants' wrapped data keys, and the grants upstream.user needs on
it: for when upstream.user may not create schemas itself.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			// It only prints: the upstream password need not be set.
			cfg, err := config.Load(path, config.WithoutSecrets())
			if err != nil {
				return &exitError{code: exitFailure, err: err}
			}
			writeSchema(cmd.OutOrStdout(), cfg, withKeystore)
			return nil
		},
	}
	configFlag(cmd, &path)
	cmd.Flags().BoolVar(&withKeystore, "keystore", false, "also print the key store's DDL and grants for upstream.user")
	return cmd
}

// writeSchema prints the DDL for cfg's declared tables.
func writeSchema(w io.Writer, cfg *config.Config, withKeystore bool) {
	fmt.Fprintf(w, "-- DDL for the encrypted columns declared in %s, printed by \"pgcloak schema\".\n", cfg.File)
	fmt.Fprintln(w, "-- Idempotent: run it as the tables' owner; running it again adds only what is missing\n-- and replaces a pgcloak format CHECK whose definition differs (an earlier, looser one).")
	if len(cfg.Encrypt.Tables) == 0 {
		fmt.Fprintln(w, "-- encrypt.tables declares no tables: nothing to do.")
	} else {
		fmt.Fprintln(w, "BEGIN;")
		for _, t := range cfg.Encrypt.Tables {
			writeTableSchema(w, t)
		}
		fmt.Fprintln(w, "\nCOMMIT;")
	}
	if withKeystore {
		fmt.Fprintln(w, "\n-- The key store: the proxy creates it itself when upstream.user may.")
		fmt.Fprint(w, keystore.Schema)
		user := pgx.Identifier{cfg.Upstream.User}.Sanitize()
		fmt.Fprintf(w, "\nGRANT USAGE, CREATE ON SCHEMA %s TO %s;\n", keystore.SchemaName, user)
		fmt.Fprintf(w, "GRANT USAGE ON SCHEMA %s TO PUBLIC; -- tenant roles call pgcloak.current_tenant()\n", keystore.SchemaName)
		fmt.Fprintf(w, "GRANT SELECT, INSERT, UPDATE ON %s TO %s;\n", keystore.TableName, user)
		fmt.Fprintln(w, "\n-- The verified tenant pin: pgcloak.current_tenant() for row-level security.")
		fmt.Fprintln(w, "-- upstream.user must own it (it reads the pin key), hence SET ROLE.")
		fmt.Fprintf(w, "SET ROLE %s;\n", user)
		fmt.Fprint(w, keystore.PinSchema(cfg.Tenancy.Setting))
		fmt.Fprintln(w, "RESET ROLE;")
	}
}

func writeTableSchema(w io.Writer, t config.Table) {
	table := pgx.Identifier{t.Schema, t.Name}.Sanitize()
	fmt.Fprintf(w, "\n-- %s\n", t.QualifiedName())
	for _, c := range t.Columns {
		fmt.Fprintf(w, "ALTER TABLE %s ADD COLUMN IF NOT EXISTS %s bytea;\n", table, ident(c.Name))
		if c.IndexColumn != "" {
			fmt.Fprintf(w, "ALTER TABLE %s ADD COLUMN IF NOT EXISTS %s bytea;\n", table, ident(c.IndexColumn))
		}
	}
	for _, f := range formatChecks(t) {
		writeCheck(w, f)
	}
	for _, c := range t.Columns {
		if c.IndexColumn != "" {
			fmt.Fprintf(w, "CREATE INDEX IF NOT EXISTS %s ON %s (%s);\n", ident(constraintName(t.Name, c.IndexColumn, "idx")), table, ident(c.IndexColumn))
		}
	}
}

// writeCheck adds f's constraint unless the table already has it with
// that definition, validated. A constraint of that name with another
// definition (the looser one of earlier versions, or anything else) is
// replaced. ADD CONSTRAINT has no IF NOT EXISTS, and comparing the
// definition needs PostgreSQL's own text of it: the new constraint is added
// NOT VALID under a temporary name (no scan), its pg_get_constraintdef
// compared with the existing one's, and then either dropped again or
// renamed into place and validated, which scans the table once.
func writeCheck(w io.Writer, f formatCheck) {
	table := pgx.Identifier{f.table.Schema, f.table.Name}.Sanitize()
	next := constraintName(f.table.Name, f.column, "pgcloak_next")
	fmt.Fprintf(w, `DO $pgcloak$
DECLARE
  want text;
  have text;
  valid boolean;
BEGIN
  ALTER TABLE %[1]s ADD CONSTRAINT %[2]s CHECK (%[3]s) NOT VALID;
  SELECT pg_catalog.pg_get_constraintdef(oid) INTO want FROM pg_catalog.pg_constraint
   WHERE conrelid = %[4]s::regclass AND conname = %[5]s;
  SELECT pg_catalog.pg_get_constraintdef(oid), convalidated INTO have, valid FROM pg_catalog.pg_constraint
   WHERE conrelid = %[4]s::regclass AND conname = %[6]s;
  IF have IS NOT NULL AND pg_catalog.regexp_replace(have, ' NOT VALID$', '') || ' NOT VALID' = want THEN
    ALTER TABLE %[1]s DROP CONSTRAINT %[2]s;
    IF NOT valid THEN
      ALTER TABLE %[1]s VALIDATE CONSTRAINT %[7]s;
    END IF;
  ELSE
    IF have IS NOT NULL THEN
      ALTER TABLE %[1]s DROP CONSTRAINT %[7]s;
    END IF;
    ALTER TABLE %[1]s RENAME CONSTRAINT %[2]s TO %[7]s;
    ALTER TABLE %[1]s VALIDATE CONSTRAINT %[7]s;
  END IF;
END $pgcloak$;
`, table, ident(next), f.expr(), quoteLiteral(table), quoteLiteral(next), quoteLiteral(f.name()), ident(f.name()))
}

// constraintName is table_column_suffix, shortened with a hash when it
// would exceed PostgreSQL's 63-byte identifiers (which it would silently
// truncate, defeating the existence check).
func constraintName(table, column, suffix string) string {
	name := table + "_" + column + "_" + suffix
	const max = 63
	if len(name) <= max {
		return name
	}
	sum := sha256.Sum256([]byte(name))
	h := hex.EncodeToString(sum[:4])
	keep := max - len(suffix) - len(h) - 2
	return name[:keep] + "_" + h + "_" + suffix
}

func ident(name string) string { return pgx.Identifier{name}.Sanitize() }

// quoteLiteral quotes s as an SQL string literal.
func quoteLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }
