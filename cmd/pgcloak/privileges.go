package main

import (
	"context"
	"fmt"
	"regexp"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/pgcloak/pgcloak/config"
	"github.com/pgcloak/pgcloak/migrate"
)

// What the commands need on a declared table, as the role they run as.
//
// serve's own login (upstream.user) reads only the catalog and the pgcloak
// schema; client sessions run as their own roles (tenant login roles, token
// roles, tenancy.jwt.upstream_user), which need what the application runs.
// reencrypt and encrypt-existing run as upstream.user: each batch is a
// SELECT of the rows still to do (key, tenant column and declared columns)
// and a compare-and-set UPDATE of the declared and index columns (and, in
// encrypt-existing, of the plaintext column it clears). Neither alters the
// table: encrypt-existing's --print-prepare and --print-finish print SQL
// that the table's owner runs with psql.
var (
	// migrationPrivileges are what reencrypt and encrypt-existing need.
	migrationPrivileges = []string{"SELECT", "UPDATE"}
	// sessionPrivileges are what an application's sessions usually need;
	// check only warns when a tenant's role lacks one.
	sessionPrivileges = []string{"SELECT", "INSERT", "UPDATE", "DELETE"}
)

// migrationCommands names the commands that need migrationPrivileges.
const migrationCommands = "pgcloak reencrypt and pgcloak encrypt-existing"

// missingPrivilegesSQL returns those of the privileges $3 that role $1
// lacks on table $2: neither on the table nor (SELECT, INSERT and UPDATE,
// which can be granted per column) on every column that needs it. SELECT
// is needed on the columns $4 (the declared and index columns and the
// tenant column) and the primary key; INSERT and UPDATE on the columns $5
// (the declared and index columns). Columns that do not exist are left
// out (check reports them on their own line).
const missingPrivilegesSQL = `
SELECT p
FROM pg_catalog.unnest($3::text[]) WITH ORDINALITY AS u(p, n)
WHERE NOT pg_catalog.has_table_privilege($1, $2::pg_catalog.oid, p)
  AND NOT (p IN ('SELECT', 'INSERT', 'UPDATE') AND coalesce((
    SELECT pg_catalog.bool_and(pg_catalog.has_column_privilege($1, $2::pg_catalog.oid, a.attnum, p))
    FROM pg_catalog.pg_attribute a
    WHERE a.attrelid = $2::pg_catalog.oid AND a.attnum > 0 AND NOT a.attisdropped
      AND (a.attname = ANY (CASE WHEN p = 'SELECT' THEN $4::text[] ELSE $5::text[] END)
           OR (p = 'SELECT' AND a.attnum = ANY (coalesce((
                 SELECT i.indkey::pg_catalog.int2[] FROM pg_catalog.pg_index i
                 WHERE i.indrelid = $2::pg_catalog.oid AND i.indisprimary), '{}'))))
  ), false))
ORDER BY n`

