package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/pgcloak/pgcloak/config"
	"github.com/pgcloak/pgcloak/crypto"
	"github.com/pgcloak/pgcloak/proxy"
	"github.com/spf13/cobra"
)

// defaultConnectTimeout applies when upstream.connect_timeout is unset.
const defaultConnectTimeout = 10 * time.Second

func newCheckCmd() *cobra.Command {
	var path string
	cmd := &cobra.Command{
		Use:   "check -c FILE",
		Short: "Validate the configuration, the upstream connection and the encrypted tables",
		Long: `Validate the configuration in FILE, load the listener's TLS certificate if one
is configured (and listen.tls.client_ca_file and upstream.client_certs), and
connect to the upstream server as upstream.user (honouring
upstream.sslmode and upstream.root_cert_file) to run "select version()".
Relative file paths in FILE are relative to FILE's directory.

When encrypt.tables declares tables it loads the key provider as serve
does: the master key file of keys.local.master_key_file must exist and be
readable by its owner only (a missing one fails, naming where FILE sets it
and the command that creates it, pgcloak keys init-local -o PATH); with
keys.provider aws, the default key keys.aws.key_id must be enabled.

It fails a configuration under which a client session could run as
upstream.user, which owns the verified tenant pin's key: upstream.user
mapped by tenancy.login.roles, matched by tenancy.token_roles or
tenancy.unscoped_roles, or named by tenancy.jwt.upstream_user.

With tenancy.token_roles or tenancy.mode jwt it loads the key serve verifies
tenant tokens with, as serve does: the PEM file of tenancy.jwt.public_key_file
(and that tenancy.jwt.algorithms fit it), or the key set at
tenancy.jwt.jwks_url, which must be reachable and hold a usable key; a key
that does not load fails. In mode jwt it also logs in upstream as
tenancy.jwt.upstream_user, the role jwt sessions run as.

Then, for every table in encrypt.tables, it checks as upstream.user that the
table exists; that every declared column and blind-index column is bytea (a
text column would store plaintext; a declared column that still holds
plaintext, of type text, varchar or another, fails with the
encrypt-existing commands that move it, since the DDL of pgcloak schema
would fail on it) and carries pgcloak's format CHECK, by
its definition (missing fails, as serve refuses to start without it, unless
encrypt.require_format_checks is false; the earlier, looser definition or
NOT VALID warns); whether row-level security is enabled and forced;
whether its policies isolate tenants by pgcloak.current_tenant() (a policy
that reads the bare tenant setting, current_setting('app.tenant_id'),
fails: SQL in a session can change the setting; a policy reading another
setting, a permissive policy that does not call the function, or no policy
calling it warns; so does a column default reading the bare setting); and
whether upstream.user and the tenant roles of tenancy.login.roles bypass
RLS (superuser, BYPASSRLS, or having the table owner's privileges while
RLS is not forced). Policies of tables not declared that read the bare
setting are warnings.

It checks that upstream.user has SELECT and UPDATE on every declared table
(on the table, or on the columns they touch), which pgcloak reencrypt and
pgcloak encrypt-existing need; a missing one fails with the GRANT to run.
serve itself reads only the catalog as upstream.user. For each tenant role
a missing SELECT, INSERT, UPDATE or DELETE is a warning with its GRANT:
which of them the application needs is its own business.

For every tenant role it warns when the role may create objects (CREATE on
a schema, TEMP on the database), execute a SECURITY DEFINER function, or
execute a function whose body runs dynamic SQL (found by a text search of
the body for EXECUTE or set_config: a heuristic), other than pgcloak's own;
a tenant role that may read pgcloak.pin_key fails.

Each check prints one line: "ok", "WARN" or "FAIL". A tenant role that
bypasses RLS fails: that tenant could read other tenants' rows (as
ciphertext). RLS disabled, or not forced while one of these roles owns the
table, is a warning: encryption remains the second wall. upstream.user may
bypass RLS (encrypt-existing without --tenant needs it to); token roles
named in tenancy.token_roles (not globs) and, in mode jwt,
tenancy.jwt.upstream_user run tenants' sessions and must not. A configured
role that does not exist is a warning.

Exits 0 when no check failed (warnings allowed) and 1 otherwise. Never
prints a password.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := config.Load(path)
			if err != nil {
				// Printed exactly as config words it: file:line: path: message.
				return &exitError{code: exitFailure, err: err}
			}
			if !check(cmd.Context(), cfg, cmd.OutOrStdout()) {
				return failed()
			}
			return nil
		},
	}
	configFlag(cmd, &path)
	return cmd
}

// checker prints one line per check and remembers whether any failed. A
// warning is printed but does not fail the check.
type checker struct {
	w        io.Writer
	failed   bool
	warnings int
}

// level is the outcome of one check.
type level int

const (
	levelOK level = iota
	levelWarn
	levelFail
)

// line prints "ok    what: detail", "WARN  what: detail" or
// "FAIL  what: detail".
func (c *checker) line(l level, what, detail string) {
	prefix := "ok    "
	switch l {
	case levelWarn:
		c.warnings++
		prefix = "WARN  "
	case levelFail:
		c.failed = true
		prefix = "FAIL  "
	}
	fmt.Fprintf(c.w, "%s%s: %s\n", prefix, what, detail)
}

// result prints a failure for err, or detail when err is nil.
func (c *checker) result(err error, what, detail string) {
	if err != nil {
		c.line(levelFail, what, err.Error())
		return
	}
	c.line(levelOK, what, detail)
}

// check runs every check on a loaded configuration, printing one line per
// check to w, and reports whether none failed. It never prints a secret.
func check(ctx context.Context, cfg *config.Config, w io.Writer) bool {
	c := &checker{w: w}

	c.result(nil, "config", cfg.File+" is valid")
	if _, err := newLogger(cfg.Log, io.Discard); err != nil {
		c.result(err, "log", "")
	}

	if t := cfg.Listen.TLS; t != nil {
		_, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
		if err != nil {
			err = fmt.Errorf("listen.tls: %w", err)
		}
		c.result(err, "listen", fmt.Sprintf("%s, TLS certificate %s loads (require: %t)", cfg.Listen.Address, t.CertFile, t.Require))
	} else {
		c.result(nil, "listen", cfg.Listen.Address+", TLS off (SSLRequest is answered 'N')")
	}
	if t := cfg.Listen.TLS; t != nil && t.ClientCAFile != "" {
		_, err := proxy.LoadCertPool("listen.tls.client_ca_file", t.ClientCAFile)
		c.result(err, "client certificates", "verified against "+t.ClientCAFile)
	}
	for i, cc := range cfg.Upstream.ClientCerts {
		_, err := proxy.LoadClientCert(i, cc)
		c.result(err, "upstream client certificate", fmt.Sprintf("%s loads, presented for role %s", cc.CertFile, cc.User))
	}

	checkKeyProvider(ctx, cfg, c)
	checkTenantTokens(ctx, cfg, c)
	checkUpstreamUser(cfg, c)
	checkUpstream(ctx, cfg, c)

	switch {
	case c.failed:
		fmt.Fprintln(w, "check FAILED")
	case c.warnings == 1:
		fmt.Fprintln(w, "check passed (1 warning)")
	case c.warnings > 1:
		fmt.Fprintf(w, "check passed (%d warnings)\n", c.warnings)
	default:
		fmt.Fprintln(w, "check passed")
	}
	return !c.failed
}

// keyProviderTimeout bounds check's load of the key provider: with AWS KMS,
// one DescribeKey of the default key.
const keyProviderTimeout = 15 * time.Second

// checkKeyProvider loads the key provider as serve does when tables are
// declared (serve loads none for a pure passthrough proxy): the local
// master key file must exist and be usable, and an AWS KMS default key
// must be enabled. A missing master key file fails naming the command that
// creates it.
func checkKeyProvider(ctx context.Context, cfg *config.Config, c *checker) {
	if len(cfg.Encrypt.Tables) == 0 {
		return
	}
	k := cfg.Keys
	if k.Provider == config.ProviderAWS {
		ctx, cancel := context.WithTimeout(ctx, keyProviderTimeout)
		defer cancel()
		if _, err := servingKeyProvider(ctx, k); err != nil {
			c.line(levelFail, "keys", fmt.Sprintf("%v (keys.aws.key_id, %s)", err, setAt(cfg, "keys.aws.key_id")))
			return
		}
		c.line(levelOK, "keys", fmt.Sprintf("AWS KMS key %s in %s is enabled", k.AWS.KeyID, k.AWS.Region))
		return
	}
	path := k.Local.MasterKeyFile
	where := "keys.local.master_key_file, " + setAt(cfg, "keys.local.master_key_file")
	_, err := crypto.LoadLocalProvider(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		c.line(levelFail, "keys", fmt.Sprintf("master key file %s (%s) does not exist; create it with: pgcloak keys init-local -o %s", path, where, path))
	case err != nil:
		c.line(levelFail, "keys", fmt.Sprintf("master key file %s (%s) cannot be used: %v", path, where, err))
	default:
		c.line(levelOK, "keys", "master key file "+path+" loads")
	}
}

// setAt names where the configuration sets key: "file:line", or the file
// alone when the key is not written in it.
func setAt(cfg *config.Config, key string) string {
	if l := cfg.Line(key); l > 0 {
		return fmt.Sprintf("%s:%d", cfg.File, l)
	}
	return cfg.File
}

// checkUpstream logs in to the upstream server the way the proxy's own
// login will, reports its version and then checks every declared table.
func checkUpstream(ctx context.Context, cfg *config.Config, c *checker) {
	u := cfg.Upstream
	timeout := connectTimeout(u)
	target := fmt.Sprintf("%s user=%s database=%s sslmode=%s", u.Address, u.User, u.Database, u.SSLMode)
	conn, v, err := connectUpstream(ctx, u, timeout)
	c.result(err, "upstream", "connected to "+target)
	if err != nil {
		if n := len(cfg.Encrypt.Tables); n > 0 {
			fmt.Fprintf(c.w, "      encrypted tables: %d declared, not checked without an upstream connection\n", n)
		}
		return
	}
	defer conn.Close(context.Background())
	c.result(nil, "upstream server", v)
	checkJWTUpstreamUser(ctx, cfg, timeout, c)

	if len(cfg.Encrypt.Tables) == 0 {
		fmt.Fprintln(c.w, "      encrypted tables: none declared")
	}
	roles := checkedRoles(cfg)
	for _, t := range cfg.Encrypt.Tables {
		tctx, cancel := context.WithTimeout(ctx, timeout)
		err := checkTable(tctx, conn, t, roles, cfg, c)
		cancel()
		if err != nil {
			c.line(levelFail, "table "+t.QualifiedName(), redact(err, u.Password).Error())
		}
	}
	if !pinsTenants(cfg) {
		return // pure passthrough: no tenant to isolate
	}
	tctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := checkOtherPolicies(tctx, conn, cfg, c); err != nil {
		c.line(levelFail, "policies", redact(err, u.Password).Error())
	}
	if err := checkTenantRoles(tctx, conn, roles, c); err != nil {
		c.line(levelFail, "tenant roles", redact(err, u.Password).Error())
	}
}

// connectUpstream logs in as upstream.user and returns the session and the
// server's version string. The caller closes the session.
func connectUpstream(ctx context.Context, u config.Upstream, timeout time.Duration) (*pgx.Conn, string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	cc, err := upstreamConnConfig(u, timeout, "pgcloak check")
	if err != nil {
		return nil, "", err
	}
	conn, err := pgx.ConnectConfig(ctx, cc)
	if err != nil {
		return nil, "", redact(err, u.Password)
	}
	var v string
	if err := conn.QueryRow(ctx, "select version()").Scan(&v); err != nil {
		conn.Close(context.Background())
		return nil, "", redact(err, u.Password)
	}
	return conn, v, nil
}

// checkJWTUpstreamUser logs in as tenancy.jwt.upstream_user in mode jwt,
// as serve does for every jwt session.
func checkJWTUpstreamUser(ctx context.Context, cfg *config.Config, timeout time.Duration, c *checker) {
	j := cfg.Tenancy.JWT
	if cfg.Tenancy.Mode != config.ModeJWT || j.UpstreamUser == "" {
		return
	}
	u := cfg.Upstream
	u.User, u.Password = j.UpstreamUser, j.UpstreamPassword
	conn, _, err := connectUpstream(ctx, u, timeout)
	if err != nil {
		c.line(levelFail, "upstream tenancy.jwt.upstream_user", redact(err, j.UpstreamPassword).Error())
		return
	}
	conn.Close(context.Background())
	c.line(levelOK, "upstream tenancy.jwt.upstream_user", "connected as "+u.User+" (the role jwt sessions run as)")
}

// checkedRole is a role whose relation to a declared table's row-level
// security check reports.
type checkedRole struct {
	name  string
	label string // how lines name it: "tenant acme", "upstream.user"

	// tenant is set when tenants' sessions run as the role: a tenant login
	// role, a token role, or tenancy.jwt.upstream_user in mode jwt. Such a
	// role must not bypass row-level security.
	tenant bool
}

// checkedRoles lists upstream.user, every tenant login role, every token
// role named in tenancy.token_roles (globs name no role to look up) and,
// in mode jwt, tenancy.jwt.upstream_user, each once (a role that is also
// upstream.user is checked as a tenant's), in a stable order.
func checkedRoles(cfg *config.Config) []checkedRole {
	t := cfg.Tenancy
	up := cfg.Upstream.User
	roles := []checkedRole{{name: up, label: "upstream.user"}}
	add := func(name, label string) {
		if name == up {
			roles[0].label, roles[0].tenant = "upstream.user and "+label, true
			return
		}
		for i := range roles {
			if roles[i].name == name {
				return
			}
		}
		roles = append(roles, checkedRole{name: name, label: label, tenant: true})
	}
	for _, name := range slices.Sorted(maps.Keys(t.Login.Roles)) {
		add(name, "tenant "+t.Login.Roles[name])
	}
	for _, name := range t.TokenRoles {
		if !strings.ContainsAny(name, `*?[\`) {
			add(name, "token role")
		}
	}
	if t.Mode == config.ModeJWT && t.JWT.UpstreamUser != "" {
		add(t.JWT.UpstreamUser, "jwt.upstream_user, tenant sessions in mode jwt")
	}
	return roles
}

// tableRLS is a table's row-level security state from pg_class.
type tableRLS struct {
	enabled, forced bool
	ownerOID        uint32
	owner           string
}

// roleFacts is what pg_roles says about a role, relative to one table.
type roleFacts struct {
	exists    bool
	superuser bool
	bypassRLS bool
	owner     bool // the role has the privileges of the table's owner
}

// checkTable reports, for declared table t, that it exists, that every
// declared column and index column is bytea, its row-level security state,
// and whether any of roles bypasses it. An error is a failed catalog
// query; the caller reports it.
func checkTable(ctx context.Context, conn *pgx.Conn, t config.Table, roles []checkedRole, cfg *config.Config, c *checker) error {
	qual := t.QualifiedName()
	what := "table " + qual

	var oid uint32
	var rls tableRLS
	err := conn.QueryRow(ctx, `
		SELECT c.oid, c.relrowsecurity, c.relforcerowsecurity, c.relowner, pg_catalog.pg_get_userbyid(c.relowner)
		FROM pg_catalog.pg_class c
		WHERE c.oid = pg_catalog.to_regclass(pg_catalog.quote_ident($1) || '.' || pg_catalog.quote_ident($2))`,
		t.Schema, t.Name).Scan(&oid, &rls.enabled, &rls.forced, &rls.ownerOID, &rls.owner)
	if errors.Is(err, pgx.ErrNoRows) {
		c.line(levelFail, what, "does not exist (create it, then run pgcloak schema for its bytea columns)")
		return nil
	}
	if err != nil {
		return err
	}
	c.line(levelOK, what, "exists (owner "+rls.owner+")")

	types := make(map[string]string)
	rows, err := conn.Query(ctx, `
		SELECT attname, pg_catalog.format_type(atttypid, atttypmod)
		FROM pg_catalog.pg_attribute
		WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped`, oid)
	if err != nil {
		return err
	}
	var name, typ string
	if _, err := pgx.ForEachRow(rows, []any{&name, &typ}, func() error {
		types[name] = typ
		return nil
	}); err != nil {
		return err
	}
	plain := make(map[string]bool) // declared columns that hold plaintext
	for _, col := range t.Columns {
		if checkColumnType(c, what, col.Name, "", types, encryptExistingCommand(cfg, t)) {
			plain[col.Name] = true
		}
		if col.IndexColumn != "" {
			checkColumnType(c, what, col.IndexColumn, "blind index of "+col.Name, types, "")
		}
	}
	verdicts, err := verifyTableFormatChecks(ctx, conn, t)
	if err != nil {
		return err
	}
	fix := schemaCommand(cfg)
	if len(plain) > 0 {
		// pgcloak schema's script would fail on the plaintext column as a
		// whole; encrypt-existing's prepare step adds the CHECKs too.
		fix = fmt.Sprintf(`pgcloak encrypt-existing -c %s --table %s --print-prepare | psql "$DATABASE_URL"`, cfg.File, t.QualifiedName())
	}
	for _, v := range verdicts {
		if v.state == formatMissing && plain[v.check.column] {
			continue // its type line says what to run
		}
		checkFormatLine(c, what, v, cfg, fix)
	}

	facts, err := rolesFacts(ctx, conn, roles, rls.ownerOID)
	if err != nil {
		return err
	}
	var owners []string
	for _, r := range roles {
		if facts[r.name].owner {
			owners = append(owners, r.name+" ("+r.label+")")
		}
	}
	l, detail := rlsPosture(rls, owners)
	c.line(l, what+" rls", detail)
	if err := checkPolicies(ctx, conn, oid, what, cfg.Tenancy.Setting, rls, c); err != nil {
		return err
	}
	for _, r := range roles {
		l, detail := rolePosture(r, facts[r.name], rls)
		c.line(l, what+" role "+r.name+" ("+r.label+")", detail)
	}
	return checkTablePrivileges(ctx, conn, oid, t, roles, facts, c)
}

// checkFormatLine reports one column's format CHECK as serve will judge
// it: missing fails (serve refuses to start) unless
// encrypt.require_format_checks is false; the earlier definition and NOT
// VALID are warnings. fix is the command that adds a missing CHECK.
func checkFormatLine(c *checker, table string, v formatStatus, cfg *config.Config, fix string) {
	what := table + " column " + v.check.column + " format CHECK"
	switch v.state {
	case formatOK:
		c.line(levelOK, what, v.constraint)
	case formatNotValid:
		c.line(levelWarn, what, v.constraint+" is NOT VALID: rows stored before it were not checked ("+schemaCommand(cfg)+" validates it)")
	case formatLegacy:
		c.line(levelWarn, what, v.constraint+" has the earlier definition, which does not check the key version ("+schemaCommand(cfg)+" replaces it)")
	case formatMissing:
		l, after := levelFail, "serve refuses to start"
		if !cfg.Encrypt.RequireFormatChecks {
			l, after = levelWarn, "PostgreSQL accepts plaintext in it (encrypt.require_format_checks is false)"
		}
		c.line(l, what, "missing ("+v.why+"): "+after+"; add "+v.check.name()+" with: "+fix)
	}
}

// checkColumnType reports whether column name of the table is bytea.
// Anything else would hold what pgcloak writes as plaintext or refuse it.
// For a declared column (move is the encrypt-existing command for its
// table) that exists with another type, the line says how to move its
// plaintext: pgcloak schema leaves an existing column as it is, and the
// format CHECK it adds fails on any type but bytea ("function
// get_byte(text, integer) does not exist"). It reports whether the column
// exists with another type.
func checkColumnType(c *checker, table, name, role string, types map[string]string, move string) bool {
	what := table + " column " + name
	typ, ok := types[name]
	switch {
	case !ok:
		c.line(levelFail, what, "does not exist (pgcloak schema prints the DDL that adds it)")
	case typ != "bytea" && move != "":
		c.line(levelFail, what, fmt.Sprintf("is %s, want bytea: it holds plaintext, and pgcloak schema | psql would fail on it "+
			"(function get_byte(%s, integer) does not exist); encrypt it in place with: %s", typ, baseType(typ), move))
		return true
	case typ != "bytea":
		c.line(levelFail, what, "is "+typ+", want bytea (pgcloak schema prints the DDL; encrypt-existing moves plaintext)")
	case role != "":
		c.line(levelOK, what, "bytea ("+role+")")
	default:
		c.line(levelOK, what, "bytea")
	}
	return false
}

// baseType is a type as format_type prints it without its modifier:
// "character varying(11)" is "character varying".
func baseType(typ string) string {
	if i := strings.IndexByte(typ, '('); i > 0 {
		return typ[:i]
	}
	return typ
}

// encryptExistingCommand is how to move table t's plaintext into
// pgcloak's layout: the prepare step, then the run.
func encryptExistingCommand(cfg *config.Config, t config.Table) string {
	return fmt.Sprintf(`pgcloak encrypt-existing -c %[1]s --table %[2]s --print-prepare | psql "$DATABASE_URL", then pgcloak encrypt-existing -c %[1]s --table %[2]s`,
		cfg.File, t.QualifiedName())
}

// rolesFacts reads pg_roles for roles. A role has the table owner's
// privileges when it is the owner or inherits the owner's role, as
// PostgreSQL's own ownership check does. Roles that do not exist are
// missing from the result.
func rolesFacts(ctx context.Context, conn *pgx.Conn, roles []checkedRole, ownerOID uint32) (map[string]roleFacts, error) {
	names := make([]string, len(roles))
	for i, r := range roles {
		names[i] = r.name
	}
	rows, err := conn.Query(ctx, `
		SELECT rolname, rolsuper, rolbypassrls, pg_catalog.pg_has_role(oid, $2::pg_catalog.oid, 'USAGE')
		FROM pg_catalog.pg_roles
		WHERE rolname = ANY($1)`, names, ownerOID)
	if err != nil {
		return nil, err
	}
	facts := make(map[string]roleFacts)
	var name string
	f := roleFacts{exists: true}
	_, err = pgx.ForEachRow(rows, []any{&name, &f.superuser, &f.bypassRLS, &f.owner}, func() error {
		facts[name] = f
		return nil
	})
	return facts, err
}

// rlsPosture decides a table's row-level security line. owners are the
// checked roles that have the owner's privileges. Without RLS pgcloak still
// works, encryption being the second wall, so only a warning; without FORCE
// the owner bypasses the policies, which matters only if one of pgcloak's
// roles is the owner.
func rlsPosture(rls tableRLS, owners []string) (level, string) {
	switch {
	case !rls.enabled:
		return levelWarn, "disabled: rows are not isolated by tenant, only by encryption (ALTER TABLE ... ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY)"
	case rls.forced:
		return levelOK, "enabled and forced"
	case len(owners) > 0:
		return levelWarn, "enabled, not forced (the table owner bypasses it), and " + strings.Join(owners, ", ") + " has the owner's privileges (ALTER TABLE ... FORCE ROW LEVEL SECURITY)"
	default:
		return levelOK, "enabled, not forced (the table owner " + rls.owner + " bypasses it; none of pgcloak's roles is the owner)"
	}
}

// rolePosture decides whether a role bypasses the table's row-level
// security. A tenant's role that bypasses it fails: that tenant's sessions
// would see other tenants' rows (as ciphertext, but the first wall is
// gone). upstream.user is pgcloak's own login in mode login and may bypass
// it; encrypt-existing without --tenant needs it to.
func rolePosture(r checkedRole, f roleFacts, rls tableRLS) (level, string) {
	if !f.exists {
		return levelWarn, "role does not exist"
	}
	var why []string
	if f.superuser {
		why = append(why, "superuser")
	}
	if f.bypassRLS {
		why = append(why, "BYPASSRLS")
	}
	if f.owner && rls.enabled && !rls.forced {
		why = append(why, "owns the table (as "+rls.owner+") without FORCE ROW LEVEL SECURITY")
	}
	switch {
	case len(why) == 0 && r.tenant:
		return levelOK, "does not bypass RLS"
	case len(why) == 0:
		return levelOK, "does not bypass RLS (encrypt-existing then needs --tenant)"
	case r.tenant:
		return levelFail, "bypasses RLS (" + strings.Join(why, ", ") + "): a tenant could read other tenants' rows, still as ciphertext, but the RLS wall is gone"
	case f.superuser:
		return levelWarn, "bypasses RLS (" + strings.Join(why, ", ") + "): allowed for pgcloak's own login (encrypt-existing without --tenant needs to bypass RLS), but BYPASSRLS would do without superuser"
	default:
		return levelOK, "bypasses RLS (" + strings.Join(why, ", ") + "): allowed for pgcloak's own login; encrypt-existing without --tenant needs it"
	}
}

// redact makes sure an error about a login does not carry the password.
// pgx does not put passwords in its errors; this is a second line of
// defence for whatever a server or a future driver version might echo.
func redact(err error, pw config.Secret) error {
	p := pw.Reveal()
	if err == nil || len(p) < 3 || !strings.Contains(err.Error(), p) {
		return err
	}
	return fmt.Errorf("%s", strings.ReplaceAll(err.Error(), p, "[redacted]"))
}
