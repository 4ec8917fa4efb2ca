package main

import (
	"context"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/pgcloak/pgcloak/config"
	"github.com/pgcloak/pgcloak/keystore"
	"github.com/pgcloak/pgcloak/tenanttoken"
)

// currentTenant is the function row-level security policies should read:
// the verified tenant pin (SPEC §5.3).
const currentTenant = "pgcloak.current_tenant()"

// checkUpstreamUser fails a configuration under which a client session
// could run as upstream.user: it owns the tenant pin's key, so such a
// session could pin any tenant. The proxy refuses that login (28000);
// check says so before anyone tries. That covers a role mapped by
// tenancy.login.roles, matched by tenancy.token_roles or
// tenancy.unscoped_roles, and tenancy.jwt.upstream_user, as which every
// mode-jwt session runs.
func checkUpstreamUser(cfg *config.Config, c *checker) {
	up := cfg.Upstream.User
	what := "upstream.user " + up
	const why = "no client session may run as upstream.user, which owns the tenant pin's key (pgcloak refuses its login with 28000)"
	t := cfg.Tenancy
	ok := true
	if tenant, mapped := t.TenantForRole(up); mapped {
		c.line(levelFail, what, "tenancy.login.roles maps it to tenant "+tenant+": "+why+"; map another role")
		ok = false
	}
	for _, p := range t.TokenRoles {
		if (config.Tenancy{TokenRoles: []string{p}}).IsTokenRole(up) {
			c.line(levelFail, what, fmt.Sprintf("tenancy.token_roles entry %q matches it: %s; give the application's pool another role", p, why))
			ok = false
		}
	}
	for _, p := range t.UnscopedRoles {
		if tenancyMatch(p, up) {
			c.line(levelFail, what, fmt.Sprintf("tenancy.unscoped_roles entry %q matches it: %s", p, why))
			ok = false
		}
	}
	if ju := t.JWT.UpstreamUser; ju != "" && ju == up {
		c.line(levelFail, what, "tenancy.jwt.upstream_user names it: mode-jwt sessions would run as upstream.user, which owns the tenant pin's key; use an ordinary role")
		ok = false
	}
	switch {
	case !ok:
	case len(t.TokenRoles) > 0 || t.JWT.UpstreamUser != "":
		c.line(levelOK, what, "is not a tenant, token, unscoped or jwt.upstream_user role")
	case len(t.Login.Roles) > 0 || len(t.UnscopedRoles) > 0:
		c.line(levelOK, what, "is not a tenant or unscoped role")
	}
}

// tenancyMatch reports whether unscoped_roles pattern p alone matches role.
func tenancyMatch(p, role string) bool {
	return config.Tenancy{UnscopedRoles: []string{p}}.IsUnscoped(role)
}

// tokenCheckTimeout bounds the JWKS fetch of checkTenantTokens.
const tokenCheckTimeout = 15 * time.Second

// checkTenantTokens loads the key serve verifies tenant tokens with, when
// token roles or mode jwt need one: it builds the verifier serve builds, so
// a key file that does not load, a key that does not fit tenancy.jwt
// .algorithms or a JWKS that cannot be fetched fails here rather than at
// the first login.
func checkTenantTokens(ctx context.Context, cfg *config.Config, c *checker) {
	t := cfg.Tenancy
	if len(t.TokenRoles) == 0 && t.Mode != config.ModeJWT {
		return
	}
	const what = "tenant tokens"
	j := t.JWT
	var key string
	switch {
	case j.HS256Secret != "":
		key = "tenancy.jwt.hs256_secret"
	case j.PublicKeyFile != "":
		key = "public key " + j.PublicKeyFile + " loads"
	default:
		key = "key set " + j.JWKSURL + " fetched"
	}
	ctx, cancel := context.WithTimeout(ctx, tokenCheckTimeout)
	defer cancel()
	v, err := tenanttoken.New(ctx, j)
	if err != nil {
		c.line(levelFail, what, err.Error()+" (serve verifies tenant tokens with it)")
		return
	}
	defer v.Close()
	c.line(levelOK, what, fmt.Sprintf("%s (alg %s; tenant from claim %s)", key, strings.Join(v.Algorithms(), ", "), j.Claim))
}

