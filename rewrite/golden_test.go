package rewrite

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	pg_query "github.com/pganalyze/pg_query_go/v5"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/pgcloak/pgcloak/config"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata with the current results (read the diff before committing)")

// goldenSchema is testdata/schema.json.
type goldenSchema struct {
	Comment       string        `json:"comment"`
	TenantSetting string        `json:"tenant_setting"`
	Tables        []goldenTable `json:"tables"`
}

type goldenTable struct {
	Schema  string         `json:"schema"`
	Name    string         `json:"name"`
	Columns []goldenColumn `json:"columns"`
}

type goldenColumn struct {
	Name        string `json:"name"`
	Type        string `json:"type"`
	Search      string `json:"search"`
	IndexColumn string `json:"index_column,omitempty"`
	Normalize   string `json:"normalize,omitempty"`
	KeyClass    string `json:"key_class,omitempty"`
}

// goldenCase is one case of a testdata/*.json file (all but schema.json).
type goldenCase struct {
	Comment string `json:"comment"`
	SQL     string `json:"sql"`
	// Skip marks a case known to fail; it fails once it starts passing.
	Skip bool       `json:"skip,omitempty"`
	Want goldenWant `json:"want"`
}

type goldenWant struct {
	Passthrough    bool         `json:"passthrough,omitempty"`
	SQL            string       `json:"sql,omitempty"`
	Params         []string     `json:"params,omitempty"`
	Statements     int          `json:"statements,omitempty"` // when not 1
	RoleChanges    []string     `json:"role_changes,omitempty"`
	ResetsSettings bool         `json:"resets_settings,omitempty"`
	Copy           string       `json:"copy,omitempty"`
	Opaque         *goldenError `json:"opaque,omitempty"`
	LexerChange    *goldenError `json:"lexer_change,omitempty"`
	Error          *goldenError `json:"error,omitempty"`
}

type goldenError struct {
	Code      string `json:"code"`
	Message   string `json:"message"`
	Schema    string `json:"schema,omitempty"`
	Table     string `json:"table,omitempty"`
	Column    string `json:"column,omitempty"`
	Construct string `json:"construct"`
	Position  int32  `json:"position,omitempty"`
}

func decodeStrict(t testing.TB, path string, v any) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

// testSchema loads testdata/schema.json.
func testSchema(t testing.TB) *Schema {
	t.Helper()
	var gs goldenSchema
	decodeStrict(t, filepath.Join("testdata", "schema.json"), &gs)
	var enc config.Encrypt
	for _, gt := range gs.Tables {
		tab := config.Table{Schema: gt.Schema, Name: gt.Name}
		for _, gc := range gt.Columns {
			c := config.Column{
				Name: gc.Name, Type: gc.Type, Search: config.Search(gc.Search),
				IndexColumn: gc.IndexColumn, Normalize: config.Normalize(gc.Normalize), KeyClass: gc.KeyClass,
			}
			if c.Normalize == "" {
				c.Normalize = config.NormalizeNone
			}
			tab.Columns = append(tab.Columns, c)
		}
		enc.Tables = append(enc.Tables, tab)
	}
	return NewSchema(enc, gs.TenantSetting)
}

// goldenFiles returns the case files, sorted.
func goldenFiles(t testing.TB) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join("testdata", "*.json"))
	if err != nil {
		t.Fatal(err)
	}
	files = slices.DeleteFunc(files, func(f string) bool { return filepath.Base(f) == "schema.json" })
	if len(files) == 0 {
		t.Fatal("no golden files in testdata")
	}
	return files
}

func loadCases(t testing.TB, file string) []goldenCase {
	t.Helper()
	var cases []goldenCase
	decodeStrict(t, file, &cases)
	return cases
}

