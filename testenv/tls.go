package testenv

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Names of the files WriteTLSCerts creates in its directory.
const (
	caCertName     = "ca.crt"
	serverCertName = "server.crt"
	serverKeyName  = "server.key"
)

// TLSFiles names the files WriteTLSFiles wrote.
type TLSFiles struct {
	CAFile   string // the CA certificate
	CertFile string // the server certificate, signed by the CA
	KeyFile  string // its key
	// Clients maps each common name asked for to a client certificate for
	// it, signed by the same CA.
	Clients map[string]ClientFiles
}

// ClientFiles are a client certificate and its key.
type ClientFiles struct{ CertFile, KeyFile string }

// WriteTLSCerts is WriteTLSFiles without client certificates.
func WriteTLSCerts(dir string) (caFile, certFile, keyFile string, err error) {
	f, err := WriteTLSFiles(dir)
	return f.CAFile, f.CertFile, f.KeyFile, err
}

// WriteTLSFiles creates a fresh self-signed CA, a server certificate signed
// by it, valid for 127.0.0.1, ::1 and localhost, and one client certificate
// for each of clientNames (its subject's common name, which PostgreSQL's
// cert authentication compares with the user name; "a,b" gives a subject
// with two common names, a then b), all ECDSA P-256. It writes them to dir
// as ca.crt, server.crt and server.key, and client-NAME.crt and
// client-NAME.key (keys in PKCS #8; a comma in NAME becomes "+"). Certificates are
// 0644 and keys 0600, which is what PostgreSQL and libpq demand of key files.
// The CA's private key is discarded: nothing else can ever be signed by this
// CA.
//
// Clients that use sslmode=verify-full (or a tls.Config with RootCAs) trust
// CAFile; servers (PostgreSQL, the proxy's listener) use CertFile and
// KeyFile, and trust CAFile to verify client certificates.
func WriteTLSFiles(dir string, clientNames ...string) (TLSFiles, error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return TLSFiles{}, fmt.Errorf("testenv: generate CA key: %w", err)
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
		return TLSFiles{}, fmt.Errorf("testenv: create CA certificate: %w", err)
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		return TLSFiles{}, fmt.Errorf("testenv: parse CA certificate: %w", err)
	}
	f := TLSFiles{CAFile: filepath.Join(dir, caCertName), Clients: make(map[string]ClientFiles, len(clientNames))}
	if err := writeFileMode(f.CAFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), 0o644); err != nil {
		return TLSFiles{}, err
	}

	// issue signs a certificate from template and writes it and its key.
	issue := func(template *x509.Certificate, certName, keyName string) (certFile, keyFile string, err error) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return "", "", fmt.Errorf("testenv: generate key: %w", err)
		}
		template.SerialNumber = randomSerial()
		template.NotBefore, template.NotAfter = notBefore, notAfter
		template.KeyUsage = x509.KeyUsageDigitalSignature
		der, err := x509.CreateCertificate(rand.Reader, template, caCert, &key.PublicKey, caKey)
		if err != nil {
			return "", "", fmt.Errorf("testenv: create certificate %s: %w", template.Subject.CommonName, err)
		}
		keyDER, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return "", "", fmt.Errorf("testenv: marshal key: %w", err)
		}
		certFile, keyFile = filepath.Join(dir, certName), filepath.Join(dir, keyName)
		if err := writeFileMode(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
			return "", "", err
		}
		if err := writeFileMode(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
			return "", "", err
		}
		return certFile, keyFile, nil
	}

	f.CertFile, f.KeyFile, err = issue(&x509.Certificate{
		Subject:     pkix.Name{CommonName: "localhost"},
		DNSNames:    []string{"localhost"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}, serverCertName, serverKeyName)
	if err != nil {
		return TLSFiles{}, err
	}
	for _, name := range clientNames {
		// In ExtraNames, in order: pkix leaves CommonName out when
		// ExtraNames holds a common name.
		var subject pkix.Name
		for _, cn := range strings.Split(name, ",") {
			subject.ExtraNames = append(subject.ExtraNames, pkix.AttributeTypeAndValue{Type: asn1.ObjectIdentifier{2, 5, 4, 3}, Value: cn})
		}
		file := "client-" + strings.ReplaceAll(name, ",", "+")
		var c ClientFiles
		c.CertFile, c.KeyFile, err = issue(&x509.Certificate{
			Subject:     subject,
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		}, file+".crt", file+".key")
		if err != nil {
			return TLSFiles{}, err
		}
		f.Clients[name] = c
	}
	return f, nil
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
