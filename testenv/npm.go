package testenv

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
)

// NodeModules makes sure dir's npm dependencies are installed, running
// `npm ci` there when node_modules is missing or older than
// package-lock.json, so that `go test ./...` needs nothing run by hand
// first. Test binaries of several packages may call it at once: they
// serialise on a lock file in dir. It fails the test, naming what to
// install, when node or npm is missing or npm ci fails.
func NodeModules(t testing.TB, dir string) {
	t.Helper()
	for _, tool := range []string{"node", "npm"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not found: install Node.js 20 and npm (apt-get install -y nodejs npm)", tool)
		}
	}
	lock, err := os.OpenFile(filepath.Join(dir, ".npm-ci.lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		t.Fatalf("npm ci in %s: %v", dir, err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatalf("npm ci in %s: lock: %v", dir, err)
	}
	defer syscall.Flock(int(lock.Fd()), syscall.LOCK_UN)
	if installed(dir) {
		return
	}
	cmd := exec.Command("npm", "ci", "--no-audit", "--no-fund", "--loglevel=error")
	cmd.Dir = dir
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("npm ci in %s (needs the npm registry): %v\n%s", dir, err, out.Bytes())
	}
}

// installed reports whether npm ci has run in dir since package-lock.json
// last changed: npm writes node_modules/.package-lock.json when it installs.
func installed(dir string) bool {
	want, err := os.Stat(filepath.Join(dir, "package-lock.json"))
	if err != nil {
		return false
	}
	got, err := os.Stat(filepath.Join(dir, "node_modules", ".package-lock.json"))
	return err == nil && !got.ModTime().Before(want.ModTime())
}
