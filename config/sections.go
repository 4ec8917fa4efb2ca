package config

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"net/url"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Each section decoder decodes its mapping into the defaults already in
// place and then checks what it decoded. Checks that span sections are in
// config.

func (d *decoder) config(n *yaml.Node, c *Config) {
	ok := d.mapping(n, "", []field{
		{"listen", func(n *yaml.Node, p string) { d.listen(n, p, &c.Listen) }},
		{"admin", func(n *yaml.Node, p string) { d.admin(n, p, &c.Admin) }},
		{"upstream", func(n *yaml.Node, p string) { d.upstream(n, p, &c.Upstream) }},
		{"tenancy", func(n *yaml.Node, p string) { d.tenancy(n, p, &c.Tenancy) }},
		{"keys", func(n *yaml.Node, p string) { d.keys(n, p, &c.Keys) }},
		{"encrypt", func(n *yaml.Node, p string) { d.encrypt(n, p, &c.Encrypt) }},
		{"audit", func(n *yaml.Node, p string) { d.audit(n, p, &c.Audit) }},
		{"log", func(n *yaml.Node, p string) { d.log(n, p, &c.Log) }},
	})
	if !ok {
		return
	}
	if len(c.Upstream.ClientCerts) > 0 && (c.Listen.TLS == nil || c.Listen.TLS.ClientCAFile == "") {
		d.errorf("upstream.client_certs", "is set, but listen.tls.client_ca_file is not: pgcloak presents these certificates only for clients whose own certificate it has verified")
	}
	if c.Tenancy.Mode == ModeJWT && c.Upstream.User == "" {
		d.errorf("upstream.user", "is required with tenancy.mode jwt (the proxy logs in upstream as this role)")
	}
	if u := c.Tenancy.JWT.UpstreamUser; u != "" && u == c.Upstream.User {
		d.errorf("tenancy.jwt.upstream_user", "%q is upstream.user, the proxy's own role (key store, verified tenant pin), as which no client session may run; use an ordinary role", u)
	}
}

func (d *decoder) listen(n *yaml.Node, p string, l *Listen) {
	ok := d.mapping(n, p, []field{
		{"address", d.text(&l.Address)},
		{"tls", func(n *yaml.Node, p string) {
			if n == nil {
				return
			}
			// Present, even if empty: "tls:" with its keys commented out
			// must not quietly mean "no TLS".
			l.TLS = &ListenTLS{}
			d.listenTLS(n, p, l.TLS)
		}},
		{"max_message_size", d.size(&l.MaxMessageSize, minMessageSize, maxMessageSize)},
		{"shutdown_timeout", d.duration(&l.ShutdownTimeout)},
	})
	if !ok {
		return
	}
	if msg := checkHostPort(l.Address, true); msg != "" {
		d.errorf(join(p, "address"), "%s", msg)
	}
	if l.ShutdownTimeout < 0 {
		d.errorf(join(p, "shutdown_timeout"), "%s is negative (0 closes sessions at once)", l.ShutdownTimeout)
	}
}

func (d *decoder) listenTLS(n *yaml.Node, p string, t *ListenTLS) {
	ok := d.mapping(n, p, []field{
		{"cert_file", d.text(&t.CertFile)},
		{"key_file", d.text(&t.KeyFile)},
		{"require", d.boolean(&t.Require)},
		{"client_ca_file", d.text(&t.ClientCAFile)},
	})
	if !ok {
		return
	}
	if t.CertFile == "" {
		d.errorf(join(p, "cert_file"), "is required with listen.tls (the server certificate chain, PEM)")
	}
	if t.KeyFile == "" {
		d.errorf(join(p, "key_file"), "is required with listen.tls (the server private key, PEM)")
	}
}

func (d *decoder) admin(n *yaml.Node, p string, a *Admin) {
	a.MaxTenantLabels = DefaultMaxTenantLabels
	ok := d.mapping(n, p, []field{
		{"address", d.text(&a.Address)},
		{"max_tenant_labels", d.integer(&a.MaxTenantLabels)},
	})
	if !ok {
		return
	}
	if a.MaxTenantLabels < 0 || a.MaxTenantLabels > maxMaxTenantLabels {
		d.errorf(join(p, "max_tenant_labels"), "must be from 0 (no tenant labels) to %d, got %d", maxMaxTenantLabels, a.MaxTenantLabels)
	}
	if a.Address == "" {
		return
	}
	if msg := checkHostPort(a.Address, true); msg != "" {
		d.errorf(join(p, "address"), "%s", msg)
	}
}

