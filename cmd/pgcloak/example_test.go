package main

import (
	"path/filepath"
	"testing"

	"github.com/pgcloak/pgcloak/config"
)

// TestShippedConfigs keeps the example configuration valid (TestCompose
// loads docker/pgcloak.yaml with the compose environment).
func TestShippedConfigs(t *testing.T) {
	t.Setenv("PGCLOAK_UPSTREAM_PASSWORD", "example")
	for _, path := range []string{"../../pgcloak.example.yaml"} {
		t.Run(filepath.Base(path), func(t *testing.T) {
			cfg, err := config.Load(path)
			if err != nil {
				t.Fatalf("config.Load: %v", err)
			}
			if got := cfg.Upstream.Password.Reveal(); got != "example" {
				t.Errorf("upstream.password: got %q, want the value of PGCLOAK_UPSTREAM_PASSWORD", got)
			}
		})
	}
}