// settingRE matches a call of current_setting on the tenant setting, as
// pg_get_expr prints it: current_setting('app.tenant_id'::text, true).
// Setting names are case-insensitive.
func settingRE(setting string) *regexp.Regexp {
	return regexp.MustCompile(`(?i)current_setting\(\s*'` + regexp.QuoteMeta(setting) + `'`)
}

// anySettingRE matches a call of current_setting on any setting.
var anySettingRE = regexp.MustCompile(`(?i)current_setting\(`)

// policy is one row-level security policy of a table.
type policy struct {
	name       string
	permissive bool
	text       string // USING and WITH CHECK, as pg_get_expr prints them
	pinned     bool   // depends on pgcloak.current_tenant()
}

// tablePolicies reads the policies of table oid. A policy that calls
// pgcloak.current_tenant() is found by its recorded dependency on the
// function (PostgreSQL records one for every function a policy's
// expressions call), not by its text.
func tablePolicies(ctx context.Context, conn *pgx.Conn, oid uint32) ([]policy, error) {
	rows, err := conn.Query(ctx, `
		SELECT pol.polname, pol.polpermissive,
		       coalesce(pg_catalog.pg_get_expr(pol.polqual, pol.polrelid), '') || ' ' ||
		       coalesce(pg_catalog.pg_get_expr(pol.polwithcheck, pol.polrelid), ''),
		       EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
		               WHERE d.classid = 'pg_catalog.pg_policy'::pg_catalog.regclass AND d.objid = pol.oid
		                 AND d.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass
		                 AND d.refobjid = pg_catalog.to_regprocedure($2))
		FROM pg_catalog.pg_policy pol
		WHERE pol.polrelid = $1
		ORDER BY pol.polname`, oid, currentTenant)
	if err != nil {
		return nil, err
	}
	var out []policy
	var p policy
	_, err = pgx.ForEachRow(rows, []any{&p.name, &p.permissive, &p.text, &p.pinned}, func() error {
		out = append(out, p)
		return nil
	})
	return out, err
}

// checkPolicies reports whether the declared table's policies isolate
// tenants by pgcloak.current_tenant(). A policy that reads the bare tenant
// setting fails: SQL the proxy never reads (a DO block, a function, a role
// default) can set it, and the policy then shows another tenant's rows. A
// policy that reads another setting is a warning for the same reason, as
// is a permissive policy that does not call the function while another
// does (permissive policies are ORed), and a table with none that does.
func checkPolicies(ctx context.Context, conn *pgx.Conn, oid uint32, what, setting string, rls tableRLS, c *checker) error {
	pols, err := tablePolicies(ctx, conn, oid)
	if err != nil {
		return err
	}
	bare := settingRE(setting)
	var pinned, open []string
	for _, p := range pols {
		pw := what + " policy " + p.name
		switch {
		case bare.MatchString(p.text):
			c.line(levelFail, pw, "reads the bare setting (current_setting('"+setting+"')), which SQL in a session can change; read "+currentTenant+" instead: USING (tenant_id = "+currentTenant+")")
		case anySettingRE.MatchString(p.text):
			c.line(levelWarn, pw, "reads a setting with current_setting(), which SQL in a session can change; isolate tenants by "+currentTenant)
		case p.pinned:
			pinned = append(pinned, p.name)
		case p.permissive:
			open = append(open, p.name)
		}
	}
	switch {
	case len(pinned) == 0 && len(pols) == 0 && rls.enabled:
		c.line(levelWarn, what+" policies", "none: row-level security hides every row from roles that do not bypass it; add USING (tenant_id = "+currentTenant+")")
	case len(pinned) == 0:
		c.line(levelWarn, what+" policies", "none calls "+currentTenant+": rows are not isolated by the tenant pgcloak pinned (CREATE POLICY ... USING (tenant_id = "+currentTenant+"))")
	default:
		c.line(levelOK, what+" policies", "use "+currentTenant+" ("+strings.Join(pinned, ", ")+")")
		for _, name := range open {
			c.line(levelWarn, what+" policy "+name, "permissive and does not call "+currentTenant+": permissive policies are ORed, so it may show rows of other tenants (make it AS RESTRICTIVE, or drop it)")
		}
	}

	// The tenant column's default: a default that reads the bare setting
	// lets SQL that changed the setting insert rows for another tenant,
	// when WITH CHECK does not stop it.
	rows, err := conn.Query(ctx, `
		SELECT a.attname, pg_catalog.pg_get_expr(d.adbin, d.adrelid)
		FROM pg_catalog.pg_attrdef d
		JOIN pg_catalog.pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum
		WHERE d.adrelid = $1 AND NOT a.attisdropped
		ORDER BY a.attnum`, oid)
	if err != nil {
		return err
	}
	var col, def string
	_, err = pgx.ForEachRow(rows, []any{&col, &def}, func() error {
		if bare.MatchString(def) {
			c.line(levelWarn, what+" column "+col, "its default reads the bare setting (current_setting('"+setting+"')); use DEFAULT "+currentTenant)
		}
		return nil
	})
	return err
}