func (d *decoder) upstream(n *yaml.Node, p string, u *Upstream) {
	ok := d.mapping(n, p, []field{
		{"address", d.text(&u.Address)},
		{"sslmode", d.text((*string)(&u.SSLMode))},
		{"root_cert_file", d.text(&u.RootCertFile)},
		{"user", d.text(&u.User)},
		{"password", d.secret(&u.Password)},
		{"database", d.text(&u.Database)},
		{"connect_timeout", d.duration(&u.ConnectTimeout)},
		{"client_certs", func(n *yaml.Node, p string) {
			d.sequence(n, p, func(_ int, item *yaml.Node, p string) {
				if c, ok := d.clientCert(item, p); ok {
					u.ClientCerts = append(u.ClientCerts, c)
				}
			})
		}},
	})
	if !ok {
		return
	}
	if len(u.ClientCerts) > 0 && u.SSLMode == SSLDisable {
		d.errorf(join(p, "client_certs"), "needs TLS upstream, but sslmode is disable; use sslmode require, verify-full or follow")
	}
	if u.Address == "" {
		d.errorf(join(p, "address"), "is required (host:port of the PostgreSQL server)")
	} else if msg := checkHostPort(u.Address, false); msg != "" {
		d.errorf(join(p, "address"), "%s", msg)
	}
	if oneOf(d, join(p, "sslmode"), "sslmode", u.SSLMode, SSLDisable, SSLRequire, SSLVerifyFull, SSLFollow) {
		switch {
		case u.SSLMode == SSLVerifyFull && u.RootCertFile == "":
			d.errorf(join(p, "root_cert_file"), "is required with sslmode verify-full (the CA certificate that signed the server's, PEM)")
		case u.SSLMode != SSLVerifyFull && u.RootCertFile != "":
			d.errorf(join(p, "root_cert_file"), "is set, but sslmode %s does not verify the server certificate; use sslmode verify-full or remove root_cert_file", u.SSLMode)
		}
	}
	if u.Database == "" {
		d.errorf(join(p, "database"), "must not be empty (leave the key out for the default, %s)", DefaultDatabase)
	}
	if u.ConnectTimeout <= 0 {
		d.errorf(join(p, "connect_timeout"), "must be positive, got %s", u.ConnectTimeout)
	}
}

// clientCert decodes one entry of upstream.client_certs.
func (d *decoder) clientCert(n *yaml.Node, p string) (ClientCert, bool) {
	var c ClientCert
	if !d.mapping(n, p, []field{
		{"user", d.text(&c.User)},
		{"cert_file", d.text(&c.CertFile)},
		{"key_file", d.text(&c.KeyFile)},
	}) {
		return c, false
	}
	ok := true
	if c.User == "" {
		d.errorf(join(p, "user"), "is required (the role this certificate logs in as, or a glob pattern)")
		ok = false
	} else if _, err := path.Match(c.User, ""); err != nil {
		d.errorf(join(p, "user"), "%q is not a valid pattern: %v (want a role name, or a glob using *, ? and [...])", c.User, err)
		ok = false
	}
	if c.CertFile == "" {
		d.errorf(join(p, "cert_file"), "is required (the client certificate pgcloak presents upstream, PEM)")
		ok = false
	}
	if c.KeyFile == "" {
		d.errorf(join(p, "key_file"), "is required (the certificate's private key, PEM)")
		ok = false
	}
	return c, ok
}

// settingName is a custom PostgreSQL setting: identifiers joined by dots,
// at least one dot. PostgreSQL folds setting names to lower case; so do we.
var settingName = regexp.MustCompile(`^[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)+$`)

// hs256MinSecret is the shortest HS256 key RFC 7518 section 3.2 allows: as
// long as the hash output.
const hs256MinSecret = 32

