package main

import (
	"bytes"
	"context"
	"errors"
	"maps"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pgcloak/pgcloak/config"
	"github.com/pgcloak/pgcloak/crypto"
	"github.com/pgcloak/pgcloak/crypto/awskms"
	"github.com/pgcloak/pgcloak/testenv"
	"gopkg.in/yaml.v3"
)

// syncBuffer is a bytes.Buffer safe for the command's goroutine and the
// test's.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// running is a pgcloak-kms started in-process by start.
type running struct {
	stdout, stderr syncBuffer
	endpoint       string
	cancel         context.CancelFunc
	exited         chan int
}

// start runs pgcloak-kms with args until it says it is serving, and stops
// it when the test ends.
func start(t *testing.T, args ...string) *running {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	r := &running{cancel: cancel, exited: make(chan int, 1)}
	go func() { r.exited <- run(ctx, args, &r.stdout, &r.stderr) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-r.exited:
		case <-time.After(10 * time.Second):
			t.Error("pgcloak-kms did not stop within 10s")
		}
	})
	deadline := time.After(30 * time.Second)
	for !strings.Contains(r.stdout.String(), "Serving until") {
		select {
		case code := <-r.exited:
			r.exited <- code
			t.Fatalf("pgcloak-kms exited with %d before serving; stderr:\n%s", code, r.stderr.String())
		case <-deadline:
			t.Fatalf("pgcloak-kms did not start within 30s; stdout:\n%s", r.stdout.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
	m := regexp.MustCompile(`(?m)^Endpoint  (http://\S+)$`).FindStringSubmatch(r.stdout.String())
	if m == nil {
		t.Fatalf("stdout: no endpoint line:\n%s", r.stdout.String())
	}
	r.endpoint = m[1]
	return r
}

// stop stops the command as SIGINT would and returns its exit code.
func (r *running) stop(t *testing.T) int {
	t.Helper()
	r.cancel()
	select {
	case code := <-r.exited:
		r.exited <- code // for the cleanup
		return code
	case <-time.After(10 * time.Second):
		t.Fatal("pgcloak-kms did not stop within 10s")
		return -1
	}
}

// keyARN returns the key ARN the command printed for alias.
func (r *running) keyARN(t *testing.T, alias string) string {
	t.Helper()
	m := regexp.MustCompile(`(?m)^  ` + regexp.QuoteMeta(alias) + ` +(arn:aws:kms:\S+:key/\S+) `).FindStringSubmatch(r.stdout.String())
	if m == nil {
		t.Fatalf("stdout: no key ARN for %s:\n%s", alias, r.stdout.String())
	}
	return m[1]
}

// useEnv sets, for the test, exactly the AWS environment the command
// printed, and keeps the SDK away from this machine's AWS files and
// instance metadata.
func useEnv(t *testing.T, r *running) {
	t.Helper()
	dir := t.TempDir()
	t.Setenv("AWS_SESSION_TOKEN", "")
	t.Setenv("AWS_PROFILE", "")
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(dir, "config"))
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(dir, "credentials"))
	exports := regexp.MustCompile(`(?m)^  export (AWS_\w+)=(\S+)$`).FindAllStringSubmatch(r.stdout.String(), -1)
	var names []string
	for _, m := range exports {
		t.Setenv(m[1], m[2])
		names = append(names, m[1])
	}
	for _, want := range []string{"AWS_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_EC2_METADATA_DISABLED"} {
		if !slices.Contains(names, want) {
			t.Errorf("stdout: no export of %s", want)
		}
	}
}

// printedKeys is the keys section the command prints for pgcloak's
// configuration.
type printedKeys struct {
	Keys struct {
		Provider string `yaml:"provider"`
		AWS      struct {
			Region   string `yaml:"region"`
			Endpoint string `yaml:"endpoint"`
			KeyID    string `yaml:"key_id"`
		} `yaml:"aws"`
		Tenants map[string]struct {
			KeyID string `yaml:"key_id"`
		} `yaml:"tenants"`
	} `yaml:"keys"`
}

func (r *running) printedKeys(t *testing.T) printedKeys {
	t.Helper()
	_, rest, ok := strings.Cut(r.stdout.String(), "In pgcloak's configuration:\n")
	if !ok {
		t.Fatal("stdout: no configuration section")
	}
	snippet, _, _ := strings.Cut(rest, "\n\n")
	var pk printedKeys
	dec := yaml.NewDecoder(strings.NewReader(snippet))
	dec.KnownFields(true)
	if err := dec.Decode(&pk); err != nil {
		t.Fatalf("printed configuration %q: %v", snippet, err)
	}
	return pk
}

