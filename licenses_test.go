package pgcloak_test

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/licensecheck"
)

var update = flag.Bool("update", false, "rewrite docs/licenses.md from the modules linked into pgcloak's binaries")

// licensesDoc is the generated list of dependency licences, relative to the
// module root (the directory this test runs in).
const licensesDoc = "docs/licenses.md"

// minCoverage is the share of a licence file's words, in percent, that
// licensecheck must match to known licence texts before we believe it.
// pkg.go.dev uses the same threshold to decide whether a module is
// redistributable.
const minCoverage = 75

// allowedLicenses are the licences (licensecheck's IDs, which are SPDX
// identifiers) that a module linked into pgcloak's binaries may carry: all
// may be distributed inside an Apache-2.0 project, in source or binary form,
// as long as their notices travel with it. The value is a note for
// docs/licenses.md, empty when the licence needs none.
var allowedLicenses = map[string]string{
	"Apache-2.0":   "",
	"MIT":          "",
	"BSD-2-Clause": "",
	"BSD-3-Clause": "",
	"ISC":          "",
	"MPL-2.0":      "file-level copyleft: a changed MPL-2.0 file must be published under MPL-2.0; code that only links to it is not affected.",
	"Unlicense":    "",
	"CC0-1.0":      "",
	"Zlib":         "",
	// Accepted beyond the usual list: the PostgreSQL Licence is permissive,
	// in the MIT/BSD family (keep the copyright notice and the disclaimer).
	// pg_query_go embeds PostgreSQL's parser under it, and pgerrcode's code
	// list is taken from PostgreSQL's errcodes.txt.
	"PostgreSQL": "permissive (MIT/BSD family): keep the copyright notice and the disclaimer; covers the PostgreSQL code that pg_query_go and pgerrcode carry.",
}

// Errors of classifyLicense.
var (
	errUnrecognised  = errors.New("unrecognised licence")
	errNotAllowed    = errors.New("licence not allowed")
	errNoLicenseFile = errors.New("no licence file")
)

// classifyLicense returns the licences a licence file's text holds, sorted.
// It fails with errUnrecognised when licensecheck matches less than
// minCoverage percent of the text, and with errNotAllowed when a licence
// it finds is not in allowedLicenses.
func classifyLicense(text []byte) ([]string, error) {
	cov := licensecheck.Scan(text)
	if len(cov.Match) == 0 || cov.Percent < minCoverage {
		return nil, fmt.Errorf("%w: %.0f%% of the text matches a known licence, want at least %d%%", errUnrecognised, cov.Percent, minCoverage)
	}
	var ids []string
	for _, m := range cov.Match {
		if !slices.Contains(ids, m.ID) {
			ids = append(ids, m.ID)
		}
	}
	slices.Sort(ids)
	for _, id := range ids {
		if _, ok := allowedLicenses[id]; !ok {
			return ids, fmt.Errorf("%w: %s is not on the allow-list in licenses_test.go", errNotAllowed, id)
		}
	}
	return ids, nil
}

// gplNotice is the notice the GNU GPL asks a program's files to carry; the
// allow-list must refuse it.
const gplNotice = `Copyright (C) 2024 A. Author

This program is free software: you can redistribute it and/or modify
it under the terms of the GNU General Public License as published by
the Free Software Foundation, either version 3 of the License, or
(at your option) any later version.

This program is distributed in the hope that it will be useful,
but WITHOUT ANY WARRANTY; without even the implied warranty of
MERCHANTABILITY or FITNESS FOR A PARTICULAR PURPOSE.  See the
GNU General Public License for more details.

You should have received a copy of the GNU General Public License
along with this program.  If not, see <https://www.gnu.org/licenses/>.
`

const mitText = `Copyright (c) 2024 A. Author

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in
all copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
`