func (d *decoder) tenancy(n *yaml.Node, p string, t *Tenancy) {
	ok := d.mapping(n, p, []field{
		{"setting", d.text(&t.Setting)},
		{"mode", d.text((*string)(&t.Mode))},
		{"login", func(n *yaml.Node, p string) {
			d.mapping(n, p, []field{
				{"roles", func(n *yaml.Node, p string) { d.roles(n, p, &t.Login) }},
			})
		}},
		{"jwt", func(n *yaml.Node, p string) { d.jwt(n, p, &t.JWT) }},
		{"token_roles", d.rolePatterns(&t.TokenRoles)},
		{"unscoped_roles", d.rolePatterns(&t.UnscopedRoles)},
		{"allow_dynamic_sql", d.boolean(&t.AllowDynamicSQL)},
	})
	if !ok {
		return
	}
	t.Setting = strings.ToLower(t.Setting)
	switch {
	case !settingName.MatchString(t.Setting):
		d.errorf(join(p, "setting"), "%q is not a custom setting name (want prefix.name such as %s: letters, digits and underscores, with at least one dot)", t.Setting, DefaultTenantSetting)
	case strings.HasPrefix(t.Setting, "pgcloak."):
		d.errorf(join(p, "setting"), "%q is in the pgcloak.* namespace, which the proxy reserves for itself", t.Setting)
	}
	oneOf(d, join(p, "mode"), "tenancy mode", t.Mode, ModeLogin, ModeJWT)

	jp := join(p, "jwt")
	keys := jwtKeys(t.JWT)
	if d.unsetSecrets[join(jp, "hs256_secret")] {
		// Set in the file, to a variable WithoutSecrets let go unset.
		keys = append([]string{"hs256_secret"}, keys...)
	}
	switch {
	case len(keys) == 2:
		d.errorf(jp, "%s and %s are both set; set exactly one", keys[0], keys[1])
	case len(keys) > 2:
		d.errorf(jp, "%s are all set; set exactly one", strings.Join(keys, ", "))
	case len(keys) == 1:
	case t.Mode == ModeJWT:
		d.errorf(jp, "mode jwt needs a verification key: set hs256_secret, public_key_file or jwks_url")
	case len(t.TokenRoles) > 0:
		d.errorf(join(p, "token_roles"), "token roles need a verification key for their tenant tokens: set tenancy.jwt.hs256_secret, public_key_file or jwks_url")
	}
	if t.Mode == ModeJWT && t.JWT.UpstreamUser == "" {
		d.errorf(join(jp, "upstream_user"), "is required with tenancy.mode jwt (the role jwt sessions run as upstream, with upstream_password; never upstream.user)")
	}
	d.roleOverlaps(p, t)
}

// jwtKeys names the verification keys set in j, in the order of the file
// format.
func jwtKeys(j JWTTenancy) []string {
	var keys []string
	if j.HS256Secret != "" {
		keys = append(keys, "hs256_secret")
	}
	if j.PublicKeyFile != "" {
		keys = append(keys, "public_key_file")
	}
	if j.JWKSURL != "" {
		keys = append(keys, "jwks_url")
	}
	return keys
}

// roleOverlaps reports every role that would be two of a mapped role, a
// token role and an unscoped role. A name is checked against the other
// lists' patterns; two patterns are compared only for equality (whether
// two globs share a role cannot be decided here, and at login the proxy
// refuses a role that matches both).
func (d *decoder) roleOverlaps(p string, t *Tenancy) {
	const either = "a role is either scoped to one tenant, a token role or unscoped"
	for _, role := range slices.Sorted(maps.Keys(t.Login.Roles)) {
		rp := join(join(join(p, "login"), "roles"), role)
		if t.IsUnscoped(role) {
			d.errorf(rp, "role %q is mapped to tenant %q and also matches unscoped_roles; a role is either scoped to one tenant or unscoped", role, t.Login.Roles[role])
		}
		if t.IsTokenRole(role) {
			d.errorf(rp, "role %q is mapped to tenant %q and also matches token_roles; %s", role, t.Login.Roles[role], either)
		}
	}
	for i, entry := range t.TokenRoles {
		ip := index(join(p, "token_roles"), i)
		switch {
		case slices.Contains(t.UnscopedRoles, entry):
			d.errorf(ip, "%q is also in unscoped_roles; %s", entry, either)
		case !isPattern(entry) && t.IsUnscoped(entry):
			d.errorf(ip, "role %q also matches unscoped_roles; %s", entry, either)
		}
	}
	for i, entry := range t.UnscopedRoles {
		if !isPattern(entry) && !slices.Contains(t.TokenRoles, entry) && t.IsTokenRole(entry) {
			d.errorf(index(join(p, "unscoped_roles"), i), "role %q also matches token_roles; %s", entry, either)
		}
	}
}

