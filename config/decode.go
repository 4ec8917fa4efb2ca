package config

import (
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// decoder walks a yaml.Node tree against the configuration schema. Working on
// nodes rather than on tagged structs gives every key and value its line,
// lets unknown keys be reported together with everything else wrong, and
// lets ${NAME} expansion happen after parsing, so that an expanded value
// never moves a line number or changes the YAML structure.
type decoder struct {
	file     string
	lookup   func(string) (string, bool)
	problems []Problem

	// lines maps a YAML path to the line of its key (or, for a list item, of
	// the item). Problems found after decoding take their line from here.
	lines map[string]int

	// unsetSecretsOK (WithoutSecrets) lets a secret refer to an unset
	// variable, except the secrets in neededSecrets; unsetSecrets records
	// the ones left unset.
	unsetSecretsOK bool
	neededSecrets  []string
	unsetSecrets   map[string]bool

	// visits counts the nodes decoded. Aliases let a small file name the
	// same large list many times over; the count bounds the work.
	visits int
}

// maxVisits bounds the nodes one file may make us decode, aliases included:
// far more than any real configuration has.
const maxVisits = 1 << 18

// visit counts one node and reports whether decoding may go on. It records a
// problem the first time the budget runs out.
func (d *decoder) visit(n *yaml.Node) bool {
	d.visits++
	if d.visits == maxVisits+1 {
		d.problem(n.Line, "", "the file expands to more than %d values (check for aliases that repeat large parts of it)", maxVisits)
	}
	return d.visits <= maxVisits
}

// problem records a problem at an explicit line.
func (d *decoder) problem(line int, path, format string, args ...any) {
	d.problems = append(d.problems, Problem{
		File: d.file,
		Line: line,
		Path: path,
		Msg:  fmt.Sprintf(format, args...),
	})
}

// errorf records a problem at path, on the line where path appears or, when
// it does not appear (a missing required key), where its nearest ancestor
// does.
func (d *decoder) errorf(path, format string, args ...any) {
	d.problem(d.line(path), path, format, args...)
}

func (d *decoder) line(path string) int {
	for {
		if l, ok := d.lines[path]; ok {
			return l
		}
		if path == "" {
			return 0
		}
		path = parentPath(path)
	}
}

// join appends a mapping key to a YAML path. Keys that are not plain words
// (map keys such as role names may contain anything) are quoted so that the
// path stays unambiguous.
func join(path, key string) string {
	if !isPlainKey(key) {
		return path + "[" + strconv.Quote(key) + "]"
	}
	if path == "" {
		return key
	}
	return path + "." + key
}

func index(path string, i int) string { return path + "[" + strconv.Itoa(i) + "]" }

func parentPath(p string) string {
	if strings.HasSuffix(p, `"]`) {
		// A quoted key: its text cannot contain an unescaped `"`, so the
		// last `["` is where it starts.
		if i := strings.LastIndex(p, `["`); i >= 0 {
			return p[:i]
		}
	}
	if i := strings.LastIndexAny(p, ".["); i >= 0 {
		return p[:i]
	}
	return ""
}

func isPlainKey(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c == '_' || c == '-' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9') {
			return false
		}
	}
	return true
}

// resolve follows an alias to the node it names.
func resolve(n *yaml.Node) *yaml.Node {
	for n != nil && n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	return n
}

func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		return "a single value"
	default:
		return "something else"
	}
}

// field is one known key of a mapping. decode is called exactly once per
// mapping: with the value node when the key is present, with nil when it is
// absent, so that a section can check its required keys in one place.
type field struct {
	key    string
	decode func(n *yaml.Node, path string)
}

// mapping decodes n, a mapping with the given known keys. A null or absent n
// counts as an empty mapping. Unknown and duplicate keys are problems. It
// reports whether n was usable as a mapping at all; when it was not, no field
// was decoded and the caller should skip its cross-field checks.
func (d *decoder) mapping(n *yaml.Node, path string, fields []field) bool {
	seen := make([]bool, len(fields))
	if n = resolve(n); n != nil && !d.visit(n) {
		return false
	}
	if n != nil && !isNull(n) {
		if n.Kind != yaml.MappingNode {
			d.problem(n.Line, path, "expected a mapping, got %s", describe(n))
			return false
		}
		first := make(map[string]int)
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := resolve(n.Content[i]), n.Content[i+1]
			if k.Kind != yaml.ScalarNode {
				d.problem(k.Line, path, "keys must be plain words, got %s", describe(k))
				continue
			}
			if k.ShortTag() == "!!merge" {
				d.problem(k.Line, path, "YAML merge keys (<<) are not supported; write the keys out")
				continue
			}
			p := join(path, k.Value)
			if line, dup := first[k.Value]; dup {
				d.problem(k.Line, p, "duplicate key (first at line %d)", line)
				continue
			}
			first[k.Value] = k.Line
			j := findField(fields, k.Value)
			if j < 0 {
				d.problem(k.Line, p, "unknown key%s (expected one of %s)", suggest(fields, k.Value), fieldNames(fields))
				continue
			}
			d.lines[p] = k.Line
			seen[j] = true
			fields[j].decode(v, p)
		}
	}
	for j, f := range fields {
		if !seen[j] {
			f.decode(nil, join(path, f.key))
		}
	}
	return true
}

