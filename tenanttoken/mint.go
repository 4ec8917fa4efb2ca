package tenanttoken

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/pgcloak/pgcloak/config"
)

// MintSubject is the sub of every token Mint makes.
const MintSubject = "pgcloak-token"

// ErrNoSecret is Mint's answer when tenancy.jwt.hs256_secret is not set.
var ErrNoSecret = errors.New("tenancy.jwt.hs256_secret is not set: only an HS256 secret can mint tokens (with public_key_file or jwks_url, the issuer that holds the private key mints them)")

// registeredClaims are the claims Mint sets itself; the tenant's dot path
// may not start with one of them (sub excepted: the tenant then wins).
var registeredClaims = []string{"exp", "iat", "nbf", "iss", "aud", "jti"}

// Mint returns an HS256 token for tenant, signed with cfg.HS256Secret, valid
// from now for ttl: exp, iat and nbf from now and ttl, iss and aud when cfg
// has them, a random jti, sub MintSubject, and the tenant at cfg.Claim's
// dot path (nested objects for app_metadata.tenant_id). A Verifier built
// from the same cfg accepts it. ttl must be positive and at most
// cfg.MaxLifetime.
func Mint(cfg config.JWTTenancy, tenant string, ttl time.Duration, now time.Time) (string, error) {
	if cfg.HS256Secret == "" {
		return "", ErrNoSecret
	}
	if len(cfg.HS256Secret) < hs256MinSecret {
		return "", fmt.Errorf("tenancy.jwt.hs256_secret: shorter than %d bytes", hs256MinSecret)
	}
	if tenant == "" {
		return "", errors.New("the tenant must not be empty")
	}
	maxLifetime := cfg.MaxLifetime
	if maxLifetime <= 0 {
		maxLifetime = config.DefaultJWTMaxLifetime
	}
	if ttl <= 0 || ttl > maxLifetime {
		return "", fmt.Errorf("the lifetime must be positive and at most tenancy.jwt.max_lifetime (%s), got %s", maxLifetime, ttl)
	}
	path := strings.Split(cfg.Claim, ".")
	if cfg.Claim == "" || slices.Contains(path, "") {
		return "", fmt.Errorf("tenancy.jwt.claim: %q is not a dot path", cfg.Claim)
	}
	if slices.Contains(registeredClaims, path[0]) {
		return "", fmt.Errorf("tenancy.jwt.claim: %q would overwrite the registered claim %s", cfg.Claim, path[0])
	}
	var id [16]byte
	if _, err := rand.Read(id[:]); err != nil {
		return "", err
	}

	claims := jwt.MapClaims{
		"exp": jwt.NewNumericDate(now.Add(ttl)),
		"iat": jwt.NewNumericDate(now),
		"nbf": jwt.NewNumericDate(now),
		"jti": base64.RawURLEncoding.EncodeToString(id[:]),
		"sub": MintSubject,
	}
	if cfg.Issuer != "" {
		claims["iss"] = cfg.Issuer
	}
	if cfg.Audience != "" {
		claims["aud"] = cfg.Audience
	}
	obj := map[string]any(claims)
	for _, name := range path[:len(path)-1] {
		next := map[string]any{}
		obj[name] = next
		obj = next
	}
	obj[path[len(path)-1]] = tenant

	return jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString([]byte(cfg.HS256Secret.Reveal()))
}
