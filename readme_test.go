package pgcloak_test

import (
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
)

var (
	// fencedBlock is a ``` block; links and headings inside it are text.
	fencedBlock = regexp.MustCompile("(?ms)^[ \t]*```.*?^[ \t]*```")
	// codeSpan is an inline code span on one line; a link inside it is text.
	// Removing it keeps a link whose text is code ([`x`](y)) a link.
	codeSpan = regexp.MustCompile("`[^`\n]*`")
	// mdLink is an inline Markdown link or image: [text](target).
	mdLink = regexp.MustCompile(`\]\(([^)\s]+)\)`)
	// mdHeading is an ATX heading line.
	mdHeading = regexp.MustCompile(`(?m)^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$`)
	// anchorDrop is what GitHub removes from a heading to make its anchor.
	anchorDrop = regexp.MustCompile(`[^\p{L}\p{M}\p{N}_\- ]`)
)

// repoFiles is the set of files git tracks, with every directory that
// holds one, as slash paths relative to the repository root. Without git
// (an unpacked archive) it falls back to the files that exist, minus .git.
func repoFiles(t *testing.T) map[string]bool {
	t.Helper()
	files := map[string]bool{}
	add := func(f string) {
		files[f] = true
		for d := path.Dir(f); d != "."; d = path.Dir(d) {
			files[d] = true
		}
	}
	out, err := exec.Command("git", "ls-files").Output()
	if err == nil {
		for _, f := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			add(f)
		}
		return files
	}
	t.Logf("git ls-files: %v; checking links against the files that exist instead", err)
	err = filepath.WalkDir(".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && d.Name() == ".git" {
			return filepath.SkipDir
		}
		if !d.IsDir() {
			add(filepath.ToSlash(p))
		}
		return nil
	})
	if err != nil {
		t.Fatalf("walk the repository: %v", err)
	}
	return files
}

// markdownFiles is README.md and every Markdown file under docs/.
func markdownFiles(files map[string]bool) []string {
	md := []string{"README.md"}
	for f := range files {
		if strings.HasPrefix(f, "docs/") && strings.HasSuffix(f, ".md") {
			md = append(md, f)
		}
	}
	sort.Strings(md[1:])
	return md
}

// headingAnchors returns the anchors GitHub gives the headings of a
// Markdown text: lower case, punctuation dropped, spaces as hyphens, and a
// repeated anchor numbered -1, -2, ... Headings inside fenced code are not
// headings.
func headingAnchors(text string) map[string]bool {
	anchors := map[string]bool{}
	seen := map[string]int{}
	for _, m := range mdHeading.FindAllStringSubmatch(fencedBlock.ReplaceAllString(text, ""), -1) {
		id := strings.ReplaceAll(anchorDrop.ReplaceAllString(strings.ToLower(m[1]), ""), " ", "-")
		if n, dup := seen[id]; dup {
			seen[id] = n + 1
			anchors[id+"-"+strconv.Itoa(n+1)] = true
			continue
		}
		seen[id] = 0
		anchors[id] = true
	}
	return anchors
}

// TestReadmeHeadingAnchors pins the anchor rule TestReadmeLinks relies on.
func TestReadmeHeadingAnchors(t *testing.T) {
	text := "# pgcloak\n## Quick start\n### What the format CHECK sees\n" +
		"## `check`, schema, serve\n## Limits\n## Limits\n```\n# not a heading\n```\n"
	got := headingAnchors(text)
	for _, want := range []string{"pgcloak", "quick-start", "what-the-format-check-sees", "check-schema-serve", "limits", "limits-1"} {
		if !got[want] {
			t.Errorf("headingAnchors: no %q in %v", want, got)
		}
	}
	if got["not-a-heading"] {
		t.Errorf("headingAnchors: a line inside fenced code became anchor %q", "not-a-heading")
	}
}

// TestReadmeLinks checks every relative link of README.md and of the
// Markdown files under docs/: the file it names must be in the repository
// (tracked by git), and a #fragment must name a heading of the linked
// Markdown file. Links inside code are not links; links with a scheme
// (https://, mailto:) are not checked.
func TestReadmeLinks(t *testing.T) {
	files := repoFiles(t)
	anchors := map[string]map[string]bool{}
	anchorsOf := func(file string) map[string]bool {
		if a, ok := anchors[file]; ok {
			return a
		}
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatalf("read %s: %v", file, err)
		}
		a := headingAnchors(string(b))
		anchors[file] = a
		return a
	}
	links := 0
	for _, file := range markdownFiles(files) {
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatalf("read %s: %v", file, err)
		}
		text := codeSpan.ReplaceAllString(fencedBlock.ReplaceAllString(string(b), ""), "")
		for _, m := range mdLink.FindAllStringSubmatch(text, -1) {
			target := m[1]
			if strings.Contains(target, "://") || strings.HasPrefix(target, "mailto:") {
				continue
			}
			links++
			p, frag, _ := strings.Cut(target, "#")
			linked := file
			if p != "" {
				if strings.HasPrefix(p, "/") {
					t.Errorf("%s: link %q: absolute path; use a path relative to %s", file, target, file)
					continue
				}
				linked = path.Clean(path.Join(path.Dir(file), p))
				if !files[linked] {
					t.Errorf("%s: link %q: %s is not in the repository (git ls-files)", file, target, linked)
					continue
				}
			}
			if frag == "" {
				continue
			}
			if !strings.HasSuffix(linked, ".md") {
				t.Errorf("%s: link %q: a #fragment into %s, which is not Markdown", file, target, linked)
				continue
			}
			if !anchorsOf(linked)[frag] {
				t.Errorf("%s: link %q: %s has no heading with anchor #%s", file, target, linked, frag)
			}
		}
	}
	if links == 0 {
		t.Fatal("found no relative links in README.md and docs/; the link pattern is broken")
	}
}

// TestReadmeNoSpec checks that README.md, the page users read, does not
// send them to SPEC.md, which is the project's internal specification.
func TestReadmeNoSpec(t *testing.T) {
	b, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatalf("read README.md: %v", err)
	}
	for i, line := range strings.Split(string(b), "\n") {
		if strings.Contains(strings.ToUpper(line), "SPEC.MD") {
			t.Errorf("README.md:%d mentions SPEC.md: %s", i+1, strings.TrimSpace(line))
		}
	}
}
