package config

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// FuzzLoad feeds arbitrary bytes to the loader. It must never panic, and it
// must return either a config or a *ValidationError naming the file. (Secret
// redaction is not checked here: the input may legitimately put ${JWT_SECRET}
// into a field that is not secret, and then the error quotes it.)
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
	env := envOf(map[string]string{
		"PGCLOAK_UPSTREAM_PASSWORD": "pw",
		"JWT_SECRET":                "0123456789abcdef0123456789abcdef",
		"APP_JWT_PASSWORD":          "pw",
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
	})
}
