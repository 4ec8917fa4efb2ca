package main

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
	pg_query "github.com/pganalyze/pg_query_go/v5"

	"github.com/pgcloak/pgcloak/config"
	"github.com/pgcloak/pgcloak/crypto"
)

// minSealedSize is the shortest value in pgcloak's format: the format byte,
// the key version (uint32), the nonce and the AES-GCM tag around an empty
// plaintext (1 + 4 + 12 + 16 = 33 bytes).
const minSealedSize = 1 + 4 + crypto.NonceSize + crypto.TagSize

// Key versions a stored value may name: crypto starts them at 1 and the key
// store keeps them in an integer column (CHECK version >= 1), so the
// header's uint32 is at most 2^31 - 1. As the CHECK compares them, big
// endian as stored.
const (
	minVersionBytes = `\x00000001`
	maxVersionBytes = `\x7fffffff`
)

// formatCheck is the CHECK constraint "pgcloak schema" puts on one declared
// column or blind-index column so that PostgreSQL itself refuses plaintext
// written around the proxy (SPEC §4).
//
// What a CHECK can see is the shape of the bytes, not where they came
// from. A value column must hold NULL or
//
//	0x01 | key version (uint32 BE, 1 .. 2^31-1) | nonce (12) | ciphertext | tag (16)
//
// which is at least 33 bytes; an index column NULL or exactly 16 bytes.
// That stops accidents: an application, a migration or a DBA writing
// plaintext to the column directly, or through SQL the proxy never read.
// It does not stop a forger: any value that starts with byte 1 and a
// plausible version and is long enough passes, whether or not it is
// ciphertext, and any 16 bytes pass as an index. Only the proxy's open
// (AES-GCM under the tenant's key, bound to tenant, table and column)
// tells a real value from a forged one.
type formatCheck struct {
	table  config.Table
	column string
	index  bool   // a blind-index column
	of     string // for an index column, the declared column it indexes
}

// formatChecks lists the format CHECKs of table t: each declared column's,
// then its index column's.
func formatChecks(t config.Table) []formatCheck {
	var out []formatCheck
	for _, c := range t.Columns {
		out = append(out, formatCheck{table: t, column: c.Name})
		if c.IndexColumn != "" {
			out = append(out, formatCheck{table: t, column: c.IndexColumn, index: true, of: c.Name})
		}
	}
	return out
}

// name is the constraint's name: table_column_pgcloak_format.
func (f formatCheck) name() string { return constraintName(f.table.Name, f.column, "pgcloak_format") }

// where names the column for messages: schema.table.column.
func (f formatCheck) where() string { return f.table.QualifiedName() + "." + f.column }

// expr is the constraint's expression, as "pgcloak schema" prints it.
func (f formatCheck) expr() string {
	c := ident(f.column)
	if f.index {
		return fmt.Sprintf("%s IS NULL OR length(%s) = %d", c, c, crypto.BlindIndexSize)
	}
	return fmt.Sprintf(`%[1]s IS NULL OR (length(%[1]s) >= %[2]d AND get_byte(%[1]s, 0) = %[3]d AND substr(%[1]s, 2, 4) >= '%[4]s'::bytea AND substr(%[1]s, 2, 4) <= '%[5]s'::bytea)`,
		c, minSealedSize, crypto.FormatV1, minVersionBytes, maxVersionBytes)
}

// legacyExpr is the value column's expression before the key version was
// checked (pgcloak schema before issue 12), "" for an index column, whose
// CHECK has not changed.
func (f formatCheck) legacyExpr() string {
	if f.index {
		return ""
	}
	c := ident(f.column)
	return fmt.Sprintf("%s IS NULL OR (length(%s) >= %d AND get_byte(%s, 0) = %d)", c, c, minSealedSize, c, crypto.FormatV1)
}

// formatState is what the catalog says about one column's format CHECK.
type formatState int

const (
	formatOK       formatState = iota
	formatNotValid             // the right definition, NOT VALID: new writes are checked, old rows were not
	formatLegacy               // the earlier, looser definition
	formatMissing              // no CHECK with the definition (or the table or column is missing)
)

// formatStatus is one column's verdict.
type formatStatus struct {
	check      formatCheck
	state      formatState
	constraint string // the constraint found, when one was
	why        string // for formatMissing: what is missing
}

