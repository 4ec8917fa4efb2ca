package config

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

// The tests in this file keep docs/configuration.md, the operator's
// reference, in step with the keys pgcloak reads.
//
// The configuration structs carry no yaml tags: decode.go walks yaml.Node
// trees against field lists, so the decoder, not the structs, is what says
// which keys exist. The tests therefore learn the keys from the decoder: a
// probe key at each level draws the "unknown key (expected one of ...)"
// problem, which lists every key known there, and a probe value tells a
// section from a list of entries, a map of chosen names and a single value.
// Reflection over the structs then finds the Go field behind each key, so
// that the documented type can be checked against it, with Secret and
// time.Duration as leaf types of their own.
//
// Keys are written as dotted paths: encrypt.tables[].columns[].name for a
// key inside list entries, keys.tenants.<tenant>.key_id for a key inside a
// mapping whose keys the operator chooses.

// referenceDoc is the configuration reference, relative to this package.
const referenceDoc = "../docs/configuration.md"

const (
	probeKey   = "zz_probe"    // a key that no section has
	probeEntry = "probe_entry" // a name the operator chooses (a tenant, a role)
)

// keyKind is what a key's value is, as the decoder sees it.
type keyKind string

const (
	kindSection keyKind = "section" // a mapping of known keys
	kindList    keyKind = "list"    // a list of mappings of known keys
	kindMap     keyKind = "map"     // a mapping of chosen names to mappings of known keys
	kindValue   keyKind = "value"   // anything else: a value, a list or a map of values
)

// schemaKey is one key the decoder reads.
type schemaKey struct {
	Path string // dotted, with [] and <name> as in the reference
	Kind keyKind
}

// anyEnv is a lookup in which every variable is set.
func anyEnv(string) (string, bool) { return "x", true }

// probeProblems parses a file holding only value, placed at docPath ("" for
// the root), and returns the problems found.
func probeProblems(t *testing.T, docPath string, value any) []Problem {
	t.Helper()
	v := value
	segs := splitDocPath(docPath)
	for i := len(segs) - 1; i >= 0; i-- {
		switch s := segs[i]; {
		case strings.HasPrefix(s, "<"):
			v = map[string]any{probeEntry: v}
		case strings.HasSuffix(s, "[]"):
			v = map[string]any{strings.TrimSuffix(s, "[]"): []any{v}}
		default:
			v = map[string]any{s: v}
		}
	}
	data, err := yaml.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	_, err = parse("probe.yaml", data, anyEnv)
	var verr *ValidationError
	if errors.As(err, &verr) {
		return verr.Problems
	}
	if err != nil {
		t.Fatalf("probing %s: %v", docPath, err)
	}
	return nil
}

func splitDocPath(p string) []string {
	if p == "" {
		return nil
	}
	return strings.Split(p, ".")
}

func joinDocPath(p, key string) string {
	if p == "" {
		return key
	}
	return p + "." + key
}

// problemPath is the YAML path the decoder reports for docPath in a probe
// file: the first list entry, the probe's chosen name.
func problemPath(docPath string) string {
	var b strings.Builder
	for i, s := range splitDocPath(docPath) {
		if i > 0 {
			b.WriteByte('.')
		}
		switch {
		case strings.HasPrefix(s, "<"):
			b.WriteString(probeEntry)
		case strings.HasSuffix(s, "[]"):
			b.WriteString(strings.TrimSuffix(s, "[]") + "[0]")
		default:
			b.WriteString(s)
		}
	}
	return b.String()
}

func hasProblem(problems []Problem, path, msgPrefix string) bool {
	return slices.ContainsFunc(problems, func(p Problem) bool {
		return p.Path == path && strings.HasPrefix(p.Msg, msgPrefix)
	})
}

// expectsValue reports whether the decoder wanted a single value at path
// and got the probe's mapping.
func expectsValue(problems []Problem, path string) bool {
	return slices.ContainsFunc(problems, func(p Problem) bool {
		return p.Path == path && strings.HasPrefix(p.Msg, "expected ") && strings.HasSuffix(p.Msg, ", got a mapping") &&
			!strings.HasPrefix(p.Msg, "expected a list") && !strings.HasPrefix(p.Msg, "expected a mapping")
	})
}

var expectedKeys = regexp.MustCompile(`\(expected one of ([^()]*)\)$`)