// checkOtherPolicies warns for every table pgcloak does not declare whose
// policies read the bare tenant setting: they isolate nothing against SQL
// that changes it.
func checkOtherPolicies(ctx context.Context, conn *pgx.Conn, cfg *config.Config, c *checker) error {
	setting := cfg.Tenancy.Setting
	rows, err := conn.Query(ctx, `
		SELECT n.nspname, cl.relname, pol.polname,
		       coalesce(pg_catalog.pg_get_expr(pol.polqual, pol.polrelid), '') || ' ' ||
		       coalesce(pg_catalog.pg_get_expr(pol.polwithcheck, pol.polrelid), '')
		FROM pg_catalog.pg_policy pol
		JOIN pg_catalog.pg_class cl ON cl.oid = pol.polrelid
		JOIN pg_catalog.pg_namespace n ON n.oid = cl.relnamespace
		WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
		ORDER BY 1, 2, 3`)
	if err != nil {
		return err
	}
	bare := settingRE(setting)
	var schema, table, name, text string
	_, err = pgx.ForEachRow(rows, []any{&schema, &table, &name, &text}, func() error {
		if _, declared := cfg.Encrypt.Table(schema, table); declared || !bare.MatchString(text) {
			return nil
		}
		c.line(levelWarn, fmt.Sprintf("table %s.%s policy %s", schema, table, name),
			"not declared, reads the bare setting (current_setting('"+setting+"')), which SQL in a session can change; read "+currentTenant+" instead")
		return nil
	})
	return err
}

// maxListed is how many objects a line names before "and N more".
const maxListed = 5

// listed joins names, at most maxListed of them.
func listed(names []string) string {
	if len(names) <= maxListed {
		return strings.Join(names, ", ")
	}
	return fmt.Sprintf("%s and %d more", strings.Join(names[:maxListed], ", "), len(names)-maxListed)
}

// C functions are listed by name instead: tablefunc's crosstab and
// connectby and dblink's functions run SQL text they are given or build.
//
// dynamicSQLPattern is the text heuristic for a function body that runs
// SQL it assembles at run time, matched against pg_proc.prosrc of
// functions not written in C or internal: the word EXECUTE (PL/pgSQL's
// EXECUTE, SQL's EXECUTE of a prepared statement, PL/Python's
// plpy.execute, PL/Perl's spi_exec_query does not match and is not
// caught) or a call of set_config. A body that merely mentions the word
// in a comment is reported too; one that builds SQL some other way is
// not.
const dynamicSQLPattern = `\m(execute|set_config)\M`

// tokenSwitched reports whether a checked role's sessions change tenant by
// tenant token (a token role, or the upstream role of mode jwt).
func tokenSwitched(label string) bool {
	return strings.Contains(label, "token role") || strings.Contains(label, "jwt.upstream_user")
}