// queryer is what verifyFormatChecks needs from a connection or a pool.
type queryer interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// verifyFormatChecks reads the CHECK constraints of every declared table
// and reports, for each declared column and index column, whether one of
// them has pgcloak's format definition. The definition is compared, not
// the name: pg_get_constraintdef's text and the expected expression are
// both parsed with pg_query and deparsed, so a constraint named right but
// checking something else does not pass, and neither does one on another
// column. A constraint marked NOT VALID still refuses every new write (what
// the CHECK is for) but was not run on the rows already there; it is
// accepted and reported apart.
func verifyFormatChecks(ctx context.Context, q queryer, tables []config.Table) ([]formatStatus, error) {
	var out []formatStatus
	for _, t := range tables {
		st, err := verifyTableFormatChecks(ctx, q, t)
		if err != nil {
			return nil, fmt.Errorf("format CHECKs of %s: %w", t.QualifiedName(), err)
		}
		out = append(out, st...)
	}
	return out, nil
}

func verifyTableFormatChecks(ctx context.Context, q queryer, t config.Table) ([]formatStatus, error) {
	// One row per column of the table (none when it does not exist), with
	// the definitions of the single-column CHECKs on it.
	rows, err := q.Query(ctx, `
		SELECT a.attname, con.conname, pg_catalog.pg_get_constraintdef(con.oid), con.convalidated
		FROM pg_catalog.pg_attribute a
		LEFT JOIN pg_catalog.pg_constraint con
		  ON con.conrelid = a.attrelid AND con.contype = 'c' AND con.conkey = ARRAY[a.attnum]
		WHERE a.attrelid = pg_catalog.to_regclass(pg_catalog.quote_ident($1) || '.' || pg_catalog.quote_ident($2))
		  AND a.attnum > 0 AND NOT a.attisdropped`, t.Schema, t.Name)
	if err != nil {
		return nil, err
	}
	type found struct {
		name, def string
		valid     bool
	}
	columns := make(map[string][]found)
	var (
		col, name, def *string
		valid          *bool
	)
	if _, err := pgx.ForEachRow(rows, []any{&col, &name, &def, &valid}, func() error {
		cs := columns[*col]
		if name != nil {
			cs = append(cs, found{*name, *def, *valid})
		}
		columns[*col] = cs
		return nil
	}); err != nil {
		return nil, err
	}

	var out []formatStatus
	for _, f := range formatChecks(t) {
		s := formatStatus{check: f, state: formatMissing}
		cs, ok := columns[f.column]
		switch {
		case len(columns) == 0:
			s.why = "table " + t.QualifiedName() + " does not exist"
		case !ok:
			s.why = "column " + f.column + " does not exist"
		default:
			s.why = "no CHECK with pgcloak's format definition"
			want, err := normalizeCheck(f.expr())
			if err != nil {
				return nil, err
			}
			legacy := ""
			if e := f.legacyExpr(); e != "" {
				if legacy, err = normalizeCheck(e); err != nil {
					return nil, err
				}
			}
			for _, c := range cs {
				got, err := normalizeConstraintDef(c.def)
				if err != nil {
					continue // not a definition we could have written
				}
				var st formatState
				switch {
				case got == want && c.valid:
					st = formatOK
				case got == want:
					st = formatNotValid
				case got == legacy:
					st = formatLegacy
				default:
					continue
				}
				if st < s.state {
					s.state, s.constraint = st, c.name
				}
			}
		}
		out = append(out, s)
	}
	return out, nil
}

// normalizeConstraintDef turns pg_get_constraintdef's "CHECK (expr)" (with
// " NOT VALID" when not validated) into normalizeCheck's form. Anything else
// (NO INHERIT, another kind of constraint) is an error.
func normalizeConstraintDef(def string) (string, error) {
	def = strings.TrimSuffix(def, " NOT VALID")
	expr, ok := strings.CutPrefix(def, "CHECK ")
	if !ok || strings.HasSuffix(expr, " NO INHERIT") {
		return "", fmt.Errorf("not a plain CHECK: %q", def)
	}
	return normalizeCheck(expr)
}

// normalizeCheck parses expr as PostgreSQL would and deparses it, so that
// the text pgcloak writes and the text pg_get_constraintdef prints for it
// (with its added parentheses and casts written differently) compare
// equal, and any other expression does not.
func normalizeCheck(expr string) (string, error) {
	tree, err := pg_query.Parse("SELECT " + expr)
	if err != nil {
		return "", err
	}
	if len(tree.Stmts) != 1 || tree.Stmts[0].Stmt.GetSelectStmt() == nil || len(tree.Stmts[0].Stmt.GetSelectStmt().TargetList) != 1 {
		return "", fmt.Errorf("not one expression: %q", expr)
	}
	return pg_query.Deparse(tree)
}

// schemaCommand is the command line that adds the missing constraints.
func schemaCommand(cfg *config.Config) string {
	return fmt.Sprintf(`pgcloak schema -c %s | psql "$DATABASE_URL"`, cfg.File)
}
