package config

import (
	"path"
	"time"
)

// Config is a loaded, validated and immutable pgcloak configuration. Callers
// must not modify it; SIGHUP builds a new one and swaps the pointer.
type Config struct {
	// File is the path the configuration was read from (or the name given to
	// Parse); it prefixes every validation error.
	File string

	Listen   Listen
	Admin    Admin
	Upstream Upstream
	Tenancy  Tenancy
	Keys     Keys
	Encrypt  Encrypt
	Audit    Audit
	Log      Log

	// lines maps YAML paths to the line of their key in File (Line).
	lines map[string]int
	// unsetSecrets are the secrets WithoutSecrets let go unset.
	unsetSecrets map[string]bool
}

// Listen configures the client-facing listener.
type Listen struct {
	Address string // host:port, default 127.0.0.1:6432
	TLS     *ListenTLS

	// MaxMessageSize caps the body of any single protocol message, from a
	// client or from upstream, before it is allocated. Key
	// listen.max_message_size, an integer number of bytes or a size such as
	// "64MB"; default 64 MiB.
	MaxMessageSize int

	// ShutdownTimeout is how long SIGTERM lets sessions finish before they are
	// closed. Key listen.shutdown_timeout, default 30s.
	ShutdownTimeout time.Duration
}

// ListenTLS enables TLS for clients that send SSLRequest.
type ListenTLS struct {
	CertFile string
	KeyFile  string
	Require  bool // refuse clients that do not use TLS

	// ClientCAFile, when set, makes pgcloak ask TLS clients for a
	// certificate and verify any it gets against these CAs, as PostgreSQL
	// does with ssl_ca_file: a certificate that does not verify fails the
	// handshake, and no certificate is fine. A verified certificate is what
	// lets a client log in with upstream.client_certs.
	ClientCAFile string
}

// Admin configures the HTTP endpoint for /metrics, /healthz and /readyz.
type Admin struct {
	Address string // empty: no admin listener

	// MaxTenantLabels bounds the distinct tenant label values of the
	// per-tenant metrics: the first MaxTenantLabels tenants a process sees
	// get their own label, later ones share "other"; 0 labels every tenant
	// "other". Key admin.max_tenant_labels, default 100, at most 10000.
	MaxTenantLabels int
}

// Bounds of admin.max_tenant_labels. Every label value is a time series
// that Prometheus keeps, so the cap must stay modest.
const (
	DefaultMaxTenantLabels = 100
	maxMaxTenantLabels     = 10000
)

// SSLMode is upstream.sslmode.
type SSLMode string

// Upstream SSL modes.
const (
	SSLDisable    SSLMode = "disable"
	SSLRequire    SSLMode = "require"
	SSLVerifyFull SSLMode = "verify-full"
	// SSLFollow uses TLS upstream (without verifying, as require) exactly
	// when the client used TLS to pgcloak, so that pg_hba.conf's hostssl
	// and hostnossl rules see what the client did.
	SSLFollow SSLMode = "follow"
)

// Upstream is the PostgreSQL server pgcloak proxies to.
type Upstream struct {
	Address        string // host:port, required
	SSLMode        SSLMode
	RootCertFile   string
	User           string // the proxy's own login (keystore, catalog, jwt sessions)
	Password       Secret
	Database       string
	ConnectTimeout time.Duration // key upstream.connect_timeout, default 10s

	// ClientCerts are certificates pgcloak presents upstream on behalf of
	// clients that logged in to it with a certificate of their own, so that
	// pg_hba.conf's cert method (or clientcert=verify-full) works through
	// the proxy, which ends the client's TLS. See ClientCertFor.
	ClientCerts []ClientCert
}

// ClientCert is one entry of upstream.client_certs.
type ClientCert struct {
	User     string // a role name, or a glob pattern as in unscoped_roles
	CertFile string // the certificate (chain), PEM
	KeyFile  string // its private key, PEM, not encrypted
}