// rolePatterns decodes a list of role names and path.Match glob patterns
// (tenancy.token_roles, tenancy.unscoped_roles).
func (d *decoder) rolePatterns(dst *[]string) func(*yaml.Node, string) {
	return func(n *yaml.Node, p string) {
		d.sequence(n, p, func(_ int, item *yaml.Node, p string) {
			pattern, ok := d.requiredText(item, p, "a role name or pattern")
			if !ok {
				return
			}
			if _, err := path.Match(pattern, ""); err != nil {
				d.problem(item.Line, p, "%q is not a valid pattern: %v (want a role name, or a glob using *, ? and [...])", pattern, err)
				return
			}
			*dst = append(*dst, pattern)
		})
	}
}

func (d *decoder) roles(n *yaml.Node, p string, l *LoginTenancy) {
	d.entries(n, p, func(role string, v *yaml.Node, p string) {
		if role == "" {
			d.errorf(p, "a role name must not be empty")
			return
		}
		tenant, ok := d.requiredText(v, p, "the tenant name")
		if !ok {
			return
		}
		if l.Roles == nil {
			l.Roles = make(map[string]string)
		}
		l.Roles[role] = tenant
	})
}

// maxJWTLeeway bounds tenancy.jwt.leeway: clock skew is seconds, and a
// leeway of hours would make exp meaningless.
const maxJWTLeeway = 5 * time.Minute

func (d *decoder) jwt(n *yaml.Node, p string, j *JWTTenancy) {
	var algsGiven bool // algorithms present as a list, even an empty one
	ok := d.mapping(n, p, []field{
		{"claim", d.text(&j.Claim)},
		{"issuer", d.text(&j.Issuer)},
		{"audience", d.text(&j.Audience)},
		{"hs256_secret", d.secret(&j.HS256Secret)},
		{"public_key_file", d.text(&j.PublicKeyFile)},
		{"jwks_url", d.text(&j.JWKSURL)},
		{"leeway", d.duration(&j.Leeway)},
		{"max_lifetime", d.duration(&j.MaxLifetime)},
		{"upstream_user", d.text(&j.UpstreamUser)},
		{"upstream_password", d.secret(&j.UpstreamPassword)},
		{"algorithms", func(n *yaml.Node, p string) {
			if r := resolve(n); r != nil && r.Kind == yaml.SequenceNode {
				algsGiven = true
			}
			d.sequence(n, p, func(_ int, item *yaml.Node, p string) {
				if alg, ok := d.requiredText(item, p, "an algorithm"); ok {
					j.Algorithms = append(j.Algorithms, alg)
				}
			})
		}},
	})
	if !ok {
		return
	}
	if j.Claim == "" {
		d.errorf(join(p, "claim"), "must not be empty (leave the key out for the default, %s)", DefaultJWTClaim)
	} else if slices.Contains(strings.Split(j.Claim, "."), "") {
		d.errorf(join(p, "claim"), "%q is not a dot path (claim names separated by single dots, such as app_metadata.tenant_id)", j.Claim)
	}
	if j.HS256Secret != "" && len(j.HS256Secret) < hs256MinSecret {
		// Never say more about a secret than that it is too short.
		d.errorf(join(p, "hs256_secret"), "is shorter than %d bytes, the minimum for HS256 (RFC 7518 section 3.2)", hs256MinSecret)
	}
	if u := j.JWKSURL; u != "" {
		if msg := checkJWKSURL(u); msg != "" {
			d.errorf(join(p, "jwks_url"), "%q %s", u, msg)
		}
	}
	if j.Leeway < 0 || j.Leeway > maxJWTLeeway {
		d.errorf(join(p, "leeway"), "must be from 0s to %s (the clock skew allowed on exp, nbf and iat), got %s", maxJWTLeeway, j.Leeway)
	}
	if j.MaxLifetime <= 0 {
		d.errorf(join(p, "max_lifetime"), "must be positive, got %s", j.MaxLifetime)
	}
	if j.UpstreamPassword != "" && j.UpstreamUser == "" {
		d.errorf(join(p, "upstream_password"), "is set, but upstream_user is not")
	}
	if algsGiven && len(j.Algorithms) == 0 {
		d.errorf(join(p, "algorithms"), "must not be empty (leave the key out to allow every algorithm of the key's kind)")
	}
	ap := join(p, "algorithms")
	supported := strings.Join(append(slices.Clone(SymmetricJWTAlgorithms), AsymmetricJWTAlgorithms...), ", ")
	public := j.PublicKeyFile != "" || j.JWKSURL != ""
	for i, alg := range j.Algorithms {
		switch {
		case strings.EqualFold(alg, "none"):
			d.errorf(index(ap, i), "%q is never allowed: it accepts tokens without a signature", alg)
		case slices.Contains(SymmetricJWTAlgorithms, alg):
			if public {
				d.errorf(index(ap, i), "%s is allowed only with hs256_secret: with a public key it would accept tokens signed with the public key itself", alg)
			}
		case slices.Contains(AsymmetricJWTAlgorithms, alg):
			if j.HS256Secret != "" {
				d.errorf(index(ap, i), "%s needs public_key_file or jwks_url; with hs256_secret only HS256 is allowed", alg)
			}
		default:
			d.errorf(index(ap, i), "%q is not a supported algorithm (%s)", alg, supported)
		}
	}
}

