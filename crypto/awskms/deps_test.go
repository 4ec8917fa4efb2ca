package awskms

import (
	"os/exec"
	"strings"
	"testing"
)

// TestDeps keeps awskms a leaf beside crypto: the Provider contract and the
// AWS SDK, nothing of SQL, sessions or configuration.
func TestDeps(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "-f", "{{.ImportPath}}", ".").Output()
	if err != nil {
		var stderr string
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = string(ee.Stderr)
		}
		t.Fatalf("go list -deps: %v\n%s", err, stderr)
	}
	const self = "github.com/pgcloak/pgcloak/crypto/awskms"
	allowed := map[string]bool{self: true, "github.com/pgcloak/pgcloak/crypto": true}
	forbidden := []struct{ prefix, why string }{
		{"github.com/jackc/", "awskms knows no PostgreSQL driver or wire protocol"},
		{"github.com/pganalyze/", "awskms knows nothing of SQL"},
		{"github.com/pgcloak/pgcloak/", "awskms imports crypto only; cmd/pgcloak turns configuration into Options"},
	}
	deps := strings.Fields(string(out))
	if len(deps) == 0 {
		t.Fatal("go list -deps: no packages")
	}
	for _, dep := range deps {
		if allowed[dep] {
			continue
		}
		for _, f := range forbidden {
			if strings.HasPrefix(dep, f.prefix) {
				t.Errorf("awskms depends on %s: %s", dep, f.why)
			}
		}
	}
}