// TestClassifyLicense shows that the classifier behind
// TestDependencyLicenses can say no.
func TestClassifyLicense(t *testing.T) {
	apache, err := os.ReadFile("LICENSE")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		text    string
		want    []string
		wantErr error
	}{
		{name: "apache-2.0", text: string(apache), want: []string{"Apache-2.0"}},
		{name: "mit", text: mitText, want: []string{"MIT"}},
		{name: "mit-and-apache", text: mitText + "\n" + string(apache), want: []string{"Apache-2.0", "MIT"}},
		{name: "gpl-3.0", text: gplNotice, want: []string{"GPL-3.0-or-later"}, wantErr: errNotAllowed},
		{name: "mit-and-gpl", text: mitText + "\n" + gplNotice, want: []string{"GPL-3.0-or-later", "MIT"}, wantErr: errNotAllowed},
		{name: "empty", text: "", wantErr: errUnrecognised},
		{name: "proprietary", text: "Copyright 2024 A. Company. All rights reserved.\nNo part of this software may be copied.\n", wantErr: errUnrecognised},
		{name: "mostly-not-a-licence", text: strings.Repeat("These are the terms of a private agreement. ", 100) + mitText, wantErr: errUnrecognised},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := classifyLicense([]byte(tt.text))
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("classifyLicense: error %v, want %v", err, tt.wantErr)
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("classifyLicense = %q, want %q", got, tt.want)
			}
		})
	}
}

// module is a module linked into one of pgcloak's binaries.
type module struct {
	Path, Version string
	Dir           string // where the go command keeps its files
}

// moduleLicense is one row of docs/licenses.md.
type moduleLicense struct {
	module
	Licenses []string // licensecheck IDs of all its licence files
	Files    []string // its licence files, as the report names them
	Notices  []string // its NOTICE files, relative to its directory
}

// linkedModules lists the modules the packages of ./... (tests left out)
// are built from, other than pgcloak's own, for linux/amd64, the platform
// of the release image.
func linkedModules(t *testing.T) []module {
	t.Helper()
	const format = `{{with .Module}}{{if not .Main}}{{.Path}} {{.Version}} {{.Dir}}{{end}}{{end}}`
	out := goCommand(t, "list", "-deps", "-f", format, "./...")
	var mods []module
	for _, line := range strings.Split(out, "\n") {
		if line == "" {
			continue
		}
		f := strings.SplitN(line, " ", 3)
		if len(f) != 3 || f[2] == "" {
			t.Fatalf("go list: %q is not \"path version dir\" (is the module downloaded?)", line)
		}
		m := module{Path: f[0], Version: f[1], Dir: f[2]}
		if !slices.Contains(mods, m) {
			mods = append(mods, m)
		}
	}
	slices.SortFunc(mods, func(a, b module) int { return strings.Compare(a.Path, b.Path) })
	return mods
}

// goCommand runs the go command in the module root and returns its output.
func goCommand(t *testing.T, args ...string) string {
	t.Helper()
	out, err := tryGoCommand(args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func tryGoCommand(args ...string) (string, error) {
	cmd := exec.Command("go", args...)
	cmd.Env = append(os.Environ(), "GOOS=linux", "GOARCH=amd64", "CGO_ENABLED=1")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, stderr.Bytes())
	}
	return string(out), nil
}

// filesLike returns the regular files in dir whose names start with one of
// prefixes, compared without case, sorted.
func filesLike(dir string, prefixes ...string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range entries {
		lower := strings.ToLower(e.Name())
		if e.Type().IsRegular() && slices.ContainsFunc(prefixes, func(p string) bool { return strings.HasPrefix(lower, p) }) {
			names = append(names, e.Name())
		}
	}
	slices.Sort(names)
	return names, nil
}

