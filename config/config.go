package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
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
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return Parse(path, data)
}

// Parse validates a configuration held in memory. filename is used only to
// prefix problems and to fill Config.File. ${NAME} references are expanded
// from the process environment.
//
// The returned Config is immutable by contract: nothing may modify it, its
// slices or its maps after Parse returns, so it can be shared between
// goroutines without locks. A reload builds a new Config and swaps the
// pointer.
func Parse(filename string, data []byte) (*Config, error) {
	return parse(filename, data, os.LookupEnv)
}

func parse(filename string, data []byte, lookup func(string) (string, bool)) (*Config, error) {
	d := &decoder{file: filename, lookup: lookup, lines: make(map[string]int)}
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
	return cfg, nil
}

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
