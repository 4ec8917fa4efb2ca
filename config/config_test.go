package config

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

// y joins lines into a YAML file, so that a case's line numbers can be read
// off its position in the list: the first argument is line 1.
func y(lines ...string) []byte { return []byte(strings.Join(lines, "\n") + "\n") }

// noEnv is a lookup with no variables set.
func noEnv(string) (string, bool) { return "", false }

func envOf(vars map[string]string) func(string) (string, bool) {
	return func(name string) (string, bool) {
		v, ok := vars[name]
		return v, ok
	}
}

// problems returns the problem lines of a *ValidationError, failing the test
// when err is something else.
func problems(t *testing.T, err error) []string {
	t.Helper()
	var ve *ValidationError
	if !errors.As(err, &ve) {
		t.Fatalf("got error %v (%T), want a *ValidationError", err, err)
	}
	if len(ve.Problems) == 0 {
		t.Fatalf("got a *ValidationError with no problems")
	}
	return strings.Split(ve.Error(), "\n")
}

const (
	testPassword    = "s3cr3t-upstream-pw"
	testJWTSecret   = "0123456789abcdef0123456789abcdef-jwt"
	testJWTPassword = "s3cr3t-app-jwt-pw"
)

// setSpecEnv sets the variables testdata/spec.yaml refers to.
func setSpecEnv(t *testing.T, upstreamPassword string) {
	t.Helper()
	t.Setenv("PGCLOAK_UPSTREAM_PASSWORD", upstreamPassword)
	t.Setenv("JWT_SECRET", testJWTSecret)
	t.Setenv("APP_JWT_PASSWORD", testJWTPassword)
}

// TestLoadSpecExample loads SPEC §3's example, which testdata/spec.yaml
// copies verbatim: every key the specification documents.
func TestLoadSpecExample(t *testing.T) {
	setSpecEnv(t, testPassword)
	file := filepath.Join("testdata", "spec.yaml")

	got, err := Load(file)
	if err != nil {
		t.Fatalf("Load(%s): got error %v, want nil", file, err)
	}
	want := &Config{
		File: file,
		Listen: Listen{
			Address:         "127.0.0.1:6432",
			TLS:             &ListenTLS{CertFile: filepath.Join("testdata", "server.crt"), KeyFile: filepath.Join("testdata", "server.key"), Require: false},
			MaxMessageSize:  64 << 20,
			ShutdownTimeout: 30 * time.Second,
		},
		Admin: Admin{Address: "127.0.0.1:9187", MaxTenantLabels: 100},
		Upstream: Upstream{
			Address:        "127.0.0.1:5432",
			SSLMode:        SSLDisable,
			User:           "pgcloak",
			Password:       testPassword,
			Database:       "appdb",
			ConnectTimeout: 10 * time.Second,
		},
		Tenancy: Tenancy{
			Setting: "app.tenant_id",
			Mode:    ModeLogin,
			Login:   LoginTenancy{Roles: map[string]string{"acme_app": "acme", "globex_app": "globex"}},
			JWT: JWTTenancy{
				Claim:            "tenant_id",
				Issuer:           "https://auth.example.com",
				Audience:         "pgcloak",
				HS256Secret:      testJWTSecret,
				Leeway:           30 * time.Second,
				MaxLifetime:      24 * time.Hour,
				UpstreamUser:     "app_jwt",
				UpstreamPassword: testJWTPassword,
			},
			TokenRoles:    []string{"app_pool"},
			UnscopedRoles: []string{"migrator"},
		},
		Keys: Keys{
			Provider: ProviderLocal,
			Local:    LocalKeys{MasterKeyFile: filepath.Join("testdata", "master.key")},
			AWS:      AWSKeys{Region: "us-east-1", KeyID: "alias/pgcloak"},
			Tenants: map[string]TenantKeys{
				"acme": {KeyID: "arn:aws:kms:eu-west-1:111122223333:key/..."},
			},
			CacheTTL:        60 * time.Second,
			CacheMaxEntries: 10000,

			RotateAfterEncryptions: 1 << 30,
		},
		Encrypt: Encrypt{
			OnDecryptError:      DecryptErrorFail,
			RequireFormatChecks: true,
			Tables: []Table{{
				Schema: "public",
				Name:   "patients",
				Columns: []Column{
					{Name: "ssn", Type: "text", Search: SearchEquality, IndexColumn: "ssn_bidx", Normalize: NormalizeNone},
					{Name: "email", Type: "text", Search: SearchEquality, IndexColumn: "email_bidx", Normalize: NormalizeLower},
					{Name: "diagnosis", Type: "text", Search: SearchNone, Normalize: NormalizeNone, KeyClass: "phi"},
					{Name: "birth_date", Type: "date", Search: SearchNone, Normalize: NormalizeNone},
				},
			}},
		},
		Audit: Audit{Output: "stderr"},
		Log:   Log{Level: "info", Format: "json"},
	}
	if l := got.Line("keys.local.master_key_file"); l != 41 {
		t.Errorf("Line(keys.local.master_key_file): got %d, want 41", l)
	}
	got.lines = nil
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Load(%s):\ngot  %+v\nwant %+v", file, got, want)
	}
	// Secrets print redacted, so compare them separately.
	if got.Upstream.Password.Reveal() != testPassword {
		t.Errorf("got upstream.password of %d bytes, want the expanded ${PGCLOAK_UPSTREAM_PASSWORD}", len(got.Upstream.Password))
	}
	if got.Tenancy.JWT.HS256Secret.Reveal() != testJWTSecret {
		t.Errorf("got tenancy.jwt.hs256_secret of %d bytes, want the expanded ${JWT_SECRET}", len(got.Tenancy.JWT.HS256Secret))
	}
	if got.Tenancy.JWT.UpstreamPassword.Reveal() != testJWTPassword {
		t.Errorf("got tenancy.jwt.upstream_password of %d bytes, want the expanded ${APP_JWT_PASSWORD}", len(got.Tenancy.JWT.UpstreamPassword))
	}
}

func TestDefaults(t *testing.T) {
	got, err := parse("min.yaml", y(
		"upstream:",
		"  address: db.internal:5432",
		"keys:",
		"  local: {master_key_file: m.key}",
	), noEnv)
	if err != nil {
		t.Fatalf("got error %v, want nil", err)
	}
	want := &Config{
		File: "min.yaml",
		Listen: Listen{
			Address:         "127.0.0.1:6432",
			MaxMessageSize:  64 << 20,
			ShutdownTimeout: 30 * time.Second,
		},
		Admin: Admin{MaxTenantLabels: 100},
		Upstream: Upstream{
			Address:        "db.internal:5432",
			SSLMode:        SSLDisable,
			Database:       "postgres",
			ConnectTimeout: 10 * time.Second,
		},
		Tenancy: Tenancy{
			Setting: "app.tenant_id",
			Mode:    ModeLogin,
			JWT:     JWTTenancy{Claim: "tenant_id", Leeway: 30 * time.Second, MaxLifetime: 24 * time.Hour},
		},
		Keys: Keys{
			Provider:        ProviderLocal,
			Local:           LocalKeys{MasterKeyFile: "m.key"},
			CacheTTL:        60 * time.Second,
			CacheMaxEntries: 10000,

			RotateAfterEncryptions: 1 << 30,
		},
		Encrypt: Encrypt{OnDecryptError: DecryptErrorFail, RequireFormatChecks: true},
		Audit:   Audit{Output: "stderr"},
		Log:     Log{Level: "info", Format: "json"},
	}
	got.lines = nil
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got  %+v\nwant %+v", got, want)
	}
}

// minimal is the smallest valid file; cases append to it from line 5.
var minimal = []string{
	"upstream:",
	"  address: db:5432",
	"keys:",
	"  local: {master_key_file: m.key}",
}

func withMinimal(lines ...string) []byte {
	return y(append(append([]string{}, minimal...), lines...)...)
}

