package main

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/pgcloak/pgcloak/config"
	"github.com/pgcloak/pgcloak/crypto"
	"github.com/pgcloak/pgcloak/keystore"
	"github.com/spf13/cobra"
)

// minSealedSize is the shortest value in pgcloak's format: the format byte,
// the key version (uint32), the nonce and the AES-GCM tag around an empty
// plaintext (1 + 4 + 12 + 16 = 33 bytes).
const minSealedSize = 1 + 4 + crypto.NonceSize + crypto.TagSize

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
    value in pgcloak's format (format byte 1, at least 33 bytes), and on
    every index column one that admits only NULL or 16 bytes, so that
    plaintext written around the proxy is rejected by PostgreSQL.

The script runs in one transaction and is idempotent: running it again, or
after declaring more columns, adds only what is missing. Run it as the
tables' owner, e.g.  pgcloak schema -c pgcloak.yaml | psql "$DATABASE_URL"

With --keystore it also prints the DDL of pgcloak.data_keys, where the proxy
keeps the tenants' wrapped data keys, and the grants upstream.user needs on
it: for when upstream.user may not create schemas itself.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := config.Load(path)
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
	fmt.Fprintln(w, "-- Idempotent: run it as the tables' owner; running it again adds only what is missing.")
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
		fmt.Fprintf(w, "\nGRANT USAGE ON SCHEMA %s TO %s;\n", keystore.SchemaName, user)
		fmt.Fprintf(w, "GRANT SELECT, INSERT, UPDATE ON %s TO %s;\n", keystore.TableName, user)
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
	for _, c := range t.Columns {
		col := ident(c.Name)
		writeCheck(w, t, constraintName(t.Name, c.Name, "pgcloak_format"),
			fmt.Sprintf("%s IS NULL OR (length(%s) >= %d AND get_byte(%s, 0) = %d)", col, col, minSealedSize, col, crypto.FormatV1))
		if c.IndexColumn != "" {
			idx := ident(c.IndexColumn)
			writeCheck(w, t, constraintName(t.Name, c.IndexColumn, "pgcloak_format"),
				fmt.Sprintf("%s IS NULL OR length(%s) = %d", idx, idx, crypto.BlindIndexSize))
		}
	}
	for _, c := range t.Columns {
		if c.IndexColumn != "" {
			fmt.Fprintf(w, "CREATE INDEX IF NOT EXISTS %s ON %s (%s);\n", ident(constraintName(t.Name, c.IndexColumn, "idx")), table, ident(c.IndexColumn))
		}
	}
}

// writeCheck adds a CHECK constraint unless the table already has one of
// that name. (ADD CONSTRAINT has no IF NOT EXISTS; dropping and re-adding
// would re-validate the whole table under an exclusive lock on every run.)
func writeCheck(w io.Writer, t config.Table, name, expr string) {
	table := pgx.Identifier{t.Schema, t.Name}.Sanitize()
	fmt.Fprintf(w, `DO $pgcloak$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint
                 WHERE conrelid = %s::regclass AND conname = %s) THEN
    ALTER TABLE %s ADD CONSTRAINT %s CHECK (%s);
  END IF;
END $pgcloak$;
`, quoteLiteral(table), quoteLiteral(name), table, ident(name), expr)
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
