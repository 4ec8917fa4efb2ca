package crypto

import (
	"os/exec"
	"strings"
	"testing"
)

// TestDeps keeps crypto at the bottom of the stack: it knows bytes and
// identities, not SQL, sockets or configuration (STYLE §1).
func TestDeps(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "-f", "{{.ImportPath}}", ".").Output()
	if err != nil {
		var stderr string
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = string(ee.Stderr)
		}
		t.Fatalf("go list -deps: %v\n%s", err, stderr)
	}
	const self = "github.com/pgcloak/pgcloak/crypto"
	forbidden := []struct{ prefix, why string }{
		{"github.com/jackc/pgx", "crypto knows no PostgreSQL driver or wire protocol; keystore holds the SQL side of keys"},
		{"github.com/pganalyze/pg_query_go", "crypto knows nothing of SQL; that is rewrite"},
		{"github.com/pgcloak/pgcloak/", "crypto is the bottom layer and imports no other pgcloak package"},
		{"net", "crypto opens no sockets; KMS access comes in through the Provider interface"},
	}
	deps := strings.Fields(string(out))
	if len(deps) == 0 {
		t.Fatal("go list -deps: no packages")
	}
	for _, dep := range deps {
		if dep == self {
			continue
		}
		for _, f := range forbidden {
			if dep == f.prefix || strings.HasPrefix(dep, f.prefix) && (strings.HasSuffix(f.prefix, "/") || strings.HasPrefix(dep, f.prefix+"/")) {
				t.Errorf("crypto depends on %s: %s", dep, f.why)
			}
		}
	}
}