func TestParseValues(t *testing.T) {
	tests := []struct {
		name  string
		yaml  []byte
		env   map[string]string
		check func(t *testing.T, c *Config)
	}{
		{
			name: "rotate_after_encryptions default",
			yaml: withMinimal(),
			check: func(t *testing.T, c *Config) {
				if got, want := c.Keys.RotateAfterEncryptions, uint64(1<<30); got != want {
					t.Errorf("got rotate_after_encryptions %d, want %d", got, want)
				}
			},
		},
		{
			name: "rotate_after_encryptions set",
			yaml: withMinimal("  rotate_after_encryptions: 1_000_000"),
			check: func(t *testing.T, c *Config) {
				if got, want := c.Keys.RotateAfterEncryptions, uint64(1000000); got != want {
					t.Errorf("got rotate_after_encryptions %d, want %d", got, want)
				}
			},
		},
		{
			name: "rotate_after_encryptions bounds",
			yaml: withMinimal("  rotate_after_encryptions: 4294967296"),
			check: func(t *testing.T, c *Config) {
				if got, want := c.Keys.RotateAfterEncryptions, uint64(1<<32); got != want {
					t.Errorf("got rotate_after_encryptions %d, want %d", got, want)
				}
			},
		},
		{
			name: "rotate_after_encryptions one",
			yaml: withMinimal("  rotate_after_encryptions: 1"),
			check: func(t *testing.T, c *Config) {
				if got, want := c.Keys.RotateAfterEncryptions, uint64(1); got != want {
					t.Errorf("got rotate_after_encryptions %d, want %d", got, want)
				}
			},
		},
		{
			name: "rotate_after_encryptions from env",
			yaml: withMinimal("  rotate_after_encryptions: ${LIMIT}"),
			env:  map[string]string{"LIMIT": "65536"},
			check: func(t *testing.T, c *Config) {
				if got, want := c.Keys.RotateAfterEncryptions, uint64(65536); got != want {
					t.Errorf("got rotate_after_encryptions %d, want %d", got, want)
				}
			},
		},
		{
			name: "max_message_size units",
			yaml: withMinimal("listen: {max_message_size: 512kB}"),
			check: func(t *testing.T, c *Config) {
				if got, want := c.Listen.MaxMessageSize, 512<<10; got != want {
					t.Errorf("got max_message_size %d, want %d", got, want)
				}
			},
		},
		{
			name: "max_message_size bytes",
			yaml: withMinimal("listen: {max_message_size: 1048576}"),
			check: func(t *testing.T, c *Config) {
				if got, want := c.Listen.MaxMessageSize, 1<<20; got != want {
					t.Errorf("got max_message_size %d, want %d", got, want)
				}
			},
		},
		{
			name: "max_message_size from env",
			yaml: withMinimal("listen: {max_message_size: '${MAX}'}"),
			env:  map[string]string{"MAX": "1MiB"},
			check: func(t *testing.T, c *Config) {
				if got, want := c.Listen.MaxMessageSize, 1<<20; got != want {
					t.Errorf("got max_message_size %d, want %d", got, want)
				}
			},
		},
		{
			name: "env inside a value and escaped",
			yaml: withMinimal("log: {level: debug}", "audit: {output: '/var/log/${APP}/audit-$${x}-$HOME.log'}"),
			env:  map[string]string{"APP": "pgcloak"},
			check: func(t *testing.T, c *Config) {
				if got, want := c.Audit.Output, "/var/log/pgcloak/audit-${x}-$HOME.log"; got != want {
					t.Errorf("got audit.output %q, want %q", got, want)
				}
			},
		},
		{
			name: "on_decrypt_error null",
			yaml: withMinimal("encrypt: {on_decrypt_error: null}"),
			check: func(t *testing.T, c *Config) {
				if got, want := c.Encrypt.OnDecryptError, DecryptErrorNull; got != want {
					t.Errorf("got on_decrypt_error %q, want %q", got, want)
				}
			},
		},
		{
			name: "require_format_checks off and dynamic SQL allowed",
			yaml: withMinimal("encrypt: {require_format_checks: false}", "tenancy: {allow_dynamic_sql: true}"),
			check: func(t *testing.T, c *Config) {
				if c.Encrypt.RequireFormatChecks || !c.Tenancy.AllowDynamicSQL {
					t.Errorf("got require_format_checks %v, allow_dynamic_sql %v; want false, true", c.Encrypt.RequireFormatChecks, c.Tenancy.AllowDynamicSQL)
				}
			},
		},
		{
			name: "empty tables is a passthrough proxy",
			yaml: withMinimal("encrypt: {tables: []}"),
			check: func(t *testing.T, c *Config) {
				if got := len(c.Encrypt.Tables); got != 0 {
					t.Errorf("got %d tables, want 0", got)
				}
			},
		},
		{
			name: "names are folded and schema defaults to public",
			yaml: withMinimal(
				"encrypt:",
				"  tables:",
				"    - name: Patients",
				"      columns:",
				"        - {name: SSN, type: TEXT, search: equality}",
				"        - {name: Note, type: varchar, search: equality, index_column: Note_Idx, key_class: PHI}",
			),
			check: func(t *testing.T, c *Config) {
				tab, ok := c.Encrypt.Table("public", "patients")
				if !ok {
					t.Fatalf("got no table public.patients, want one (tables: %+v)", c.Encrypt.Tables)
				}
				want := []Column{
					{Name: "ssn", Type: "text", Search: SearchEquality, IndexColumn: "ssn_bidx", Normalize: NormalizeNone},
					{Name: "note", Type: "varchar", Search: SearchEquality, IndexColumn: "note_idx", Normalize: NormalizeNone, KeyClass: "phi"},
				}
				if !reflect.DeepEqual(tab.Columns, want) {
					t.Errorf("got columns %+v, want %+v", tab.Columns, want)
				}
			},
		},
		{
			name: "jwt mode with a public key",
			yaml: y(
				"upstream: {address: db:5432, user: pgcloak}",
				"keys: {provider: aws, aws: {region: eu-west-1, key_id: alias/k, endpoint: 'http://localhost:4566'}}",
				"tenancy: {mode: jwt, setting: App.Tenant, jwt: {public_key_file: jwt.pem, upstream_user: app_jwt}}",
			),
			check: func(t *testing.T, c *Config) {
				if got, want := c.Tenancy.Setting, "app.tenant"; got != want {
					t.Errorf("got tenancy.setting %q, want %q", got, want)
				}
				if got, want := c.Keys.AWS.Endpoint, "http://localhost:4566"; got != want {
					t.Errorf("got keys.aws.endpoint %q, want %q", got, want)
				}
			},
		},
		{
			name: "token roles and jwt mode with jwks",
			yaml: y(
				"upstream: {address: db:5432, user: pgcloak}",
				"keys: {local: {master_key_file: m.key}}",
				"tenancy:",
				"  mode: jwt",
				"  token_roles: [app_pool, 'pool_*']",
				"  jwt:",
				"    claim: app_metadata.tenant_id",
				"    jwks_url: http://127.0.0.1:8080/.well-known/jwks.json",
				"    leeway: 10s",
				"    max_lifetime: 1h",
				"    algorithms: [RS256, EdDSA]",
				"    upstream_user: app_jwt",
				"    upstream_password: ${APP_JWT_PASSWORD}",
			),
			env: map[string]string{"APP_JWT_PASSWORD": testJWTPassword},
			check: func(t *testing.T, c *Config) {
				want := JWTTenancy{
					Claim:            "app_metadata.tenant_id",
					JWKSURL:          "http://127.0.0.1:8080/.well-known/jwks.json",
					Leeway:           10 * time.Second,
					MaxLifetime:      time.Hour,
					UpstreamUser:     "app_jwt",
					UpstreamPassword: testJWTPassword,
					Algorithms:       []string{"RS256", "EdDSA"},
				}
				if !reflect.DeepEqual(c.Tenancy.JWT, want) {
					t.Errorf("got tenancy.jwt %+v, want %+v", c.Tenancy.JWT, want)
				}
				if got := c.Tenancy.JWT.UpstreamPassword.Reveal(); got != testJWTPassword {
					t.Errorf("got tenancy.jwt.upstream_password of %d bytes, want the expanded ${APP_JWT_PASSWORD}", len(got))
				}
				if got, want := c.Tenancy.TokenRoles, []string{"app_pool", "pool_*"}; !slices.Equal(got, want) {
					t.Errorf("got tenancy.token_roles %q, want %q", got, want)
				}
				if !c.Tenancy.JWT.HasVerificationKey() {
					t.Errorf("HasVerificationKey: got false, want true")
				}
			},
		},
		{
			name: "jwks over https and over http to loopback",
			yaml: withMinimal("tenancy:", "  token_roles: [app_pool]", "  jwt: {jwks_url: 'http://[::1]:8080/jwks', leeway: 0s}"),
			check: func(t *testing.T, c *Config) {
				if got := c.Tenancy.JWT.Leeway; got != 0 {
					t.Errorf("got leeway %s, want 0s", got)
				}
				for _, host := range []string{"localhost", "LOCALHOST", "127.0.0.1", "127.9.9.9", "::1"} {
					if !IsLoopbackHost(host) {
						t.Errorf("IsLoopbackHost(%q): got false, want true", host)
					}
				}
				for _, host := range []string{"auth.example.com", "10.0.0.1", "localhost.example.com", "::2", ""} {
					if IsLoopbackHost(host) {
						t.Errorf("IsLoopbackHost(%q): got true, want false", host)
					}
				}
			},
		},
		{
			name: "no verification key",
			yaml: withMinimal(),
			check: func(t *testing.T, c *Config) {
				if c.Tenancy.JWT.HasVerificationKey() {
					t.Errorf("HasVerificationKey: got true, want false")
				}
			},
		},
		{
			name: "admin max_tenant_labels",
			yaml: withMinimal("admin: {address: '127.0.0.1:9187', max_tenant_labels: 2_500}"),
			check: func(t *testing.T, c *Config) {
				if got, want := c.Admin.MaxTenantLabels, 2500; got != want {
					t.Errorf("got admin.max_tenant_labels %d, want %d", got, want)
				}
			},
		},
		{
			name: "no tenant labels",
			yaml: withMinimal("admin: {max_tenant_labels: 0}"),
			check: func(t *testing.T, c *Config) {
				if got, want := c.Admin, (Admin{MaxTenantLabels: 0}); got != want {
					t.Errorf("got admin %+v, want %+v", got, want)
				}
			},
		},
		{
			name: "listener on any port",
			yaml: withMinimal("listen: {address: ':0'}", "admin: {address: 'localhost:0'}"),
			check: func(t *testing.T, c *Config) {
				if got, want := c.Listen.Address, ":0"; got != want {
					t.Errorf("got listen.address %q, want %q", got, want)
				}
			},
		},
		{
			name: "anchors and aliases",
			yaml: withMinimal(
				"encrypt:",
				"  tables:",
				"    - name: a",
				"      columns: &cols",
				"        - {name: ssn, type: text, search: equality}",
				"    - name: b",
				"      columns: *cols",
			),
			check: func(t *testing.T, c *Config) {
				if got, want := len(c.Encrypt.Tables), 2; got != want {
					t.Fatalf("got %d tables, want %d", got, want)
				}
				if got, want := c.Encrypt.Tables[1].Columns[0].IndexColumn, "ssn_bidx"; got != want {
					t.Errorf("got index column %q, want %q", got, want)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := parse("t.yaml", tt.yaml, envOf(tt.env))
			if err != nil {
				t.Fatalf("got error:\n%v\nwant nil", err)
			}
			tt.check(t, c)
		})
	}
}

// errorCases each hold one mistake and the exact problems it must produce.
// They also seed FuzzLoad.
var errorCases = []struct {
	name string
	yaml []byte
	env  map[string]string
	want []string
}{
	{
		name: "unknown top-level key",
		yaml: withMinimal("lisen:", "  address: 0.0.0.0:6432"),
		want: []string{`t.yaml:5: lisen: unknown key; did you mean "listen"? (expected one of listen, admin, upstream, tenancy, keys, encrypt, audit, log)`},
	},
	{
		name: "unknown nested key",
		yaml: withMinimal(
			"encrypt:",
			"  tables:",
			"    - name: patients",
			"      columns:",
			"        - name: ssn",
			"          type: text",
			"          serch: equality",
		),
		want: []string{`t.yaml:11: encrypt.tables[0].columns[0].serch: unknown key; did you mean "search"? (expected one of name, type, search, index_column, normalize, key_class)`},
	},
	{
		name: "unknown key without a near miss",
		yaml: withMinimal("listen: {tls_everywhere: true}"),
		want: []string{`t.yaml:5: listen.tls_everywhere: unknown key (expected one of address, tls, max_message_size, shutdown_timeout)`},
	},
	{
		name: "duplicate key",
		yaml: withMinimal("log: {level: info}", "log: {level: debug}"),
		want: []string{`t.yaml:6: log: duplicate key (first at line 5)`},
	},
	{
		name: "merge key",
		yaml: withMinimal("base: &b {level: info}", "log: {<<: *b}"),
		want: []string{
			`t.yaml:5: base: unknown key (expected one of listen, admin, upstream, tenancy, keys, encrypt, audit, log)`,
			`t.yaml:6: log: YAML merge keys (<<) are not supported; write the keys out`,
		},
	},
	{
		name: "section of the wrong kind",
		yaml: withMinimal("log: [info]"),
		want: []string{`t.yaml:5: log: expected a mapping, got a list`},
	},
	{
		name: "file of the wrong kind",
		yaml: y("- upstream"),
		want: []string{`t.yaml:1: expected a mapping, got a list`},
	},
	{
		name: "invalid yaml",
		yaml: withMinimal("log:", "  level: info", " format: json"),
		want: []string{`t.yaml:6: invalid YAML: did not find expected key`},
	},
	{
		name: "two documents",
		yaml: y("upstream: {address: db:5432}", "---", "log: {level: info}"),
		want: []string{`t.yaml:2: a second YAML document; the file must hold exactly one`},
	},
	{
		name: "empty file",
		yaml: nil,
		want: []string{
			`t.yaml: upstream.address: is required (host:port of the PostgreSQL server)`,
		},
	},
	{
		name: "missing upstream address",
		yaml: y("upstream:", "  user: pgcloak", "keys: {local: {master_key_file: m.key}}"),
		want: []string{`t.yaml:1: upstream.address: is required (host:port of the PostgreSQL server)`},
	},
	{
		name: "upstream address without port",
		yaml: y("upstream:", "  address: db.internal", "keys: {local: {master_key_file: m.key}}"),
		want: []string{`t.yaml:2: upstream.address: "db.internal" is not host:port (e.g. 127.0.0.1:6432)`},
	},
	{
		name: "upstream port out of range",
		yaml: y("upstream:", "  address: db:0", "keys: {local: {master_key_file: m.key}}"),
		want: []string{`t.yaml:2: upstream.address: "db:0": the port must be a number from 1 to 65535`},
	},
	{
		name: "listen address",
		yaml: withMinimal("listen:", "  address: '6432'"),
		want: []string{`t.yaml:6: listen.address: "6432" is not host:port (e.g. 127.0.0.1:6432)`},
	},
	{
		name: "admin address",
		yaml: withMinimal("admin: {address: 'localhost:http'}"),
		want: []string{`t.yaml:5: admin.address: "localhost:http": the port must be a number from 0 to 65535`},
	},
	{
		name: "negative max_tenant_labels",
		yaml: withMinimal("admin: {max_tenant_labels: -1}"),
		want: []string{`t.yaml:5: admin.max_tenant_labels: must be from 0 (no tenant labels) to 10000, got -1`},
	},
	{
		name: "too many tenant labels",
		yaml: withMinimal("admin:", "  address: 127.0.0.1:9187", "  max_tenant_labels: 100000"),
		want: []string{`t.yaml:7: admin.max_tenant_labels: must be from 0 (no tenant labels) to 10000, got 100000`},
	},
	{
		name: "max_tenant_labels not an integer",
		yaml: withMinimal("admin: {max_tenant_labels: lots}"),
		want: []string{`t.yaml:5: admin.max_tenant_labels: "lots" is not an integer`},
	},
	{
		name: "unsupported sslmode",
		yaml: y("upstream:", "  address: db:5432", "  sslmode: verify-ca", "keys: {local: {master_key_file: m.key}}"),
		want: []string{`t.yaml:3: upstream.sslmode: "verify-ca" is not a supported sslmode (disable, require, verify-full, follow)`},
	},
	{
		name: "verify-full without root cert",
		yaml: y("upstream:", "  address: db:5432", "  sslmode: verify-full", "keys: {local: {master_key_file: m.key}}"),
		want: []string{`t.yaml:1: upstream.root_cert_file: is required with sslmode verify-full (the CA certificate that signed the server's, PEM)`},
	},
	{
		name: "root cert without verify-full",
		yaml: y("upstream:", "  address: db:5432", "  sslmode: require", "  root_cert_file: ca.pem", "keys: {local: {master_key_file: m.key}}"),
		want: []string{`t.yaml:4: upstream.root_cert_file: is set, but sslmode require does not verify the server certificate; use sslmode verify-full or remove root_cert_file`},
	},
	{
		name: "empty database",
		yaml: y("upstream:", "  address: db:5432", "  database: ''", "keys: {local: {master_key_file: m.key}}"),
		want: []string{`t.yaml:3: upstream.database: must not be empty (leave the key out for the default, postgres)`},
	},
	{
		name: "connect_timeout without unit",
		yaml: y("upstream:", "  address: db:5432", "  connect_timeout: 10", "keys: {local: {master_key_file: m.key}}"),
		want: []string{`t.yaml:3: upstream.connect_timeout: "10" is not a duration (a number with a unit, such as "60s", "500ms" or "1m30s")`},
	},
	{
		name: "tls without key_file",
		yaml: withMinimal("listen:", "  tls:", "    cert_file: server.crt"),
		want: []string{`t.yaml:6: listen.tls.key_file: is required with listen.tls (the server private key, PEM)`},
	},
	{
		name: "tls present but empty",
		yaml: withMinimal("listen:", "  tls:", "    # cert_file: server.crt"),
		want: []string{
			`t.yaml:6: listen.tls.cert_file: is required with listen.tls (the server certificate chain, PEM)`,
			`t.yaml:6: listen.tls.key_file: is required with listen.tls (the server private key, PEM)`,
		},
	},
	{
		name: "tls require not a boolean",
		yaml: withMinimal("listen:", "  tls:", "    cert_file: c", "    key_file: k", "    require: yes"),
		want: []string{`t.yaml:9: listen.tls.require: "yes" is not a boolean (true or false)`},
	},
	{
		name: "client_certs without client_ca_file",
		yaml: y("listen:", "  tls: {cert_file: c, key_file: k}", "upstream:", "  address: db:5432", "  sslmode: require",
			"  client_certs:", "    - {user: app, cert_file: app.crt, key_file: app.key}", "keys: {local: {master_key_file: m.key}}"),
		want: []string{`t.yaml:6: upstream.client_certs: is set, but listen.tls.client_ca_file is not: pgcloak presents these certificates only for clients whose own certificate it has verified`},
	},
	{
		name: "client_certs with sslmode disable",
		yaml: y("listen:", "  tls: {cert_file: c, key_file: k, client_ca_file: ca}", "upstream:", "  address: db:5432",
			"  client_certs:", "    - {user: app, cert_file: app.crt, key_file: app.key}", "keys: {local: {master_key_file: m.key}}"),
		want: []string{`t.yaml:5: upstream.client_certs: needs TLS upstream, but sslmode is disable; use sslmode require, verify-full or follow`},
	},
	{
		name: "client_certs entry incomplete",
		yaml: y("listen:", "  tls: {cert_file: c, key_file: k, client_ca_file: ca}", "upstream:", "  address: db:5432", "  sslmode: follow",
			"  client_certs:", "    - user: 'app['", "      cert_file: app.crt", "    - {cert_file: x.crt, key_file: x.key, password: pw}", "keys: {local: {master_key_file: m.key}}"),
		want: []string{
			`t.yaml:7: upstream.client_certs[0].user: "app[" is not a valid pattern: syntax error in pattern (want a role name, or a glob using *, ? and [...])`,
			`t.yaml:7: upstream.client_certs[0].key_file: is required (the certificate's private key, PEM)`,
			`t.yaml:9: upstream.client_certs[1].password: unknown key (expected one of user, cert_file, key_file)`,
			`t.yaml:9: upstream.client_certs[1].user: is required (the role this certificate logs in as, or a glob pattern)`,
		},
	},
	{
		name: "max_message_size not a size",
		yaml: withMinimal("listen: {max_message_size: 64XB}"),
		want: []string{`t.yaml:5: listen.max_message_size: "64XB" is not a size (a number of bytes, or a whole number with a unit: B, kB, MB, GB, KiB, MiB, GiB)`},
	},
	{
		name: "max_message_size too small",
		yaml: withMinimal("listen: {max_message_size: 512}"),
		want: []string{`t.yaml:5: listen.max_message_size: "512" is out of range (1 KiB to 1 GiB)`},
	},
	{
		name: "max_message_size too large",
		yaml: withMinimal("listen: {max_message_size: 2GiB}"),
		want: []string{`t.yaml:5: listen.max_message_size: "2GiB" is out of range (1 KiB to 1 GiB)`},
	},
	{
		name: "max_message_size overflows",
		yaml: withMinimal("listen: {max_message_size: 99999999999999999999999GB}"),
		want: []string{`t.yaml:5: listen.max_message_size: "99999999999999999999999GB" is out of range (1 KiB to 1 GiB)`},
	},
	{
		name: "negative shutdown_timeout",
		yaml: withMinimal("listen: {shutdown_timeout: -1s}"),
		want: []string{`t.yaml:5: listen.shutdown_timeout: -1s is negative (0 closes sessions at once)`},
	},
	{
		name: "unsupported tenancy mode",
		yaml: withMinimal("tenancy:", "  mode: header"),
		want: []string{`t.yaml:6: tenancy.mode: "header" is not a supported tenancy mode (login, jwt)`},
	},
	{
		name: "tenancy setting without a dot",
		yaml: withMinimal("tenancy:", "  setting: tenant_id"),
		want: []string{`t.yaml:6: tenancy.setting: "tenant_id" is not a custom setting name (want prefix.name such as app.tenant_id: letters, digits and underscores, with at least one dot)`},
	},
	{
		name: "tenancy setting in the reserved namespace",
		yaml: withMinimal("tenancy:", "  setting: pgcloak.tenant"),
		want: []string{`t.yaml:6: tenancy.setting: "pgcloak.tenant" is in the pgcloak.* namespace, which the proxy reserves for itself`},
	},
	{
		name: "role without a tenant",
		yaml: withMinimal("tenancy:", "  login:", "    roles:", "      acme_app: acme", "      globex_app:"),
		want: []string{`t.yaml:9: tenancy.login.roles.globex_app: the tenant name must not be empty`},
	},
	{
		name: "invalid unscoped pattern",
		yaml: withMinimal("tenancy:", "  unscoped_roles:", "    - migrator", "    - 'regress_[a'"),
		want: []string{`t.yaml:8: tenancy.unscoped_roles[1]: "regress_[a" is not a valid pattern: syntax error in pattern (want a role name, or a glob using *, ? and [...])`},
	},
	{
		name: "empty unscoped role",
		yaml: withMinimal("tenancy:", "  unscoped_roles: ['']"),
		want: []string{`t.yaml:6: tenancy.unscoped_roles[0]: a role name or pattern must not be empty`},
	},
	{
		name: "role both mapped and unscoped",
		yaml: withMinimal("tenancy:", "  login:", "    roles:", "      regress_acme: acme", "  unscoped_roles: ['regress_*']"),
		want: []string{`t.yaml:8: tenancy.login.roles.regress_acme: role "regress_acme" is mapped to tenant "acme" and also matches unscoped_roles; a role is either scoped to one tenant or unscoped`},
	},
	{
		name: "jwt mode without a key",
		yaml: y("upstream: {address: db:5432, user: pgcloak}", "keys: {local: {master_key_file: m.key}}", "tenancy:", "  mode: jwt", "  jwt: {upstream_user: app_jwt}"),
		want: []string{`t.yaml:5: tenancy.jwt: mode jwt needs a verification key: set hs256_secret, public_key_file or jwks_url`},
	},
	{
		name: "jwt mode without upstream user",
		yaml: y("upstream: {address: db:5432}", "keys: {local: {master_key_file: m.key}}", "tenancy:", "  mode: jwt", "  jwt: {public_key_file: k.pem, upstream_user: app_jwt}"),
		want: []string{`t.yaml:1: upstream.user: is required with tenancy.mode jwt (the proxy logs in upstream as this role)`},
	},
	{
		name: "jwt with two keys",
		yaml: withMinimal("tenancy:", "  jwt:", "    hs256_secret: ${JWT_SECRET}", "    public_key_file: k.pem"),
		env:  map[string]string{"JWT_SECRET": testJWTSecret},
		want: []string{`t.yaml:6: tenancy.jwt: hs256_secret and public_key_file are both set; set exactly one`},
	},
	{
		name: "short hs256 secret",
		yaml: withMinimal("tenancy:", "  jwt:", "    hs256_secret: tooshort"),
		want: []string{`t.yaml:7: tenancy.jwt.hs256_secret: is shorter than 32 bytes, the minimum for HS256 (RFC 7518 section 3.2)`},
	},
	{
		name: "empty jwt claim",
		yaml: withMinimal("tenancy:", "  jwt:", "    claim: ''"),
		want: []string{`t.yaml:7: tenancy.jwt.claim: must not be empty (leave the key out for the default, tenant_id)`},
	},
	{
		name: "token roles without a key",
		yaml: withMinimal("tenancy:", "  token_roles: [app_pool]"),
		want: []string{`t.yaml:6: tenancy.token_roles: token roles need a verification key for their tenant tokens: set tenancy.jwt.hs256_secret, public_key_file or jwks_url`},
	},
	{
		name: "jwt with three keys",
		yaml: withMinimal("tenancy:", "  jwt:", "    hs256_secret: ${JWT_SECRET}", "    public_key_file: k.pem", "    jwks_url: https://auth.example.com/jwks.json"),
		env:  map[string]string{"JWT_SECRET": testJWTSecret},
		want: []string{`t.yaml:6: tenancy.jwt: hs256_secret, public_key_file, jwks_url are all set; set exactly one`},
	},
	{
		name: "jwt with a public key and jwks",
		yaml: withMinimal("tenancy:", "  token_roles: [app_pool]", "  jwt:", "    public_key_file: k.pem", "    jwks_url: https://auth.example.com/jwks.json"),
		want: []string{`t.yaml:7: tenancy.jwt: public_key_file and jwks_url are both set; set exactly one`},
	},
	{
		name: "jwt mode without jwt upstream user",
		yaml: y("upstream: {address: db:5432, user: pgcloak}", "keys: {local: {master_key_file: m.key}}", "tenancy:", "  mode: jwt", "  jwt:", "    jwks_url: https://auth.example.com/jwks.json"),
		want: []string{`t.yaml:5: tenancy.jwt.upstream_user: is required with tenancy.mode jwt (the role jwt sessions run as upstream, with upstream_password; never upstream.user)`},
	},
	{
		name: "jwt upstream user is upstream.user",
		yaml: y("upstream: {address: db:5432, user: pgcloak}", "keys: {local: {master_key_file: m.key}}", "tenancy:", "  mode: jwt", "  jwt:", "    jwks_url: https://auth.example.com/jwks.json", "    upstream_user: pgcloak"),
		want: []string{`t.yaml:7: tenancy.jwt.upstream_user: "pgcloak" is upstream.user, the proxy's own role (key store, verified tenant pin), as which no client session may run; use an ordinary role`},
	},
	{
		name: "jwt upstream password without user",
		yaml: withMinimal("tenancy:", "  jwt:", "    upstream_password: pw"),
		want: []string{`t.yaml:7: tenancy.jwt.upstream_password: is set, but upstream_user is not`},
	},
	{
		name: "mapped role matches a token role pattern",
		yaml: withMinimal("tenancy:", "  login:", "    roles:", "      app_acme: acme", "  token_roles: ['app_*']", "  jwt: {jwks_url: 'https://auth.example.com/jwks.json'}"),
		want: []string{`t.yaml:8: tenancy.login.roles.app_acme: role "app_acme" is mapped to tenant "acme" and also matches token_roles; a role is either scoped to one tenant, a token role or unscoped`},
	},
	{
		name: "mapped role is a token role and unscoped",
		yaml: withMinimal("tenancy:", "  login:", "    roles:", "      app_acme: acme", "  token_roles: [app_acme]", "  unscoped_roles: ['*']", "  jwt: {jwks_url: 'https://auth.example.com/jwks.json'}"),
		want: []string{
			`t.yaml:8: tenancy.login.roles.app_acme: role "app_acme" is mapped to tenant "acme" and also matches unscoped_roles; a role is either scoped to one tenant or unscoped`,
			`t.yaml:8: tenancy.login.roles.app_acme: role "app_acme" is mapped to tenant "acme" and also matches token_roles; a role is either scoped to one tenant, a token role or unscoped`,
			`t.yaml:9: tenancy.token_roles[0]: role "app_acme" also matches unscoped_roles; a role is either scoped to one tenant, a token role or unscoped`,
		},
	},
	{
		name: "same pattern in token and unscoped roles",
		yaml: withMinimal("tenancy:", "  token_roles:", "    - app_pool", "    - 'regress_*'", "  unscoped_roles: ['regress_*']", "  jwt: {jwks_url: 'https://auth.example.com/jwks.json'}"),
		want: []string{`t.yaml:8: tenancy.token_roles[1]: "regress_*" is also in unscoped_roles; a role is either scoped to one tenant, a token role or unscoped`},
	},
	{
		name: "token role name matches an unscoped pattern",
		yaml: withMinimal("tenancy:", "  token_roles: [regress_pool]", "  unscoped_roles: ['regress_*']", "  jwt: {jwks_url: 'https://auth.example.com/jwks.json'}"),
		want: []string{`t.yaml:6: tenancy.token_roles[0]: role "regress_pool" also matches unscoped_roles; a role is either scoped to one tenant, a token role or unscoped`},
	},
	{
		name: "unscoped role name matches a token pattern",
		yaml: withMinimal("tenancy:", "  token_roles: ['app_*']", "  unscoped_roles:", "    - migrator", "    - app_migrator", "  jwt: {jwks_url: 'https://auth.example.com/jwks.json'}"),
		want: []string{`t.yaml:9: tenancy.unscoped_roles[1]: role "app_migrator" also matches token_roles; a role is either scoped to one tenant, a token role or unscoped`},
	},
	{
		name: "invalid token role pattern",
		yaml: withMinimal("tenancy:", "  token_roles: ['app_[']", "  jwt: {jwks_url: 'https://auth.example.com/jwks.json'}"),
		want: []string{`t.yaml:6: tenancy.token_roles[0]: "app_[" is not a valid pattern: syntax error in pattern (want a role name, or a glob using *, ? and [...])`},
	},
	{
		name: "jwks over http to another host",
		yaml: withMinimal("tenancy:", "  jwt:", "    jwks_url: http://auth.example.com/jwks.json"),
		want: []string{`t.yaml:7: tenancy.jwt.jwks_url: "http://auth.example.com/jwks.json" uses http to a host that is not loopback; use https (http only to localhost, 127.0.0.0/8 or ::1)`},
	},
	{
		name: "jwks not a URL",
		yaml: withMinimal("tenancy:", "  jwt:", "    jwks_url: auth.example.com/jwks.json"),
		want: []string{`t.yaml:7: tenancy.jwt.jwks_url: "auth.example.com/jwks.json" is not an https:// URL`},
	},
	{
		name: "jwks with credentials",
		yaml: withMinimal("tenancy:", "  jwt:", "    jwks_url: https://u:p@auth.example.com/jwks.json"),
		want: []string{`t.yaml:7: tenancy.jwt.jwks_url: "https://u:p@auth.example.com/jwks.json" must not carry credentials`},
	},
	{
		name: "jwt leeway and lifetime out of range",
		yaml: withMinimal("tenancy:", "  jwt:", "    leeway: -1s", "    max_lifetime: 0s", "tenancy2: {}"),
		want: []string{
			`t.yaml:7: tenancy.jwt.leeway: must be from 0s to 5m0s (the clock skew allowed on exp, nbf and iat), got -1s`,
			`t.yaml:8: tenancy.jwt.max_lifetime: must be positive, got 0s`,
			`t.yaml:9: tenancy2: unknown key; did you mean "tenancy"? (expected one of listen, admin, upstream, tenancy, keys, encrypt, audit, log)`,
		},
	},
	{
		name: "jwt leeway too large",
		yaml: withMinimal("tenancy:", "  jwt:", "    leeway: 1h"),
		want: []string{`t.yaml:7: tenancy.jwt.leeway: must be from 0s to 5m0s (the clock skew allowed on exp, nbf and iat), got 1h0m0s`},
	},
	{
		name: "jwt claim not a dot path",
		yaml: withMinimal("tenancy:", "  jwt:", "    claim: app_metadata..tenant"),
		want: []string{`t.yaml:7: tenancy.jwt.claim: "app_metadata..tenant" is not a dot path (claim names separated by single dots, such as app_metadata.tenant_id)`},
	},
	{
		name: "jwt algorithms with a public key",
		yaml: withMinimal("tenancy:", "  jwt:", "    public_key_file: k.pem", "    algorithms: [RS256, HS256, none, rs256, ES512]"),
		want: []string{
			`t.yaml:8: tenancy.jwt.algorithms[1]: HS256 is allowed only with hs256_secret: with a public key it would accept tokens signed with the public key itself`,
			`t.yaml:8: tenancy.jwt.algorithms[2]: "none" is never allowed: it accepts tokens without a signature`,
			`t.yaml:8: tenancy.jwt.algorithms[3]: "rs256" is not a supported algorithm (HS256, RS256, RS384, RS512, PS256, ES256, ES384, EdDSA)`,
			`t.yaml:8: tenancy.jwt.algorithms[4]: "ES512" is not a supported algorithm (HS256, RS256, RS384, RS512, PS256, ES256, ES384, EdDSA)`,
		},
	},
	{
		name: "jwt algorithms with a secret",
		yaml: withMinimal("tenancy:", "  jwt:", "    hs256_secret: ${JWT_SECRET}", "    algorithms:", "      - HS256", "      - EdDSA", "      - None"),
		env:  map[string]string{"JWT_SECRET": testJWTSecret},
		want: []string{
			`t.yaml:10: tenancy.jwt.algorithms[1]: EdDSA needs public_key_file or jwks_url; with hs256_secret only HS256 is allowed`,
			`t.yaml:11: tenancy.jwt.algorithms[2]: "None" is never allowed: it accepts tokens without a signature`,
		},
	},
	{
		name: "jwt algorithms empty",
		yaml: withMinimal("tenancy:", "  jwt:", "    algorithms: []"),
		want: []string{`t.yaml:7: tenancy.jwt.algorithms: must not be empty (leave the key out to allow every algorithm of the key's kind)`},
	},
	{
		name: "unsupported key provider",
		yaml: y("upstream: {address: db:5432}", "keys:", "  provider: vault"),
		want: []string{`t.yaml:3: keys.provider: "vault" is not a supported key provider (local, aws)`},
	},
	{
		name: "local provider without master key",
		yaml: y("upstream: {address: db:5432}", "keys:", "  provider: local", "encrypt:", "  tables: [{name: t, columns: [{name: c, type: text}]}]"),
		want: []string{`t.yaml:2: keys.local.master_key_file: is required with provider local when encrypt.tables declares tables (` + "`pgcloak keys init-local -o master.key`" + ` creates one)`},
	},
	{
		name: "aws provider without region and key",
		yaml: y("upstream: {address: db:5432}", "keys:", "  provider: aws", "  aws:", "    endpoint: localhost:4566"),
		want: []string{
			`t.yaml:4: keys.aws.region: is required with provider aws`,
			`t.yaml:4: keys.aws.key_id: is required with provider aws (the default key-encryption key: a key id, ARN or alias/...)`,
			`t.yaml:5: keys.aws.endpoint: "localhost:4566" is not an http:// or https:// URL`,
		},
	},
	{
		name: "tenant key without key_id",
		yaml: withMinimal("  tenants:", "    acme: {}"),
		want: []string{`t.yaml:6: keys.tenants.acme.key_id: is required (the KMS key that wraps this tenant's data keys)`},
	},
	{
		name: "cache_ttl zero",
		yaml: withMinimal("  cache_ttl: 0s"),
		want: []string{`t.yaml:5: keys.cache_ttl: must be positive, got 0s`},
	},
	{
		name: "cache_max_entries zero",
		yaml: withMinimal("  cache_max_entries: 0"),
		want: []string{`t.yaml:5: keys.cache_max_entries: must be positive, got 0`},
	},
	{
		name: "cache_max_entries not an integer",
		yaml: withMinimal("  cache_max_entries: lots"),
		want: []string{`t.yaml:5: keys.cache_max_entries: "lots" is not an integer`},
	},
	{
		name: "rotate_after_encryptions zero",
		yaml: withMinimal("  rotate_after_encryptions: 0"),
		want: []string{`t.yaml:5: keys.rotate_after_encryptions: must be from 1 to 4294967296 (2^32, the most encryptions under one AES-GCM key with random nonces), got 0`},
	},
	{
		name: "rotate_after_encryptions negative",
		yaml: withMinimal("  rotate_after_encryptions: -1"),
		want: []string{`t.yaml:5: keys.rotate_after_encryptions: must be from 1 to 4294967296 (2^32, the most encryptions under one AES-GCM key with random nonces), got -1`},
	},
	{
		name: "rotate_after_encryptions above 2^32",
		yaml: withMinimal("  rotate_after_encryptions: 4294967297"),
		want: []string{`t.yaml:5: keys.rotate_after_encryptions: must be from 1 to 4294967296 (2^32, the most encryptions under one AES-GCM key with random nonces), got 4294967297`},
	},
	{
		name: "rotate_after_encryptions beyond int64",
		yaml: withMinimal("  rotate_after_encryptions: 99999999999999999999"),
		want: []string{`t.yaml:5: keys.rotate_after_encryptions: must be from 1 to 4294967296 (2^32, the most encryptions under one AES-GCM key with random nonces), got 99999999999999999999`},
	},
	{
		name: "rotate_after_encryptions not an integer",
		yaml: withMinimal("  rotate_after_encryptions: 1.5e9"),
		want: []string{`t.yaml:5: keys.rotate_after_encryptions: "1.5e9" is not an integer`},
	},
	{
		name: "rotate_after_encryptions not a scalar",
		yaml: withMinimal("  rotate_after_encryptions: [1]"),
		want: []string{`t.yaml:5: keys.rotate_after_encryptions: expected an integer, got a list`},
	},
	{
		name: "unsupported on_decrypt_error",
		yaml: withMinimal("encrypt:", "  on_decrypt_error: skip"),
		want: []string{`t.yaml:6: encrypt.on_decrypt_error: "skip" is not a supported on_decrypt_error policy (error, null)`},
	},
	{
		name: "require_format_checks not a boolean",
		yaml: withMinimal("encrypt:", "  require_format_checks: sometimes"),
		want: []string{`t.yaml:6: encrypt.require_format_checks: "sometimes" is not a boolean (true or false)`},
	},
	{
		name: "invalid table name",
		yaml: withMinimal("encrypt:", "  tables:", "    - name: public.pat-ients", "      columns: [{name: ssn, type: text}]"),
		want: []string{`t.yaml:7: encrypt.tables[0].name: "public.pat-ients" is not a table name (want "table" or "schema.table", each an unquoted identifier: letters, digits and underscores, not starting with a digit, at most 63 bytes)`},
	},
	{
		name: "table without name",
		yaml: withMinimal("encrypt:", "  tables:", "    - columns: [{name: ssn, type: text}]"),
		want: []string{`t.yaml:7: encrypt.tables[0].name: is required ("table" or "schema.table")`},
	},
	{
		name: "duplicate table",
		yaml: withMinimal(
			"encrypt:",
			"  tables:",
			"    - name: patients",
			"      columns: [{name: ssn, type: text}]",
			"    - name: Public.Patients",
			"      columns: [{name: email, type: text}]",
		),
		want: []string{`t.yaml:9: encrypt.tables[1].name: public.patients is already declared at encrypt.tables[0] (line 7)`},
	},
	{
		name: "duplicate table after an invalid one",
		yaml: withMinimal(
			"encrypt:",
			"  tables:",
			"    - name: bad-name",
			"      columns: [{name: ssn, type: text}]",
			"    - name: patients",
			"      columns: [{name: ssn, type: text}]",
			"    - name: patients",
			"      columns: [{name: ssn, type: text}]",
		),
		want: []string{
			`t.yaml:7: encrypt.tables[0].name: "bad-name" is not a table name (want "table" or "schema.table", each an unquoted identifier: letters, digits and underscores, not starting with a digit, at most 63 bytes)`,
			`t.yaml:11: encrypt.tables[2].name: public.patients is already declared at encrypt.tables[1] (line 9)`,
		},
	},
	{
		name: "two index columns alike",
		yaml: withMinimal(
			"encrypt:",
			"  tables:",
			"    - name: patients",
			"      columns:",
			"        - {name: a, type: text, search: equality, index_column: idx}",
			"        - {name: b, type: text, search: equality, index_column: IDX}",
		),
		want: []string{`t.yaml:10: encrypt.tables[0].columns[1].index_column: index column "idx" clashes with index column "idx" at encrypt.tables[0].columns[0].index_column (line 9)`},
	},
	{
		name: "table without columns",
		yaml: withMinimal("encrypt:", "  tables:", "    - name: patients"),
		want: []string{`t.yaml:7: encrypt.tables[0].columns: public.patients declares no columns (want at least one; leave the table out to pass it through untouched)`},
	},
	{
		name: "table with an empty column list",
		yaml: withMinimal("encrypt:", "  tables:", "    - name: patients", "      columns: []"),
		want: []string{`t.yaml:8: encrypt.tables[0].columns: public.patients declares no columns (want at least one; leave the table out to pass it through untouched)`},
	},
	{
		name: "invalid column name",
		yaml: withMinimal("encrypt:", "  tables:", "    - name: patients", "      columns:", "        - name: 1ssn", "          type: text"),
		want: []string{`t.yaml:9: encrypt.tables[0].columns[0].name: "1ssn" is not a column name (an unquoted identifier: letters, digits and underscores, not starting with a digit, at most 63 bytes)`},
	},
	{
		name: "unsupported type",
		yaml: withMinimal(
			"encrypt:",
			"  tables:",
			"    - name: patients",
			"      columns:",
			"        - name: ssn",
			"          type: text",
			"        - name: note",
			"          type: txt",
		),
		want: []string{`t.yaml:12: encrypt.tables[0].columns[1].type: "txt" is not a supported type (text, varchar, bpchar, int2, int4, int8, numeric, float4, float8, bool, date, timestamp, timestamptz, uuid, json, jsonb, bytea)`},
	},
	{
		name: "missing type",
		yaml: withMinimal("encrypt:", "  tables:", "    - name: patients", "      columns:", "        - name: ssn"),
		want: []string{`t.yaml:9: encrypt.tables[0].columns[0].type: is required (the type the application sees: text, varchar, bpchar, int2, int4, int8, numeric, float4, float8, bool, date, timestamp, timestamptz, uuid, json, jsonb, bytea)`},
	},
	{
		name: "duplicate column",
		yaml: withMinimal(
			"encrypt:",
			"  tables:",
			"    - name: patients",
			"      columns:",
			"        - {name: ssn, type: text}",
			"        - {name: SSN, type: text}",
		),
		want: []string{`t.yaml:10: encrypt.tables[0].columns[1].name: column "ssn" clashes with column "ssn" at encrypt.tables[0].columns[0].name (line 9)`},
	},
	{
		name: "column named like a default index column",
		yaml: withMinimal(
			"encrypt:",
			"  tables:",
			"    - name: patients",
			"      columns:",
			"        - {name: ssn, type: text, search: equality}",
			"        - {name: ssn_bidx, type: bytea}",
		),
		want: []string{`t.yaml:9: encrypt.tables[0].columns[0]: default index column "ssn_bidx" clashes with column "ssn_bidx" at encrypt.tables[0].columns[1].name (line 10); set index_column to another name`},
	},
	{
		name: "index column named like a column",
		yaml: withMinimal(
			"encrypt:",
			"  tables:",
			"    - name: patients",
			"      columns:",
			"        - name: ssn",
			"          type: text",
			"          search: equality",
			"          index_column: email",
			"        - {name: email, type: text}",
		),
		want: []string{`t.yaml:12: encrypt.tables[0].columns[0].index_column: index column "email" clashes with column "email" at encrypt.tables[0].columns[1].name (line 13)`},
	},
	{
		name: "index_column with search none",
		yaml: withMinimal("encrypt:", "  tables:", "    - name: patients", "      columns:", "        - {name: ssn, type: text, index_column: ssn_idx}"),
		want: []string{`t.yaml:9: encrypt.tables[0].columns[0].index_column: is set but search is none (set search: equality, or remove index_column)`},
	},
	{
		name: "unsupported search",
		yaml: withMinimal("encrypt:", "  tables:", "    - name: patients", "      columns:", "        - {name: ssn, type: text, search: range}"),
		want: []string{`t.yaml:9: encrypt.tables[0].columns[0].search: "range" is not a supported search (none, equality)`},
	},
	{
		name: "normalize lower on a number",
		yaml: withMinimal("encrypt:", "  tables:", "    - name: patients", "      columns:", "        - {name: age, type: int4, search: equality, normalize: lower}"),
		want: []string{`t.yaml:9: encrypt.tables[0].columns[0].normalize: lower applies only to text, varchar, bpchar columns, not int4`},
	},
	{
		name: "normalize lower without search",
		yaml: withMinimal("encrypt:", "  tables:", "    - name: patients", "      columns:", "        - {name: email, type: text, normalize: lower}"),
		want: []string{`t.yaml:9: encrypt.tables[0].columns[0].normalize: lower applies only to searchable columns (set search: equality, or remove normalize)`},
	},
	{
		name: "unsupported normalize",
		yaml: withMinimal("encrypt:", "  tables:", "    - name: patients", "      columns:", "        - {name: email, type: text, search: equality, normalize: upper}"),
		want: []string{`t.yaml:9: encrypt.tables[0].columns[0].normalize: "upper" is not a supported normalization (none, lower)`},
	},
	{
		name: "invalid key_class",
		yaml: withMinimal("encrypt:", "  tables:", "    - name: patients", "      columns:", "        - {name: dx, type: text, key_class: 'phi-1'}"),
		want: []string{`t.yaml:9: encrypt.tables[0].columns[0].key_class: "phi-1" is not a key class name (an unquoted identifier: letters, digits and underscores, not starting with a digit, at most 63 bytes)`},
	},
	{
		name: "empty audit output",
		yaml: withMinimal("audit:", "  output: ''"),
		want: []string{`t.yaml:6: audit.output: must not be empty (stderr, stdout or a file path)`},
	},
	{
		name: "unsupported log level and format",
		yaml: withMinimal("log:", "  level: verbose", "  format: text"),
		want: []string{
			`t.yaml:6: log.level: "verbose" is not a supported log level (debug, info, warn, error)`,
			`t.yaml:7: log.format: "text" is not a supported log format (json, console)`,
		},
	},
	{
		name: "string where a list is expected",
		yaml: withMinimal("tenancy:", "  unscoped_roles: migrator"),
		want: []string{`t.yaml:6: tenancy.unscoped_roles: expected a list, got a single value`},
	},
	{
		name: "unset environment variable",
		yaml: withMinimal("audit:", "  output: /var/log/${PGCLOAK_AUDIT_DIR}/audit.log"),
		want: []string{`t.yaml:6: audit.output: environment variable PGCLOAK_AUDIT_DIR is not set`},
	},
	{
		name: "unterminated environment reference",
		yaml: withMinimal("audit:", "  output: /var/log/${DIR/audit.log"),
		want: []string{`t.yaml:6: audit.output: "${" without a closing "}" (write "$${" for a literal "${")`},
	},
	{
		name: "malformed environment reference",
		yaml: withMinimal("audit:", "  output: /var/log/${audit-dir}/audit.log"),
		want: []string{`t.yaml:6: audit.output: malformed "${...}" reference: a variable name is letters, digits and underscores, not starting with a digit (write "$${" for a literal "${")`},
	},
	{
		name: "several problems in file order",
		yaml: y(
			"listen:",
			"  address: nowhere",
			"upstream:",
			"  address: db:5432",
			"  sslmode: prefer",
			"keys:",
			"  local: {master_key_file: m.key}",
			"log: {level: loud}",
		),
		want: []string{
			`t.yaml:2: listen.address: "nowhere" is not host:port (e.g. 127.0.0.1:6432)`,
			`t.yaml:5: upstream.sslmode: "prefer" is not a supported sslmode (disable, require, verify-full, follow)`,
			`t.yaml:8: log.level: "loud" is not a supported log level (debug, info, warn, error)`,
		},
	},
}

func TestParseErrors(t *testing.T) {
	for _, tt := range errorCases {
		t.Run(tt.name, func(t *testing.T) {
			c, err := parse("t.yaml", tt.yaml, envOf(tt.env))
			if err == nil {
				t.Fatalf("got config %+v, want problems:\n%s", c, strings.Join(tt.want, "\n"))
			}
			if c != nil {
				t.Errorf("got a config along with the error, want nil")
			}
			got := problems(t, err)
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got problems:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tt.want, "\n"))
			}
		})
	}
}

