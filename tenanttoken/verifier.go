package tenanttoken

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode/utf8"
	"unsafe"

	"github.com/MicahParks/jwkset"
	"github.com/golang-jwt/jwt/v5"
	"github.com/pgcloak/pgcloak/config"
	"golang.org/x/time/rate"
)

// Claims is what a verified token says.
type Claims struct {
	Tenant  string    // from the claim's dot path
	Subject string    // sub, "" when absent
	ID      string    // jti, "" when absent
	Expiry  time.Time // exp
}

// MaxTokenSize bounds the text Verify looks at; a longer token is
// malformed. Real tokens are well under 8 KiB, the header limit of most
// HTTP servers that pass them around.
const MaxTokenSize = 16 << 10

// maxTenantSize bounds a tenant name taken from a token.
const maxTenantSize = 256

// maxNumericDate is the largest exp, nbf or iat accepted, in seconds since
// the epoch (the year 36812): beyond it a date is nonsense, and the float
// would overflow time's arithmetic.
const maxNumericDate = 1 << 40

// Option adjusts a Verifier.
type Option func(*options)

type options struct {
	now          func() time.Time
	refreshError func(error)
	jwksRefresh  time.Duration
	cacheSize    int // 0: no cache
}

// WithClock makes the Verifier read the time from now instead of
// time.Now: for exp, nbf, iat, the lifetime, the cache and the JWKS refetch
// rate.
func WithClock(now func() time.Time) Option { return func(o *options) { o.now = now } }

// WithRefreshErrors hands failed JWKS fetches (in the background, or for an
// unknown kid) to report, typically a logger. The errors name the URL and
// the failure, never a token.
func WithRefreshErrors(report func(error)) Option {
	return func(o *options) { o.refreshError = report }
}

// Verifier verifies tenant tokens against one configuration. It is safe
// for concurrent use; Close it when the configuration is replaced.
type Verifier struct {
	path        []string // the tenant claim's dot path
	claim       string   // the same, joined
	issuer      string
	audience    string
	leeway      time.Duration
	maxLifetime time.Duration
	algs        []string
	now         func() time.Time

	key  any   // the HS256 secret ([]byte) or the PEM public key; nil with a JWKS
	jwks *jwks // nil without one

	refetch *rate.Limiter // unknown-kid fetches of the JWKS
	parser  *jwt.Parser
	cache   *cache // nil: no cache

	closeOnce sync.Once
}

// errAlgorithm marks a token whose alg is not on the allow-list.
var errAlgorithm = errors.New("algorithm not allowed")

