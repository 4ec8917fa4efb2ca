package deploy_test

import (
	"context"
	"encoding/json"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/pgcloak/pgcloak/crypto"
	"github.com/pgcloak/pgcloak/metrics"
	dto "github.com/prometheus/client_model/go"
)

const dashboardFile = "grafana/pgcloak-dashboard.json"

// registeredMetrics returns the metric families a metrics.Metrics exposes,
// by name. Vectors appear only once they have a series, so the test gives
// each one a value through the package's own API; metricNamesInSource
// makes sure none is missed.
func registeredMetrics(t *testing.T) map[string]dto.MetricType {
	t.Helper()
	m := metrics.New(metrics.Options{MaxTenantLabels: 10, Version: "test"})
	m.SessionStarted("acme")
	m.StatementRewritten()
	m.StatementRefused("0A000")
	m.DecryptFailed("public.patients", "ssn")
	p := m.InstrumentProvider(fakeProvider{})
	if _, _, err := p.Wrap(context.Background(), crypto.KeyContext{Tenant: "acme", Purpose: crypto.PurposeData}, make([]byte, 32)); err != nil {
		t.Fatal(err)
	}
	families, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	types := map[string]dto.MetricType{}
	for _, f := range families {
		types[f.GetName()] = f.GetType()
	}
	for _, name := range metricNamesInSource(t) {
		if _, ok := types[name]; !ok {
			t.Errorf("metrics/*.go names %s, but the registry gathered no such family: give it a series in registeredMetrics", name)
		}
	}
	return types
}

// fakeProvider answers every call at once; it only has to be timed.
type fakeProvider struct{}

func (fakeProvider) Wrap(context.Context, crypto.KeyContext, []byte) ([]byte, string, error) {
	return []byte("wrapped"), "fake", nil
}

func (fakeProvider) Unwrap(context.Context, crypto.KeyContext, []byte) ([]byte, error) {
	return make([]byte, 32), nil
}

func (fakeProvider) GenerateDataKey(context.Context, crypto.KeyContext) ([]byte, []byte, string, error) {
	return make([]byte, 32), []byte("wrapped"), "fake", nil
}

// metricNamesInSource returns every string literal of the metrics
// package's non-test files that looks like a pgcloak metric name.
func metricNamesInSource(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(repoRoot, "metrics", "*.go"))
	if err != nil {
		t.Fatal(err)
	}
	isName := regexp.MustCompile(`^pgcloak_[a-z0-9_]+$`)
	var names []string
	for _, file := range files {
		if strings.HasSuffix(file, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(token.NewFileSet(), file, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(f, func(n ast.Node) bool {
			if lit, ok := n.(*ast.BasicLit); ok && lit.Kind == token.STRING {
				if s, err := strconv.Unquote(lit.Value); err == nil && isName.MatchString(s) && !slices.Contains(names, s) {
					names = append(names, s)
				}
			}
			return true
		})
	}
	if len(names) == 0 {
		t.Fatal("no pgcloak_* metric names in metrics/*.go")
	}
	return names
}

// dashboard is the part of a Grafana dashboard the test reads.
type dashboard struct {
	UID        string  `json:"uid"`
	Title      string  `json:"title"`
	Panels     []panel `json:"panels"`
	Templating struct {
		List []struct {
			Name  string          `json:"name"`
			Type  string          `json:"type"`
			Query json.RawMessage `json:"query"`
		} `json:"list"`
	} `json:"templating"`
}

type panel struct {
	ID      int     `json:"id"`
	Type    string  `json:"type"`
	Title   string  `json:"title"`
	Panels  []panel `json:"panels"` // a collapsed row's
	GridPos *struct {
		H, W, X, Y int
	} `json:"gridPos"`
	Targets []struct {
		RefID string `json:"refId"`
		Expr  string `json:"expr"`
	} `json:"targets"`
}

// query is one PromQL expression of the dashboard and where it is.
type query struct{ where, expr string }

func readDashboard(t *testing.T) (dashboard, []query) {
	t.Helper()
	data, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(data, &d); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	var qs []query
	ids := map[int]string{}
	var walk func(ps []panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			if prev, dup := ids[p.ID]; dup || p.ID == 0 {
				t.Errorf("panel %q: id %d is missing or also %q's", p.Title, p.ID, prev)
			}
			ids[p.ID] = p.Title
			if p.GridPos == nil || p.GridPos.W == 0 || p.GridPos.H == 0 || p.GridPos.X+p.GridPos.W > 24 {
				t.Errorf("panel %q: gridPos %+v does not fit the 24-column grid", p.Title, p.GridPos)
			}
			if p.Type != "row" && len(p.Targets) == 0 {
				t.Errorf("panel %q: no queries", p.Title)
			}
			for _, tg := range p.Targets {
				qs = append(qs, query{fmt.Sprintf("panel %q target %s", p.Title, tg.RefID), tg.Expr})
			}
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	labelValues := regexp.MustCompile(`^label_values\((.+),\s*\w+\)$`)
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		var q struct {
			Query string `json:"query"`
		}
		if err := json.Unmarshal(v.Query, &q); err != nil {
			json.Unmarshal(v.Query, &q.Query) // the older string form
		}
		m := labelValues.FindStringSubmatch(q.Query)
		if m == nil {
			t.Errorf("variable %s: query %q, want label_values(series, label)", v.Name, q.Query)
			continue
		}
		qs = append(qs, query{"variable " + v.Name, m[1]})
	}
	return d, qs
}

// TestDashboard checks that every series the dashboard queries is one the
// metrics package registers, used as its type allows (counters and
// histogram buckets through rate, buckets in histogram_quantile, gauges
// as they are), and that every pgcloak metric has a panel.
func TestDashboard(t *testing.T) {
	types := registeredMetrics(t)
	d, qs := readDashboard(t)
	if d.UID == "" || d.Title == "" {
		t.Errorf("%s: want a uid and a title", dashboardFile)
	}
	if len(qs) == 0 {
		t.Fatalf("%s: no queries", dashboardFile)
	}
	used := map[string]bool{}
	for _, q := range qs {
		refs, err := seriesRefs(q.expr)
		if err != nil {
			t.Errorf("%s: %v in %q", q.where, err, q.expr)
			continue
		}
		if len(refs) == 0 {
			t.Errorf("%s: %q queries no series", q.where, q.expr)
		}
		for _, r := range refs {
			if msg := checkRef(types, r); msg != "" {
				t.Errorf("%s: %s", q.where, msg)
			}
			used[baseName(types, r.name)] = true
		}
	}
	for name := range types {
		if strings.HasPrefix(name, "pgcloak_") && !used[name] {
			t.Errorf("metric %s has no panel on the dashboard", name)
		}
	}
}

// baseName strips a histogram's or summary's series suffix.
func baseName(types map[string]dto.MetricType, name string) string {
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		if base, ok := strings.CutSuffix(name, suffix); ok {
			if typ, ok := types[base]; ok && (typ == dto.MetricType_HISTOGRAM || typ == dto.MetricType_SUMMARY) {
				return base
			}
		}
	}
	return name
}