func TestValidationErrorFields(t *testing.T) {
	_, err := parse("pgcloak.yaml", withMinimal("log: {format: text}"), noEnv)
	var ve *ValidationError
	if !errors.As(fmt.Errorf("loading: %w", err), &ve) {
		t.Fatalf("got %T, want a wrapped *ValidationError to match errors.As", err)
	}
	want := []Problem{{File: "pgcloak.yaml", Line: 5, Path: "log.format", Msg: `"text" is not a supported log format (json, console)`}}
	if !reflect.DeepEqual(ve.Problems, want) {
		t.Errorf("got problems %+v, want %+v", ve.Problems, want)
	}
}

func TestSecretsNeverPrinted(t *testing.T) {
	const (
		password = "hunter2-do-not-print"
		short    = "short-jwt-secret"
	)
	tests := []struct {
		name string
		yaml []byte
		env  map[string]string
	}{
		{
			name: "invalid elsewhere",
			yaml: y(
				"upstream:",
				"  address: db:5432",
				"  password: "+password,
				"keys: {provider: nope}",
			),
		},
		{
			name: "from the environment, invalid elsewhere",
			yaml: y(
				"upstream:",
				"  address: db:5432",
				"  password: ${PGPW}",
				"log: {level: loud}",
			),
			env: map[string]string{"PGPW": password},
		},
		{
			name: "short hs256 secret",
			yaml: withMinimal("tenancy: {jwt: {hs256_secret: " + short + "}}"),
		},
		{
			name: "short hs256 secret from the environment",
			yaml: withMinimal("tenancy: {jwt: {hs256_secret: '${S}'}}"),
			env:  map[string]string{"S": short},
		},
		{
			name: "malformed reference in a secret",
			yaml: y("upstream:", "  address: db:5432", "  password: 'x${"+password+"'"),
		},
		{
			name: "bad reference name in a secret",
			yaml: y("upstream:", "  address: db:5432", "  password: 'x${"+password+"}'"),
		},
		{
			name: "secret where a mapping is",
			yaml: y("upstream:", "  address: db:5432", "  password: {"+password+": 1}"),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parse("t.yaml", tt.yaml, envOf(tt.env))
			if err == nil {
				t.Fatalf("got no error, want one")
			}
			for _, secret := range []string{password, short} {
				if msg := err.Error(); strings.Contains(msg, secret) {
					t.Errorf("got error %q, want it without the secret", msg)
				}
			}
		})
	}

	t.Run("valid config printed", func(t *testing.T) {
		setSpecEnv(t, password)
		c, err := Load(filepath.Join("testdata", "spec.yaml"))
		if err != nil {
			t.Fatalf("got error %v, want nil", err)
		}
		printed := fmt.Sprintf("%v %+v %#v %s %v %+v %#v %+v", c, c, c, c.Upstream.Password, c.Upstream, c.Tenancy, *c, c.Tenancy.JWT)
		for _, secret := range []string{password, testJWTSecret, testJWTPassword} {
			if strings.Contains(printed, secret) {
				t.Errorf("got a printed config containing a secret: %s", printed)
			}
		}
		if !strings.Contains(printed, "[redacted]") {
			t.Errorf("got %s, want [redacted] in place of the secrets", printed)
		}
	})
}

