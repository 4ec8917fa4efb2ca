package migrate

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcloak/pgcloak/config"
)

// SchemaError says that a declared table in the database is not in the
// shape a migration needs: missing, without a primary key, without the
// tenant column, or with a declared column that is not bytea. It names
// identities only.
type SchemaError struct {
	Table   string // schema.table
	Column  string // "" when the problem is the table's
	Problem string
}

func (e *SchemaError) Error() string {
	if e.Column == "" {
		return fmt.Sprintf("%s: %s", e.Table, e.Problem)
	}
	return fmt.Sprintf("%s.%s: %s", e.Table, e.Column, e.Problem)
}

// tableInfo is a declared table as the catalog describes it.
type tableInfo struct {
	decl   *config.Table
	name   string // schema.table: messages, and the AAD's table
	ident  string // quoted "schema"."table"
	key    []column
	tenant column
	cols   map[string]column // every live column, by name
}

// column is a column of the table: its name quoted for SQL and its type as
// format_type prints it (without typmod), for casts.
type column struct {
	name, ident, typ string
}

// inspect reads decl's table from the catalog and checks what every
// migration needs: the table exists, has a primary key and the tenant
// column (tenantColumn, already defaulted by Options.defaults), and every
// declared column and index column is bytea.
func inspect(ctx context.Context, pool *pgxpool.Pool, decl *config.Table, tenantColumn string) (*tableInfo, error) {
	t := &tableInfo{
		decl:  decl,
		name:  decl.QualifiedName(),
		ident: pgx.Identifier{decl.Schema, decl.Name}.Sanitize(),
		cols:  make(map[string]column),
	}
	var oid *uint32
	if err := pool.QueryRow(ctx, `SELECT to_regclass($1)::oid`, t.ident).Scan(&oid); err != nil {
		return nil, fmt.Errorf("%s: look up the table: %w", t.name, err)
	}
	if oid == nil {
		return nil, &SchemaError{Table: t.name, Problem: "no such table in the upstream database (or upstream.user may not see it)"}
	}
	rows, err := pool.Query(ctx, `
		SELECT attname, format_type(atttypid, NULL)
		FROM pg_catalog.pg_attribute
		WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped`, *oid)
	if err != nil {
		return nil, fmt.Errorf("%s: read columns: %w", t.name, err)
	}
	var name, typ string
	_, err = pgx.ForEachRow(rows, []any{&name, &typ}, func() error {
		t.cols[name] = column{name: name, ident: pgx.Identifier{name}.Sanitize(), typ: typ}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("%s: read columns: %w", t.name, err)
	}
	rows, err = pool.Query(ctx, `
		SELECT a.attname
		FROM pg_catalog.pg_index i
		CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
		JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
		WHERE i.indrelid = $1 AND i.indisprimary
		ORDER BY k.ord`, *oid)
	if err != nil {
		return nil, fmt.Errorf("%s: read primary key: %w", t.name, err)
	}
	_, err = pgx.ForEachRow(rows, []any{&name}, func() error {
		t.key = append(t.key, t.cols[name])
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("%s: read primary key: %w", t.name, err)
	}
	if len(t.key) == 0 {
		return nil, &SchemaError{Table: t.name, Problem: "has no primary key; rows are visited in key order and updated by key, so one is needed"}
	}

	tc, ok := t.cols[tenantColumn]
	if !ok {
		return nil, &SchemaError{Table: t.name, Column: tenantColumn, Problem: "no such column: the tenant column holds each row's tenant (name it with the tenant column option)"}
	}
	t.tenant = tc
	for _, c := range decl.Columns {
		names := []string{c.Name}
		if c.IndexColumn != "" {
			names = append(names, c.IndexColumn)
		}
		for _, n := range names {
			col, ok := t.cols[n]
			switch {
			case !ok:
				return nil, &SchemaError{Table: t.name, Column: n, Problem: "no such column: create the declared columns first (pgcloak schema)"}
			case col.typ != "bytea":
				return nil, &SchemaError{Table: t.name, Column: n, Problem: fmt.Sprintf("is %s, not bytea: encrypted values and blind indexes are stored as bytea", col.typ)}
			}
		}
	}
	for _, k := range t.key {
		for _, c := range decl.Columns {
			if k.name == c.Name || k.name == c.IndexColumn {
				return nil, &SchemaError{Table: t.name, Column: k.name, Problem: "is part of the primary key; an encrypted column cannot be"}
			}
		}
	}
	return t, nil
}

// keyList is the primary key's columns, comma-separated, for ORDER BY and
// row comparisons.
func (t *tableInfo) keyList() string {
	return t.joinKey(func(_ int, k column) string { return k.ident })
}

// keyParams is the row of parameters $first... cast from text to the key's
// types, matching keyList.
func (t *tableInfo) keyParams(first int) string {
	return t.joinKey(func(i int, k column) string { return fmt.Sprintf("$%d::text::%s", first+i, k.typ) })
}

// keyText is the select list of the key columns as text. The aliases
// matter: an output column named like a key column would be what ORDER BY
// sorts by, in text order.
func (t *tableInfo) keyText() string {
	return t.joinKey(func(i int, k column) string { return fmt.Sprintf("%s::text AS pgcloak_key_%d", k.ident, i) })
}

// joinKey is f of each key column (with its position), comma-separated.
func (t *tableInfo) joinKey(f func(i int, k column) string) string {
	s := make([]string, len(t.key))
	for i, k := range t.key {
		s[i] = f(i, k)
	}
	return strings.Join(s, ", ")
}