// checkTenantRoles warns when a tenant role may do what lets SQL the proxy
// never reads run with the tenant's session (SPEC §5.4): create objects
// (CREATE on a schema, TEMP on the database), execute a SECURITY DEFINER
// function, or execute a function whose body runs dynamic SQL. Functions
// in pg_catalog, information_schema and pgcloak's own schema are not
// listed. Reading pgcloak's pin key fails: with it a session can pin any
// tenant.
func checkTenantRoles(ctx context.Context, conn *pgx.Conn, roles []checkedRole, c *checker) error {
	for _, r := range roles {
		if !r.tenant {
			continue
		}
		what := "role " + r.name + " (" + r.label + ")"
		var (
			exists     bool
			schemas    []string
			temp       bool
			definers   []string
			dynamic    []string
			readsPin   bool
			database   string
			pinKeyName = keystore.SchemaName + ".pin_key"
		)
		err := conn.QueryRow(ctx, `
			SELECT true, pg_catalog.current_database(),
			  ARRAY(SELECT pg_catalog.quote_ident(nspname) FROM pg_catalog.pg_namespace
			        WHERE nspname !~ '^pg_(toast|temp_)' AND pg_catalog.has_schema_privilege($1, oid, 'CREATE')
			        ORDER BY nspname),
			  pg_catalog.has_database_privilege($1, pg_catalog.current_database(), 'TEMP'),
			  ARRAY(SELECT p.oid::pg_catalog.regprocedure::text FROM pg_catalog.pg_proc p
			        JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
			        WHERE p.prosecdef AND n.nspname NOT IN ('pg_catalog', 'information_schema', $2)
			          AND pg_catalog.has_schema_privilege($1, n.oid, 'USAGE')
			          AND pg_catalog.has_function_privilege($1, p.oid, 'EXECUTE')
			        ORDER BY 1),
			  ARRAY(SELECT p.oid::pg_catalog.regprocedure::text FROM pg_catalog.pg_proc p
			        JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
			        JOIN pg_catalog.pg_language l ON l.oid = p.prolang
			        WHERE ((l.lanname NOT IN ('c', 'internal') AND p.prosrc ~* $3)
			               OR (l.lanname = 'c' AND p.proname ~ '^(crosstab[234]?|connectby|dblink.*)$'))
			          AND n.nspname NOT IN ('pg_catalog', 'information_schema', $2)
			          AND pg_catalog.has_schema_privilege($1, n.oid, 'USAGE')
			          AND pg_catalog.has_function_privilege($1, p.oid, 'EXECUTE')
			        ORDER BY 1),
			  coalesce(pg_catalog.to_regclass($4) IS NOT NULL
			           AND pg_catalog.has_table_privilege($1, pg_catalog.to_regclass($4), 'SELECT'), false)
			FROM pg_catalog.pg_roles WHERE rolname = $1`,
			r.name, keystore.SchemaName, dynamicSQLPattern, pinKeyName).
			Scan(&exists, &database, &schemas, &temp, &definers, &dynamic, &readsPin)
		if err == pgx.ErrNoRows {
			continue // reported with each table, or nothing to check
		}
		if err != nil {
			return err
		}
		clean := true
		if readsPin {
			c.line(levelFail, what, "may read "+pinKeyName+": a session as this role could pin any tenant (REVOKE ALL ON "+pinKeyName+" FROM "+ident(r.name)+")")
			clean = false
		}
		var creates []string
		if len(schemas) > 0 {
			creates = append(creates, "CREATE on schema "+listed(schemas))
		}
		if temp {
			creates = append(creates, "TEMP on database "+database)
		}
		if len(creates) > 0 {
			c.line(levelWarn, what, "may create objects ("+strings.Join(creates, "; ")+"): functions, views, rules or triggers whose SQL pgcloak never reads (REVOKE CREATE ON SCHEMA ...; REVOKE TEMP ON DATABASE ... FROM PUBLIC and the role)")
			clean = false
		}
		if temp && tokenSwitched(r.label) {
			c.line(levelWarn, what, "may create temporary tables (TEMP on database "+database+"): one made under a tenant token stays on the connection after the token's transaction, readable by the next tenant's; pgcloak refuses CREATE TEMPORARY TABLE and WITH HOLD where it reads them, REVOKE TEMP ON DATABASE "+ident(database)+" FROM PUBLIC, "+ident(r.name)+" makes PostgreSQL refuse the rest")
		}
		if len(definers) > 0 {
			c.line(levelWarn, what, "may execute SECURITY DEFINER functions, which run as their owner: "+listed(definers))
			clean = false
		}
		if len(dynamic) > 0 {
			c.line(levelWarn, what, "may execute functions whose body runs dynamic SQL (EXECUTE or set_config, by a text search of the body; or a C function of tablefunc or dblink): "+listed(dynamic))
			clean = false
		}
		if clean {
			c.line(levelOK, what, "creates no objects, executes no SECURITY DEFINER function (but pgcloak's) or dynamic SQL that check could find")
		}
	}
	return nil
}