func TestUnsetEnvNamesVariable(t *testing.T) {
	// Through Parse and the real environment, as a deployment would.
	const name = "PGCLOAK_TEST_SURELY_UNSET_VARIABLE"
	if _, set := os.LookupEnv(name); set {
		t.Fatalf("%s is set in the environment; unset it to run this test", name)
	}
	_, err := Parse("pgcloak.yaml", y(
		"upstream:",
		"  address: db:5432",
		"  password: ${"+name+"}",
		"keys: {local: {master_key_file: m.key}}",
	))
	got := problems(t, err)
	want := []string{"pgcloak.yaml:3: upstream.password: environment variable " + name + " is not set"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "absent.yaml"))
	if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("got %v, want an error matching os.ErrNotExist", err)
	}
}

func TestTenancyLookups(t *testing.T) {
	c, err := parse("t.yaml", withMinimal(
		"tenancy:",
		"  login:",
		"    roles: {acme_app: acme, globex_app: globex}",
		"  unscoped_roles: [migrator, 'regress_*', 'ops_?', 'dba[12]']",
		"  token_roles: [app_pool, 'pool_*']",
		"  jwt: {jwks_url: 'https://auth.example.com/jwks.json'}",
	), noEnv)
	if err != nil {
		t.Fatalf("got error %v, want nil", err)
	}
	ten := c.Tenancy
	for _, tt := range []struct {
		role     string
		unscoped bool
		token    bool
		tenant   string
	}{
		{role: "app_pool", token: true},
		{role: "pool_7", token: true},
		{role: "pool", token: false},
		{role: "app_pool2"},
		{role: "migrator", unscoped: true},
		{role: "regress_user1", unscoped: true},
		{role: "regress_", unscoped: true},
		{role: "ops_a", unscoped: true},
		{role: "ops_ab"},
		{role: "dba1", unscoped: true},
		{role: "dba3"},
		{role: "migrator2"},
		{role: "acme_app", tenant: "acme"},
		{role: "globex_app", tenant: "globex"},
		{role: "ACME_APP"},
		{role: ""},
	} {
		t.Run(tt.role, func(t *testing.T) {
			if got := ten.IsUnscoped(tt.role); got != tt.unscoped {
				t.Errorf("IsUnscoped(%q): got %v, want %v", tt.role, got, tt.unscoped)
			}
			if got := ten.IsTokenRole(tt.role); got != tt.token {
				t.Errorf("IsTokenRole(%q): got %v, want %v", tt.role, got, tt.token)
			}
			tenant, ok := ten.TenantForRole(tt.role)
			if tenant != tt.tenant || ok != (tt.tenant != "") {
				t.Errorf("TenantForRole(%q): got %q, %v, want %q, %v", tt.role, tenant, ok, tt.tenant, tt.tenant != "")
			}
		})
	}

	t.Run("star matches every role", func(t *testing.T) {
		star := Tenancy{UnscopedRoles: []string{"*"}}
		for _, role := range []string{"a", "regress_x", "Anyone"} {
			if !star.IsUnscoped(role) {
				t.Errorf("IsUnscoped(%q) with [*]: got false, want true", role)
			}
		}
	})
}