// checkJWKSURL returns what is wrong with a JWKS URL, or "": keys fetched
// in clear text could be replaced on the way, so only https is accepted,
// and http only to a loopback host (a sidecar, a test).
func checkJWKSURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http") {
		return "is not an https:// URL"
	}
	if u.User != nil {
		return "must not carry credentials"
	}
	if u.Scheme == "http" && !IsLoopbackHost(u.Hostname()) {
		return "uses http to a host that is not loopback; use https (http only to localhost, 127.0.0.0/8 or ::1)"
	}
	return ""
}

// IsLoopbackHost reports whether host (without a port) is localhost or a
// loopback IP address.
func IsLoopbackHost(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func (d *decoder) keys(n *yaml.Node, p string, k *Keys) {
	ok := d.mapping(n, p, []field{
		{"provider", d.text((*string)(&k.Provider))},
		{"local", func(n *yaml.Node, p string) {
			d.mapping(n, p, []field{
				{"master_key_file", d.text(&k.Local.MasterKeyFile)},
			})
		}},
		{"aws", func(n *yaml.Node, p string) {
			d.mapping(n, p, []field{
				{"region", d.text(&k.AWS.Region)},
				{"endpoint", d.text(&k.AWS.Endpoint)},
				{"key_id", d.text(&k.AWS.KeyID)},
			})
		}},
		{"tenants", func(n *yaml.Node, p string) {
			d.entries(n, p, func(tenant string, v *yaml.Node, p string) {
				var tk TenantKeys
				ok := d.mapping(v, p, []field{
					{"key_id", d.text(&tk.KeyID)},
				})
				switch {
				case tenant == "":
					d.errorf(p, "a tenant name must not be empty")
				case !ok:
				case tk.KeyID == "":
					d.errorf(join(p, "key_id"), "is required (the KMS key that wraps this tenant's data keys)")
				default:
					if k.Tenants == nil {
						k.Tenants = make(map[string]TenantKeys)
					}
					k.Tenants[tenant] = tk
				}
			})
		}},
		{"cache_ttl", d.duration(&k.CacheTTL)},
		{"cache_max_entries", d.integer(&k.CacheMaxEntries)},
		{"rotate_after_encryptions", d.encryptionLimit(&k.RotateAfterEncryptions)},
	})
	if !ok {
		return
	}
	if oneOf(d, join(p, "provider"), "key provider", k.Provider, ProviderLocal, ProviderAWS) {
		switch k.Provider {
		case ProviderLocal:
			// Checked in parse once encrypt is known: a pure passthrough
			// proxy needs no key.
		case ProviderAWS:
			if k.AWS.Region == "" {
				d.errorf(join(join(p, "aws"), "region"), "is required with provider aws")
			}
			if k.AWS.KeyID == "" {
				d.errorf(join(join(p, "aws"), "key_id"), "is required with provider aws (the default key-encryption key: a key id, ARN or alias/...)")
			}
		}
	}
	if e := k.AWS.Endpoint; e != "" {
		if u, err := url.Parse(e); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			d.errorf(join(join(p, "aws"), "endpoint"), "%q is not an http:// or https:// URL", e)
		}
	}
	if k.CacheTTL <= 0 {
		d.errorf(join(p, "cache_ttl"), "must be positive, got %s", k.CacheTTL)
	}
	if k.CacheMaxEntries <= 0 {
		d.errorf(join(p, "cache_max_entries"), "must be positive, got %d", k.CacheMaxEntries)
	}
}