var rateFuncs = []string{"rate", "irate", "increase"}

// checkRef returns what is wrong with one series reference, or "".
func checkRef(types map[string]dto.MetricType, r seriesRef) string {
	inRate := slices.ContainsFunc(r.funcs, func(f string) bool { return slices.Contains(rateFuncs, f) })
	typ, ok := types[r.name]
	if !ok {
		base := baseName(types, r.name)
		if base == r.name {
			return fmt.Sprintf("%s is not a metric pgcloak registers", r.name)
		}
		switch {
		case strings.HasSuffix(r.name, "_bucket") && types[base] == dto.MetricType_HISTOGRAM:
			if !inRate || !slices.Contains(r.funcs, "histogram_quantile") {
				return fmt.Sprintf("%s: want histogram_quantile over rate of the buckets, got it inside %v", r.name, r.funcs)
			}
		case !inRate:
			return fmt.Sprintf("%s is a counter; want rate() or increase() of it, got it inside %v", r.name, r.funcs)
		}
		return ""
	}
	switch typ {
	case dto.MetricType_COUNTER:
		if !inRate {
			return fmt.Sprintf("%s is a counter; want rate() or increase() of it, got it inside %v", r.name, r.funcs)
		}
	case dto.MetricType_GAUGE:
		if inRate {
			return fmt.Sprintf("%s is a gauge; rate() of it means nothing", r.name)
		}
	case dto.MetricType_HISTOGRAM, dto.MetricType_SUMMARY:
		return fmt.Sprintf("%s is a %s; query its _bucket, _sum or _count series", r.name, strings.ToLower(typ.String()))
	}
	return ""
}

// seriesRef is a metric name a PromQL expression selects, with the
// functions and aggregations it sits inside, innermost last.
type seriesRef struct {
	name  string
	funcs []string
}

// PromQL words that are not series names (prometheus/promql/parser's
// lexer keywords).
var (
	promqlGrouping = []string{"by", "without", "on", "ignoring", "group_left", "group_right"}
	promqlWords    = []string{"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan", "start", "end"}
	promqlAggs     = []string{"sum", "avg", "min", "max", "count", "group", "stddev", "stdvar", "topk", "bottomk", "quantile", "count_values", "limitk", "limit_ratio"}
)