func TestClientCertFor(t *testing.T) {
	c, err := parse("t.yaml", y(
		"listen:",
		"  tls: {cert_file: c, key_file: k, client_ca_file: ca.crt}",
		"upstream:",
		"  address: db:5432",
		"  sslmode: verify-full",
		"  root_cert_file: root.crt",
		"  client_certs:",
		"    - {user: billing, cert_file: billing.crt, key_file: billing.key}",
		"    - {user: 'app_*', cert_file: app.crt, key_file: app.key}",
		"keys: {local: {master_key_file: m.key}}",
	), noEnv)
	if err != nil {
		t.Fatalf("got error %v, want nil", err)
	}
	if got := c.Listen.TLS.ClientCAFile; got != "ca.crt" {
		t.Errorf("client_ca_file: got %q, want ca.crt", got)
	}
	for role, want := range map[string]string{"billing": "billing.crt", "app_web": "app.crt", "app_": "app.crt", "billing2": "", "": ""} {
		got, ok := c.Upstream.ClientCertFor(role)
		if got.CertFile != want || ok != (want != "") {
			t.Errorf("ClientCertFor(%q): got %q, %v, want %q", role, got.CertFile, ok, want)
		}
	}
	if got, _ := c.Upstream.ClientCertFor("billing"); got.KeyFile != "billing.key" || got.User != "billing" {
		t.Errorf("ClientCertFor(billing): got %+v", got)
	}
}