// licenseOf finds and classifies m's licence files. A module nested in
// another's repository (github.com/aws/aws-sdk-go-v2/service/kms) that has
// no licence file of its own is covered by the licence at the root of the
// repository, so the modules at the shorter paths are tried in turn.
func licenseOf(m module) (moduleLicense, error) {
	ml := moduleLicense{module: m}
	notices, err := filesLike(m.Dir, "notice")
	if err != nil {
		return ml, err
	}
	ml.Notices = notices

	dir, owner := m.Dir, ""
	files, err := filesLike(dir, "license", "licence", "copying")
	if err != nil {
		return ml, err
	}
	for p := path.Dir(m.Path); len(files) == 0 && strings.Contains(p, "/"); p = path.Dir(p) {
		// Not every shorter path is a module; those that are not in the
		// build list are no owner.
		out, err := tryGoCommand("list", "-m", "-f", "{{.Dir}}", p)
		if d := strings.TrimSpace(out); err == nil && d != "" {
			if files, err = filesLike(d, "license", "licence", "copying"); err != nil {
				return ml, err
			}
			dir, owner = d, p
		}
	}
	if len(files) == 0 {
		return ml, errNoLicenseFile
	}
	for _, name := range files {
		text, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			return ml, err
		}
		ids, err := classifyLicense(text)
		if err != nil {
			return ml, fmt.Errorf("%s: %w", name, err)
		}
		for _, id := range ids {
			if !slices.Contains(ml.Licenses, id) {
				ml.Licenses = append(ml.Licenses, id)
			}
		}
		if owner != "" {
			name += " (of " + owner + ")"
		}
		ml.Files = append(ml.Files, name)
	}
	slices.Sort(ml.Licenses)
	return ml, nil
}

// TestLicenseOf checks where licence files are looked for: a nested
// module without one of its own falls back to an enclosing module's, and a
// module with none anywhere is an error.
func TestLicenseOf(t *testing.T) {
	t.Run("nested", func(t *testing.T) {
		got, err := licenseOf(module{Path: "github.com/aws/aws-sdk-go-v2/service/kms/nolicense", Version: "v0.0.0", Dir: t.TempDir()})
		if err != nil {
			t.Fatal(err)
		}
		if want := []string{"LICENSE.txt (of github.com/aws/aws-sdk-go-v2/service/kms)"}; !slices.Equal(got.Files, want) {
			t.Errorf("files %q, want %q", got.Files, want)
		}
		if want := []string{"Apache-2.0"}; !slices.Equal(got.Licenses, want) {
			t.Errorf("licences %q, want %q", got.Licenses, want)
		}
	})
	t.Run("none", func(t *testing.T) {
		if _, err := licenseOf(module{Path: "example.com/nolicense", Version: "v0.0.0", Dir: t.TempDir()}); !errors.Is(err, errNoLicenseFile) {
			t.Errorf("error %v, want %v", err, errNoLicenseFile)
		}
	})
	t.Run("gpl", func(t *testing.T) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "COPYING"), []byte(gplNotice), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := licenseOf(module{Path: "example.com/gpl", Version: "v0.0.0", Dir: dir}); !errors.Is(err, errNotAllowed) {
			t.Errorf("error %v, want %v", err, errNotAllowed)
		}
	})
}

