package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzLoad feeds arbitrary bytes to the loader. It must never panic; it
// must return either a config or a *ValidationError naming the file; and a
// secret it was given must never come back in an error.
func FuzzLoad(f *testing.F) {
	spec, err := os.ReadFile(filepath.Join("testdata", "spec.yaml"))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(spec)
	f.Add(withMinimal())
	for _, tc := range errorCases {
		f.Add(tc.yaml)
	}
	const secret = "fuzz-secret-value-0123456789abcdef"
	env := envOf(map[string]string{
		"PGCLOAK_UPSTREAM_PASSWORD": secret,
		"JWT_SECRET":                secret,
		"A":                         "a",
	})
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := parse("fuzz.yaml", data, env)
		if err == nil {
			if c == nil {
				t.Fatalf("got a nil config and a nil error")
			}
			return
		}
		if c != nil {
			t.Errorf("got a config along with error %v", err)
		}
		var ve *ValidationError
		if !errors.As(err, &ve) || len(ve.Problems) == 0 {
			t.Fatalf("got %v (%T), want a *ValidationError with problems", err, err)
		}
		for _, p := range ve.Problems {
			if p.File != "fuzz.yaml" {
				t.Errorf("got problem file %q, want fuzz.yaml", p.File)
			}
		}
		// The secret only enters through ${...}, never from the input
		// itself, so it can only leak through the loader.
		if !strings.Contains(string(data), secret) && strings.Contains(err.Error(), secret) {
			t.Errorf("got an error containing an expanded secret: %v", err)
		}
	})
}