// encryptionLimit decodes keys.rotate_after_encryptions: a whole number
// from 1 to MaxRotateAfterEncryptions.
func (d *decoder) encryptionLimit(dst *uint64) func(*yaml.Node, string) {
	return func(n *yaml.Node, path string) {
		v, ok := d.scalar(n, path, "an integer", false)
		if !ok {
			return
		}
		i, err := strconv.ParseInt(strings.ReplaceAll(v, "_", ""), 10, 64)
		if err != nil && !errors.Is(err, strconv.ErrRange) {
			d.problem(n.Line, path, "%q is not an integer", v)
			return
		}
		if err != nil || i < 1 || i > MaxRotateAfterEncryptions {
			d.problem(n.Line, path, "must be from 1 to %d (2^32, the most encryptions under one AES-GCM key with random nonces), got %s", MaxRotateAfterEncryptions, v)
			return
		}
		*dst = uint64(i)
	}
}

func (d *decoder) encrypt(n *yaml.Node, p string, e *Encrypt) {
	ok := d.mapping(n, p, []field{
		{"on_decrypt_error", func(n *yaml.Node, p string) {
			// The policy "null" is spelt like YAML's null, so take the word.
			if v, ok := d.scalar(n, p, "a string", true); ok {
				e.OnDecryptError = OnDecryptError(v)
			}
		}},
		{"require_format_checks", d.boolean(&e.RequireFormatChecks)},
		{"tables", func(n *yaml.Node, p string) {
			first := make(map[string]string) // qualified name -> path of its entry
			d.sequence(n, p, func(_ int, item *yaml.Node, p string) {
				t, ok := d.table(item, p)
				if !ok {
					return
				}
				q := t.QualifiedName()
				if prev, dup := first[q]; dup {
					d.errorf(join(p, "name"), "%s is already declared at %s (line %d)", q, prev, d.line(prev))
					return
				}
				first[q] = p
				e.Tables = append(e.Tables, t)
			})
		}},
	})
	if ok {
		oneOf(d, join(p, "on_decrypt_error"), "on_decrypt_error policy", e.OnDecryptError, DecryptErrorFail, DecryptErrorNull)
	}
}

