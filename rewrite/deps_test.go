package rewrite

import (
	"os/exec"
	"strings"
	"testing"
)

// TestDeps keeps rewrite on its side of the design: it knows SQL and the
// declarations, never sockets, keys or the wire (STYLE.md §1). The only
// pgcloak package it may import, directly or not, is config; pgx and
// pgproto3 stay in proxy; and rewrite itself does not import net (config
// does, to validate addresses, which is why that rule is direct-only).
func TestDeps(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the go tool is needed to list dependencies: %v", err)
	}
	list := func(format string) []string {
		t.Helper()
		out, err := exec.Command(goTool, "list", "-deps="+map[bool]string{true: "true", false: "false"}[format == "deps"], "-f",
			map[bool]string{true: "{{.ImportPath}}", false: `{{join .Imports "\n"}}`}[format == "deps"], ".").Output()
		if err != nil {
			if ee, ok := err.(*exec.ExitError); ok {
				t.Fatalf("go list: %v\n%s", err, ee.Stderr)
			}
			t.Fatalf("go list: %v", err)
		}
		return strings.Fields(string(out))
	}

	const self = "github.com/pgcloak/pgcloak/"
	allowedOwn := map[string]bool{self + "rewrite": true, self + "config": true}
	for _, dep := range list("deps") {
		switch {
		case strings.HasPrefix(dep, self) && !allowedOwn[dep]:
			t.Errorf("rewrite depends on %s; the only pgcloak package it may use is config", dep)
		case strings.HasPrefix(dep, "github.com/jackc/pgx"), strings.Contains(dep, "pgproto3"):
			t.Errorf("rewrite depends on %s; the wire protocol belongs to proxy", dep)
		}
	}
	for _, imp := range list("imports") {
		if imp == "net" || strings.HasPrefix(imp, "net/") {
			t.Errorf("rewrite imports %s; it knows nothing of sockets", imp)
		}
	}
}
