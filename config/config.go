package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"time"

	"gopkg.in/yaml.v3"
)

// Defaults for keys that may be left out.
const (
	DefaultListenAddress   = "127.0.0.1:6432"
	DefaultMaxMessageSize  = 64 << 20 // bytes
	DefaultShutdownTimeout = 30 * time.Second
	DefaultConnectTimeout  = 10 * time.Second
	DefaultDatabase        = "postgres"
	DefaultTenantSetting   = "app.tenant_id"
	DefaultJWTClaim        = "tenant_id"
	DefaultJWTLeeway       = 30 * time.Second
	DefaultJWTMaxLifetime  = 24 * time.Hour
	DefaultCacheTTL        = 60 * time.Second
	DefaultCacheMaxEntries = 10000
	DefaultAuditOutput     = "stderr"
	DefaultLogLevel        = "info"
	DefaultLogFormat       = "json"

	// IndexColumnSuffix is appended to a searchable column's name to name
	// its blind-index column when index_column is not given.
	IndexColumnSuffix = "_bidx"
)

// Bounds of listen.max_message_size.
const (
	minMessageSize = 1 << 10 // 1 KiB
	maxMessageSize = 1 << 30 // 1 GiB
)

// Default and bound of keys.rotate_after_encryptions.
const (
	// DefaultRotateAfterEncryptions is 2^30, as crypto's
	// DefaultRotateAfterSeals (config imports no crypto).
	DefaultRotateAfterEncryptions = 1 << 30
	// MaxRotateAfterEncryptions is 2^32: NIST SP 800-38D allows about that
	// many encryptions under one AES-GCM key with random 96-bit nonces.
	MaxRotateAfterEncryptions = 1 << 32
)

// Load reads and validates the configuration file at path. Problems with
// the content come back as a *ValidationError; a file that cannot be read,
// as the error from os.ReadFile.
//
// Relative file paths in the configuration (PathKeys) resolve against the
// directory of path, not the working directory, so that
// "pgcloak serve -c /etc/pgcloak/pgcloak.yaml" finds master.key next to
// the file from wherever it is started.
func Load(path string, opts ...Option) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return Parse(path, data, opts...)
}

// Parse validates a configuration held in memory. filename prefixes
// problems, fills Config.File, and its directory is where relative file
// paths resolve (as Load does). ${NAME} references are expanded from the
// process environment.
//
// The returned Config is immutable by contract: nothing may modify it, its
// slices or its maps after Parse returns, so it can be shared between
// goroutines without locks. A reload builds a new Config and swaps the
// pointer.
func Parse(filename string, data []byte, opts ...Option) (*Config, error) {
	return parse(filename, data, os.LookupEnv, opts...)
}

// Option changes how Load and Parse treat a file.
type Option func(*decoder)

// WithoutSecrets is for commands that never use the configuration's
// secrets (schema, encrypt-existing --print-prepare and --print-finish):
// a ${NAME} reference to an unset variable in a secret key (SecretKeys)
// leaves that secret unset instead of failing, so that such commands run
// where the upstream password is not in the environment. Secrets named in
// need (YAML paths such as "tenancy.jwt.hs256_secret") are still required.
//
// A Config loaded so may lack secrets that validation would otherwise have
// required; SecretUnset reports them. Never hand it to serve or to a
// command that logs in upstream.
func WithoutSecrets(need ...string) Option {
	return func(d *decoder) {
		d.unsetSecretsOK = true
		d.neededSecrets = need
	}
}

// SecretKeys are the YAML paths of the keys that hold secrets.
var SecretKeys = []string{"upstream.password", "tenancy.jwt.hs256_secret", "tenancy.jwt.upstream_password"}

// PathKeys are the YAML paths of the keys that name files, which resolve
// against the configuration file's directory when relative (a list's
// entries as [*]). audit.output is one unless it is stderr or stdout.
var PathKeys = []string{
	"listen.tls.cert_file", "listen.tls.key_file", "listen.tls.client_ca_file",
	"upstream.root_cert_file", "upstream.client_certs[*].cert_file", "upstream.client_certs[*].key_file",
	"tenancy.jwt.public_key_file", "keys.local.master_key_file", "audit.output",
}

func parse(filename string, data []byte, lookup func(string) (string, bool), opts ...Option) (*Config, error) {
	d := &decoder{file: filename, lookup: lookup, lines: make(map[string]int)}
	for _, o := range opts {
		o(d)
	}
	cfg := defaults()
	cfg.File = filename
	if root, ok := d.parseYAML(data); ok {
		d.config(root, cfg)
	}
	if len(cfg.Encrypt.Tables) > 0 && cfg.Keys.Provider == ProviderLocal && cfg.Keys.Local.MasterKeyFile == "" {
		d.errorf("keys.local.master_key_file", "is required with provider local when encrypt.tables declares tables (`pgcloak keys init-local -o master.key` creates one)")
	}
	if len(d.problems) > 0 {
		sort.SliceStable(d.problems, func(i, j int) bool { return d.problems[i].Line < d.problems[j].Line })
		return nil, &ValidationError{Problems: d.problems}
	}
	resolvePaths(cfg, filepath.Dir(filename))
	cfg.lines = d.lines
	cfg.unsetSecrets = d.unsetSecrets
	return cfg, nil
}