func TestTableAndColumnLookups(t *testing.T) {
	setSpecEnv(t, testPassword)
	c, err := Load(filepath.Join("testdata", "spec.yaml"))
	if err != nil {
		t.Fatalf("got error %v, want nil", err)
	}
	tests := []struct {
		schema, table, column string
		wantTable, wantColumn bool
	}{
		{"public", "patients", "ssn", true, true},
		{"public", "patients", "birth_date", true, true},
		{"public", "patients", "ssn_bidx", true, false},
		{"public", "patients", "SSN", true, false},
		{"other", "patients", "", false, false},
		{"", "patients", "", false, false},
		{"public", "Patients", "", false, false},
	}
	for _, tt := range tests {
		t.Run(tt.schema+"."+tt.table+"."+tt.column, func(t *testing.T) {
			tab, ok := c.Encrypt.Table(tt.schema, tt.table)
			if ok != tt.wantTable {
				t.Fatalf("Table(%q, %q): got ok %v, want %v", tt.schema, tt.table, ok, tt.wantTable)
			}
			if !ok {
				return
			}
			if got, want := tab.QualifiedName(), "public.patients"; got != want {
				t.Errorf("got table %s, want %s", got, want)
			}
			col, ok := tab.Column(tt.column)
			if ok != tt.wantColumn {
				t.Fatalf("Column(%q): got ok %v, want %v", tt.column, ok, tt.wantColumn)
			}
			if ok && col.Name != tt.column {
				t.Errorf("Column(%q): got column %q", tt.column, col.Name)
			}
		})
	}
}