// renderWant summarises an Analyze result in golden form.
func renderWant(plan *Plan, err error) goldenWant {
	if err != nil {
		var r *Refusal
		if !errors.As(err, &r) {
			return goldenWant{Error: &goldenError{Code: "not a *Refusal", Message: err.Error()}}
		}
		return goldenWant{Error: renderRefusal(r)}
	}
	w := goldenWant{ResetsSettings: plan.ResetsSettings, Opaque: renderRefusal(plan.Opaque), LexerChange: renderRefusal(plan.LexerChange)}
	if plan.Statements != 1 {
		w.Statements = plan.Statements
	}
	for _, rc := range plan.RoleChanges {
		w.RoleChanges = append(w.RoleChanges, rc.Kind+" "+rc.Target)
	}
	if plan.Passthrough {
		w.Passthrough = true
		return w
	}
	if cp := plan.Copy; cp != nil {
		dir := "to"
		if cp.From {
			dir = "from"
		}
		w.Copy = fmt.Sprintf("%s %s delimiter=%q null=%q quote=%q escape=%q header=%v", dir, cp.Format, cp.Delimiter, cp.Null, cp.Quote, cp.Escape, cp.Header)
		for _, c := range cp.Columns {
			w.Copy += " " + c.Table + "." + map[bool]string{true: "plain", false: "declared"}[c.Column == nil]
			if c.Column != nil {
				w.Copy += ":" + c.Column.Name
			}
		}
		for _, i := range cp.Indexes {
			w.Copy += fmt.Sprintf(" index<-%d", i)
		}
		if cp.Describe != "" {
			w.Copy += " describe: " + cp.Describe
		}
	}
	w.SQL = renderSQL(plan, func(s Slot) string {
		v := "NULL"
		if s.Value != nil {
			v = "'" + strings.ReplaceAll(*s.Value, "'", "''") + "'"
		}
		return fmt.Sprintf("<%s %s %s>", s.Kind, s.Column, v)
	})
	for i, p := range plan.Params {
		line := fmt.Sprintf("$%d <- %s $%d", i+1, p.Kind, p.Param)
		if p.Kind != ParamPlain {
			line += " " + p.Column.String()
		}
		w.Params = append(w.Params, line)
	}
	return w
}

func renderRefusal(r *Refusal) *goldenError {
	if r == nil {
		return nil
	}
	return &goldenError{
		Code: r.Code, Message: r.Message, Schema: r.Schema, Table: r.Table, Column: r.Column,
		Construct: r.Construct, Position: r.Position,
	}
}

func renderSQL(plan *Plan, slot func(Slot) string) string {
	var b strings.Builder
	for i, seg := range plan.Segments {
		b.WriteString(seg)
		if i < len(plan.Slots) {
			b.WriteString(slot(plan.Slots[i]))
		}
	}
	return b.String()
}

// slotLiteral is how checkPlan renders slots: what the proxy would send,
// minus the bytes.
const slotLiteral = `'\x'::bytea`

