package tenanttoken

import (
	"os/exec"
	"strings"
	"testing"
)

// TestDeps keeps tenanttoken beside config and below proxy: it verifies
// tokens and knows nothing of the wire, SQL, keys or sessions.
func TestDeps(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "-f", "{{.ImportPath}}", ".").Output()
	if err != nil {
		var stderr string
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = string(ee.Stderr)
		}
		t.Fatalf("go list -deps: %v\n%s", err, stderr)
	}
	const (
		self = "github.com/pgcloak/pgcloak/tenanttoken"
		cfg  = "github.com/pgcloak/pgcloak/config"
	)
	forbidden := []struct{ prefix, why string }{
		{"github.com/jackc/", "tenanttoken speaks no PostgreSQL; proxy applies what a token says"},
		{"github.com/pganalyze/pg_query_go", "tenanttoken knows nothing of SQL"},
		{"github.com/pgcloak/pgcloak/", "tenanttoken imports config only: it must not reach into proxy, crypto or keystore"},
	}
	deps := strings.Fields(string(out))
	if len(deps) == 0 {
		t.Fatal("go list -deps: no packages")
	}
	for _, dep := range deps {
		if dep == self || dep == cfg {
			continue
		}
		for _, f := range forbidden {
			if strings.HasPrefix(dep, f.prefix) {
				t.Errorf("tenanttoken depends on %s: %s", dep, f.why)
			}
		}
	}
}