// ClientCertFor returns the first entry of ClientCerts whose user matches
// role, and false when none does.
func (u Upstream) ClientCertFor(role string) (ClientCert, bool) {
	for _, c := range u.ClientCerts {
		if ok, _ := path.Match(c.User, role); ok {
			return c, true
		}
	}
	return ClientCert{}, false
}

// Secret is a string that never prints itself: String, GoString and
// MarshalText all redact it. Use Reveal where the value is really needed.
type Secret string

// String returns a redaction marker, never the secret.
func (s Secret) String() string {
	if s == "" {
		return ""
	}
	return "[redacted]"
}

// GoString keeps %#v from printing the secret.
func (s Secret) GoString() string { return s.String() }

// MarshalText keeps encoders from printing the secret.
func (s Secret) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// Reveal returns the secret value. Every caller is a place a secret leaves
// the config; keep them few and grep-able.
func (s Secret) Reveal() string { return string(s) }

// TenancyMode is tenancy.mode.
type TenancyMode string

// Tenancy modes.
const (
	ModeLogin TenancyMode = "login"
	ModeJWT   TenancyMode = "jwt"
)

// Tenancy says how a session's tenant is determined. A role is at most one
// of: mapped to a tenant (Login.Roles), a token role (TokenRoles) or an
// unscoped role (UnscopedRoles).
type Tenancy struct {
	Setting string // GUC pinned upstream, default app.tenant_id
	Mode    TenancyMode
	Login   LoginTenancy
	JWT     JWTTenancy

	// TokenRoles are the roles (names or path.Match glob patterns) whose
	// sessions start with no tenant and take one only from a signed tenant
	// token, SET [LOCAL] pgcloak.tenant_token (SPEC §5.2): the role an
	// application's shared pool logs in as. Key tenancy.token_roles; when
	// set, tenancy.jwt must have a verification key.
	TokenRoles []string

	UnscopedRoles []string // role names or path.Match glob patterns

	// AllowDynamicSQL lets sessions with a tenant run SQL whose effect the
	// proxy cannot read (DO, CREATE FUNCTION, rules, triggers, views over
	// declared tables, ALTER ROLE/DATABASE ... SET). Default false.
	AllowDynamicSQL bool
}

// LoginTenancy maps authenticated roles to tenants.
type LoginTenancy struct {
	Roles map[string]string // role -> tenant
}

// JWTTenancy configures JWT verification for mode jwt and tenant tokens
// (package tenanttoken verifies them). At most one of HS256Secret,
// PublicKeyFile and JWKSURL is set; exactly one when tenancy.mode is jwt or
// tenancy.token_roles is set.
type JWTTenancy struct {
	// Claim is the dot path of the tenant in the claims: tenant_id,
	// app_metadata.tenant_id. Default tenant_id.
	Claim    string
	Issuer   string // checked against iss when set
	Audience string // checked against aud when set

	HS256Secret   Secret // HS256 key, at least 32 bytes
	PublicKeyFile string // PEM: an RSA, EC (P-256, P-384) or Ed25519 public key

	// JWKSURL is a JSON Web Key Set fetched at start, refreshed in the
	// background and fetched again on an unknown kid. Key
	// tenancy.jwt.jwks_url: https, or http to a loopback host.
	JWKSURL string

	// Leeway is the clock skew allowed on exp, nbf and iat. Key
	// tenancy.jwt.leeway, default 30s.
	Leeway time.Duration

	// MaxLifetime bounds a token's lifetime: exp - iat, or exp - now when
	// the token has no iat. Key tenancy.jwt.max_lifetime, default 24h.
	MaxLifetime time.Duration

	// UpstreamUser and UpstreamPassword are the login pgcloak uses upstream
	// for sessions in mode jwt: an ordinary role, never upstream.user.
	UpstreamUser     string
	UpstreamPassword Secret

	// Algorithms is the allow-list of JWS alg values; empty means every
	// algorithm of the key's kind (HS256 for hs256_secret; for a public key
	// the algorithms its type and curve support; for jwks_url every one of
	// AsymmetricJWTAlgorithms). "none" is never allowed, HS256 only with
	// hs256_secret.
	Algorithms []string
}

