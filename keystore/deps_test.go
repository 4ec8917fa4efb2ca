package keystore

import (
	"os/exec"
	"strings"
	"testing"
)

// TestDeps keeps keystore beside crypto: the SQL side of keys, not a part
// of the proxy (STYLE §1).
func TestDeps(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "-f", "{{.ImportPath}}", ".").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	allowed := map[string]bool{
		"github.com/pgcloak/pgcloak/keystore": true,
		"github.com/pgcloak/pgcloak/crypto":   true,
	}
	for _, dep := range strings.Fields(string(out)) {
		if strings.HasPrefix(dep, "github.com/pgcloak/pgcloak/") && !allowed[dep] {
			t.Errorf("keystore depends on %s: it may use crypto and pgx, not proxy, rewrite, config or testenv", dep)
		}
		if strings.HasPrefix(dep, "github.com/pganalyze/") {
			t.Errorf("keystore depends on %s: keystore runs fixed SQL and parses none", dep)
		}
	}
}