// TestDependencyLicenses checks that every module linked into pgcloak's
// binaries has a licence file whose licences are all on the allow-list, and
// that docs/licenses.md lists them as they are now. With -update it
// rewrites docs/licenses.md instead of comparing.
func TestDependencyLicenses(t *testing.T) {
	mods := linkedModules(t)
	if len(mods) < 10 {
		t.Fatalf("go list found %d linked modules, want the whole build (pgx, yaml.v3, the AWS SDK...)", len(mods))
	}
	var rows []moduleLicense
	for _, m := range mods {
		ml, err := licenseOf(m)
		if err != nil {
			t.Errorf("%s %s: %v", m.Path, m.Version, err)
			continue
		}
		rows = append(rows, ml)
	}
	if t.Failed() {
		return
	}

	got := licenseReport(rows)
	if *update {
		if err := os.WriteFile(licensesDoc, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(licensesDoc)
	if err != nil {
		t.Fatalf("%v (run go test -run TestDependencyLicenses -update . to create it)", err)
	}
	if d := lineDiff(string(want), got); d != "" {
		t.Errorf("%s is out of date; run go test -run TestDependencyLicenses -update . and review the change (-file +now):\n%s", licensesDoc, d)
	}
}

// licenseReport renders docs/licenses.md.
func licenseReport(rows []moduleLicense) string {
	var b strings.Builder
	b.WriteString(`# Licences of pgcloak's dependencies

pgcloak is licensed under the Apache License 2.0 (` + "`LICENSE`" + `). These are the
modules linked into its binaries (` + "`go list -deps ./...`" + ` for linux/amd64,
test-only modules left out) and the licences their licence files hold, as
github.com/google/licensecheck reads them.

This file is generated: ` + "`go test -run TestDependencyLicenses -update .`" + `
rewrites it, and TestDependencyLicenses fails when it is out of date, when a
module has no licence file, when a licence file is not recognised, or when a
licence is not on the allow-list in ` + "`licenses_test.go`" + `.

| Module | Version | Licence(s) | Licence file |
| --- | --- | --- | --- |
`)
	var used []string
	for _, r := range rows {
		fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", r.Path, r.Version, strings.Join(r.Licenses, ", "), strings.Join(r.Files, ", "))
		for _, id := range r.Licenses {
			if !slices.Contains(used, id) {
				used = append(used, id)
			}
		}
	}
	slices.Sort(used)
	notes := false
	for _, id := range used {
		if note := allowedLicenses[id]; note != "" {
			if !notes {
				b.WriteString("\n## Notes on licences\n\n")
				notes = true
			}
			fmt.Fprintf(&b, "- %s: %s\n", id, note)
		}
	}
	b.WriteString("\n## NOTICE files\n\n")
	b.WriteString("Apache-2.0 section 4(d): a distribution of pgcloak's binary must carry the\n")
	b.WriteString("attribution notices of these modules' NOTICE files.\n\n")
	for _, r := range rows {
		if len(r.Notices) > 0 {
			fmt.Fprintf(&b, "- %s: %s\n", r.Path, strings.Join(r.Notices, ", "))
		}
	}
	return b.String()
}

// lineDiff returns the lines of want and got that differ, "-" for lines
// only in want and "+" for lines only in got, in the order of a longest
// common subsequence; "" when they are equal.
func lineDiff(want, got string) string {
	if want == got {
		return ""
	}
	a, b := strings.Split(want, "\n"), strings.Split(got, "\n")
	// lcs[i][j] is the length of the longest common subsequence of a[i:]
	// and b[j:].
	lcs := make([][]int, len(a)+1)
	for i := range lcs {
		lcs[i] = make([]int, len(b)+1)
	}
	for i := len(a) - 1; i >= 0; i-- {
		for j := len(b) - 1; j >= 0; j-- {
			if a[i] == b[j] {
				lcs[i][j] = lcs[i+1][j+1] + 1
			} else {
				lcs[i][j] = max(lcs[i+1][j], lcs[i][j+1])
			}
		}
	}
	var d strings.Builder
	i, j := 0, 0
	for i < len(a) || j < len(b) {
		switch {
		case i < len(a) && j < len(b) && a[i] == b[j]:
			i, j = i+1, j+1
		case i < len(a) && (j == len(b) || lcs[i+1][j] >= lcs[i][j+1]):
			fmt.Fprintf(&d, "-%s\n", a[i])
			i++
		default:
			fmt.Fprintf(&d, "+%s\n", b[j])
			j++
		}
	}
	return d.String()
}

func TestLineDiff(t *testing.T) {
	tests := []struct {
		name, want, got, diff string
	}{
		{"equal", "a\nb\n", "a\nb\n", ""},
		{"changed", "a\nb\nc\n", "a\nB\nc\n", "-b\n+B\n"},
		{"added", "a\nc\n", "a\nb\nc\n", "+b\n"},
		{"removed", "a\nb\nc\n", "a\nc\n", "-b\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := lineDiff(tt.want, tt.got); got != tt.diff {
				t.Errorf("lineDiff = %q, want %q", got, tt.diff)
			}
		})
	}
}