// TestServe starts pgcloak-kms with a tenant key and uses it as pgcloak
// does, through crypto/awskms and the AWS SDK with the printed endpoint,
// environment and configuration: data keys are made under the right KEK,
// unwrap under their own context only, and the command stops cleanly.
func TestServe(t *testing.T) {
	r := start(t, "--listen", "127.0.0.1:0", "--tenant-key", "acme=alias/acme")
	useEnv(t, r)
	defaultARN, acmeARN := r.keyARN(t, "alias/pgcloak"), r.keyARN(t, "alias/acme")
	if defaultARN == acmeARN {
		t.Fatalf("alias/pgcloak and alias/acme are one key, %s", acmeARN)
	}

	pk := r.printedKeys(t)
	if pk.Keys.Provider != "aws" || pk.Keys.AWS.Endpoint != r.endpoint || pk.Keys.AWS.KeyID != "alias/pgcloak" || pk.Keys.AWS.Region != testenv.KMSRegion {
		t.Errorf("printed keys.aws: got %+v, want provider aws, endpoint %s, key alias/pgcloak, region %s", pk.Keys, r.endpoint, testenv.KMSRegion)
	}
	if got := pk.Keys.Tenants["acme"].KeyID; got != "alias/acme" || len(pk.Keys.Tenants) != 1 {
		t.Errorf("printed keys.tenants: got %+v, want acme: alias/acme only", pk.Keys.Tenants)
	}
	tenants := make(map[string]string)
	for tenant, tk := range pk.Keys.Tenants {
		tenants[tenant] = tk.KeyID
	}

	ctx := t.Context()
	p, err := awskms.New(ctx, awskms.Options{
		Region:       os.Getenv("AWS_REGION"),
		Endpoint:     pk.Keys.AWS.Endpoint,
		KeyID:        pk.Keys.AWS.KeyID,
		TenantKeyIDs: tenants,
		MaxAttempts:  1,
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Ping(ctx); err != nil {
		t.Fatalf("ping: %v", err)
	}

	wrapped := make(map[string][]byte)
	for _, c := range []struct{ tenant, wantKEK string }{{"acme", acmeARN}, {"globex", defaultARN}} {
		t.Run(c.tenant, func(t *testing.T) {
			kc := crypto.KeyContext{Tenant: c.tenant, KeyClass: "default", Purpose: crypto.PurposeData}
			plaintext, w, kek, err := p.GenerateDataKey(ctx, kc)
			if err != nil {
				t.Fatalf("generate data key: %v", err)
			}
			if kek != c.wantKEK {
				t.Errorf("kek id: got %s, want %s", kek, c.wantKEK)
			}
			got, err := p.Unwrap(ctx, kc, w)
			if err != nil {
				t.Fatalf("unwrap: %v", err)
			}
			if !bytes.Equal(got, plaintext) || len(got) != crypto.KeySize {
				t.Errorf("unwrap: got %d bytes, not the data key", len(got))
			}

			// A key made elsewhere, wrapped with Encrypt.
			own := bytes.Repeat([]byte{0x5a}, crypto.KeySize)
			w2, kek2, err := p.Wrap(ctx, kc, own)
			if err != nil || kek2 != c.wantKEK {
				t.Fatalf("wrap: got kek %q, %v; want %s", kek2, err, c.wantKEK)
			}
			if got, err := p.Unwrap(ctx, kc, w2); err != nil || !bytes.Equal(got, own) {
				t.Errorf("unwrap of a wrapped key: got %v, want the key back", err)
			}
			if bytes.Contains(w2, own) {
				t.Error("the wrapped key contains the data key")
			}
			wrapped[c.tenant] = w
		})
	}

	// The encryption context binds a wrapped key to its tenant.
	if w := wrapped["globex"]; w != nil {
		_, err := p.Unwrap(ctx, crypto.KeyContext{Tenant: "initech", KeyClass: "default", Purpose: crypto.PurposeData}, w)
		if !errors.Is(err, crypto.ErrUnwrap) {
			t.Errorf("globex's key under initech's context: got %v, want crypto.ErrUnwrap", err)
		}
	}

	if code := r.stop(t); code != 0 {
		t.Errorf("exit code: got %d, want 0; stderr:\n%s", code, r.stderr.String())
	}
	if !regexp.MustCompile(`Calls served: GenerateDataKey 2, Encrypt 2, Decrypt 5, DescribeKey 1\.`).MatchString(r.stdout.String()) {
		t.Errorf("stdout: want the call counts at the end, got:\n%s", r.stdout.String())
	}
	if c, err := net.DialTimeout("tcp", strings.TrimPrefix(r.endpoint, "http://"), time.Second); err == nil {
		c.Close()
		t.Errorf("%s still accepts connections after the command stopped", r.endpoint)
	}
	if r.stderr.String() != "" {
		t.Errorf("stderr: got %q, want nothing on loopback", r.stderr.String())
	}
}

// TestTenantKeyDefaultAlias checks that --tenant-key TENANT names the key
// alias/TENANT.
func TestTenantKeyDefaultAlias(t *testing.T) {
	r := start(t, "--listen", "127.0.0.1:0", "--alias", "alias/kek", "--tenant-key", "globex")
	r.keyARN(t, "alias/kek")
	r.keyARN(t, "alias/globex")
	if got := r.printedKeys(t).Keys.Tenants["globex"].KeyID; got != "alias/globex" {
		t.Errorf("printed keys.tenants.globex: got %q, want alias/globex", got)
	}
}

// TestUsage checks that command-line mistakes exit 2 and a busy port 1,
// without serving.
func TestUsage(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()

	for _, c := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"bad alias", []string{"--alias", "pgcloak"}, exitUsageErr, `--alias "pgcloak"`},
		{"aws alias", []string{"--alias", "alias/aws/kms"}, exitUsageErr, "not under alias/aws/"},
		{"no tenant", []string{"--tenant-key", "=alias/x"}, exitUsageErr, "want TENANT"},
		{"tenant alias", []string{"--tenant-key", "acme=acme"}, exitUsageErr, "the alias must be alias/NAME"},
		{"tenant twice", []string{"--tenant-key", "acme", "--tenant-key", "acme=alias/other"}, exitUsageErr, `tenant "acme" is given twice`},
		{"alias twice", []string{"--listen", "127.0.0.1:0", "--tenant-key", "acme=alias/pgcloak"}, exitFailure, "AlreadyExistsException"},
		{"bad listen", []string{"--listen", "4599"}, exitUsageErr, `--listen "4599"`},
		{"unknown flag", []string{"--port", "1"}, exitUsageErr, "unknown flag"},
		{"argument", []string{"serve"}, exitUsageErr, "Run 'pgcloak-kms --help'"},
		{"busy port", []string{"--listen", busy.Addr().String()}, exitFailure, "address already in use"},
	} {
		t.Run(c.name, func(t *testing.T) {
			var stdout, stderr syncBuffer
			code := run(t.Context(), c.args, &stdout, &stderr)
			if code != c.code {
				t.Errorf("exit code: got %d, want %d; stderr: %s", code, c.code, stderr.String())
			}
			if !strings.Contains(stderr.String(), c.want) || !strings.HasPrefix(stderr.String(), "pgcloak-kms: ") {
				t.Errorf("stderr: got %q, want pgcloak-kms: ... %q", stderr.String(), c.want)
			}
			if strings.Contains(stdout.String(), "Serving") {
				t.Error("stdout: it served")
			}
		})
	}
}

