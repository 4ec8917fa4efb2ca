package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/pgcloak/pgcloak/config"
	"github.com/pgcloak/pgcloak/crypto"
	"github.com/pgcloak/pgcloak/tenanttoken"
	"github.com/pgcloak/pgcloak/testenv"
	"github.com/spf13/cobra"
)

// The demo's fixed, throwaway credentials. They only ever exist inside the
// temporary PostgreSQL the demo starts and removes.
const (
	demoDatabase      = "demo"
	demoProxyRole     = "pgcloak" // upstream.user: key store and catalog
	demoProxyPassword = "pgcloak-demo"
	demoDBARole       = "dba" // unscoped, BYPASSRLS: sees every row, only ciphertext
	demoDBAPassword   = "dba"
	demoPoolRole      = "app_pool" // a token role: no tenant until a signed token names one
	demoPoolPassword  = "app_pool"
)

// The KEKs of `pgcloak demo --kms`, in its in-process KMS emulator: the
// default one, and one that tenant demoBYOKTenant brings along (keys.tenants).
const (
	demoDefaultAlias = "alias/pgcloak"
	demoBYOKTenant   = "acme"
	demoBYOKAlias    = "alias/acme"
)

// Dummy AWS credentials for the demo's emulator, which checks no signature.
// The SDK signs nothing without credentials, and the demo must never sign
// with the user's real ones (see demoAWSEnv).
const (
	demoAWSAccessKeyID     = "pgcloak-demo-dummy"
	demoAWSSecretAccessKey = "pgcloak-demo-dummy"
)

// demoTenant is a tenant's login role and the patients it writes.
type demoTenant struct {
	role, password, tenant string
	patients               []demoPatient
}

type demoPatient struct {
	name, ssn, email, diagnosis, birthDate string
}

// sharedSSN is written by both tenants, to show that equal values of two
// tenants are unrelated in storage, blind index included.
const sharedSSN = "123-45-6789"

var demoTenants = []demoTenant{
	{role: "acme_app", password: "acme", tenant: "acme", patients: []demoPatient{
		{"Alice Jones", sharedSSN, "Alice.Jones@Example.com", "asthma", "1980-01-02"},
		{"Bob Smith", "987-65-4321", "bob@acme.test", "hypertension", "1975-06-30"},
	}},
	{role: "globex_app", password: "globex", tenant: "globex", patients: []demoPatient{
		{"Carol White", sharedSSN, "carol@globex.test", "migraine", "1990-03-04"},
		{"Dan Brown", "222-33-4444", "Dan.Brown@Globex.test", "diabetes type 2", "1968-11-12"},
	}},
}

// demoSchema runs as the superuser in the demo database. The table is what
// `pgcloak schema` would make of an application's patients table: the
// declared columns and their index columns are bytea, and row-level
// security keeps each tenant to its own rows (first line of defence;
// encryption is the second).
var demoSchema = []string{
	`create role acme_app login password 'acme'`,
	`create role globex_app login password 'globex'`,
	`create role ` + demoDBARole + ` login bypassrls password '` + demoDBAPassword + `'`,
	`create role ` + demoProxyRole + ` login password '` + demoProxyPassword + `'`,
	`create role ` + demoPoolRole + ` login password '` + demoPoolPassword + `'`,
	`create table public.patients (
		id         serial primary key,
		tenant_id  text not null,
		name       text,
		ssn        bytea,
		ssn_bidx   bytea,
		email      bytea,
		email_bidx bytea,
		diagnosis  bytea,
		birth_date bytea
	)`,
	`alter table public.patients enable row level security`,
	`alter table public.patients force row level security`,
	`grant select, insert, update, delete on public.patients to acme_app, globex_app, ` + demoPoolRole,
	`grant usage on sequence public.patients_id_seq to acme_app, globex_app, ` + demoPoolRole,
	`grant select on public.patients to ` + demoDBARole,
	// What pgcloak reencrypt and encrypt-existing need of upstream.user.
	`grant select, update on public.patients to ` + demoProxyRole,
	// Tenant roles create no objects whose SQL pgcloak never reads
	// (PostgreSQL 15 already keeps CREATE on schema public from PUBLIC).
	`revoke temp on database ` + demoDatabase + ` from public`,
	`grant connect on database ` + demoDatabase + ` to acme_app, globex_app, ` + demoDBARole + `, ` + demoProxyRole + `, ` + demoPoolRole,
	// The proxy creates its key store (schema pgcloak) on first start.
	`grant create on database ` + demoDatabase + ` to ` + demoProxyRole,
}

// demoPolicies run as the superuser once the proxy's role has installed
// the verified tenant pin: row-level security and the tenant column's
// default read pgcloak.current_tenant(), which only a session pgcloak
// pinned can make return a tenant.
var demoPolicies = []string{
	`alter table public.patients alter column tenant_id set default pgcloak.current_tenant()`,
	// (select ...): evaluated once per statement, not for every row a
	// scan filters (the README's "Preparing your database").
	`create policy tenant_isolation on public.patients
		using (tenant_id = (select pgcloak.current_tenant()))
		with check (tenant_id = (select pgcloak.current_tenant()))`,
}