// checkPlan checks the invariants every accepted plan must keep, whatever
// the input: the shape of Segments/Slots/Params, that a rewritten text
// parses with the same number of statements, that no slot's plaintext is
// left in Segments, and that no value bound for or compared with a declared
// column is left in the text as a constant.
func checkPlan(t testing.TB, s *Schema, sql string, plan *Plan) {
	t.Helper()
	if len(plan.Segments) != len(plan.Slots)+1 {
		t.Fatalf("len(Segments) = %d, len(Slots) = %d, want Slots+1", len(plan.Segments), len(plan.Slots))
	}
	if plan.Passthrough {
		if plan.Segments[0] != sql || len(plan.Slots) != 0 || plan.Params != nil ||
			len(plan.RoleChanges) != 0 || plan.ResetsSettings {
			t.Fatalf("passthrough plan carries more than the original text: %+v", plan)
		}
	}
	for i, p := range plan.Params {
		if p.Param < 1 {
			t.Fatalf("Params[%d].Param = %d, want >= 1", i, p.Param)
		}
		if (p.Kind == ParamPlain) != (p.Column.Column == nil) {
			t.Fatalf("Params[%d] = %+v: plain parameters have no column, others have one", i, p)
		}
	}
	for i, sl := range plan.Slots {
		if sl.Kind != SlotData && sl.Kind != SlotIndex && sl.Kind != SlotIndexArray || sl.Column.Column == nil || sl.Value == nil {
			t.Fatalf("Slots[%d] = %+v is malformed", i, sl)
		}
	}
	text := renderSQL(plan, func(Slot) string { return slotLiteral })
	tree, err := pg_query.Parse(text)
	if err != nil {
		t.Fatalf("output does not parse: %v\n%s", err, text)
	}
	if len(tree.Stmts) != plan.Statements {
		t.Fatalf("output has %d statements, plan says %d\n%s", len(tree.Stmts), plan.Statements, text)
	}
	orig, err := pg_query.Parse(sql)
	if err == nil && len(orig.Stmts) != plan.Statements {
		t.Fatalf("input has %d statements, plan says %d", len(orig.Stmts), plan.Statements)
	}

	// A slot value may appear in Segments only as often as the input
	// also used it as a literal elsewhere.
	segs := strings.Join(plan.Segments, "")
	// One literal can give a Data and an Index slot: count literals as the
	// larger of the two.
	data, index := map[string]int{}, map[string]int{}
	for _, sl := range plan.Slots {
		if sl.Kind == SlotData {
			data[*sl.Value]++
		} else {
			index[*sl.Value]++
		}
	}
	counts := map[string]int{}
	for v, n := range data {
		counts[v] = n
	}
	for v, n := range index {
		counts[v] = max(counts[v], n)
	}
	for v, n := range counts {
		if len(v) < 3 {
			continue
		}
		q := "'" + strings.ReplaceAll(v, "'", "''") + "'"
		if got, allowed := strings.Count(segs, q), strings.Count(sql, q)-n; got > 0 && got > allowed {
			t.Fatalf("slot value %s appears %d times in Segments\n%s", q, got, segs)
		}
	}
	if err := plaintextCheck(s, tree); err != nil {
		t.Fatalf("%v\n%s", err, text)
	}
}

// plaintextCheck looks at a text as it would go upstream for constants that
// reach a declared column: INSERT VALUES and UPDATE SET of a declared column,
// and comparisons of a declared column reference with a constant. Slots are
// rendered as slotLiteral, which is allowed. It is deliberately simpler than
// the analyser (it knows query levels and names, nothing else; every
// unqualified name a visible declared table declares counts) so that it can
// catch the analyser's mistakes.
func plaintextCheck(s *Schema, tree *pg_query.ParseResult) error {
	for _, raw := range tree.Stmts {
		c := &plainChecker{s: s, ctes: map[string]bool{}}
		_ = visit(raw, func(m proto.Message) (bool, error) {
			if cte, ok := m.(*pg_query.CommonTableExpr); ok {
				c.ctes[cte.Ctename] = true
			}
			return true, nil
		})
		if err := c.walk(raw.Stmt.ProtoReflect(), nil); err != nil {
			return err
		}
	}
	return nil
}

type plainChecker struct {
	s    *Schema
	ctes map[string]bool
}

// plainLevel is one query level: the declared tables its FROM names, by
// alias and by relation name.
type plainLevel struct {
	names  map[string]*declTable
	parent *plainLevel
}

func (c *plainChecker) level(parent *plainLevel, rels ...*pg_query.Node) *plainLevel {
	l := &plainLevel{names: map[string]*declTable{}, parent: parent}
	var add func(n *pg_query.Node)
	add = func(n *pg_query.Node) {
		switch x := n.GetNode().(type) {
		case *pg_query.Node_RangeVar:
			c.addRel(l, x.RangeVar)
		case *pg_query.Node_JoinExpr:
			add(x.JoinExpr.Larg)
			add(x.JoinExpr.Rarg)
		case *pg_query.Node_RangeTableSample:
			add(x.RangeTableSample.Relation)
		}
	}
	for _, n := range rels {
		add(n)
	}
	return l
}

