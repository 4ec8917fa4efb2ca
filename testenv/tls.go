package testenv

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// Names of the files WriteTLSCerts creates in its directory.
const (
	caCertName     = "ca.crt"
	serverCertName = "server.crt"
	serverKeyName  = "server.key"
)

// WriteTLSCerts creates a fresh self-signed CA and a server certificate signed
// by it, valid for 127.0.0.1, ::1 and localhost, both ECDSA P-256, and writes
// them to dir as ca.crt, server.crt and server.key (PKCS #8). Certificates are
// 0644 and the key 0600, which is what PostgreSQL demands of ssl_key_file when
// its owner is the server's user. The CA's private key is discarded: nothing
// else can ever be signed by this CA.
//
// Clients that use sslmode=verify-full (or a tls.Config with RootCAs) trust
// caFile; servers (PostgreSQL, the proxy's listener) use certFile and keyFile.
func WriteTLSCerts(dir string) (caFile, certFile, keyFile string, err error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", "", fmt.Errorf("testenv: generate CA key: %w", err)
	}
	serverKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", "", fmt.Errorf("testenv: generate server key: %w", err)
	}

	// Backdated by an hour so that a skewed clock in a VM or container does
	// not make a certificate created a second ago "not yet valid".
	notBefore := time.Now().Add(-time.Hour)
	notAfter := notBefore.Add(10 * 365 * 24 * time.Hour)

	caTemplate := &x509.Certificate{
		SerialNumber:          randomSerial(),
		Subject:               pkix.Name{CommonName: "pgcloak testenv CA"},
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTemplate, caTemplate, &caKey.PublicKey, caKey)
	if err != nil {
		return "", "", "", fmt.Errorf("testenv: create CA certificate: %w", err)
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		return "", "", "", fmt.Errorf("testenv: parse CA certificate: %w", err)
	}

	serverTemplate := &x509.Certificate{
		SerialNumber: randomSerial(),
		Subject:      pkix.Name{CommonName: "localhost"},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		NotBefore:    notBefore,
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	serverDER, err := x509.CreateCertificate(rand.Reader, serverTemplate, caCert, &serverKey.PublicKey, caKey)
	if err != nil {
		return "", "", "", fmt.Errorf("testenv: create server certificate: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(serverKey)
	if err != nil {
		return "", "", "", fmt.Errorf("testenv: marshal server key: %w", err)
	}

	caFile = filepath.Join(dir, caCertName)
	certFile = filepath.Join(dir, serverCertName)
	keyFile = filepath.Join(dir, serverKeyName)
	for _, f := range []struct {
		path  string
		block *pem.Block
		mode  os.FileMode
	}{
		{caFile, &pem.Block{Type: "CERTIFICATE", Bytes: caDER}, 0o644},
		{certFile, &pem.Block{Type: "CERTIFICATE", Bytes: serverDER}, 0o644},
		{keyFile, &pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}, 0o600},
	} {
		if err := writeFileMode(f.path, pem.EncodeToMemory(f.block), f.mode); err != nil {
			return "", "", "", err
		}
	}
	return caFile, certFile, keyFile, nil
}

// writeFileMode writes data to path and leaves it with exactly mode, even
// when the file existed before with looser permissions.
func writeFileMode(path string, data []byte, mode os.FileMode) error {
	if err := os.WriteFile(path, data, mode); err != nil {
		return fmt.Errorf("testenv: %w", err)
	}
	if err := os.Chmod(path, mode); err != nil {
		return fmt.Errorf("testenv: %w", err)
	}
	return nil
}

func randomSerial() *big.Int {
	// rand.Int only fails when the reader does, and crypto/rand's never does.
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	return n.Add(n, big.NewInt(1)) // serials must be positive
}