func TestAliasBomb(t *testing.T) {
	// 2000 tables that are all one table of 2000 columns: four million
	// columns from a file of a few thousand lines.
	lines := append([]string{}, minimal...)
	lines = append(lines, "cols: &c")
	for i := 0; i < 2000; i++ {
		lines = append(lines, fmt.Sprintf("  - {name: c%d, type: text}", i))
	}
	lines = append(lines, "tab: &t {name: t, columns: *c}", "encrypt:", "  tables:")
	for i := 0; i < 2000; i++ {
		lines = append(lines, "    - *t")
	}
	_, err := parse("t.yaml", y(lines...), noEnv)
	got := problems(t, err)
	const want = "the file expands to more than 262144 values (check for aliases that repeat large parts of it)"
	if !slices.ContainsFunc(got, func(p string) bool { return strings.HasSuffix(p, ": "+want) }) {
		t.Errorf("got %d problems, first %q, want one ending %q", len(got), got[0], want)
	}
}

// TestRelativePathsResolveAgainstConfigDir loads a configuration from
// another directory than the working one: its relative file paths name
// files next to it, absolute ones and the audit streams stay as written.
func TestRelativePathsResolveAgainstConfigDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "etc", "pgcloak")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "pgcloak.yaml")
	content := y(
		"listen:",
		"  tls: {cert_file: tls/server.crt, key_file: server.key, client_ca_file: /abs/ca.crt}",
		"upstream:",
		"  address: db:5432",
		"  sslmode: verify-full",
		"  root_cert_file: ../upstream-ca.crt",
		"  client_certs:",
		"    - {user: app, cert_file: app.crt, key_file: app.key}",
		"tenancy:",
		"  jwt: {public_key_file: jwt.pem}",
		"keys: {local: {master_key_file: master.key}}",
		"audit: {output: audit.log}",
	)
	if err := os.WriteFile(file, content, 0o600); err != nil {
		t.Fatal(err)
	}
	t.Chdir(t.TempDir()) // somewhere else entirely

	got, err := Load(file)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	for _, tt := range []struct {
		key, got, want string
	}{
		{"listen.tls.cert_file", got.Listen.TLS.CertFile, filepath.Join(dir, "tls", "server.crt")},
		{"listen.tls.key_file", got.Listen.TLS.KeyFile, filepath.Join(dir, "server.key")},
		{"listen.tls.client_ca_file", got.Listen.TLS.ClientCAFile, "/abs/ca.crt"},
		{"upstream.root_cert_file", got.Upstream.RootCertFile, filepath.Join(dir, "..", "upstream-ca.crt")},
		{"upstream.client_certs[0].cert_file", got.Upstream.ClientCerts[0].CertFile, filepath.Join(dir, "app.crt")},
		{"upstream.client_certs[0].key_file", got.Upstream.ClientCerts[0].KeyFile, filepath.Join(dir, "app.key")},
		{"tenancy.jwt.public_key_file", got.Tenancy.JWT.PublicKeyFile, filepath.Join(dir, "jwt.pem")},
		{"keys.local.master_key_file", got.Keys.Local.MasterKeyFile, filepath.Join(dir, "master.key")},
		{"audit.output", got.Audit.Output, filepath.Join(dir, "audit.log")},
	} {
		if tt.got != tt.want {
			t.Errorf("%s: got %q, want %q", tt.key, tt.got, tt.want)
		}
	}
	if l := got.Line("keys.local.master_key_file"); l != 11 {
		t.Errorf("Line(keys.local.master_key_file): got %d, want 11", l)
	}
	if l := got.Line("admin.address"); l != 0 {
		t.Errorf("Line(admin.address): got %d, want 0 (not in the file)", l)
	}

	t.Run("audit streams", func(t *testing.T) {
		for _, out := range []string{"stderr", "stdout"} {
			path := filepath.Join(dir, out+".yaml")
			if err := os.WriteFile(path, withMinimal("audit: {output: "+out+"}"), 0o600); err != nil {
				t.Fatal(err)
			}
			c, err := Load(path)
			if err != nil {
				t.Fatal(err)
			}
			if c.Audit.Output != out {
				t.Errorf("audit.output: got %q, want %q", c.Audit.Output, out)
			}
		}
	})
}

