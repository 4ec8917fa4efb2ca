package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/pgcloak/pgcloak/config"
	"github.com/pgcloak/pgcloak/tenanttoken"
	"github.com/pgcloak/pgcloak/testenv"
)

const tokenSecret = "0123456789abcdef0123456789abcdef-cmd-token"

// tokenConfig is a configuration whose tenancy.jwt section is jwt (its
// lines indented under "  jwt:").
func tokenConfig(jwt string) string {
	return `upstream:
  address: 127.0.0.1:5432
  user: pgcloak
tenancy:
  token_roles: [app_pool]
  jwt:
` + jwt
}

// TestToken mints a token with "pgcloak token" and verifies it as serve
// would; and refuses what it cannot mint.
func TestToken(t *testing.T) {
	t.Setenv("CMD_TOKEN_SECRET", tokenSecret)
	path := writeFile(t, "pgcloak.yaml", tokenConfig(`    claim: app_metadata.tenant_id
    issuer: https://auth.example.com
    audience: pgcloak
    hs256_secret: ${CMD_TOKEN_SECRET}
`))
	before := time.Now().Truncate(time.Second)
	r := pgcloak(t, "token", "--tenant", "acme", "--ttl", "5m", "-c", path)
	if r.code != 0 {
		t.Fatalf("exit code: got %d, want 0", r.code)
	}
	raw := strings.TrimSpace(r.stdout)
	if strings.Count(raw, ".") != 2 || strings.ContainsAny(raw, " \n") {
		t.Fatalf("stdout: got %q, want one token", r.stdout)
	}
	if strings.Contains(r.output(), tokenSecret) {
		t.Errorf("output contains the secret")
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	v, err := tenanttoken.New(t.Context(), cfg.Tenancy.JWT)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	claims, err := v.Verify(t.Context(), raw)
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if claims.Tenant != "acme" || claims.Subject != tenanttoken.MintSubject {
		t.Errorf("claims: got %+v, want tenant acme, sub %s", claims, tenanttoken.MintSubject)
	}
	if exp := claims.Expiry; exp.Before(before.Add(5*time.Minute)) || exp.After(time.Now().Add(5*time.Minute)) {
		t.Errorf("expiry: got %s, want 5m from now", exp)
	}

	t.Run("default ttl", func(t *testing.T) {
		r := pgcloak(t, "token", "--tenant", "globex", "-c", path)
		if r.code != 0 {
			t.Fatalf("exit code: got %d, want 0", r.code)
		}
		c, err := v.Verify(t.Context(), strings.TrimSpace(r.stdout))
		if err != nil || c.Tenant != "globex" {
			t.Fatalf("Verify: got %+v, %v; want tenant globex", c, err)
		}
		if left := time.Until(c.Expiry); left < 9*time.Minute || left > 10*time.Minute {
			t.Errorf("expiry: got %s from now, want 10m", left)
		}
	})

	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	keyFile := writeFile(t, "jwt.pem", string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})))
	publicKey := writeFile(t, "pgcloak.yaml", tokenConfig("    public_key_file: "+keyFile+"\n"))

	for _, tt := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"no secret", []string{"token", "--tenant", "acme", "-c", publicKey}, 1, "pgcloak token: " + publicKey + ": tenancy.jwt.hs256_secret is not set"},
		{"no tenant", []string{"token", "-c", path}, 2, `required flag(s) "tenant" not set`},
		{"empty tenant", []string{"token", "--tenant", "", "-c", path}, 2, "--tenant must not be empty"},
		{"no config", []string{"token", "--tenant", "acme"}, 2, `required flag(s) "config" not set`},
		{"ttl too long", []string{"token", "--tenant", "acme", "--ttl", "25h", "-c", path}, 1, "at most tenancy.jwt.max_lifetime (24h0m0s)"},
		{"ttl not a duration", []string{"token", "--tenant", "acme", "--ttl", "soon", "-c", path}, 2, `invalid argument "soon"`},
		{"argument", []string{"token", "--tenant", "acme", "-c", path, "extra"}, 2, "takes no arguments"},
		{"config missing", []string{"token", "--tenant", "acme", "-c", path + ".absent"}, 1, "no such file"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := pgcloak(t, tt.args...)
			if r.code != tt.code {
				t.Errorf("exit code: got %d, want %d", r.code, tt.code)
			}
			if r.stdout != "" {
				t.Errorf("stdout: got %q, want nothing", r.stdout)
			}
			if !strings.Contains(r.stderr, tt.want) {
				t.Errorf("stderr: got %q, want %q", r.stderr, tt.want)
			}
		})
	}
}

// jwksServer serves one Ed25519 key as a JWKS on 127.0.0.1.
func jwksServer(t *testing.T) *httptest.Server {
	t.Helper()
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	jwk, err := jwkset.NewJWKFromKey(pub, jwkset.JWKOptions{Metadata: jwkset.JWKMetadataOptions{KID: "k1", ALG: jwkset.AlgEdDSA, USE: jwkset.UseSig}})
	if err != nil {
		t.Fatal(err)
	}
	body, err := json.Marshal(jwkset.JWKSMarshal{Keys: []jwkset.JWKMarshal{jwk.Marshal()}})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write(body)
	}))
	t.Cleanup(srv.Close)
	return srv
}