func (c *plainChecker) addRel(l *plainLevel, rv *pg_query.RangeVar) {
	if rv == nil || (rv.Schemaname == "" && c.ctes[rv.Relname]) {
		return
	}
	if t := c.s.anyTableNamed(rv.Schemaname, rv.Relname); t != nil {
		l.names[rv.Relname] = t
		if rv.Alias != nil {
			l.names[rv.Alias.Aliasname] = t
		}
	}
}

// walk visits m; statements open a query level for everything but their
// WITH clause.
func (c *plainChecker) walk(m protoreflect.Message, l *plainLevel) error {
	var inner *plainLevel
	switch x := m.Interface().(type) {
	case *pg_query.SelectStmt:
		inner = c.level(l, x.FromClause...)
	case *pg_query.UpdateStmt:
		inner = c.level(l, x.FromClause...)
		c.addRel(inner, x.Relation)
		if err := c.assignments(x.Relation, x.TargetList); err != nil {
			return err
		}
	case *pg_query.DeleteStmt:
		inner = c.level(l, x.UsingClause...)
		c.addRel(inner, x.Relation)
	case *pg_query.InsertStmt:
		inner = c.level(l)
		c.addRel(inner, x.Relation)
		if err := c.insertValues(x); err != nil {
			return err
		}
		if oc := x.OnConflictClause; oc != nil {
			if err := c.assignments(x.Relation, oc.TargetList); err != nil {
				return err
			}
		}
	case *pg_query.A_Expr:
		if err := c.comparison(x, l); err != nil {
			return err
		}
	}
	return eachChild(m, func(fd protoreflect.FieldDescriptor, child protoreflect.Message) error {
		if inner != nil && fd.Name() != "with_clause" {
			return c.walk(child, inner)
		}
		return c.walk(child, l)
	})
}

func (c *plainChecker) declaredRef(n *pg_query.Node, l *plainLevel) bool {
	cr := n.GetColumnRef()
	if cr == nil {
		return false
	}
	var parts []string
	for _, f := range cr.Fields {
		parts = append(parts, f.GetString_().GetSval())
	}
	col := parts[len(parts)-1]
	for ; l != nil; l = l.parent {
		if len(parts) == 1 {
			for _, t := range l.names {
				if t.column(col) != nil {
					return true
				}
			}
			continue
		}
		if t := l.names[parts[len(parts)-2]]; t != nil {
			return t.column(col) != nil
		}
	}
	return false
}

func (c *plainChecker) comparison(x *pg_query.A_Expr, l *plainLevel) error {
	var other *pg_query.Node
	switch {
	case c.declaredRef(x.Lexpr, l):
		other = x.Rexpr
	case c.declaredRef(x.Rexpr, l):
		other = x.Lexpr
	default:
		return nil
	}
	items := []*pg_query.Node{other}
	if list := other.GetList(); list != nil {
		items = list.Items
	}
	if arr := other.GetAArrayExpr(); arr != nil {
		items = arr.Elements
	}
	for _, it := range items {
		if isPlainConst(it) {
			return fmt.Errorf("declared column compared with a constant")
		}
	}
	return nil
}

func (c *plainChecker) insertValues(x *pg_query.InsertStmt) error {
	t := c.s.anyTableNamed(x.Relation.Schemaname, x.Relation.Relname)
	src := x.SelectStmt.GetSelectStmt()
	if t == nil || src == nil {
		return nil
	}
	for _, row := range src.ValuesLists {
		for i, v := range row.GetList().GetItems() {
			if i < len(x.Cols) && t.column(x.Cols[i].GetResTarget().Name) != nil && isPlainConst(v) {
				return fmt.Errorf("constant inserted into %s.%s", t.qualified(), x.Cols[i].GetResTarget().Name)
			}
		}
	}
	return nil
}

