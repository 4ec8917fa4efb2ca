package testenv

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// ErrServerBinariesNotFound is returned by Start when neither PATH nor the
// Debian/Ubuntu layout holds initdb and postgres.
var ErrServerBinariesNotFound = errors.New("testenv: PostgreSQL server binaries (initdb, postgres) not found on PATH or under /usr/lib/postgresql/*/bin; install them with: apt-get install -y postgresql")

// serverBinGlob is where Debian and Ubuntu install the server binaries, which
// they keep off PATH. A variable so that tests can point it elsewhere.
var serverBinGlob = "/usr/lib/postgresql/*/bin"

// findBinDir returns a directory holding both initdb and postgres. It prefers
// the directory initdb on PATH really lives in (/usr/local/bin/initdb is often
// a symlink into /usr/lib/postgresql/15/bin), because the client tools of the
// same version sit next to it there; then the PATH directory itself; then the
// newest /usr/lib/postgresql/<version>/bin.
func findBinDir() (string, error) {
	var candidates []string
	if initdb, err := exec.LookPath("initdb"); err == nil {
		if resolved, err := filepath.EvalSymlinks(initdb); err == nil {
			candidates = append(candidates, filepath.Dir(resolved))
		}
		candidates = append(candidates, filepath.Dir(initdb))
	}
	versioned, _ := filepath.Glob(serverBinGlob) // the pattern is constant and well-formed
	sort.SliceStable(versioned, func(i, j int) bool {
		return majorVersion(versioned[i]) > majorVersion(versioned[j])
	})
	candidates = append(candidates, versioned...)

	for _, dir := range candidates {
		if isExecutable(filepath.Join(dir, "initdb")) && isExecutable(filepath.Join(dir, "postgres")) {
			return dir, nil
		}
	}
	return "", ErrServerBinariesNotFound
}

// majorVersion extracts 15 from /usr/lib/postgresql/15/bin (and 9 from 9.6);
// unparsable names sort last.
func majorVersion(binDir string) int {
	name := filepath.Base(filepath.Dir(binDir))
	major, _, _ := strings.Cut(name, ".")
	n, err := strconv.Atoi(major)
	if err != nil {
		return -1
	}
	return n
}

func isExecutable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0
}