// resolvePaths makes the relative file paths of cfg (PathKeys) relative to
// dir, the configuration file's directory, instead of the working
// directory. With dir "." they are left as written.
func resolvePaths(cfg *Config, dir string) {
	if dir == "." || dir == "" {
		return
	}
	rel := func(p *string) {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(dir, *p)
		}
	}
	if t := cfg.Listen.TLS; t != nil {
		rel(&t.CertFile)
		rel(&t.KeyFile)
		rel(&t.ClientCAFile)
	}
	rel(&cfg.Upstream.RootCertFile)
	for i := range cfg.Upstream.ClientCerts {
		rel(&cfg.Upstream.ClientCerts[i].CertFile)
		rel(&cfg.Upstream.ClientCerts[i].KeyFile)
	}
	rel(&cfg.Tenancy.JWT.PublicKeyFile)
	rel(&cfg.Keys.Local.MasterKeyFile)
	if o := cfg.Audit.Output; o != "stderr" && o != "stdout" {
		rel(&cfg.Audit.Output)
	}
}

// Line returns the line of File on which the key at YAML path (such as
// keys.local.master_key_file or encrypt.tables[0].name) is written, or 0
// when the file does not set it.
func (c *Config) Line(path string) int { return c.lines[path] }

// SecretUnset reports whether the secret at YAML path (one of SecretKeys)
// refers to an environment variable that was unset when the file was
// loaded with WithoutSecrets.
func (c *Config) SecretUnset(path string) bool { return c.unsetSecrets[path] }

func defaults() *Config {
	return &Config{
		Listen: Listen{
			Address:         DefaultListenAddress,
			MaxMessageSize:  DefaultMaxMessageSize,
			ShutdownTimeout: DefaultShutdownTimeout,
		},
		Upstream: Upstream{
			SSLMode:        SSLDisable,
			Database:       DefaultDatabase,
			ConnectTimeout: DefaultConnectTimeout,
		},
		Tenancy: Tenancy{
			Setting: DefaultTenantSetting,
			Mode:    ModeLogin,
			JWT: JWTTenancy{
				Claim:       DefaultJWTClaim,
				Leeway:      DefaultJWTLeeway,
				MaxLifetime: DefaultJWTMaxLifetime,
			},
		},
		Keys: Keys{
			Provider:        ProviderLocal,
			CacheTTL:        DefaultCacheTTL,
			CacheMaxEntries: DefaultCacheMaxEntries,

			RotateAfterEncryptions: DefaultRotateAfterEncryptions,
		},
		Encrypt: Encrypt{OnDecryptError: DecryptErrorFail, RequireFormatChecks: true},
		Audit:   Audit{Output: DefaultAuditOutput},
		Log:     Log{Level: DefaultLogLevel, Format: DefaultLogFormat},
	}
}

var yamlLineError = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// parseYAML parses the single YAML document in data. An empty file yields a
// nil root, which decodes as an empty mapping.
func (d *decoder) parseYAML(data []byte) (root *yaml.Node, ok bool) {
	// yaml.v3 turns its own failures into errors, but a bug in it would
	// panic; a configuration file must not be able to crash the process
	// that reloads it.
	defer func() {
		if r := recover(); r != nil {
			d.problem(0, "", "invalid YAML: the parser failed (%v)", r)
			root, ok = nil, false
		}
	}()
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, true
		}
		d.yamlError(err)
		return nil, false
	}
	var extra yaml.Node
	switch err := dec.Decode(&extra); {
	case err == nil:
		d.problem(extra.Line, "", "a second YAML document; the file must hold exactly one")
		return nil, false
	case !errors.Is(err, io.EOF):
		d.yamlError(err)
		return nil, false
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) == 0 {
		return nil, true
	}
	return doc.Content[0], true
}

// yamlError turns a yaml.v3 syntax error into a problem. Syntax errors
// describe the token that failed, not the value around it, so they carry no
// secrets.
func (d *decoder) yamlError(err error) {
	msg := err.Error()
	if m := yamlLineError.FindStringSubmatch(msg); m != nil {
		line, _ := strconv.Atoi(m[1])
		d.problem(line, "", "invalid YAML: %s", m[2])
		return
	}
	if len(msg) > 6 && msg[:6] == "yaml: " {
		msg = msg[6:]
	}
	d.problem(0, "", "invalid YAML: %s", msg)
}