// table decodes one entry of encrypt.tables. It returns ok false when the
// entry has a problem that leaves it without a usable name; problems with
// its columns are reported but do not drop the table, so that duplicate
// tables are still found.
func (d *decoder) table(n *yaml.Node, p string) (Table, bool) {
	var (
		t       Table
		name    string
		colsBad bool // columns given, but not as a list
	)
	ok := d.mapping(n, p, []field{
		{"name", d.text(&name)},
		{"columns", func(n *yaml.Node, p string) {
			if n := resolve(n); n != nil && !isNull(n) && n.Kind != yaml.SequenceNode {
				colsBad = true
			}
			d.sequence(n, p, func(_ int, item *yaml.Node, p string) {
				t.Columns = append(t.Columns, d.column(item, p))
			})
		}},
	})
	if !ok {
		return t, false
	}
	np := join(p, "name")
	if name == "" {
		d.errorf(np, "is required (\"table\" or \"schema.table\")")
		return t, false
	}
	var valid bool
	t.Schema, t.Name, valid = splitTableName(name)
	if !valid {
		d.errorf(np, "%q is not a table name (want \"table\" or \"schema.table\", each an unquoted identifier: letters, digits and underscores, not starting with a digit, at most %d bytes)", name, maxIdentifier)
		return t, false
	}
	if len(t.Columns) == 0 && !colsBad {
		d.errorf(join(p, "columns"), "%s declares no columns (want at least one; leave the table out to pass it through untouched)", t.QualifiedName())
	}

	// Every column and every index column lands in the same table, so no
	// two of them may share a name.
	type owner struct{ what, path string }
	taken := make(map[string]owner)
	claim := func(name, what, path, hint string) {
		if name == "" {
			return
		}
		if o, dup := taken[name]; dup {
			d.errorf(path, "%s clashes with %s at %s (line %d)%s", what, o.what, o.path, d.line(o.path), hint)
			return
		}
		taken[name] = owner{what, path}
	}
	cp := join(p, "columns")
	for j, c := range t.Columns {
		claim(c.Name, fmt.Sprintf("column %q", c.Name), join(index(cp, j), "name"), "")
	}
	for j, c := range t.Columns {
		if ip := join(index(cp, j), "index_column"); d.lines[ip] != 0 {
			claim(c.IndexColumn, fmt.Sprintf("index column %q", c.IndexColumn), ip, "")
		} else {
			claim(c.IndexColumn, fmt.Sprintf("default index column %q", c.IndexColumn), index(cp, j), "; set index_column to another name")
		}
	}
	return t, true
}

// column decodes and checks one entry of a table's columns.
func (d *decoder) column(n *yaml.Node, p string) Column {
	c := Column{Search: SearchNone, Normalize: NormalizeNone}
	var (
		name, typ, keyClass string
		indexSet            bool
	)
	ok := d.mapping(n, p, []field{
		{"name", d.text(&name)},
		{"type", d.text(&typ)},
		{"search", d.text((*string)(&c.Search))},
		{"index_column", func(n *yaml.Node, p string) {
			if v, ok := d.scalar(n, p, "a string", false); ok {
				c.IndexColumn, indexSet = v, true
			}
		}},
		{"normalize", d.text((*string)(&c.Normalize))},
		{"key_class", d.text(&keyClass)},
	})
	if !ok {
		return Column{}
	}

	if name == "" {
		d.errorf(join(p, "name"), "is required")
	} else if id, ok := identifier(name); ok {
		c.Name = id
	} else {
		d.errorf(join(p, "name"), "%q is not a column name (%s)", name, identifierRule)
	}

	if typ == "" {
		d.errorf(join(p, "type"), "is required (the type the application sees: %s)", strings.Join(SupportedTypes, ", "))
	} else if t := strings.ToLower(typ); slices.Contains(SupportedTypes, t) {
		c.Type = t
	} else {
		d.errorf(join(p, "type"), "%q is not a supported type (%s)", typ, strings.Join(SupportedTypes, ", "))
	}

	searchOK := oneOf(d, join(p, "search"), "search", c.Search, SearchNone, SearchEquality)
	switch {
	case !searchOK:
	case c.Search == SearchNone && indexSet:
		d.errorf(join(p, "index_column"), "is set but search is none (set search: equality, or remove index_column)")
		c.IndexColumn = ""
	case c.Search == SearchEquality && indexSet:
		if id, ok := identifier(c.IndexColumn); ok {
			c.IndexColumn = id
		} else {
			d.errorf(join(p, "index_column"), "%q is not a column name (%s)", c.IndexColumn, identifierRule)
			c.IndexColumn = ""
		}
	case c.Search == SearchEquality && c.Name != "":
		c.IndexColumn = c.Name + IndexColumnSuffix
		if len(c.IndexColumn) > maxIdentifier {
			d.errorf(join(p, "name"), "the default index column %q is longer than %d bytes; set index_column", c.IndexColumn, maxIdentifier)
			c.IndexColumn = ""
		}
	}

	if oneOf(d, join(p, "normalize"), "normalization", c.Normalize, NormalizeNone, NormalizeLower) && c.Normalize == NormalizeLower {
		switch {
		case searchOK && c.Search != SearchEquality:
			d.errorf(join(p, "normalize"), "lower applies only to searchable columns (set search: equality, or remove normalize)")
		case c.Type != "" && !slices.Contains(lowerableTypes, c.Type):
			d.errorf(join(p, "normalize"), "lower applies only to %s columns, not %s", strings.Join(lowerableTypes, ", "), c.Type)
		}
	}

	if keyClass != "" {
		if id, ok := identifier(keyClass); ok {
			c.KeyClass = id
		} else {
			d.errorf(join(p, "key_class"), "%q is not a key class name (%s)", keyClass, identifierRule)
		}
	}
	return c
}