// demoConfig is the configuration the demo runs the proxy with. It is
// written to the demo's temporary directory so that `pgcloak check` and
// `pgcloak schema` can be tried on it while the demo runs.
//
// Its keys section is demoLocalKeys or, with --kms, demoKMSKeys.
const demoConfig = `# Generated by "pgcloak demo"; removed when the demo stops.
listen:
  address: %s
  shutdown_timeout: 5s
upstream:
  address: %s
  sslmode: disable
  user: %s
  password: %s
  database: %s
tenancy:
  setting: app.tenant_id
  mode: login
  login:
    roles:
      acme_app: acme
      globex_app: globex
  token_roles: [%s]             # a tenant per transaction, from a signed token
  jwt:
    hs256_secret: %s  # generated for this demo
  unscoped_roles: [%s]
%sencrypt:
  on_decrypt_error: error
  tables:
    - name: public.patients
      columns:
        - name: ssn
          type: text
          search: equality
        - name: email
          type: text
          search: equality
          normalize: lower
        - name: diagnosis
          type: text
          key_class: phi
        - name: birth_date
          type: date
audit:
  output: %s
log:
  level: warn
  format: console
`

// demoLocalKeys is the demo's keys section with a local master key file.
const demoLocalKeys = `keys:
  provider: local
  local:
    master_key_file: %s
`

// demoKMSKeys is the keys section of `pgcloak demo --kms`: AWS KMS at the
// emulator's endpoint, the default KEK, and demoBYOKTenant's own KEK.
const demoKMSKeys = `keys:
  provider: aws
  aws:
    region: %s
    endpoint: %s
    key_id: ` + demoDefaultAlias + `
  tenants:
    ` + demoBYOKTenant + `: { key_id: ` + demoBYOKAlias + ` }
`

// demoOptions are the demo's flags.
type demoOptions struct {
	listen string // the proxy's address
	kms    bool   // keys.provider aws against an in-process KMS emulator
}