// TestCheckTenantTokens: check loads the key serve verifies tenant tokens
// with, when token roles or mode jwt need one, and fails when it does not
// load.
func TestCheckTenantTokens(t *testing.T) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	keyFile := writeFile(t, "jwt.pem", string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})))
	privDER, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	privFile := writeFile(t, "private.pem", string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: privDER})))
	srv := jwksServer(t)
	gone := httptest.NewServer(http.NotFoundHandler())
	goneURL := gone.URL
	gone.Close()

	jwt := func(j config.JWTTenancy) config.JWTTenancy {
		j.Claim, j.Leeway, j.MaxLifetime = config.DefaultJWTClaim, config.DefaultJWTLeeway, config.DefaultJWTMaxLifetime
		return j
	}
	tests := []struct {
		name    string
		tenancy config.Tenancy
		want    string // "" for no line at all
	}{
		{"no token roles, mode login", config.Tenancy{Mode: config.ModeLogin, JWT: jwt(config.JWTTenancy{PublicKeyFile: "/nonexistent.pem"})}, ""},
		{"secret", config.Tenancy{TokenRoles: []string{"app_pool"}, JWT: jwt(config.JWTTenancy{HS256Secret: tokenSecret})},
			"ok    tenant tokens: tenancy.jwt.hs256_secret (alg HS256; tenant from claim tenant_id)"},
		{"public key", config.Tenancy{TokenRoles: []string{"app_pool"}, JWT: jwt(config.JWTTenancy{PublicKeyFile: keyFile})},
			"ok    tenant tokens: public key " + keyFile + " loads (alg EdDSA; tenant from claim tenant_id)"},
		{"public key missing", config.Tenancy{TokenRoles: []string{"app_pool"}, JWT: jwt(config.JWTTenancy{PublicKeyFile: keyFile + ".absent"})},
			"FAIL  tenant tokens: tenancy.jwt.public_key_file: open " + keyFile + ".absent: no such file or directory (serve verifies tenant tokens with it)"},
		{"private key", config.Tenancy{Mode: config.ModeJWT, JWT: jwt(config.JWTTenancy{PublicKeyFile: privFile, UpstreamUser: "app_jwt"})},
			"FAIL  tenant tokens: tenancy.jwt.public_key_file: " + privFile + ": holds a private key"},
		{"alg does not fit", config.Tenancy{TokenRoles: []string{"app_pool"}, JWT: jwt(config.JWTTenancy{PublicKeyFile: keyFile, Algorithms: []string{"RS256"}})},
			"FAIL  tenant tokens: tenancy.jwt.algorithms: RS256 does not fit the Ed25519 key in " + keyFile},
		{"jwks", config.Tenancy{Mode: config.ModeJWT, JWT: jwt(config.JWTTenancy{JWKSURL: srv.URL, UpstreamUser: "app_jwt"})},
			"ok    tenant tokens: key set " + srv.URL + " fetched (alg RS256, RS384, RS512, PS256, ES256, ES384, EdDSA; tenant from claim tenant_id)"},
		{"jwks unreachable", config.Tenancy{TokenRoles: []string{"app_pool"}, JWT: jwt(config.JWTTenancy{JWKSURL: goneURL})},
			"FAIL  tenant tokens: tenancy.jwt.jwks_url " + goneURL + ": "},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			c := &checker{w: &out}
			checkTenantTokens(t.Context(), &config.Config{Tenancy: tt.tenancy}, c)
			if tt.want == "" {
				if out.Len() != 0 {
					t.Errorf("got %q, want no line", out.String())
				}
				return
			}
			if !strings.HasPrefix(out.String(), tt.want) {
				t.Errorf("got %q, want a line starting %q", out.String(), tt.want)
			}
			if wantFail := strings.HasPrefix(tt.want, "FAIL"); c.failed != wantFail {
				t.Errorf("failed: got %v, want %v", c.failed, wantFail)
			}
			if strings.Contains(out.String(), tokenSecret) {
				t.Errorf("output contains the secret")
			}
		})
	}
}

// TestCheckUpstreamUserTokens: upstream.user must not be a token role nor
// tenancy.jwt.upstream_user.
func TestCheckUpstreamUserTokens(t *testing.T) {
	for _, tt := range []struct {
		name    string
		tenancy config.Tenancy
		want    []string
	}{
		{"token role by name", config.Tenancy{TokenRoles: []string{"app_pool", "pgcloak"}},
			[]string{`FAIL  upstream.user pgcloak: tenancy.token_roles entry "pgcloak" matches it`}},
		{"token role by glob", config.Tenancy{TokenRoles: []string{"pg*"}},
			[]string{`FAIL  upstream.user pgcloak: tenancy.token_roles entry "pg*" matches it`}},
		{"jwt upstream user", config.Tenancy{Mode: config.ModeJWT, JWT: config.JWTTenancy{UpstreamUser: "pgcloak"}},
			[]string{"FAIL  upstream.user pgcloak: tenancy.jwt.upstream_user names it"}},
		{"clean", config.Tenancy{TokenRoles: []string{"app_*"}, Mode: config.ModeJWT, JWT: config.JWTTenancy{UpstreamUser: "app_jwt"}},
			[]string{"ok    upstream.user pgcloak: is not a tenant, token, unscoped or jwt.upstream_user role"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			c := &checker{w: &out}
			checkUpstreamUser(&config.Config{Upstream: config.Upstream{User: "pgcloak"}, Tenancy: tt.tenancy}, c)
			containsAll(t, "output", out.String(), tt.want...)
			if wantFail := strings.HasPrefix(tt.want[0], "FAIL"); c.failed != wantFail {
				t.Errorf("failed: got %v, want %v", c.failed, wantFail)
			}
		})
	}
}