// queryRower is what missingPrivileges needs of a connection or pool.
type queryRower interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// missingPrivileges returns which of privs role lacks on the declared
// table t (whose oid is oid), as missingPrivilegesSQL decides.
func missingPrivileges(ctx context.Context, q queryRower, role string, oid uint32, t config.Table, tenantColumn string, privs []string) ([]string, error) {
	var written []string
	for _, c := range t.Columns {
		written = append(written, c.Name)
		if c.IndexColumn != "" {
			written = append(written, c.IndexColumn)
		}
	}
	read := append([]string{tenantColumn}, written...)
	rows, err := q.Query(ctx, missingPrivilegesSQL, role, oid, privs, read, written)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

// grantSQL is the GRANT that gives role privs on t.
func grantSQL(privs []string, t config.Table, role string) string {
	return fmt.Sprintf("GRANT %s ON %s TO %s", strings.Join(privs, ", "), t.QualifiedName(), sqlName(role))
}

var plainName = regexp.MustCompile(`^[a-z_][a-z0-9_]*$`)

// sqlName quotes a role name for SQL meant to be read and pasted, only
// when it needs quoting.
func sqlName(s string) string {
	if plainName.MatchString(s) {
		return s
	}
	return ident(s)
}

// checkTablePrivileges reports, for declared table t, whether upstream.user
// has what reencrypt and encrypt-existing need (a missing one fails) and
// whether each existing tenant role has what sessions usually need (a
// missing one warns: which the application uses is its own business).
func checkTablePrivileges(ctx context.Context, conn *pgx.Conn, oid uint32, t config.Table, roles []checkedRole, facts map[string]roleFacts, c *checker) error {
	what := "table " + t.QualifiedName()
	for i, r := range roles {
		if !facts[r.name].exists {
			continue // reported by the RLS lines
		}
		if i == 0 { // checkedRoles puts upstream.user first
			missing, err := missingPrivileges(ctx, conn, r.name, oid, t, migrate.DefaultTenantColumn, migrationPrivileges)
			if err != nil {
				return err
			}
			w := what + " privileges of upstream.user " + r.name
			if len(missing) == 0 {
				c.line(levelOK, w, strings.Join(migrationPrivileges, ", ")+" ("+migrationCommands+" need them)")
			}
			for _, p := range missing {
				c.line(levelFail, w, fmt.Sprintf("lacks %s, which %s need (%s); as the table's owner run: %s",
					p, migrationCommands, migrationWhy[p], grantSQL(missing, t, r.name)))
			}
		}
		if !r.tenant {
			continue
		}
		missing, err := missingPrivileges(ctx, conn, r.name, oid, t, migrate.DefaultTenantColumn, sessionPrivileges)
		if err != nil {
			return err
		}
		w := what + " privileges of role " + r.name + " (" + r.label + ")"
		if len(missing) == 0 {
			c.line(levelOK, w, strings.Join(sessionPrivileges, ", "))
			continue
		}
		c.line(levelWarn, w, fmt.Sprintf("lacks %s: its sessions through pgcloak get 42501 for them; if the application needs them, run: %s",
			strings.Join(missing, ", "), grantSQL(missing, t, r.name)))
	}
	return nil
}

// migrationWhy says what each of migrationPrivileges is for.
var migrationWhy = map[string]string{
	"SELECT": "to read the rows still to do",
	"UPDATE": "to write each row's sealed values",
}

// requireMigrationPrivileges fails, before any work, when the session's
// role (upstream.user) lacks a privilege command (reencrypt or
// encrypt-existing, reading each row's tenant from tenantColumn) needs on
// one of tables, naming the table, the privilege and the GRANT to run.
func requireMigrationPrivileges(ctx context.Context, q queryRower, command, tenantColumn string, tables []config.Table) error {
	for _, t := range tables {
		var (
			oid  *uint32
			role string
		)
		rows, err := q.Query(ctx, `SELECT pg_catalog.to_regclass(pg_catalog.quote_ident($1) || '.' || pg_catalog.quote_ident($2))::pg_catalog.oid, current_user::text`, t.Schema, t.Name)
		if err != nil {
			return err
		}
		if _, err := pgx.ForEachRow(rows, []any{&oid, &role}, func() error { return nil }); err != nil {
			return err
		}
		if oid == nil {
			return fmt.Errorf("table %s does not exist", t.QualifiedName())
		}
		missing, err := missingPrivileges(ctx, q, role, *oid, t, tenantColumn, migrationPrivileges)
		if err != nil {
			return err
		}
		if len(missing) > 0 {
			return fmt.Errorf("upstream.user %s lacks %s on %s, which %s needs (%s); as the table's owner run: %s",
				role, strings.Join(missing, " and "), t.QualifiedName(), command, migrationWhy[missing[0]], grantSQL(missing, t, role))
		}
	}
	return nil
}