// New builds a Verifier from cfg: it loads the PEM public key, or fetches
// the JWKS (an unreachable or empty set is an error; ctx bounds that first
// fetch) and starts its background refresh, which lasts until Close. cfg
// must hold exactly one of hs256_secret, public_key_file and jwks_url, and
// algorithms that fit it. Errors name the configuration key and file, never
// a secret.
func New(ctx context.Context, cfg config.JWTTenancy, opts ...Option) (*Verifier, error) {
	o := options{now: time.Now, jwksRefresh: DefaultJWKSRefresh, cacheSize: DefaultCacheSize}
	for _, opt := range opts {
		opt(&o)
	}
	v := &Verifier{
		claim:       cfg.Claim,
		path:        strings.Split(cfg.Claim, "."),
		issuer:      cfg.Issuer,
		audience:    cfg.Audience,
		leeway:      cfg.Leeway,
		maxLifetime: cfg.MaxLifetime,
		now:         o.now,
		refetch:     rate.NewLimiter(rate.Every(JWKSRefetchInterval), 1),
		// Claims are checked here, after the signature, so that each
		// failure has exactly one reason (the library's validator reports
		// a missing iss and a missing exp alike).
		parser: jwt.NewParser(jwt.WithJSONNumber(), jwt.WithoutClaimsValidation()),
	}
	if cfg.Claim == "" || slices.Contains(v.path, "") {
		return nil, fmt.Errorf("tenancy.jwt.claim: %q is not a dot path", cfg.Claim)
	}
	if v.leeway < 0 {
		return nil, fmt.Errorf("tenancy.jwt.leeway: negative (%s)", v.leeway)
	}
	if v.maxLifetime <= 0 {
		v.maxLifetime = config.DefaultJWTMaxLifetime
	}
	if o.cacheSize > 0 {
		v.cache = newCache(o.cacheSize)
	}

	var err error
	switch keys := keyNames(cfg); {
	case len(keys) == 0:
		return nil, errors.New("tenancy.jwt: no verification key (set hs256_secret, public_key_file or jwks_url)")
	case len(keys) > 1:
		return nil, fmt.Errorf("tenancy.jwt: %s are all set; set exactly one", strings.Join(keys, ", "))
	case cfg.HS256Secret != "":
		if len(cfg.HS256Secret) < hs256MinSecret {
			return nil, fmt.Errorf("tenancy.jwt.hs256_secret: shorter than %d bytes", hs256MinSecret)
		}
		v.key = []byte(cfg.HS256Secret.Reveal())
		v.algs, err = allowList(cfg.Algorithms, config.SymmetricJWTAlgorithms, "hs256_secret")
	case cfg.PublicKeyFile != "":
		var fit []string
		if v.key, fit, err = loadPublicKey(cfg.PublicKeyFile); err != nil {
			return nil, fmt.Errorf("tenancy.jwt.public_key_file: %w", err)
		}
		v.algs, err = allowList(cfg.Algorithms, fit, keyKind(v.key)+" in "+cfg.PublicKeyFile)
	default:
		if v.algs, err = allowList(cfg.Algorithms, asymmetric(), "a JWKS"); err != nil {
			return nil, err
		}
		v.jwks, err = startJWKS(ctx, cfg.JWKSURL, &o, v.allowRefetch)
	}
	if err != nil {
		return nil, err
	}
	return v, nil
}

// hs256MinSecret is the shortest HS256 key RFC 7518 section 3.2 allows.
const hs256MinSecret = 32

func keyNames(cfg config.JWTTenancy) []string {
	var keys []string
	if cfg.HS256Secret != "" {
		keys = append(keys, "hs256_secret")
	}
	if cfg.PublicKeyFile != "" {
		keys = append(keys, "public_key_file")
	}
	if cfg.JWKSURL != "" {
		keys = append(keys, "jwks_url")
	}
	return keys
}

// Algorithms returns the alg values the Verifier accepts.
func (v *Verifier) Algorithms() []string { return slices.Clone(v.algs) }

// Close stops the JWKS refresh and forgets the cached tokens. Verify must
// not be called after Close.
func (v *Verifier) Close() {
	v.closeOnce.Do(func() {
		if v.jwks != nil {
			v.jwks.close()
		}
		if v.cache != nil {
			v.cache.clear()
		}
	})
}

// allowRefetch reports whether an unknown kid may fetch the JWKS now.
func (v *Verifier) allowRefetch() bool { return v.refetch.AllowN(v.now(), 1) }

// Verify checks raw and returns its claims. A token that is not acceptable
// yields a *Refusal; ctx bounds a JWKS fetch for an unknown kid, the only
// thing Verify may wait for. A token verified before is answered from the
// cache until it expires.
func (v *Verifier) Verify(ctx context.Context, raw string) (Claims, error) {
	if len(raw) > MaxTokenSize {
		return Claims{}, refuse(ReasonMalformed)
	}
	now := v.now()
	var k tokenKey
	if v.cache != nil {
		var c Claims
		var err error
		var hit bool
		if k, c, err, hit = v.cached(raw, now); hit {
			return c, err
		}
	}

	claims := jwt.MapClaims{}
	token, err := v.parser.ParseWithClaims(raw, claims, func(t *jwt.Token) (any, error) {
		if !slices.Contains(v.algs, t.Method.Alg()) {
			return nil, errAlgorithm
		}
		if v.jwks != nil {
			return v.jwks.keyfunc.KeyfuncCtx(ctx)(t)
		}
		return v.key, nil
	})
	if err != nil {
		return Claims{}, refuse(parseReason(token, err))
	}
	c, until, reason := v.check(claims, now)
	if reason != "" {
		return Claims{}, refuse(reason)
	}
	if v.cache != nil {
		v.cache.put(k, cached{claims: c, until: until}, now)
	}
	return c, nil
}