// keysAt returns the keys the decoder knows in the mapping at docPath.
func keysAt(t *testing.T, docPath string) []string {
	t.Helper()
	want := joinDocPath(problemPath(docPath), probeKey)
	for _, p := range probeProblems(t, docPath, map[string]any{probeKey: 1}) {
		if p.Path != want || !strings.HasPrefix(p.Msg, "unknown key") {
			continue
		}
		m := expectedKeys.FindStringSubmatch(p.Msg)
		if m == nil {
			t.Fatalf("%s: the unknown-key problem %q does not list the known keys; update keysAt", want, p.Msg)
		}
		return strings.Split(m[1], ", ")
	}
	t.Fatalf("%s: the decoder did not report the probe key as unknown; update keysAt", want)
	return nil
}

// kindOf tells what the decoder expects at docPath.
func kindOf(t *testing.T, docPath string) keyKind {
	t.Helper()
	pp := problemPath(docPath)
	inner := joinDocPath(pp, probeKey)
	problems := probeProblems(t, docPath, map[string]any{probeKey: map[string]any{probeKey: 1}})
	switch {
	case hasProblem(problems, inner, "unknown key"):
		return kindSection
	case hasProblem(problems, joinDocPath(inner, probeKey), "unknown key"):
		return kindMap // the probe key was taken as a chosen name
	case expectsValue(problems, inner):
		return kindValue // a map of chosen names to values
	case expectsValue(problems, pp):
		return kindValue
	case hasProblem(problems, pp, "expected a list"):
		items := probeProblems(t, docPath, []any{map[string]any{probeKey: 1}})
		switch {
		case hasProblem(items, joinDocPath(pp+"[0]", probeKey), "unknown key"):
			return kindList
		case expectsValue(items, pp+"[0]"):
			return kindValue // a list of values
		}
	}
	t.Fatalf("%s: cannot tell what the decoder expects there (problems: %v); update kindOf", docPath, problems)
	return ""
}

// decoderKeys returns every key the decoder reads, sections included.
func decoderKeys(t *testing.T) []schemaKey {
	t.Helper()
	var keys []schemaKey
	var walk func(docPath string)
	walk = func(docPath string) {
		for _, k := range keysAt(t, docPath) {
			p := joinDocPath(docPath, k)
			switch kind := kindOf(t, p); kind {
			case kindSection:
				keys = append(keys, schemaKey{p, kind})
				walk(p)
			case kindList:
				keys = append(keys, schemaKey{p + "[]", kind})
				walk(p + "[]")
			case kindMap:
				keys = append(keys, schemaKey{p, kind})
				walk(joinDocPath(p, "<name>"))
			default:
				keys = append(keys, schemaKey{p, kind})
			}
		}
	}
	walk("")
	return keys
}

// docRow is one row of a key table in the reference.
type docRow struct {
	Key  string // as written, <...> names normalised to <name>
	Type string
	Line int
}

var (
	backticked = regexp.MustCompile("`([^`]*)`")
	docKeyPath = regexp.MustCompile(`^[a-z0-9_]+(\[\])?(\.([a-z0-9_]+(\[\])?|<[a-z_]+>))*$`)
	namePart   = regexp.MustCompile(`<[a-z_]+>`)
)

// readReference returns the rows of every table in the reference whose
// header starts with "Key"; the key is the first backticked path of the
// row's first cell.
func readReference(t *testing.T) []docRow {
	t.Helper()
	f, err := os.Open(referenceDoc)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rows, err := parseReference(f)
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) == 0 {
		t.Fatalf("%s: no key tables found (want tables whose header starts with | Key |)", referenceDoc)
	}
	return rows
}

func parseReference(r io.Reader) ([]docRow, error) {
	var (
		rows    []docRow
		inTable bool
		line    int
	)
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line++
		text := strings.TrimSpace(sc.Text())
		if !strings.HasPrefix(text, "|") {
			inTable = false
			continue
		}
		cells := strings.Split(strings.Trim(text, "|"), "|")
		first := strings.TrimSpace(cells[0])
		switch {
		case !inTable && first == "Key":
			inTable = true
			continue
		case !inTable, strings.HasPrefix(first, "---"):
			continue
		}
		m := backticked.FindStringSubmatch(first)
		if m == nil || !docKeyPath.MatchString(m[1]) {
			return nil, fmt.Errorf("%s:%d: the first cell %q holds no key path in backticks", referenceDoc, line, first)
		}
		row := docRow{Key: namePart.ReplaceAllString(m[1], "<name>"), Line: line}
		if len(cells) > 1 {
			row.Type = strings.TrimSpace(cells[1])
		}
		rows = append(rows, row)
	}
	return rows, sc.Err()
}