// Roles of TestCheckJWT (roles are cluster-wide).
const (
	checkJWTRole     = "cmd_check_app_jwt"
	checkJWTPassword = "app-jwt-secret-5d2e"
)

// TestCheckJWT runs check on a mode jwt configuration against PostgreSQL:
// the JWKS is fetched and the login as tenancy.jwt.upstream_user is tried,
// and check fails when either does not work.
func TestCheckJWT(t *testing.T) {
	pg := testenv.Shared(t)
	db := testenv.NewDatabase(t, pg)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	if err := pg.Exec(ctx, db, tenantRolesSQL(checkJWTPassword, checkJWTRole)); err != nil {
		t.Fatal(err)
	}
	srv := jwksServer(t)
	configFor := func(jwksURL, password string) string {
		return checkConfig(pg.Addr(), "disable", "", testenv.ScramUser, testenv.ScramPassword, db) + `tenancy:
  mode: jwt
  token_roles: [` + testenv.ScramUser + `]
  jwt:
    jwks_url: ` + jwksURL + `
    upstream_user: ` + checkJWTRole + `
    upstream_password: ` + password + `
`
	}

	t.Run("ok", func(t *testing.T) {
		cfg := strings.Replace(configFor(srv.URL, checkJWTPassword), "  token_roles: ["+testenv.ScramUser+"]\n", "  token_roles: [app_pool]\n", 1)
		r := pgcloak(t, "check", "-c", writeFile(t, "pgcloak.yaml", cfg))
		if r.code != 0 {
			t.Errorf("exit code: got %d, want 0", r.code)
		}
		containsAll(t, "stdout", r.stdout,
			"ok    tenant tokens: key set "+srv.URL+" fetched",
			"ok    upstream tenancy.jwt.upstream_user: connected as "+checkJWTRole+" (the role jwt sessions run as)",
			"check passed",
		)
		containsNone(t, "output", r.output(), checkJWTPassword, testenv.ScramPassword)
	})

	t.Run("failures", func(t *testing.T) {
		gone := httptest.NewServer(http.NotFoundHandler())
		goneURL := gone.URL
		gone.Close()
		const wrong = "not-the-app-jwt-password-91"
		r := pgcloak(t, "check", "-c", writeFile(t, "pgcloak.yaml", configFor(goneURL, wrong)))
		if r.code != 1 {
			t.Errorf("exit code: got %d, want 1", r.code)
		}
		containsAll(t, "stdout", r.stdout,
			"FAIL  tenant tokens: tenancy.jwt.jwks_url "+goneURL+": ",
			`FAIL  upstream.user `+testenv.ScramUser+`: tenancy.token_roles entry "`+testenv.ScramUser+`" matches it`,
			"FAIL  upstream tenancy.jwt.upstream_user: ",
			"28P01",
			"check FAILED",
		)
		containsNone(t, "output", r.output(), wrong, testenv.ScramPassword)
	})
}

// TestCheckRolesTokens: token roles named in token_roles and, in mode jwt,
// tenancy.jwt.upstream_user are checked as tenants' roles; upstream.user
// is not one in either mode.
func TestCheckRolesTokens(t *testing.T) {
	cfg := &config.Config{
		Upstream: config.Upstream{User: "pgcloak"},
		Tenancy: config.Tenancy{
			Mode:       config.ModeJWT,
			Login:      config.LoginTenancy{Roles: map[string]string{"acme_app": "acme"}},
			TokenRoles: []string{"app_pool", "pool_*", "acme_app"},
			JWT:        config.JWTTenancy{UpstreamUser: "app_jwt"},
		},
	}
	got := checkedRoles(cfg)
	want := []checkedRole{
		{name: "pgcloak", label: "upstream.user"},
		{name: "acme_app", label: "tenant acme", tenant: true},
		{name: "app_pool", label: "token role", tenant: true},
		{name: "app_jwt", label: "jwt.upstream_user, tenant sessions in mode jwt", tenant: true},
	}
	if len(got) != len(want) {
		t.Fatalf("got %+v, want %+v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("role %d: got %+v, want %+v", i, got[i], want[i])
		}
	}
	cfg.Tenancy.Mode = config.ModeLogin
	if got := checkedRoles(cfg); len(got) != 3 {
		t.Errorf("mode login: got %+v, want jwt.upstream_user left out", got)
	}
}