// VerifyAtOnce is Verify for a caller that may not wait: without a JWKS
// (a signature check is CPU only) it is Verify; with one it answers only
// from the cache, and ok is false for a token the cache does not hold
// (verifying it could fetch the key set).
func (v *Verifier) VerifyAtOnce(raw string) (c Claims, err error, ok bool) {
	if v.jwks == nil || len(raw) > MaxTokenSize {
		c, err = v.Verify(context.Background(), raw)
		return c, err, true
	}
	if v.cache == nil {
		return Claims{}, nil, false
	}
	_, c, err, ok = v.cached(raw, v.now())
	return c, err, ok
}

// cached answers raw from the cache of verified tokens (hit false when the
// cache does not hold it) and returns its cache key either way. A token
// held past its expiry is dropped and refused as expired.
func (v *Verifier) cached(raw string, now time.Time) (k tokenKey, c Claims, err error, hit bool) {
	// The hash reads the string's bytes in place instead of copying them;
	// sha256 does not keep or modify its input.
	k = sha256.Sum256(unsafe.Slice(unsafe.StringData(raw), len(raw)))
	e, ok := v.cache.get(k)
	if !ok {
		return k, Claims{}, nil, false
	}
	if !now.Before(e.until) {
		v.cache.delete(k)
		return k, Claims{}, refuse(ReasonExpired), true
	}
	return k, e.claims, nil, true
}

// parseReason classifies an error from parsing and the signature check.
func parseReason(token *jwt.Token, err error) string {
	switch {
	case errors.Is(err, errAlgorithm):
		return ReasonAlgorithm
	case errors.Is(err, jwkset.ErrKeyNotFound):
		return ReasonUnknownKID
	case errors.Is(err, jwt.ErrTokenMalformed):
		return ReasonMalformed
	case errors.Is(err, jwt.ErrTokenSignatureInvalid):
		return ReasonBadSignature
	case errors.Is(err, jwt.ErrTokenUnverifiable):
		// An alg jwt does not know is one not on the list; an alg that
		// is missing or not a string, or a kid that is not a string,
		// is a malformed header.
		if token != nil && token.Method == nil {
			if _, ok := token.Header["alg"].(string); ok {
				return ReasonAlgorithm
			}
			return ReasonMalformed
		}
		if kid, ok := token.Header["kid"]; ok {
			if _, ok := kid.(string); !ok {
				return ReasonMalformed
			}
		}
		// The key set's own key does not fit the token (its alg or use).
		return ReasonBadSignature
	}
	return ReasonMalformed
}