func (c *plainChecker) assignments(rv *pg_query.RangeVar, targets []*pg_query.Node) error {
	t := c.s.anyTableNamed(rv.Schemaname, rv.Relname)
	if t == nil {
		return nil
	}
	for _, n := range targets {
		if rt := n.GetResTarget(); rt != nil && t.column(rt.Name) != nil && isPlainConst(rt.Val) {
			return fmt.Errorf("constant assigned to %s.%s", t.qualified(), rt.Name)
		}
	}
	return nil
}

// isPlainConst reports whether n is a non-NULL constant other than a
// rendered slot.
func isPlainConst(n *pg_query.Node) bool {
	if tc := n.GetTypeCast(); tc != nil && tc.Arg.GetAConst().GetSval().GetSval() == `\x` && lastName(tc.TypeName.GetNames()) == "bytea" {
		return false
	}
	for n.GetTypeCast() != nil {
		n = n.GetTypeCast().Arg
	}
	c := n.GetAConst()
	return c != nil && !c.Isnull
}

// TestGoldenShapes runs every golden case through the shape path: a text
// that gets a shape must be one the exact analysis accepts, and a rewriting
// shape must render the statement the exact analysis renders.
func TestGoldenShapes(t *testing.T) {
	s := testSchema(t)
	cache := NewCache(1024)
	for _, file := range goldenFiles(t) {
		for _, c := range loadCases(t, file) {
			sp, lits := s.AnalyzeShape(cache, c.SQL)
			if sp == nil {
				continue
			}
			exact, err := s.Analyze(c.SQL)
			if err != nil {
				t.Errorf("%s: the shape passes what the exact analysis refuses: %v", c.SQL, err)
				continue
			}
			if sp.Plan.Passthrough != exact.Passthrough {
				t.Errorf("%s: passthrough: shape %v, exact %v", c.SQL, sp.Plan.Passthrough, exact.Passthrough)
				continue
			}
			if !exact.Passthrough {
				if got, want := canonical(t, renderShape(sp, lits)), canonical(t, renderExact(exact)); got != want {
					t.Errorf("%s:\nshape: %s\nexact: %s", c.SQL, got, want)
				}
			}
		}
	}
}