// lowerableTypes are the declared types normalize: lower applies to.
var lowerableTypes = []string{"text", "varchar", "bpchar"}

func (d *decoder) audit(n *yaml.Node, p string, a *Audit) {
	ok := d.mapping(n, p, []field{
		{"output", d.text(&a.Output)},
	})
	if ok && a.Output == "" {
		d.errorf(join(p, "output"), "must not be empty (stderr, stdout or a file path)")
	}
}

func (d *decoder) log(n *yaml.Node, p string, l *Log) {
	ok := d.mapping(n, p, []field{
		{"level", d.text(&l.Level)},
		{"format", d.text(&l.Format)},
	})
	if !ok {
		return
	}
	oneOf(d, join(p, "level"), "log level", l.Level, "debug", "info", "warn", "error")
	oneOf(d, join(p, "format"), "log format", l.Format, "json", "console")
}

// requiredText decodes a string that must be present and non-empty; what
// names it in the problem when it is not.
func (d *decoder) requiredText(n *yaml.Node, p, what string) (string, bool) {
	before := len(d.problems)
	v, ok := d.scalar(n, p, "a string", false)
	if v == "" && len(d.problems) == before {
		d.errorf(p, "%s must not be empty", what)
	}
	return v, ok && v != ""
}

// oneOf reports whether v is one of allowed, recording a problem at path
// when it is not.
func oneOf[T ~string](d *decoder, path, what string, v T, allowed ...T) bool {
	if slices.Contains(allowed, v) {
		return true
	}
	names := make([]string, len(allowed))
	for i, a := range allowed {
		names[i] = string(a)
	}
	d.errorf(path, "%q is not a supported %s (%s)", string(v), what, strings.Join(names, ", "))
	return false
}

// maxIdentifier is the longest identifier PostgreSQL keeps (NAMEDATALEN-1);
// it silently truncates longer ones, which would break our name matching.
const maxIdentifier = 63

const identifierRule = "an unquoted identifier: letters, digits and underscores, not starting with a digit, at most 63 bytes"

// identifier checks an unquoted SQL identifier and folds it to lower case,
// as PostgreSQL does.
func identifier(s string) (string, bool) {
	if s == "" || len(s) > maxIdentifier || ('0' <= s[0] && s[0] <= '9') {
		return "", false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c == '_' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9') {
			return "", false
		}
	}
	return strings.ToLower(s), true
}

// splitTableName splits "schema.table" or "table" (schema public) into
// folded identifiers.
func splitTableName(s string) (schema, name string, ok bool) {
	schema, name = "public", s
	if i := strings.IndexByte(s, '.'); i >= 0 {
		schema, name = s[:i], s[i+1:]
	}
	if schema, ok = identifier(schema); !ok {
		return "", "", false
	}
	if name, ok = identifier(name); !ok {
		return "", "", false
	}
	return schema, name, true
}

// checkHostPort returns what is wrong with a host:port address, or "". A
// listener may leave the host empty (every interface) and use port 0 (any
// free port); an upstream address may not.
func checkHostPort(addr string, listener bool) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Sprintf("%q is not host:port (e.g. 127.0.0.1:6432)", addr)
	}
	lo := 1
	if listener {
		lo = 0
	}
	if n, err := strconv.Atoi(port); err != nil || n < lo || n > 65535 {
		return fmt.Sprintf("%q: the port must be a number from %d to 65535", addr, lo)
	}
	if host == "" && !listener {
		return fmt.Sprintf("%q has no host", addr)
	}
	return ""
}