// check applies the claim rules to a token whose signature verified. It
// returns the claims, when the cache must let go of them, or a reason.
func (v *Verifier) check(m jwt.MapClaims, now time.Time) (c Claims, until time.Time, reason string) {
	exp, ok := numericDate(m, "exp")
	switch {
	case !ok:
		return c, until, ReasonMalformed
	case exp.IsZero():
		return c, until, ReasonNoExpiry
	}
	nbf, ok1 := numericDate(m, "nbf")
	iat, ok2 := numericDate(m, "iat")
	if !ok1 || !ok2 {
		return c, until, ReasonMalformed
	}
	until = exp.Add(v.leeway)
	switch {
	case !now.Before(until):
		return c, until, ReasonExpired
	case !nbf.IsZero() && now.Before(nbf.Add(-v.leeway)):
		return c, until, ReasonNotYetValid
	case !iat.IsZero() && now.Before(iat.Add(-v.leeway)):
		return c, until, ReasonIssuedInFuture
	}
	start := now
	if !iat.IsZero() {
		start = iat
	}
	if exp.Sub(start) > v.maxLifetime {
		return c, until, ReasonLifetime
	}
	if v.issuer != "" {
		if iss, err := m.GetIssuer(); err != nil || iss != v.issuer {
			return c, until, ReasonWrongIssuer
		}
	}
	if v.audience != "" {
		if aud, err := m.GetAudience(); err != nil || !slices.Contains(aud, v.audience) {
			return c, until, ReasonWrongAudience
		}
	}
	sub, err1 := m.GetSubject()
	jti, ok := m["jti"].(string)
	if _, present := m["jti"]; err1 != nil || present && !ok {
		return c, until, ReasonMalformed
	}
	tenant, reason := v.tenant(m)
	if reason != "" {
		return c, until, reason
	}
	return Claims{Tenant: tenant, Subject: sub, ID: jti, Expiry: exp}, until, ""
}

// numericDate reads a NumericDate claim (RFC 7519 section 2): the zero
// time when it is absent, ok false when it is not a number in range.
func numericDate(m jwt.MapClaims, name string) (t time.Time, ok bool) {
	v, present := m[name]
	if !present {
		return time.Time{}, true
	}
	n, isNumber := v.(json.Number)
	if !isNumber {
		return time.Time{}, false
	}
	f, err := n.Float64()
	if err != nil || math.IsNaN(f) || f < 0 || f > maxNumericDate {
		return time.Time{}, false
	}
	sec, frac := math.Modf(f)
	return time.Unix(int64(sec), int64(frac*1e9)).UTC(), true
}

// tenant reads the tenant at the claim's dot path. A claim whose whole
// name is the path is taken first, for issuers whose custom claims are
// URLs ("https://example.com/tenant"). The value is a string, or an
// integer taken as its decimal text.
func (v *Verifier) tenant(m jwt.MapClaims) (string, string) {
	val, ok := m[v.claim]
	if !ok && len(v.path) > 1 {
		var cur any = map[string]any(m)
		for _, name := range v.path {
			obj, isObj := cur.(map[string]any)
			if !isObj {
				return "", ReasonNoTenant
			}
			if cur, ok = obj[name]; !ok {
				return "", ReasonNoTenant
			}
		}
		val = cur
	}
	var tenant string
	switch t := val.(type) {
	case string:
		tenant = t
	case json.Number:
		if !isInteger(t.String()) {
			return "", ReasonNoTenant
		}
		tenant = t.String()
	default:
		return "", ReasonNoTenant
	}
	switch {
	case tenant == "":
		return "", ReasonNoTenant
	case len(tenant) > maxTenantSize || !utf8.ValidString(tenant) || strings.IndexByte(tenant, 0) >= 0:
		// PostgreSQL text holds no NUL, and a tenant names keys and a
		// setting's value: keep it to sane text.
		return "", ReasonMalformed
	case containsFold(tenant, pinWord):
		// The proxy writes the tenant as a literal into its pin's text,
		// where this word marks the MAC PostgreSQL accepts (keystore.PinWord).
		return "", ReasonMalformed
	}
	return tenant, ""
}

// pinWord is keystore.PinWord, which no tenant may contain.
const pinWord = "pgcloak.pin"

// containsFold reports whether s contains word (lower-case ASCII), ASCII
// letters of s compared without case.
func containsFold(s, word string) bool {
	return strings.Contains(strings.ToLower(s), word)
}

// isInteger reports whether s is a JSON integer: an optional minus and
// digits, no fraction or exponent.
func isInteger(s string) bool {
	s = strings.TrimPrefix(s, "-")
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}