// TestGolden runs every case of testdata/*.json. With -update it writes the
// current results back instead of comparing.
func TestGolden(t *testing.T) {
	s := testSchema(t)
	for _, file := range goldenFiles(t) {
		cases := loadCases(t, file)
		t.Run(strings.TrimSuffix(filepath.Base(file), ".json"), func(t *testing.T) {
			seen := map[string]bool{}
			for i := range cases {
				c := &cases[i]
				if seen[c.SQL] {
					t.Errorf("duplicate case %q", c.SQL)
				}
				seen[c.SQL] = true
				t.Run(caseName(i, c), func(t *testing.T) {
					plan, err := s.Analyze(c.SQL)
					got := renderWant(plan, err)
					if *update && !c.Skip {
						c.Want = got
					}
					same := reflect.DeepEqual(got, c.Want)
					if c.Skip {
						if same {
							t.Errorf("case is marked skip but passes now; remove skip")
						}
						return
					}
					if !same {
						gj, _ := marshal(got)
						wj, _ := marshal(c.Want)
						t.Errorf("sql: %s\ngot:  %s\nwant: %s", c.SQL, gj, wj)
					}
					if err == nil {
						checkPlan(t, s, c.SQL, plan)
					}
					if !c.Want.Passthrough && !s.MightNeedTenantAnalysis(c.SQL) {
						t.Errorf("MightNeedTenantAnalysis = false for a case that needs analysis")
					}
					if !c.Want.Passthrough && !opaqueOnly(c.SQL, plan, err) && !s.MightNeedAnalysis(c.SQL) {
						t.Errorf("MightNeedAnalysis = false for a case that needs analysis in every session")
					}
					cache := NewCache(4)
					for range 2 {
						cp, cerr := s.Cached(cache, c.SQL)
						if !reflect.DeepEqual(renderWant(cp, cerr), got) {
							t.Errorf("Cached result differs from Analyze")
						}
					}
				})
			}
			if *update {
				data, err := marshal(cases)
				if err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(file, append(data, '\n'), 0o644); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

// opaqueOnly reports whether the only thing a plan says beyond passthrough
// is Opaque, which only sessions with a tenant must see.
func opaqueOnly(sql string, plan *Plan, err error) bool {
	return err == nil && plan.Opaque != nil && plan.LexerChange == nil && len(plan.RoleChanges) == 0 &&
		!plan.ResetsSettings && plan.Copy == nil && len(plan.Slots) == 0 &&
		len(plan.Segments) == 1 && plan.Segments[0] == sql
}

func caseName(i int, c *goldenCase) string {
	name := c.Comment
	if len(name) > 60 {
		name = name[:60]
	}
	return fmt.Sprintf("%03d_%s", i, name)
}

func marshal(v any) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimRight(b.Bytes(), "\n"), nil
}

// TestRefusalKinds walks the table of refusal kinds: ids are unique, each
// kind has a SQLSTATE, a message format and a doc line, and at least one
// golden case produces it.
func TestRefusalKinds(t *testing.T) {
	s := testSchema(t)
	produced := map[*refusalKind]int{}
	for _, file := range goldenFiles(t) {
		for _, c := range loadCases(t, file) {
			if c.Skip {
				continue
			}
			plan, err := s.Analyze(c.SQL)
			var r *Refusal
			if errors.As(err, &r) {
				produced[r.kind]++
			}
			if plan != nil && plan.Opaque != nil {
				produced[plan.Opaque.kind]++
			}
			if plan != nil && plan.LexerChange != nil {
				produced[plan.LexerChange.kind]++
			}
		}
	}
	ids := map[string]bool{}
	for _, k := range refusalKinds {
		t.Run(k.id, func(t *testing.T) {
			if ids[k.id] {
				t.Errorf("duplicate id %q", k.id)
			}
			ids[k.id] = true
			if k.code == "" || k.msg == nil || k.doc == "" {
				t.Errorf("kind %q lacks a code, message or doc", k.id)
			}
			if len(k.code) != 5 {
				t.Errorf("code %q is not a SQLSTATE", k.code)
			}
			if produced[k] == 0 {
				t.Errorf("no golden case produces kind %q", k.id)
			}
		})
	}
	for k := range produced {
		if !slices.Contains(refusalKinds, k) {
			t.Errorf("refusal kind %q is not in refusalKinds", k.id)
		}
	}
}

// TestPlaintextCheck makes sure the checker the golden and fuzz tests rely
// on does catch plaintext: the original texts of statements rewrite must
// change fail it, their rewrites pass it.
func TestPlaintextCheck(t *testing.T) {
	s := testSchema(t)
	for _, sql := range []string{
		"INSERT INTO patients (id, ssn) VALUES (1, '123')",
		"UPDATE patients p SET email = 'x' WHERE id = 1",
		"INSERT INTO patients (id) VALUES (1) ON CONFLICT (id) DO UPDATE SET ssn = '1'",
		"SELECT * FROM patients WHERE ssn = '1'",
		"SELECT * FROM patients p WHERE p.email IN ('a', 'b')",
		"SELECT * FROM visits v WHERE EXISTS (SELECT 1 FROM patients p WHERE p.ssn = ANY(ARRAY['a']))",
		"WITH x AS (DELETE FROM patients WHERE ssn = '1' RETURNING id) SELECT * FROM x",
	} {
		t.Run(sql, func(t *testing.T) {
			tree, err := pg_query.Parse(sql)
			if err != nil {
				t.Fatal(err)
			}
			if plaintextCheck(s, tree) == nil {
				t.Errorf("plaintextCheck passes the original text")
			}
			plan, err := s.Analyze(sql)
			if err != nil {
				t.Fatal(err)
			}
			checkPlan(t, s, sql, plan)
		})
	}
}