func newDemoCmd() *cobra.Command {
	var o demoOptions
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Show per-tenant encryption on a throwaway PostgreSQL",
		Long: `Start a throwaway PostgreSQL server (initdb and postgres from PATH or
/usr/lib/postgresql/*/bin), create a demo database with a patients table
under row-level security and two tenants, acme and globex, generate a local
master key and run pgcloak in front of it. Then, through the proxy, each
tenant writes a few patients, and the demo shows side by side what each
tenant reads, what PostgreSQL actually stores, an encrypted search, what
pgcloak refuses, and what happens when row-level security is switched off.
Then one connection of app_pool, a token role as an application's shared
pool would use, switches between the two tenants per transaction with
signed tenant tokens (SET LOCAL pgcloak.tenant_token), minted from an HS256
secret generated for the demo. Finally it prints psql connection strings
for both tenants and the pool role.

With --kms the key-encryption keys live in AWS KMS instead - here an
emulator of its API started in-process (see pgcloak-kms), reached through
the AWS SDK exactly as KMS would be: globex's data keys are wrapped by the
default KEK alias/pgcloak, and acme brings its own key, alias/acme. The
demo shows which KEK protects each tenant's keys. No AWS account is used:
the demo signs its requests with dummy credentials and ignores ~/.aws.

The demo runs until Ctrl-C or SIGTERM, then stops the proxy and PostgreSQL
and removes every temporary file.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			if err := demo(ctx, o, cmd.OutOrStdout(), cmd.ErrOrStderr()); err != nil {
				return &exitError{code: exitFailure, err: fmt.Errorf("pgcloak demo: %w", err)}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&o.listen, "listen", "127.0.0.1:0", "address for the proxy to listen on (port 0: any free port)")
	cmd.Flags().BoolVar(&o.kms, "kms", false, "keep the key-encryption keys in an AWS KMS emulator (keys.provider aws) instead of a local master key")
	return cmd
}

// demo runs the whole demo until ctx is done. Everything it starts is
// stopped, and everything it writes removed, before it returns.
func demo(ctx context.Context, o demoOptions, out, logOut io.Writer) (err error) {
	fmt.Fprint(out, "pgcloak demo")
	if o.kms {
		fmt.Fprint(out, " --kms")
	}
	fmt.Fprint(out, "\n\n")

	dir, err := os.MkdirTemp("", "pgcloak-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	step(out, "Starting a throwaway PostgreSQL")
	pg, err := testenv.Start(ctx, testenv.Options{})
	if err != nil {
		return err
	}
	defer func() {
		step(out, "Stopping PostgreSQL")
		if serr := pg.Stop(); serr != nil {
			fmt.Fprintln(out, "failed:", serr)
			err = errors.Join(err, serr)
			return
		}
		fmt.Fprintln(out, "done")
	}()
	fmt.Fprintf(out, "ok, listening on %s\n", pg.Addr())

	step(out, fmt.Sprintf("Creating database %q: table patients under RLS", demoDatabase))
	if err := pg.CreateDatabase(ctx, demoDatabase); err != nil {
		return err
	}
	for _, stmt := range demoSchema {
		if err := pg.Exec(ctx, demoDatabase, stmt); err != nil {
			return err
		}
	}
	fmt.Fprintln(out, "ok")

	var keys *demoKeys
	if o.kms {
		step(out, "Starting an AWS KMS emulator")
		emu, kerr := testenv.NewKMS()
		if kerr != nil {
			return kerr
		}
		// Deferred before the proxy starts, so run after it has stopped.
		defer func() {
			step(out, "Stopping the KMS emulator")
			if cerr := emu.Close(); cerr != nil {
				fmt.Fprintln(out, "failed:", cerr)
				err = errors.Join(err, cerr)
				return
			}
			fmt.Fprintln(out, "done")
		}()
		defer demoAWSEnv(dir)()
		if keys, err = newDemoKMSKeys(emu); err != nil {
			return err
		}
		fmt.Fprintf(out, "ok, listening on %s\n", emu.URL)
		for _, k := range keys.list {
			fmt.Fprintf(out, "  %s = %s  (%s)\n", k.alias, k.id, k.what)
		}
	} else {
		step(out, "Generating a local master key")
		if keys, err = newDemoLocalKeys(filepath.Join(dir, "master.key")); err != nil {
			return err
		}
		fmt.Fprintln(out, "ok")
	}

	// The proxy's listener is opened first so that port 0 resolves to a real
	// port before the configuration is written.
	ln, err := net.Listen("tcp", o.listen)
	if err != nil {
		return err
	}
	defer ln.Close()
	cfgPath := filepath.Join(dir, "pgcloak.yaml")
	auditPath := filepath.Join(dir, "audit.log")
	secret := make([]byte, 32)
	if _, err := rand.Read(secret); err != nil {
		return err
	}
	cfgText := fmt.Sprintf(demoConfig, ln.Addr(), pg.Addr(), demoProxyRole, demoProxyPassword, demoDatabase,
		demoPoolRole, hex.EncodeToString(secret), demoDBARole, keys.yaml, auditPath)
	if err := os.WriteFile(cfgPath, []byte(cfgText), 0o600); err != nil {
		return err
	}
	cfg, err := config.Load(cfgPath)
	if err != nil {
		return err
	}
	log, err := newLogger(cfg.Log, logOut)
	if err != nil {
		return err
	}

	step(out, "Preparing the database: pin, policies, format CHECKs")
	if err := demoPrepare(ctx, pg, cfg); err != nil {
		return err
	}
	fmt.Fprintln(out, "ok")

	step(out, "Starting pgcloak")
	rt, err := newProxyRuntime(ctx, cfg, log, out, logOut)
	if err != nil {
		return err
	}
	srv := rt.srv
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	defer func() {
		step(out, "Stopping pgcloak")
		sctx, cancel := context.WithTimeout(context.Background(), cfg.Listen.ShutdownTimeout)
		defer cancel()
		srv.Shutdown(sctx) // past the deadline it has closed the sessions itself
		<-served
		if cerr := rt.close(); cerr != nil {
			err = errors.Join(err, cerr)
		}
		fmt.Fprintln(out, "done")
	}()
	fmt.Fprintf(out, "ok, listening on %s, forwarding to %s\n", ln.Addr(), pg.Addr())

	d := &demoRun{out: out, proxyAddr: ln.Addr().String(), pg: pg, keys: keys, jwt: cfg.Tenancy.JWT, cfgPath: cfgPath, conns: map[string]*pgx.Conn{}}
	defer d.close()
	if err := d.run(ctx); err != nil {
		return err
	}

	fmt.Fprint(out, "\n== Try it yourself ==\n\n")
	for _, t := range demoTenants {
		fmt.Fprintf(out, "Through pgcloak as tenant %s:\n  psql %q\n", t.tenant, d.proxyURL(t.role, t.password))
	}
	fmt.Fprintf(out, "Through pgcloak as the pool role %s, a tenant per transaction from a token:\n  psql %q\n", demoPoolRole, d.proxyURL(demoPoolRole, demoPoolPassword))
	fmt.Fprintf(out, "  then: BEGIN; SET LOCAL pgcloak.tenant_token = '<token>'; select * from patients; COMMIT;\n")
	fmt.Fprintf(out, "  with a token (10 minutes) from: go run ./cmd/pgcloak token --tenant acme -c %s\n", cfgPath)
	fmt.Fprintf(out, "Through pgcloak as the unscoped role %s (every row, encrypted columns as ciphertext, no writes to them):\n  psql %q\n", demoDBARole, d.proxyURL(demoDBARole, demoDBAPassword))
	fmt.Fprintf(out, "Directly to PostgreSQL as pgcloak's own role %s (upstream.user: key store, pin; pgcloak refuses it as a client):\n  psql %q\n", demoProxyRole, pg.URL(demoProxyRole, demoProxyPassword, demoDatabase))
	fmt.Fprintf(out, "Directly to PostgreSQL as the superuser, to look at the ciphertext:\n  psql %q\n", pg.SuperuserURL(demoDatabase))
	fmt.Fprintf(out, `
The configuration is %s: try
  go run ./cmd/pgcloak schema -c %s
The audit log (JSON lines) is %s:
  %s
`, cfgPath, cfgPath, auditPath, auditSummary(auditPath))
	if keys.kmsURL != "" {
		fmt.Fprintf(out, `The KMS emulator is at %s. Commands that call it need AWS
credentials; it checks no signature, so dummies do (and keep ~/.aws out):
  export AWS_ACCESS_KEY_ID=%s AWS_SECRET_ACCESS_KEY=%s
  export AWS_PROFILE= AWS_EC2_METADATA_DISABLED=true
  go run ./cmd/pgcloak keys list -c %s
Crypto-shredding %s schedules the deletion of its KEK %s: its values
are unreadable from then on, backups included, while globex keeps working:
  go run ./cmd/pgcloak keys shred -c %s --tenant %s --yes
`, keys.kmsURL, demoAWSAccessKeyID, demoAWSSecretAccessKey, cfgPath, demoBYOKTenant, demoBYOKAlias, cfgPath, demoBYOKTenant)
	}
	fmt.Fprintf(out, `Press Ctrl-C to stop; PostgreSQL and the proxy stop with it and
%s is removed.

`, dir)

	select {
	case <-ctx.Done():
		fmt.Fprintln(out)
		return nil
	case err := <-served:
		served <- err // for the deferred shutdown
		return fmt.Errorf("proxy stopped: %w", err)
	}
}

// demoKeys is where the demo's key-encryption keys live: the keys section
// of its configuration, and what to call each KEK id the key store records.
type demoKeys struct {
	yaml   string
	kmsURL string // the emulator's endpoint; "" with a local master key
	list   []demoKEK
}

// demoPrepare does what the README's "Preparing your database" asks: the
// proxy's role installs the verified tenant pin, the policies read it, and
// the DDL of pgcloak schema adds the format CHECKs and index-column
// indexes.
func demoPrepare(ctx context.Context, pg *testenv.Postgres, cfg *config.Config) error {
	pool, err := upstreamPool(cfg.Upstream, "pgcloak demo", 1)
	if err != nil {
		return err
	}
	defer pool.Close()
	pinner, err := openPinner(ctx, cfg, pool)
	if err != nil {
		return err
	}
	pinner.Close()
	var ddl strings.Builder
	writeSchema(&ddl, cfg, false)
	for _, stmt := range append(demoPolicies, ddl.String()) {
		if err := pg.Exec(ctx, demoDatabase, stmt); err != nil {
			return err
		}
	}
	return nil
}

// showSchema prints, from PostgreSQL's catalog, what the demo prepared
// as the README's "Preparing your database" recommends: row-level
// security forced, policies and the tenant column's default on
// pgcloak.current_tenant(), the format CHECKs and the index columns'
// indexes of pgcloak schema.
func (d *demoRun) showSchema(ctx context.Context, super *pgx.Conn) error {
	out := d.out
	rows := func(sql string) ([][]string, error) {
		table, err := queryTable(ctx, super, sql)
		if err != nil {
			return nil, err
		}
		return table[1:], nil // without the header
	}
	fmt.Fprint(out, `
== The schema, as pgcloak recommends it (read back from PostgreSQL's catalog) ==
`)
	rls, err := rows(`select case when relrowsecurity then 'yes' else 'no' end,
		case when relforcerowsecurity then 'yes' else 'no' end
		from pg_class where oid = 'public.patients'::regclass`)
	if err != nil {
		return err
	}
	if len(rls) != 1 {
		return errors.New("demo: public.patients not found in pg_class")
	}
	fmt.Fprintf(out, "\nRow-level security on public.patients: enabled %s, forced %s\n", rls[0][0], rls[0][1])
	policies, err := rows(`select policyname, cmd, qual, coalesce(with_check, '')
		from pg_policies where schemaname = 'public' and tablename = 'patients' order by policyname`)
	if err != nil {
		return err
	}
	for _, p := range policies {
		fmt.Fprintf(out, "Policy %s (%s): using %s, with check %s\n", p[0], p[1], p[2], p[3])
	}
	def, err := rows(`select coalesce(pg_get_expr(d.adbin, d.adrelid), '')
		from pg_attribute a left join pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum
		where a.attrelid = 'public.patients'::regclass and a.attname = 'tenant_id'`)
	if err != nil {
		return err
	}
	if len(def) == 1 {
		fmt.Fprintf(out, "Column tenant_id defaults to %s: rows are stamped with the verified tenant\n", def[0][0])
	}
	checks, err := rows(`select conname from pg_constraint
		where conrelid = 'public.patients'::regclass and contype = 'c' and conname like '%\_pgcloak\_format'
		order by conname`)
	if err != nil {
		return err
	}
	fmt.Fprintln(out, "Format CHECKs (PostgreSQL refuses plaintext written around pgcloak):")
	for _, c := range checks {
		fmt.Fprintf(out, "  %s\n", c[0])
	}
	indexes, err := rows(`select indexname from pg_indexes
		where schemaname = 'public' and tablename = 'patients' and indexdef like '%\_bidx%'
		order by indexname`)
	if err != nil {
		return err
	}
	fmt.Fprintln(out, "Blind-index indexes (equality search on encrypted columns):")
	for _, i := range indexes {
		fmt.Fprintf(out, "  %s\n", i[0])
	}
	fmt.Fprintf(out, "(pgcloak schema -c %s prints this DDL for your own tables.)\n", d.cfgPath)
	return nil
}

// demoKEK is one key-encryption key of the demo.
type demoKEK struct {
	id    string // as the key store records it (kek_id): "local:..." or a key ARN
	alias string // "" for the local master key
	what  string
}

// name is how the demo refers to the KEK.
func (k demoKEK) name() string {
	if k.alias != "" {
		return k.alias
	}
	return k.id
}

// kek returns the KEK whose id is id.
func (k *demoKeys) kek(id string) (demoKEK, bool) {
	for _, kek := range k.list {
		if kek.id == id {
			return kek, true
		}
	}
	return demoKEK{}, false
}

// newDemoLocalKeys writes a new local master key to file.
func newDemoLocalKeys(file string) (*demoKeys, error) {
	if err := crypto.WriteLocalMasterKey(file); err != nil {
		return nil, err
	}
	p, err := crypto.LoadLocalProvider(file)
	if err != nil {
		return nil, err
	}
	return &demoKeys{
		yaml: fmt.Sprintf(demoLocalKeys, file),
		list: []demoKEK{{id: p.KEKID(), what: "the local master key, " + filepath.Base(file) + ", for every tenant"}},
	}, nil
}

// newDemoKMSKeys creates the demo's KEKs in the emulator: the default one
// and demoBYOKTenant's own.
func newDemoKMSKeys(emu *testenv.KMS) (*demoKeys, error) {
	keys := &demoKeys{yaml: fmt.Sprintf(demoKMSKeys, testenv.KMSRegion, emu.URL), kmsURL: emu.URL}
	for _, k := range []struct{ alias, what string }{
		{demoDefaultAlias, "the default KEK, for every tenant without a key of its own"},
		{demoBYOKAlias, demoBYOKTenant + "'s own KEK: bring your own key"},
	} {
		key := emu.CreateKey("pgcloak demo: " + k.what)
		if err := emu.CreateAlias(k.alias, key.ID); err != nil {
			return nil, err
		}
		keys.list = append(keys.list, demoKEK{id: key.ARN, alias: k.alias, what: k.what})
	}
	return keys, nil
}

// demoAWSEnv points the AWS SDK's default chain, for this whole process,
// at the demo's dummy credentials and away from the user's AWS files,
// profile and instance metadata: the demo must never sign a request with
// real credentials, nor pick up settings (a profile, FIPS endpoints) that
// do not fit the emulator. The demo owns its process; the returned
// function restores the environment for callers that do not, such as
// tests.
func demoAWSEnv(dir string) (restore func()) {
	set := map[string]string{
		"AWS_ACCESS_KEY_ID":           demoAWSAccessKeyID,
		"AWS_SECRET_ACCESS_KEY":       demoAWSSecretAccessKey,
		"AWS_SESSION_TOKEN":           "",
		"AWS_PROFILE":                 "",
		"AWS_DEFAULT_PROFILE":         "",
		"AWS_CONFIG_FILE":             filepath.Join(dir, "aws-config"),      // never created
		"AWS_SHARED_CREDENTIALS_FILE": filepath.Join(dir, "aws-credentials"), // never created
		"AWS_EC2_METADATA_DISABLED":   "true",
		"AWS_USE_FIPS_ENDPOINT":       "",
		"AWS_USE_DUALSTACK_ENDPOINT":  "",
	}
	type saved struct {
		value string
		ok    bool
	}
	old := make(map[string]saved, len(set))
	for name, value := range set {
		v, ok := os.LookupEnv(name)
		old[name] = saved{v, ok}
		os.Setenv(name, value)
	}
	return func() {
		for name, s := range old {
			if s.ok {
				os.Setenv(name, s.value)
			} else {
				os.Unsetenv(name)
			}
		}
	}
}

// step prints the start of a progress line.
func step(out io.Writer, what string) { fmt.Fprintf(out, "%-54s ", what+" ...") }

// demoRun is the scripted part of the demo: connections and what they show.
type demoRun struct {
	out       io.Writer
	proxyAddr string
	pg        *testenv.Postgres
	keys      *demoKeys
	jwt       config.JWTTenancy // tenancy.jwt: the secret the pooled part mints tokens with
	cfgPath   string
	conns     map[string]*pgx.Conn // by role; "" is the superuser, direct
}

func (d *demoRun) close() {
	for _, c := range d.conns {
		c.Close(context.Background())
	}
}

// proxyURL is a libpq connection string through the proxy.
func (d *demoRun) proxyURL(role, password string) string {
	u := url.URL{Scheme: "postgres", User: url.UserPassword(role, password), Host: d.proxyAddr, Path: "/" + demoDatabase, RawQuery: "sslmode=disable"}
	return u.String()
}

// connect opens a connection through the proxy as role, or directly as the
// superuser when role is "". The simple query protocol is what psql uses;
// pgcloak does not yet encrypt writes sent over the extended protocol.
func (d *demoRun) connect(ctx context.Context, role, password string) (*pgx.Conn, error) {
	connString := d.pg.SuperuserURL(demoDatabase)
	if role != "" {
		connString = d.proxyURL(role, password)
	}
	cc, err := pgx.ParseConfig(connString)
	if err != nil {
		return nil, err
	}
	cc.DefaultQueryExecMode = pgx.QueryExecModeSimpleProtocol
	cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	conn, err := pgx.ConnectConfig(cctx, cc)
	if err != nil {
		if role == "" {
			role = "the superuser"
		}
		return nil, fmt.Errorf("connect as %s: %w", role, err)
	}
	d.conns[role] = conn
	return conn, nil
}

// patientColumns is what the tenants select: the application's view.
const patientColumns = "id, name, ssn, email, diagnosis, birth_date"

func (d *demoRun) run(ctx context.Context) error {
	out := d.out
	tenant := map[string]*pgx.Conn{}
	for _, t := range demoTenants {
		c, err := d.connect(ctx, t.role, t.password)
		if err != nil {
			return err
		}
		tenant[t.tenant] = c
	}
	super, err := d.connect(ctx, "", "")
	if err != nil {
		return err
	}
	acme := tenant["acme"]

	fmt.Fprint(out, `
pgcloak maps login role acme_app to tenant acme and globex_app to globex,
and encrypts patients.ssn and .email (searchable; email case-insensitively),
.diagnosis (its own key class, phi) and .birth_date (a date) per tenant.
`)
	if d.keys.kmsURL != "" {
		fmt.Fprintf(out, `Each tenant's data keys are made by AWS KMS (the emulator) and stored in
PostgreSQL wrapped by a key-encryption key that never leaves KMS: %s for
tenant %s, which brings its own key, and the default %s for globex.
`, demoBYOKAlias, demoBYOKTenant, demoDefaultAlias)
	} else {
		fmt.Fprintln(out, "Each tenant's data keys are stored in PostgreSQL wrapped by the local master key.")
	}
	if err := d.showSchema(ctx, super); err != nil {
		return err
	}
	fmt.Fprint(out, `
== Each tenant writes through pgcloak, in plain SQL ==
`)
	for _, t := range demoTenants {
		var values []string
		for _, p := range t.patients {
			values = append(values, fmt.Sprintf("('%s', '%s', '%s', '%s', '%s')", p.name, p.ssn, p.email, p.diagnosis, p.birthDate))
		}
		sql := "insert into patients (name, ssn, email, diagnosis, birth_date) values\n    " + strings.Join(values, ",\n    ")
		fmt.Fprintf(out, "\n%s:\n  %s\n", t.role, sql)
		if _, err := tenant[t.tenant].Exec(ctx, sql); err != nil {
			return fmt.Errorf("insert as %s: %w", t.role, err)
		}
	}

	for _, t := range demoTenants {
		fmt.Fprintf(out, "\n== What %s (tenant %s) sees through pgcloak ==\n\n  select %s from patients order by id\n\n", t.role, t.tenant, patientColumns)
		rows, err := queryTable(ctx, tenant[t.tenant], "select "+patientColumns+" from patients order by id")
		if err != nil {
			return fmt.Errorf("select as %s: %w", t.role, err)
		}
		printTable(out, rows)
	}

	fmt.Fprint(out, "\n== What PostgreSQL actually stores (superuser, directly) ==\n\n")
	fmt.Fprint(out, "  select id, tenant_id, name, ssn, ssn_bidx, diagnosis from patients order by id\n\n")
	stored, err := queryTable(ctx, super, "select id, tenant_id, name, ssn, ssn_bidx, diagnosis from patients order by id")
	if err != nil {
		return fmt.Errorf("select stored values: %w", err)
	}
	shown := make([][]string, len(stored))
	for i, r := range stored {
		shown[i] = slices.Clone(r)
		if i > 0 {
			for j := 3; j < len(r); j++ {
				shown[i][j] = truncate(r[j], 8)
			}
		}
	}
	printTable(out, shown)
	fmt.Fprintln(out, "\n  Every declared column (email and birth_date too) is stored as bytea:")
	fmt.Fprintln(out, "  0x01 | key version (00000001) | nonce | AES-256-GCM ciphertext and tag.")
	if a, c := storedBidx(stored, "Alice Jones"), storedBidx(stored, "Carol White"); a != "" && c != "" {
		verdict := "differ: each tenant's blind index has its own key, so equal values\n  cannot be matched across tenants."
		if a == c {
			verdict = "are EQUAL, which they should never be."
		}
		fmt.Fprintf(out, "  Alice (acme) and Carol (globex) have the same SSN, yet their ssn_bidx values\n    %s\n    %s\n  %s\n", a, c, verdict)
	}
	dba, err := d.connect(ctx, demoDBARole, demoDBAPassword)
	if err != nil {
		return err
	}
	if rows, err := queryTable(ctx, dba, "select id, ssn from patients order by id"); err == nil && len(rows) > 1 {
		fmt.Fprintf(out, "  Role %s (unscoped, BYPASSRLS) through pgcloak sees all %d rows, and only ciphertext:\n    ssn of row %s = %s\n",
			demoDBARole, len(rows)-1, rows[1][0], truncate(rows[1][1], 8))
	} else if err != nil {
		return fmt.Errorf("select as %s: %w", demoDBARole, err)
	}

	if err := d.showKEKs(ctx, super); err != nil {
		return err
	}

	fmt.Fprint(out, "\n== Searching encrypted columns ==\n\n")
	fmt.Fprintln(out, "  pgcloak turns equality on a searchable column into a comparison of its blind index.")
	for _, q := range []struct{ tenant, sql string }{
		{"acme", "select id, name from patients where ssn = '" + sharedSSN + "'"},
		{"globex", "select id, name from patients where ssn = '" + sharedSSN + "'"},
		{"acme", "select id, name from patients where email = 'alice.jones@EXAMPLE.com'"},
	} {
		rows, err := queryTable(ctx, tenant[q.tenant], q.sql)
		if err != nil {
			return fmt.Errorf("search as %s: %w", q.tenant, err)
		}
		var found []string
		for _, r := range rows[1:] {
			found = append(found, strings.Join(r, " "))
		}
		fmt.Fprintf(out, "\n  %s_app: %s\n    -> %s\n", q.tenant, q.sql, orNone(found))
	}

	fmt.Fprint(out, "\n== What pgcloak refuses ==\n")
	for _, q := range []struct{ what, sql string }{
		{"a construct a blind index cannot answer", "select name from patients order by ssn"},
		{"a tenant switch", "set app.tenant_id = 'globex'"},
	} {
		_, err := acme.Exec(ctx, q.sql)
		fmt.Fprintf(out, "\n  acme_app, %s: %s\n    -> %s\n", q.what, q.sql, describeErr(err))
	}

	fmt.Fprint(out, "\n== If row-level security fails ==\n\n")
	fmt.Fprintln(out, "  superuser: alter table patients disable row level security")
	if _, err := super.Exec(ctx, "alter table patients disable row level security"); err != nil {
		return err
	}
	rlsOff := func() error {
		q := "select id, name from patients order by id"
		rows, err := queryTable(ctx, acme, q)
		if err != nil {
			return fmt.Errorf("select as acme_app without RLS: %w", err)
		}
		fmt.Fprintf(out, "\n  acme_app: %s    (name is not encrypted)\n\n", q)
		printTable(out, rows)
		fmt.Fprintln(out, "\n  RLS no longer hides globex's rows, and their plaintext columns leak. But:")

		q = "select id, name, ssn, diagnosis from patients order by id"
		fmt.Fprintf(out, "\n  acme_app: %s\n\n", q)
		rows, qerr := queryTable(ctx, acme, q)
		if len(rows) > 1 {
			printTable(out, rows)
		}
		fmt.Fprintf(out, "    -> %s\n", describeErr(qerr))
		fmt.Fprintln(out, "\n  globex's values are sealed under globex's keys: acme's keys cannot open them,")
		fmt.Fprintln(out, "  and pgcloak never returns another tenant's plaintext.")
		return nil
	}
	err = rlsOff()
	fmt.Fprintln(out, "\n  superuser: alter table patients enable row level security    (restored)")
	if _, rerr := super.Exec(context.Background(), "alter table patients enable row level security"); rerr != nil {
		return errors.Join(err, rerr)
	}
	if err != nil {
		return err
	}
	return d.pooled(ctx, super)
}

// pooled is the demo's pooled part: one connection of the token role
// app_pool, as an application's shared pool holds, switches tenant per
// transaction with signed tenant tokens (SET LOCAL), and has no tenant
// between them.
func (d *demoRun) pooled(ctx context.Context, super *pgx.Conn) error {
	out := d.out
	fmt.Fprintf(out, `
== One pool role, a tenant per transaction (signed tokens) ==

  Role %[1]s is a token role (tenancy.token_roles): it logs in with no tenant
  and takes one only from a tenant token signed with tenancy.jwt.hs256_secret,
  verified by pgcloak. An application keeps one pool of %[1]s connections for
  every tenant and starts each transaction with
    SET LOCAL pgcloak.tenant_token = '<token of the request's tenant>'
  The tenant lasts until COMMIT or ROLLBACK, so a connection goes back to the
  pool with no tenant. Tokens minted for this demo (pgcloak token):
`, demoPoolRole)
	tokens := map[string]string{}
	for _, t := range demoTenants {
		tok, err := tenanttoken.Mint(d.jwt, t.tenant, 10*time.Minute, time.Now())
		if err != nil {
			return fmt.Errorf("mint a token for %s: %w", t.tenant, err)
		}
		tokens[t.tenant] = tok
		fmt.Fprintf(out, "    %-7s %s  (HS256, 10 minutes)\n", t.tenant, abbreviate(tok))
	}
	conn, err := d.connect(ctx, demoPoolRole, demoPoolPassword)
	if err != nil {
		return err
	}
	pid := conn.PgConn().PID()

	q := "select id, name from patients"
	rows, err := queryTable(ctx, conn, q)
	if err != nil {
		return fmt.Errorf("select as %s without a token: %w", demoPoolRole, err)
	}
	fmt.Fprintf(out, "\n  %s, no token yet: %s\n    -> %s\n", demoPoolRole, q, orNone(rowsText(rows)))
	_, err = conn.Exec(ctx, "insert into patients (name, ssn) values ('Nobody', '000-00-0000')")
	fmt.Fprintf(out, "  %s, no token yet: insert into patients (name, ssn) values (...)\n    -> %s\n", demoPoolRole, describeErr(err))

	type step struct {
		tenant string
		sqls   []string // run after the token, before the select
	}
	for _, st := range []step{
		{"acme", nil},
		{"globex", []string{"insert into patients (name, ssn, email, diagnosis, birth_date) values ('Erin Green', '555-66-7777', 'erin@globex.test', 'sprained ankle', '1985-07-08')"}},
	} {
		fmt.Fprintf(out, "\n  %s, the same connection (PostgreSQL backend %d):\n    BEGIN;\n    SET LOCAL pgcloak.tenant_token = '%s';\n", demoPoolRole, pid, abbreviate(tokens[st.tenant]))
		if _, err := conn.Exec(ctx, "BEGIN"); err != nil {
			return err
		}
		if _, err := conn.Exec(ctx, "SET LOCAL pgcloak.tenant_token = '"+tokens[st.tenant]+"'"); err != nil {
			conn.Exec(context.Background(), "ROLLBACK")
			return fmt.Errorf("token of %s: %w", st.tenant, err)
		}
		for _, sql := range st.sqls {
			fmt.Fprintf(out, "    %s;\n", sql)
			if _, err := conn.Exec(ctx, sql); err != nil {
				conn.Exec(context.Background(), "ROLLBACK")
				return fmt.Errorf("as %s with %s's token: %w", demoPoolRole, st.tenant, err)
			}
		}
		q := "select id, name, ssn, diagnosis, tenant_id from patients order by id"
		fmt.Fprintf(out, "    %s;\n\n", q)
		rows, err := queryTable(ctx, conn, q)
		if err != nil {
			conn.Exec(context.Background(), "ROLLBACK")
			return fmt.Errorf("select as %s with %s's token: %w", demoPoolRole, st.tenant, err)
		}
		printTable(out, rows)
		if _, err := conn.Exec(ctx, "COMMIT"); err != nil {
			return err
		}
		fmt.Fprintln(out, "\n    COMMIT;")
	}

	rows, err = queryTable(ctx, conn, q)
	if err != nil {
		return fmt.Errorf("select as %s after COMMIT: %w", demoPoolRole, err)
	}
	fmt.Fprintf(out, "\n  %s, after COMMIT: %s\n    -> %s\n", demoPoolRole, q, orNone(rowsText(rows)))

	// A token its holder made up: the right shape, globex's name, the
	// wrong key.
	forgedCfg := d.jwt
	forgedCfg.HS256Secret = "not the secret pgcloak verifies with, but as long"
	forged, err := tenanttoken.Mint(forgedCfg, "globex", 10*time.Minute, time.Now())
	if err != nil {
		return err
	}
	_, err = conn.Exec(ctx, "SET pgcloak.tenant_token = '"+forged+"'")
	fmt.Fprintf(out, "  %s, a globex token signed with another key:\n    SET pgcloak.tenant_token = '%s'\n    -> %s\n", demoPoolRole, abbreviate(forged), describeErr(err))

	q = "select tenant_id, name from patients where name = 'Erin Green'"
	rows, err = queryTable(ctx, super, q)
	if err != nil {
		return fmt.Errorf("select stored row: %w", err)
	}
	fmt.Fprintf(out, "\n  superuser, directly: %s\n    -> %s\n", q, orNone(rowsText(rows)))
	fmt.Fprintln(out, "  The row written with globex's token is stamped globex by pgcloak.current_tenant()")
	fmt.Fprintln(out, "  and sealed under globex's keys, like those globex_app wrote.")
	return nil
}

// abbreviate shortens a token for display: enough to tell two apart.
func abbreviate(tok string) string {
	if len(tok) <= 24 {
		return tok
	}
	return tok[:12] + "..." + tok[len(tok)-8:]
}

// rowsText joins each row of a queryTable result (header first) with
// spaces.
func rowsText(rows [][]string) []string {
	var found []string
	for _, r := range rows[1:] {
		found = append(found, strings.Join(r, " "))
	}
	return found
}

// showKEKs prints the key store's data keys and, per tenant, the
// key-encryption keys that wrap them, from what the store records.
func (d *demoRun) showKEKs(ctx context.Context, super *pgx.Conn) error {
	out := d.out
	const q = "select tenant, key_class, purpose, version, kek_id from pgcloak.data_keys order by 1, 2, 3, 4"
	fmt.Fprintf(out, "\n== Which key-encryption key protects each tenant ==\n\n  %s\n\n", q)
	rows, err := queryTable(ctx, super, q)
	if err != nil {
		return fmt.Errorf("select data keys: %w", err)
	}
	for _, r := range rows[1:] {
		if r[1] == "" {
			r[1] = "(default)"
		}
	}
	printTable(out, rows)
	fmt.Fprintln(out)
	type tenantKeys struct {
		n    int
		keks []string // distinct kek ids, in order of appearance
	}
	var tenants []string
	byTenant := map[string]*tenantKeys{}
	for _, r := range rows[1:] {
		tenant, kek := r[0], r[4]
		tk := byTenant[tenant]
		if tk == nil {
			tk = &tenantKeys{}
			byTenant[tenant] = tk
			tenants = append(tenants, tenant)
		}
		tk.n++
		if !slices.Contains(tk.keks, kek) {
			tk.keks = append(tk.keks, kek)
		}
	}
	for _, tenant := range tenants {
		tk := byTenant[tenant]
		var names []string
		for _, id := range tk.keks {
			if kek, ok := d.keys.kek(id); ok {
				names = append(names, fmt.Sprintf("%s (%s)", kek.name(), kek.what))
			} else {
				names = append(names, id+" (not one of the demo's KEKs)")
			}
		}
		fmt.Fprintf(out, "  %s: %d data keys, wrapped by %s\n", tenant, tk.n, strings.Join(names, " and "))
	}
	if d.keys.kmsURL != "" {
		fmt.Fprintf(out, "\n  Only KMS can unwrap them, for the tenant in their encryption context; deleting\n  %s would make %s's values unreadable for good (crypto-shredding).\n", demoBYOKAlias, demoBYOKTenant)
	}
	return nil
}

// queryTable runs sql and returns its rows as text, header first. Rows
// received before an error are returned with it.
func queryTable(ctx context.Context, conn *pgx.Conn, sql string) ([][]string, error) {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	rs, err := conn.Query(ctx, sql)
	if err != nil {
		return nil, err
	}
	defer rs.Close()
	var header []string
	for _, f := range rs.FieldDescriptions() {
		header = append(header, f.Name)
	}
	table := [][]string{header}
	for rs.Next() {
		// The simple protocol returns every value in text format.
		raw := rs.RawValues()
		row := make([]string, len(raw))
		for i, v := range raw {
			if v == nil {
				row[i] = "NULL"
			} else {
				row[i] = string(v)
			}
		}
		table = append(table, row)
	}
	rs.Close()
	return table, rs.Err()
}

// printTable prints rows, header first, as aligned columns.
func printTable(out io.Writer, rows [][]string) {
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	for _, r := range rows {
		fmt.Fprintln(tw, "  "+strings.Join(r, "\t"))
	}
	tw.Flush()
}

// truncate shortens a bytea's text form (\x...) to its first n bytes.
func truncate(v string, n int) string {
	if !strings.HasPrefix(v, `\x`) || len(v) <= 2+2*n {
		return v
	}
	return v[:2+2*n] + ".."
}

// storedBidx is the ssn_bidx stored for the patient called name.
func storedBidx(stored [][]string, name string) string {
	for _, r := range stored[1:] {
		if r[2] == name {
			return r[4]
		}
	}
	return ""
}

func orNone(found []string) string {
	if len(found) == 0 {
		return "(no rows)"
	}
	return strings.Join(found, "; ")
}

// describeErr prints a PostgreSQL error as psql would, briefly.
func describeErr(err error) string {
	var pgErr *pgconn.PgError
	switch {
	case err == nil:
		return "no error (unexpected)"
	case errors.As(err, &pgErr):
		return fmt.Sprintf("ERROR %s: %s", pgErr.Code, pgErr.Message)
	default:
		return "error: " + err.Error()
	}
}

// auditSummary counts the audit log's events by kind.
func auditSummary(path string) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return "(not readable: " + err.Error() + ")"
	}
	counts := map[string]int{}
	var kinds []string
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		var ev struct {
			Event string `json:"event"`
		}
		if json.Unmarshal(sc.Bytes(), &ev) != nil || ev.Event == "" {
			continue
		}
		if counts[ev.Event] == 0 {
			kinds = append(kinds, ev.Event)
		}
		counts[ev.Event]++
	}
	if len(kinds) == 0 {
		return "no events yet"
	}
	parts := make([]string, len(kinds))
	for i, k := range kinds {
		parts[i] = fmt.Sprintf("%s %d", k, counts[k])
	}
	return "so far: " + strings.Join(parts, ", ")
}