// compareReference returns a problem for every key the decoder reads that
// the reference does not document (sections, whose keys are all listed,
// may be left out), every documented key the decoder does not read, and
// every key documented twice.
func compareReference(keys []schemaKey, rows []docRow) []string {
	var problems []string
	documented := make(map[string]int)
	for _, r := range rows {
		if first, dup := documented[r.Key]; dup {
			problems = append(problems, fmt.Sprintf("%s:%d: %s is documented twice (first at line %d)", referenceDoc, r.Line, r.Key, first))
			continue
		}
		documented[r.Key] = r.Line
	}
	known := make(map[string]bool)
	for _, k := range keys {
		known[k.Path] = true
		if _, ok := documented[k.Path]; !ok && k.Kind != kindSection {
			problems = append(problems, fmt.Sprintf("%s: key %s (%s) is read by pgcloak but not documented", referenceDoc, k.Path, k.Kind))
		}
	}
	for _, r := range rows {
		if !known[r.Key] {
			problems = append(problems, fmt.Sprintf("%s:%d: key %s is documented but pgcloak does not read it", referenceDoc, r.Line, r.Key))
		}
	}
	return problems
}

// TestReferenceKeys fails when docs/configuration.md misses a key that
// pgcloak reads or lists one that it does not.
func TestReferenceKeys(t *testing.T) {
	keys := decoderKeys(t)
	if len(keys) < 50 {
		t.Fatalf("the decoder probe found %d keys, want every key of the file format (listen.address, ..., log.format)", len(keys))
	}
	for _, p := range compareReference(keys, readReference(t)) {
		t.Error(p)
	}
}

// TestReferenceCompare shows that compareReference notices drift in both
// directions.
func TestReferenceCompare(t *testing.T) {
	keys := []schemaKey{
		{"listen", kindSection},
		{"listen.address", kindValue},
		{"keys.tenants", kindMap},
		{"keys.tenants.<name>.key_id", kindValue},
	}
	tests := []struct {
		name string
		rows []docRow
		want []string // substrings, one per problem
	}{
		{"complete", []docRow{{Key: "listen.address"}, {Key: "keys.tenants"}, {Key: "keys.tenants.<name>.key_id"}}, nil},
		{"section-documented", []docRow{{Key: "listen"}, {Key: "listen.address"}, {Key: "keys.tenants"}, {Key: "keys.tenants.<name>.key_id"}}, nil},
		{"missing", []docRow{{Key: "listen.address"}, {Key: "keys.tenants"}}, []string{"keys.tenants.<name>.key_id (value) is read by pgcloak but not documented"}},
		{"unknown", []docRow{{Key: "listen.address"}, {Key: "listen.adress", Line: 7}, {Key: "keys.tenants"}, {Key: "keys.tenants.<name>.key_id"}}, []string{":7: key listen.adress is documented but pgcloak does not read it"}},
		{"twice", []docRow{{Key: "listen.address", Line: 3}, {Key: "listen.address", Line: 9}, {Key: "keys.tenants"}, {Key: "keys.tenants.<name>.key_id"}}, []string{":9: listen.address is documented twice (first at line 3)"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := compareReference(keys, tt.rows)
			if len(got) != len(tt.want) {
				t.Fatalf("compareReference = %q, want %d problems", got, len(tt.want))
			}
			for i, w := range tt.want {
				if !strings.Contains(got[i], w) {
					t.Errorf("problem %d = %q, want it to contain %q", i, got[i], w)
				}
			}
		})
	}
}

// TestReferenceParse checks the reading of key tables: other tables are
// ignored, a key row without a key path is an error, and chosen names are
// normalised.
func TestReferenceParse(t *testing.T) {
	doc := strings.Join([]string{
		"| Section | On SIGHUP |",
		"| --- | --- |",
		"| `tenancy`, `encrypt` | Reloaded |",
		"",
		"| Key | Type | Default | Effect |",
		"| --- | --- | --- | --- |",
		"| `listen.address` | string | `127.0.0.1:6432` | where |",
		"| `keys.tenants.<tenant>.key_id` | string | required | which |",
		"| `encrypt.tables[].columns[]` | list | required | what |",
	}, "\n")
	rows, err := parseReference(strings.NewReader(doc))
	if err != nil {
		t.Fatal(err)
	}
	want := []docRow{
		{Key: "listen.address", Type: "string", Line: 7},
		{Key: "keys.tenants.<name>.key_id", Type: "string", Line: 8},
		{Key: "encrypt.tables[].columns[]", Type: "list", Line: 9},
	}
	if !slices.Equal(rows, want) {
		t.Errorf("parseReference = %+v, want %+v", rows, want)
	}
	if _, err := parseReference(strings.NewReader("| Key | Type |\n| --- | --- |\n| listen address | string |\n")); err == nil {
		t.Error("parseReference accepted a key row without a key path in backticks")
	}
}

