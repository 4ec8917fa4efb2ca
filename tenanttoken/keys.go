package tenanttoken

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"github.com/pgcloak/pgcloak/config"
)

// minRSABits is the smallest RSA modulus accepted: NIST SP 800-131A
// disallows less for signatures.
const minRSABits = 2048

// maxKeyFile bounds what public_key_file may make us read.
const maxKeyFile = 1 << 20

// loadPublicKey reads the first PEM public key (or certificate) in path
// and returns it with the algorithms its kind and curve can verify. A
// private key is refused: the proxy verifies and must not hold signing
// keys. Errors name the file, never its contents.
func loadPublicKey(path string) (key any, algs []string, err error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxKeyFile+1))
	if err != nil {
		return nil, nil, err
	}
	if len(data) > maxKeyFile {
		return nil, nil, fmt.Errorf("%s: larger than %d bytes; want one PEM public key", path, maxKeyFile)
	}
	for rest := data; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			return nil, nil, fmt.Errorf("%s: no PEM public key (want a \"PUBLIC KEY\" block: RSA, EC P-256/P-384 or Ed25519)", path)
		}
		switch block.Type {
		case "PUBLIC KEY":
			key, err = x509.ParsePKIXPublicKey(block.Bytes)
		case "RSA PUBLIC KEY":
			key, err = x509.ParsePKCS1PublicKey(block.Bytes)
		case "CERTIFICATE":
			var cert *x509.Certificate
			if cert, err = x509.ParseCertificate(block.Bytes); err == nil {
				key = cert.PublicKey
			}
		default:
			if strings.Contains(block.Type, "PRIVATE KEY") {
				return nil, nil, fmt.Errorf("%s: holds a private key; public_key_file takes the public key only (openssl pkey -in key.pem -pubout)", path)
			}
			continue
		}
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %s block: %w", path, block.Type, err)
		}
		algs, err = keyAlgorithms(key)
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w", path, err)
		}
		return key, algs, nil
	}
}

// keyAlgorithms returns the JWS algorithms a public key verifies.
func keyAlgorithms(key any) ([]string, error) {
	switch k := key.(type) {
	case *rsa.PublicKey:
		if bits := k.N.BitLen(); bits < minRSABits {
			return nil, fmt.Errorf("RSA key of %d bits; want at least %d", bits, minRSABits)
		}
		return []string{"RS256", "RS384", "RS512", "PS256"}, nil
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256():
			return []string{"ES256"}, nil
		case elliptic.P384():
			return []string{"ES384"}, nil
		}
		return nil, fmt.Errorf("EC key on curve %s; want P-256 (ES256) or P-384 (ES384)", k.Curve.Params().Name)
	case ed25519.PublicKey:
		return []string{"EdDSA"}, nil
	}
	return nil, fmt.Errorf("unsupported key type %T; want RSA, EC (P-256, P-384) or Ed25519", key)
}

// keyKind names a key kind in errors.
func keyKind(key any) string {
	switch key.(type) {
	case *rsa.PublicKey:
		return "the RSA key"
	case *ecdsa.PublicKey:
		return "the EC key"
	case ed25519.PublicKey:
		return "the Ed25519 key"
	}
	return "the key"
}

// errNone is the answer to anyone configuring alg "none".
var errNone = errors.New(`"none" is never allowed: it accepts tokens without a signature`)

// allowList returns the configured algorithms when every one fits the
// key (fit), or fit itself when none are configured. what names the key in
// errors.
func allowList(configured, fit []string, what string) ([]string, error) {
	if len(configured) == 0 {
		return slices.Clone(fit), nil
	}
	for _, alg := range configured {
		if strings.EqualFold(alg, "none") {
			return nil, fmt.Errorf("tenancy.jwt.algorithms: %w", errNone)
		}
		if !slices.Contains(fit, alg) {
			return nil, fmt.Errorf("tenancy.jwt.algorithms: %s does not fit %s (it verifies %s)", alg, what, strings.Join(fit, ", "))
		}
	}
	return slices.Clone(configured), nil
}

// asymmetric is the fit of a JWKS: every public-key algorithm; each key of
// the set is then held to its own kind by the signature check.
func asymmetric() []string { return slices.Clone(config.AsymmetricJWTAlgorithms) }