// TestComposeKMSCommand runs pgcloak-kms with the arguments of
// docker-compose.yml's kms service (on a loopback port instead of the
// compose network's) and checks that docker/pgcloak.yaml's keys section
// works against it: its default key and every tenant key exist.
func TestComposeKMSCommand(t *testing.T) {
	data, err := os.ReadFile("../../docker-compose.yml")
	if err != nil {
		t.Fatal(err)
	}
	var compose struct {
		Services map[string]struct {
			Entrypoint  []string          `yaml:"entrypoint"`
			Command     []string          `yaml:"command"`
			Environment map[string]string `yaml:"environment"`
		} `yaml:"services"`
	}
	if err := yaml.Unmarshal(data, &compose); err != nil {
		t.Fatalf("docker-compose.yml: %v", err)
	}
	kms, ok := compose.Services["kms"]
	if !ok || len(kms.Entrypoint) == 0 || filepath.Base(kms.Entrypoint[0]) != "pgcloak-kms" {
		t.Fatalf("service kms: got entrypoint %v, want pgcloak-kms", kms.Entrypoint)
	}
	args := append(kms.Entrypoint[1:], kms.Command...)
	i := slices.Index(args, "--listen")
	if i < 0 || i+1 >= len(args) {
		t.Fatalf("service kms: no --listen in %v", args)
	}
	args = slices.Clone(args)
	args[i+1] = "127.0.0.1:0"
	r := start(t, args...)
	useEnv(t, r)

	// docker/pgcloak.yaml, with its ${...} set from a replica's environment.
	path := "../../docker/pgcloak.yaml"
	cfgText, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range regexp.MustCompile(`\$\{(\w+)\}`).FindAllStringSubmatch(string(cfgText), -1) {
		t.Setenv(m[1], compose.Services["pgcloak-1"].Environment[m[1]])
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Keys.Provider != config.ProviderAWS {
		t.Fatalf("%s: keys.provider %q, want aws", path, cfg.Keys.Provider)
	}
	tenants := make(map[string]string)
	for tenant, tk := range cfg.Keys.Tenants {
		tenants[tenant] = tk.KeyID
	}
	p, err := awskms.New(t.Context(), awskms.Options{
		Region:       cfg.Keys.AWS.Region,
		Endpoint:     r.endpoint,
		KeyID:        cfg.Keys.AWS.KeyID,
		TenantKeyIDs: tenants,
		MaxAttempts:  1,
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Ping(t.Context()); err != nil {
		t.Errorf("keys.aws.key_id %s: %v", cfg.Keys.AWS.KeyID, err)
	}
	for _, tenant := range append(slices.Sorted(maps.Keys(tenants)), "some-other-tenant") {
		kc := crypto.KeyContext{Tenant: tenant, KeyClass: "default", Purpose: crypto.PurposeIndex}
		_, _, kek, err := p.GenerateDataKey(t.Context(), kc)
		if err != nil {
			t.Errorf("tenant %s (KEK %s): %v", tenant, p.TenantKEK(tenant), err)
			continue
		}
		if want := r.keyARN(t, p.TenantKEK(tenant)); kek != want {
			t.Errorf("tenant %s: got KEK %s, want %s", tenant, kek, want)
		}
	}
}