// HasVerificationKey reports whether one of hs256_secret, public_key_file
// and jwks_url is set.
func (j JWTTenancy) HasVerificationKey() bool {
	return j.HS256Secret != "" || j.PublicKeyFile != "" || j.JWKSURL != ""
}

// JWT algorithms (JWS alg values, RFC 7518) pgcloak verifies.
var (
	// SymmetricJWTAlgorithms are accepted with hs256_secret only.
	SymmetricJWTAlgorithms = []string{"HS256"}
	// AsymmetricJWTAlgorithms are accepted with public_key_file or
	// jwks_url only.
	AsymmetricJWTAlgorithms = []string{"RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA"}
)

// KeyProvider is keys.provider.
type KeyProvider string

// Key providers.
const (
	ProviderLocal KeyProvider = "local"
	ProviderAWS   KeyProvider = "aws"
)

// Keys configures the key hierarchy.
type Keys struct {
	Provider        KeyProvider
	Local           LocalKeys
	AWS             AWSKeys
	Tenants         map[string]TenantKeys // tenant -> per-tenant KEK
	CacheTTL        time.Duration         // default 60s
	CacheMaxEntries int                   // default 10000

	// RotateAfterEncryptions is how many values one data-key version may
	// seal, counted across replicas, before pgcloak rotates the key
	// (default 2^30, at most MaxRotateAfterEncryptions).
	RotateAfterEncryptions uint64
}

// LocalKeys configures the local master-key provider.
type LocalKeys struct {
	MasterKeyFile string
}

// AWSKeys configures the AWS KMS provider.
type AWSKeys struct {
	Region   string
	Endpoint string
	KeyID    string
}

// TenantKeys is a tenant's own key-encryption key.
type TenantKeys struct {
	KeyID string
}

// OnDecryptError is encrypt.on_decrypt_error.
type OnDecryptError string

// Decrypt-error policies.
const (
	DecryptErrorFail OnDecryptError = "error"
	DecryptErrorNull OnDecryptError = "null"
)

// Encrypt declares the encrypted tables and columns.
type Encrypt struct {
	OnDecryptError OnDecryptError

	// RequireFormatChecks makes serve refuse to start (or to reload) while
	// a declared column or index column lacks pgcloak's format CHECK.
	// Default true; false logs a warning per column instead.
	RequireFormatChecks bool
	Tables              []Table
}

// Table is a declared table. Schema defaults to "public".
type Table struct {
	Schema  string
	Name    string // unqualified
	Columns []Column
}

// QualifiedName returns schema.name.
func (t Table) QualifiedName() string { return t.Schema + "." + t.Name }

// Search is a column's search capability.
type Search string

// Search capabilities.
const (
	SearchNone     Search = "none"
	SearchEquality Search = "equality"
)

// Normalize is how a searchable value is normalised before indexing.
type Normalize string

// Normalisations.
const (
	NormalizeNone  Normalize = "none"
	NormalizeLower Normalize = "lower"
)

// Column is a declared encrypted column.
type Column struct {
	Name        string
	Type        string // one of SupportedTypes
	Search      Search
	IndexColumn string // default <name>_bidx when Search is equality, else ""
	Normalize   Normalize
	KeyClass    string // "" means the default class
}

// SupportedTypes lists the declared types pgcloak can present, in the order
// error messages show them.
var SupportedTypes = []string{
	"text", "varchar", "bpchar", "int2", "int4", "int8", "numeric", "float4",
	"float8", "bool", "date", "timestamp", "timestamptz", "uuid", "json", "jsonb", "bytea",
}

// Audit configures the audit stream.
type Audit struct {
	Output string // stderr | stdout | file path; default stderr
}

// Log configures operational logging.
type Log struct {
	Level  string // debug | info | warn | error; default info
	Format string // json | console; default json
}