// fieldType returns the type of the struct field behind a documented key,
// matching YAML keys to Go field names without case and underscores
// (hs256_secret is HS256Secret, jwks_url is JWKSURL). A trailing [] is left
// off: the type of a list row is the slice.
func fieldType(docPath string) (reflect.Type, error) {
	t := reflect.TypeOf(Config{})
	segs := splitDocPath(strings.TrimSuffix(docPath, "[]"))
	for i, s := range segs {
		if t.Kind() == reflect.Pointer {
			t = t.Elem()
		}
		if s == "<name>" {
			if t.Kind() != reflect.Map {
				return nil, fmt.Errorf("%s: %s is not a map", docPath, t)
			}
			t = t.Elem()
			continue
		}
		if t.Kind() != reflect.Struct {
			return nil, fmt.Errorf("%s: %s has no fields", docPath, t)
		}
		name := strings.TrimSuffix(s, "[]")
		f, ok := fieldByKey(t, name)
		if !ok {
			return nil, fmt.Errorf("%s: %s has no field for key %q", docPath, t, name)
		}
		t = f.Type
		if strings.HasSuffix(s, "[]") && i < len(segs)-1 {
			if t.Kind() != reflect.Slice {
				return nil, fmt.Errorf("%s: %s.%s is not a slice", docPath, f.Type, f.Name)
			}
			t = t.Elem()
		}
	}
	return t, nil
}

func fieldByKey(t reflect.Type, key string) (reflect.StructField, bool) {
	want := strings.ReplaceAll(key, "_", "")
	for i := 0; i < t.NumField(); i++ {
		if f := t.Field(i); f.IsExported() && strings.EqualFold(f.Name, want) {
			return f, true
		}
	}
	return reflect.StructField{}, false
}

// typeWords are the words of which a documented type must contain one, by
// the Go type of its field. Secret and time.Duration are leaves of their own.
func typeWords(t reflect.Type) []string {
	switch {
	case t == reflect.TypeFor[Secret]():
		return []string{"secret"}
	case t == reflect.TypeFor[time.Duration]():
		return []string{"duration"}
	}
	switch t.Kind() {
	case reflect.Bool:
		return []string{"bool"}
	case reflect.Int, reflect.Int64, reflect.Uint64:
		return []string{"integer", "size"}
	case reflect.String:
		if t.Name() != "string" {
			return []string{"one of"} // SSLMode, TenancyMode, ...: a fixed set of words
		}
		return []string{"string", "one of"}
	case reflect.Slice:
		return []string{"list"}
	case reflect.Map:
		return []string{"map"}
	case reflect.Pointer, reflect.Struct:
		return []string{"section"}
	}
	return []string{t.String()}
}

// typeProblems returns a problem for every row whose type does not fit
// its field, and for every row that calls a key secret that is not a
// Secret.
func typeProblems(rows []docRow) []string {
	var problems []string
	for _, r := range rows {
		ft, err := fieldType(r.Key)
		if err != nil {
			problems = append(problems, fmt.Sprintf("%s:%d: %v", referenceDoc, r.Line, err))
			continue
		}
		words := typeWords(ft)
		typ := strings.ToLower(r.Type)
		if !slices.ContainsFunc(words, func(w string) bool { return strings.Contains(typ, w) }) {
			problems = append(problems, fmt.Sprintf("%s:%d: %s is a %s; its type %q should say %s", referenceDoc, r.Line, r.Key, ft, r.Type, strings.Join(words, " or ")))
		}
		if strings.Contains(typ, "secret") && ft != reflect.TypeFor[Secret]() {
			problems = append(problems, fmt.Sprintf("%s:%d: %s is documented as a secret, but is a %s, which prints itself", referenceDoc, r.Line, r.Key, ft))
		}
	}
	return problems
}