func findField(fields []field, key string) int {
	for i, f := range fields {
		if f.key == key {
			return i
		}
	}
	return -1
}

func fieldNames(fields []field) string {
	names := make([]string, len(fields))
	for i, f := range fields {
		names[i] = f.key
	}
	return strings.Join(names, ", ")
}

// suggest returns `; did you mean "x"?` for the known key closest to a
// misspelt one, or "" when none is close.
func suggest(fields []field, key string) string {
	best, bestDist := "", 3 // at most two edits away
	lower := strings.ToLower(key)
	for _, f := range fields {
		if dist := editDistance(lower, f.key); dist < bestDist {
			best, bestDist = f.key, dist
		}
	}
	if best == "" {
		return ""
	}
	return fmt.Sprintf("; did you mean %q?", best)
}

// editDistance is the Levenshtein distance between a and b, giving up (and
// returning a large value) for long inputs: keys are short words.
func editDistance(a, b string) int {
	if len(a) > 64 || len(b) > 64 {
		return 1 << 30
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// sequence decodes n, a list, calling each for every item. A null or absent
// n counts as an empty list.
func (d *decoder) sequence(n *yaml.Node, path string, each func(i int, item *yaml.Node, path string)) {
	if n = resolve(n); n == nil || !d.visit(n) || isNull(n) {
		return
	}
	if n.Kind != yaml.SequenceNode {
		d.problem(n.Line, path, "expected a list, got %s", describe(n))
		return
	}
	for i, item := range n.Content {
		p := index(path, i)
		d.lines[p] = item.Line
		each(i, item, p)
	}
}

// entries decodes n, a mapping whose keys are names chosen by the user (role
// names, tenant names), calling each for every entry in file order.
func (d *decoder) entries(n *yaml.Node, path string, each func(key string, v *yaml.Node, path string)) {
	if n = resolve(n); n == nil || !d.visit(n) || isNull(n) {
		return
	}
	if n.Kind != yaml.MappingNode {
		d.problem(n.Line, path, "expected a mapping, got %s", describe(n))
		return
	}
	first := make(map[string]int)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := resolve(n.Content[i]), n.Content[i+1]
		if k.Kind != yaml.ScalarNode || k.ShortTag() == "!!merge" {
			d.problem(k.Line, path, "keys must be plain names")
			continue
		}
		p := join(path, k.Value)
		if line, dup := first[k.Value]; dup {
			d.problem(k.Line, p, "duplicate key (first at line %d)", line)
			continue
		}
		first[k.Value] = k.Line
		d.lines[p] = k.Line
		each(k.Value, v, p)
	}
}

// scalar returns the ${NAME}-expanded text of a single value. It returns
// ok false, having recorded any problem, when the value is absent, null,
// not a single value, or refers to an unset variable. With keepNullWord, a
// value written as the word null counts as that word rather than as absent
// (encrypt.on_decrypt_error: null).
//
// Messages from here never include the value: the caller may be decoding a
// secret.
func (d *decoder) scalar(n *yaml.Node, path, want string, keepNullWord bool) (string, bool) {
	if n = resolve(n); n == nil || !d.visit(n) {
		return "", false
	}
	if n.Kind != yaml.ScalarNode {
		d.problem(n.Line, path, "expected %s, got %s", want, describe(n))
		return "", false
	}
	if isNull(n) && !(keepNullWord && strings.EqualFold(n.Value, "null")) {
		return "", false
	}
	v, msgs := expandEnv(n.Value, d.lookup)
	for _, m := range msgs {
		d.problem(n.Line, path, "%s", m)
	}
	return v, len(msgs) == 0
}

// The decoders below leave *dst alone (keeping its default) when the value
// is absent, null or unusable.

func (d *decoder) text(dst *string) func(*yaml.Node, string) {
	return func(n *yaml.Node, path string) {
		if v, ok := d.scalar(n, path, "a string", false); ok {
			*dst = v
		}
	}
}

func (d *decoder) secret(dst *Secret) func(*yaml.Node, string) {
	return func(n *yaml.Node, path string) {
		if d.unsetSecretsOK && !slices.Contains(d.neededSecrets, path) {
			lookup := d.lookup
			unset := false
			d.lookup = func(name string) (string, bool) {
				v, ok := lookup(name)
				if !ok {
					unset = true
					return "", true
				}
				return v, true
			}
			defer func() { d.lookup = lookup }()
			defer func() {
				if unset {
					if d.unsetSecrets == nil {
						d.unsetSecrets = make(map[string]bool)
					}
					d.unsetSecrets[path] = true
				}
			}()
		}
		if v, ok := d.scalar(n, path, "a string", false); ok {
			*dst = Secret(v)
		}
	}
}

func (d *decoder) boolean(dst *bool) func(*yaml.Node, string) {
	return func(n *yaml.Node, path string) {
		v, ok := d.scalar(n, path, "true or false", false)
		if !ok {
			return
		}
		switch strings.ToLower(v) {
		case "true":
			*dst = true
		case "false":
			*dst = false
		default:
			d.problem(n.Line, path, "%q is not a boolean (true or false)", v)
		}
	}
}

func (d *decoder) integer(dst *int) func(*yaml.Node, string) {
	return func(n *yaml.Node, path string) {
		v, ok := d.scalar(n, path, "an integer", false)
		if !ok {
			return
		}
		i, err := strconv.Atoi(strings.ReplaceAll(v, "_", ""))
		if err != nil {
			d.problem(n.Line, path, "%q is not an integer", v)
			return
		}
		*dst = i
	}
}

func (d *decoder) duration(dst *time.Duration) func(*yaml.Node, string) {
	return func(n *yaml.Node, path string) {
		v, ok := d.scalar(n, path, "a duration", false)
		if !ok {
			return
		}
		t, err := time.ParseDuration(v)
		if err != nil {
			d.problem(n.Line, path, "%q is not a duration (a number with a unit, such as \"60s\", \"500ms\" or \"1m30s\")", v)
			return
		}
		*dst = t
	}
}

// size decodes a byte count (see parseSize) that must lie in [lo, hi].
func (d *decoder) size(dst *int, lo, hi int) func(*yaml.Node, string) {
	return func(n *yaml.Node, path string) {
		v, ok := d.scalar(n, path, "a size", false)
		if !ok {
			return
		}
		b, ok := parseSize(v)
		if !ok {
			d.problem(n.Line, path, "%q is not a size (a number of bytes, or a whole number with a unit: B, kB, MB, GB, KiB, MiB, GiB)", v)
			return
		}
		if b < lo || b > hi {
			d.problem(n.Line, path, "%q is out of range (%s to %s)", v, formatSize(lo), formatSize(hi))
			return
		}
		*dst = b
	}
}

// parseSize parses a byte count such as "67108864", "64MB", "64 MiB" or
// "512kB". As in PostgreSQL's memory settings, kB, MB and GB are powers of
// 1024, the same as KiB, MiB and GiB; units are matched case-insensitively.
// Sizes too large to represent come back as math.MaxInt, so that the range
// check reports them.
func parseSize(s string) (int, bool) {
	s = strings.TrimSpace(s)
	i := 0
	for i < len(s) && '0' <= s[i] && s[i] <= '9' {
		i++
	}
	if i == 0 {
		return 0, false
	}
	var mult int
	switch strings.ToLower(strings.TrimSpace(s[i:])) {
	case "", "b":
		mult = 1
	case "kb", "kib":
		mult = 1 << 10
	case "mb", "mib":
		mult = 1 << 20
	case "gb", "gib":
		mult = 1 << 30
	default:
		return 0, false
	}
	n, err := strconv.Atoi(s[:i])
	if err != nil || n > math.MaxInt/mult {
		return math.MaxInt, true // only digits, so the error is a range error
	}
	return n * mult, true
}

// formatSize prints a size in the largest binary unit that divides it.
func formatSize(b int) string {
	switch {
	case b >= 1<<30 && b%(1<<30) == 0:
		return strconv.Itoa(b>>30) + " GiB"
	case b >= 1<<20 && b%(1<<20) == 0:
		return strconv.Itoa(b>>20) + " MiB"
	case b >= 1<<10 && b%(1<<10) == 0:
		return strconv.Itoa(b>>10) + " KiB"
	}
	return strconv.Itoa(b) + " B"
}