// seriesRefs lexes a PromQL expression just enough to find the series it
// selects: label matchers ({...}), ranges ([...]), strings and numbers are
// skipped, an identifier followed by "(" (after an optional by/without
// clause for aggregations) is a function, and every other identifier that
// is not a keyword is a metric name. Grafana's $variables count as
// strings' and ranges' contents only.
func seriesRefs(expr string) ([]seriesRef, error) {
	var (
		refs  []seriesRef
		stack []string // enclosing calls; "" for plain parentheses
		pend  string   // a function whose "(" comes next
	)
	isIdent := func(c byte, first bool) bool {
		return c == '_' || c == ':' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || !first && '0' <= c && c <= '9'
	}
	skipSpace := func(i int) int {
		for i < len(expr) && strings.ContainsRune(" \t\n\r", rune(expr[i])) {
			i++
		}
		return i
	}
	skipTo := func(i int, close byte) (int, error) {
		for j := i + 1; j < len(expr); j++ {
			if expr[j] == '"' || expr[j] == '\'' {
				k := strings.IndexByte(expr[j+1:], expr[j])
				if k < 0 {
					return 0, fmt.Errorf("unterminated string")
				}
				j += k + 1
				continue
			}
			if expr[j] == close {
				return j + 1, nil
			}
		}
		return 0, fmt.Errorf("no closing %q", close)
	}
	for i := 0; i < len(expr); {
		c := expr[i]
		switch {
		case strings.ContainsRune(" \t\n\r,+-*/%^=!<>", rune(c)):
			i++
		case c == '"' || c == '\'' || c == '`':
			k := strings.IndexByte(expr[i+1:], c)
			if k < 0 {
				return nil, fmt.Errorf("unterminated string")
			}
			i += k + 2
		case c == '{' || c == '[':
			close := byte('}')
			if c == '[' {
				close = ']'
			}
			j, err := skipTo(i, close)
			if err != nil {
				return nil, err
			}
			i = j
		case c == '(':
			stack = append(stack, pend)
			pend = ""
			i++
		case c == ')':
			if len(stack) == 0 {
				return nil, fmt.Errorf("unbalanced )")
			}
			stack = stack[:len(stack)-1]
			i++
		case '0' <= c && c <= '9' || c == '.':
			for i < len(expr) && (isIdent(expr[i], false) || expr[i] == '.') {
				i++
			}
		case isIdent(c, true):
			j := i
			for j < len(expr) && isIdent(expr[j], false) {
				j++
			}
			word := expr[i:j]
			next := skipSpace(j)
			switch {
			case slices.Contains(promqlGrouping, word):
				// by (a, b): a label list, not series.
				if next < len(expr) && expr[next] == '(' {
					k, err := skipTo(next, ')')
					if err != nil {
						return nil, err
					}
					j = k
				}
			case slices.Contains(promqlWords, word):
			case next < len(expr) && expr[next] == '(':
				pend = word
			case slices.Contains(promqlAggs, word):
				pend = word // sum by (x) (...): the clause comes first
			default:
				refs = append(refs, seriesRef{word, slices.DeleteFunc(slices.Clone(stack), func(s string) bool { return s == "" })})
			}
			i = j
		case c == '$':
			return nil, fmt.Errorf("variable outside a matcher or range at offset %d", i)
		default:
			return nil, fmt.Errorf("unexpected %q at offset %d", c, i)
		}
	}
	if len(stack) > 0 {
		return nil, fmt.Errorf("unbalanced (")
	}
	return refs, nil
}

// TestSeriesRefs checks the lexer on the shapes the dashboard uses, and
// that a misuse is caught.
func TestSeriesRefs(t *testing.T) {
	types := map[string]dto.MetricType{
		"c_total": dto.MetricType_COUNTER, "g": dto.MetricType_GAUGE, "h_seconds": dto.MetricType_HISTOGRAM,
	}
	for _, tc := range []struct {
		expr string
		want []string // name@innermost function
		bad  bool     // checkRef must complain
	}{
		{`sum by (tenant) (rate(c_total{a="$x", b=~"$y"}[$__rate_interval]))`, []string{"c_total@sum,rate"}, false},
		{`histogram_quantile(0.99, sum by (le, op) (rate(h_seconds_bucket{a="b"}[5m])))`, []string{"h_seconds_bucket@histogram_quantile,sum,rate"}, false},
		{`sum(rate(c_total[5m])) / (sum(rate(c_total[5m])) + 1e-9)`, []string{"c_total@sum,rate", "c_total@sum,rate"}, false},
		{`count by (version) (g{a="b"})`, []string{"g@count"}, false},
		{`rate(g[5m])`, []string{"g@rate"}, true},
		{`sum(c_total)`, []string{"c_total@sum"}, true},
		{`histogram_quantile(0.9, h_seconds_bucket)`, []string{"h_seconds_bucket@histogram_quantile"}, true},
		{`h_seconds`, []string{"h_seconds@"}, true},
		{`nosuch_total`, []string{"nosuch_total@"}, true},
	} {
		t.Run(tc.expr, func(t *testing.T) {
			refs, err := seriesRefs(tc.expr)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			bad := false
			for _, r := range refs {
				got = append(got, r.name+"@"+strings.Join(r.funcs, ","))
				bad = bad || checkRef(types, r) != ""
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("got %v, want %v", got, tc.want)
			}
			if bad != tc.bad {
				t.Errorf("checkRef complains: got %v, want %v", bad, tc.bad)
			}
		})
	}
}