// TestWithoutSecrets loads a file whose secrets refer to unset variables,
// as schema and the print steps of encrypt-existing do.
func TestWithoutSecrets(t *testing.T) {
	file := y(
		"upstream:",
		"  address: db:5432",
		"  password: ${PW}",
		"tenancy:",
		"  token_roles: [app_pool]",
		"  jwt:",
		"    hs256_secret: ${JWT}",
		"keys: {local: {master_key_file: m.key}}",
	)
	const secret = "0123456789abcdef0123456789abcdef"

	t.Run("plain load fails", func(t *testing.T) {
		_, err := parse("p.yaml", file, noEnv)
		want := []string{
			"p.yaml:3: upstream.password: environment variable PW is not set",
			"p.yaml:5: tenancy.token_roles: token roles need a verification key for their tenant tokens: set tenancy.jwt.hs256_secret, public_key_file or jwks_url",
			"p.yaml:7: tenancy.jwt.hs256_secret: environment variable JWT is not set",
		}
		if got := problems(t, err); !reflect.DeepEqual(got, want) {
			t.Errorf("got %q, want %q", got, want)
		}
	})
	t.Run("all unset", func(t *testing.T) {
		c, err := parse("p.yaml", file, noEnv, WithoutSecrets())
		if err != nil {
			t.Fatalf("got %v, want nil", err)
		}
		for _, k := range []string{"upstream.password", "tenancy.jwt.hs256_secret"} {
			if !c.SecretUnset(k) {
				t.Errorf("SecretUnset(%s): got false, want true", k)
			}
		}
		if c.Upstream.Password != "" || c.Tenancy.JWT.HS256Secret != "" {
			t.Errorf("secrets: got values, want none")
		}
	})
	t.Run("needed secret still required", func(t *testing.T) {
		_, err := parse("p.yaml", file, noEnv, WithoutSecrets("tenancy.jwt.hs256_secret"))
		got := problems(t, err)
		want := []string{
			"p.yaml:5: tenancy.token_roles: token roles need a verification key for their tenant tokens: set tenancy.jwt.hs256_secret, public_key_file or jwks_url",
			"p.yaml:7: tenancy.jwt.hs256_secret: environment variable JWT is not set",
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("got %q, want %q", got, want)
		}
		c, err := parse("p.yaml", file, envOf(map[string]string{"JWT": secret}), WithoutSecrets("tenancy.jwt.hs256_secret"))
		if err != nil {
			t.Fatalf("with JWT set: got %v, want nil", err)
		}
		if c.Tenancy.JWT.HS256Secret.Reveal() != secret || c.SecretUnset("tenancy.jwt.hs256_secret") || !c.SecretUnset("upstream.password") {
			t.Errorf("with JWT set: hs256_secret not loaded, or unset flags wrong")
		}
	})
	t.Run("malformed reference still fails", func(t *testing.T) {
		_, err := parse("p.yaml", y(
			"upstream:",
			"  address: db:5432",
			"  password: ${1x}",
		), noEnv, WithoutSecrets())
		got := problems(t, err)
		if len(got) != 1 || !strings.Contains(got[0], "p.yaml:3: upstream.password: malformed") {
			t.Errorf("got %q, want the malformed reference at line 3", got)
		}
	})
}