// derivedFields are the struct fields that no key sets directly.
var derivedFields = map[string]string{
	"Config.File":  "the path the file was read from",
	"Table.Schema": "the schema part of encrypt.tables[].name",
}

// TestReferenceTypes fails when a documented type does not match the Go
// type of the key's field, when a key the decoder reads has no field, or
// when a field is set by no key.
func TestReferenceTypes(t *testing.T) {
	for _, p := range typeProblems(readReference(t)) {
		t.Error(p)
	}

	keys := decoderKeys(t)
	children := make(map[string][]string) // struct path -> its keys
	for _, k := range keys {
		segs := splitDocPath(k.Path)
		parent := strings.Join(segs[:len(segs)-1], ".")
		children[parent] = append(children[parent], strings.TrimSuffix(segs[len(segs)-1], "[]"))
		if _, err := fieldType(k.Path); err != nil {
			t.Errorf("the decoder reads %s, but the config structs have no field for it: %v", k.Path, err)
		}
	}
	// Every field of every struct reached from Config is some key's value
	// or named in derivedFields.
	var walk func(typ reflect.Type, path string)
	walk = func(typ reflect.Type, path string) {
		for i := 0; i < typ.NumField(); i++ {
			f := typ.Field(i)
			if !f.IsExported() || derivedFields[typ.Name()+"."+f.Name] != "" {
				continue
			}
			key := ""
			for _, k := range children[path] {
				if strings.EqualFold(strings.ReplaceAll(k, "_", ""), f.Name) {
					key = k
				}
			}
			if key == "" {
				t.Errorf("%s.%s (under %q) is set by no configuration key; give it one in the decoder or list it in derivedFields", typ.Name(), f.Name, path)
				continue
			}
			ft, p := f.Type, joinDocPath(path, key)
			if ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			switch {
			case ft.Kind() == reflect.Slice && ft.Elem().Kind() == reflect.Struct:
				walk(ft.Elem(), p+"[]")
			case ft.Kind() == reflect.Map && ft.Elem().Kind() == reflect.Struct:
				walk(ft.Elem(), joinDocPath(p, "<name>"))
			case ft.Kind() == reflect.Struct && ft != reflect.TypeFor[time.Duration]():
				walk(ft, p)
			}
		}
	}
	walk(reflect.TypeFor[Config](), "")
}

// TestReferenceTypeCheck shows that typeProblems notices a wrong type and a
// wrong secret marking.
func TestReferenceTypeCheck(t *testing.T) {
	tests := []struct {
		row  docRow
		want int
	}{
		{docRow{Key: "upstream.password", Type: "string, **secret**"}, 0},
		{docRow{Key: "upstream.password", Type: "string"}, 1},
		{docRow{Key: "upstream.user", Type: "string, secret"}, 1},
		{docRow{Key: "listen.shutdown_timeout", Type: "integer"}, 1},
		{docRow{Key: "listen.max_message_size", Type: "size"}, 0},
		{docRow{Key: "upstream.sslmode", Type: "string"}, 1},
		{docRow{Key: "encrypt.tables[].columns[]", Type: "list"}, 0},
		{docRow{Key: "keys.tenants.<name>.key_id", Type: "string"}, 0},
		{docRow{Key: "keys.tenants.<name>.key_ids", Type: "string"}, 1},
	}
	for _, tt := range tests {
		t.Run(tt.row.Key+"/"+tt.row.Type, func(t *testing.T) {
			if got := typeProblems([]docRow{tt.row}); len(got) != tt.want {
				t.Errorf("typeProblems = %q, want %d problems", got, tt.want)
			}
		})
	}
}

// TestReferenceExamples fails when a configuration file shipped with
// pgcloak uses a key pgcloak does not read. TestReferenceKeys makes the
// keys pgcloak reads the documented ones, so these files use documented
// keys only.
func TestReferenceExamples(t *testing.T) {
	for _, file := range []string{"../pgcloak.example.yaml", "../docker/pgcloak.yaml"} {
		t.Run(strings.TrimPrefix(file, "../"), func(t *testing.T) {
			data, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			_, err = parse(file, data, anyEnv)
			var verr *ValidationError
			if errors.As(err, &verr) {
				for _, p := range verr.Problems {
					if strings.HasPrefix(p.Msg, "unknown key") {
						t.Errorf("%s", p)
					}
				}
			}
		})
	}
}
