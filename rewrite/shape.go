package rewrite

import (
	"strconv"
	"strings"
)

// Literal is one constant of a simple-protocol statement, as Shape found it.
// Value is plaintext when the constant is bound for a declared column: it
// must not be logged.
type Literal struct {
	Text  string // as written: 'O''Brien', 42, 1.5e3
	Value string // its value: O'Brien, 42, 1.5e3
}

// ShapePlan is the analysis of a statement shape — its text with every
// constant replaced by a parameter — and how to rebuild statement text from
// it: Parts[0] + value(Refs[0]) + Parts[1] + ... + Parts[len(Refs)], where
// Refs[i] indexes Plan.Params. It is immutable and shared.
type ShapePlan struct {
	Plan  *Plan
	Parts []string
	Refs  []int

	// cast[n] is the type the shape's parameter $n is cast to right after
	// it (the constant was written 42::text): its type then, which the
	// shape's analysis already checked against the column.
	cast map[int]string
}

// AnalyzeShape analyses a simple-protocol text once per shape, so that
// statements differing only in their constants (pgbench, ORMs that inline
// values) cost no parse after the first. It returns nil when the text has
// no shape it can use safely; the caller then analyses the exact text with
// Cached, which also produces the precise refusal for texts whose shape is
// refused.
//
// Only constants whose meaning cannot depend on being a constant become
// parameters: plain single-quoted strings without backslashes, and unsigned
// numbers unless the text has ORDER BY, GROUP BY or DISTINCT (where a number
// may be a column position). Prefixed strings (E”, U&”, B”, X”), dollar
// quotes and parameters already in the text send the statement down the
// exact path.
func (s *Schema) AnalyzeShape(cache *Cache, sql string) (*ShapePlan, []Literal) {
	sp, lits, _ := s.analyzeShape(cache, sql, true)
	return sp, lits
}

// CachedShape is AnalyzeShape without analysing: known is false when the
// shape of sql is not in cache yet (nothing is parsed, nothing cached);
// otherwise the results are AnalyzeShape's.
func (s *Schema) CachedShape(cache *Cache, sql string) (sp *ShapePlan, lits []Literal, known bool) {
	return s.analyzeShape(cache, sql, false)
}

// Peek is Cached without analysing: known is false when sql's plan is not
// in cache.
func (s *Schema) Peek(cache *Cache, sql string) (plan *Plan, err error, known bool) {
	if cache == nil || len(sql) > maxCachedSQL {
		return nil, nil, false
	}
	return cache.get(s, sql)
}

func (s *Schema) analyzeShape(cache *Cache, sql string, build bool) (*ShapePlan, []Literal, bool) {
	key, lits, ok := shapeOf(sql)
	if !ok || len(lits) == 0 || cache == nil || len(key) > maxCachedSQL {
		return nil, nil, true
	}
	// The tenancy checks read string constants (a function argument that
	// is SQL, a routine body): a shape has none left, so a text whose
	// constants mention the setting, set_config or pg_settings is the
	// exact path's to judge.
	setting := asciiLower(s.setting)
	for _, lit := range lits {
		if mentionsTenancy(lit.Value, setting) {
			return nil, nil, true
		}
	}
	sp, found := cache.getShape(s, key)
	if !found {
		if !build {
			return nil, nil, false
		}
		sp = s.buildShape(key)
		cache.putShape(s, key, sp)
	}
	if sp == nil || sp.maxParam() > len(lits) {
		return nil, nil, true
	}
	// A number bound for a declared column has a type of its own, which
	// the shape's parameter lost: the exact path checks it against the
	// column's (checkValueType).
	for _, p := range sp.Plan.Params {
		if p.Kind == ParamPlain || strings.HasPrefix(lits[p.Param-1].Text, "'") {
			continue
		}
		// A number cast to a string or number type keeps its text, but
		// for a decimal one cast to an integer type (1.5::int4 is 2),
		// which the exact path refuses (checkCasts).
		if isIntType(sp.cast[p.Param]) && !isIntegerText(lits[p.Param-1].Text) {
			return nil, nil, true
		}
		// For a string column, cast or not, PostgreSQL takes a number's
		// output text: only a number written that way is the text the
		// shape seals or indexes (1e3::text is 1000, 007.50 is 7.50),
		// the rest is the exact path's to refuse (checkType, checkCasts).
		typ := p.Column.Column.Type
		if typeFamilies[typ] == "string" && !numberTextIsPG(lits[p.Param-1].Value) {
			return nil, nil, true
		}
		if f := typeFamilies[sp.cast[p.Param]]; f == "string" || f == "number" {
			continue
		}
		// Written (data), a number fits a number or, as its text, a
		// string column; compared (index), only a number column.
		if p.Kind == ParamData && !numberFits(typ, lits[p.Param-1].Value) || p.Kind != ParamData && typeFamilies[typ] != "number" {
			return nil, nil, true
		}
	}
	return sp, lits, true
}

// isIntegerText reports whether a numeric constant's text is digits only
// (the parser's integer or a numeric without point or exponent).
func isIntegerText(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// buildShape analyses a shape; nil means the exact path must decide.
func (s *Schema) buildShape(key string) *ShapePlan {
	plan, err := s.Analyze(key)
	if err != nil || len(plan.Slots) > 0 || plan.Copy != nil {
		return nil
	}
	for _, p := range plan.Params {
		if p.Kind == ParamIndexArray {
			return nil
		}
	}
	if plan.Passthrough {
		return &ShapePlan{Plan: plan}
	}
	if plan.Statements > 1 {
		// Statements the rewriter left alone keep the key's own $n, which
		// number the literals, while rewritten ones number Params: one
		// text cannot be rendered by one numbering.
		return nil
	}
	text := strings.Join(plan.Segments, "")
	sp := &ShapePlan{Plan: plan, cast: castParams(key)}
	last := 0
	ok := scanParams(text, func(start, end, n int) bool {
		if n < 1 || n > len(plan.Params) {
			return false
		}
		sp.Parts = append(sp.Parts, text[last:start])
		sp.Refs = append(sp.Refs, n-1)
		last = end
		return true
	})
	if !ok {
		return nil
	}
	sp.Parts = append(sp.Parts, text[last:])
	return sp
}

// castParams returns the type each parameter of text is cast to with ::
// right after it (the last part of a qualified name, lower-cased).
func castParams(text string) map[int]string {
	cast := map[int]string{}
	scanParams(text, func(_, end, n int) bool {
		rest := strings.TrimLeft(text[end:], " \t\r\n")
		if !strings.HasPrefix(rest, "::") {
			return true
		}
		rest = strings.TrimLeft(rest[2:], " \t\r\n")
		i := 0
		for i < len(rest) && (isIdentByte(rest[i]) || rest[i] == '.') && rest[i] != '$' {
			i++
		}
		name := asciiLower(rest[:i])
		cast[n] = name[strings.LastIndexByte(name, '.')+1:]
		return true
	})
	return cast
}

func (sp *ShapePlan) maxParam() int {
	m := 0
	for _, p := range sp.Plan.Params {
		m = max(m, p.Param)
	}
	return m
}

// shapeOf replaces the constants of sql with $1, $2, ... and returns them.
// ok is false when sql holds anything the lexer is not sure about.
func shapeOf(sql string) (key string, lits []Literal, ok bool) {
	numbers := !hasPositionalClause(sql)
	var b strings.Builder
	b.Grow(len(sql))
	i := 0
	for i < len(sql) {
		c := sql[i]
		switch {
		case c == '-' && i+1 < len(sql) && sql[i+1] == '-':
			end := strings.IndexByte(sql[i:], '\n')
			if end < 0 {
				end = len(sql) - i
			}
			b.WriteString(sql[i : i+end])
			i += end
		case c == '/' && i+1 < len(sql) && sql[i+1] == '*':
			end, ok := blockCommentEnd(sql, i)
			if !ok {
				return "", nil, false
			}
			b.WriteString(sql[i:end])
			i = end
		case c == '"':
			j := i + 1
			for {
				if j >= len(sql) {
					return "", nil, false
				}
				if sql[j] == '"' {
					if j+1 < len(sql) && sql[j+1] == '"' {
						j += 2
						continue
					}
					break
				}
				j++
			}
			b.WriteString(sql[i : j+1])
			i = j + 1
		case c == '\'':
			if i > 0 && (isIdentByte(sql[i-1]) || sql[i-1] == '&') {
				return "", nil, false // E'', B'', X'', N'', U&''
			}
			var val strings.Builder
			j := i + 1
			for {
				if j >= len(sql) {
					return "", nil, false
				}
				if sql[j] == '\\' {
					return "", nil, false // meaning depends on standard_conforming_strings
				}
				if sql[j] == '\'' {
					if j+1 < len(sql) && sql[j+1] == '\'' {
						val.WriteByte('\'')
						j += 2
						continue
					}
					break
				}
				val.WriteByte(sql[j])
				j++
			}
			lits = append(lits, Literal{Text: sql[i : j+1], Value: val.String()})
			b.WriteString("$" + strconv.Itoa(len(lits)))
			i = j + 1
		case c == '$':
			return "", nil, false // a parameter or a dollar quote
		case c >= '0' && c <= '9' || c == '.' && i+1 < len(sql) && sql[i+1] >= '0' && sql[i+1] <= '9':
			if i > 0 && isIdentByte(sql[i-1]) {
				// part of an identifier such as t1
				j := i
				for j < len(sql) && isIdentByte(sql[j]) {
					j++
				}
				if j == i {
					return "", nil, false // ".5" right after an identifier
				}
				b.WriteString(sql[i:j])
				i = j
				continue
			}
			j := numberEnd(sql, i)
			if j < len(sql) && (isIdentByte(sql[j]) || sql[j] == '.') {
				return "", nil, false // 0x1F, 1_000, 1.2.3: not a plain number
			}
			if !numbers {
				b.WriteString(sql[i:j])
			} else {
				lits = append(lits, Literal{Text: sql[i:j], Value: numberValue(sql[i:j])})
				b.WriteString("$" + strconv.Itoa(len(lits)))
			}
			i = j
		case isIdentByte(c):
			j := i
			for j < len(sql) && isIdentByte(sql[j]) {
				j++
			}
			b.WriteString(sql[i:j])
			i = j
		default:
			b.WriteByte(c)
			i++
		}
	}
	return b.String(), lits, true
}

// numberValue is the value of a numeric constant as PostgreSQL's parser
// keeps it: digits that fit in int32 are an integer (000 is 0), anything
// else keeps its text as written.
func numberValue(text string) string {
	if n, err := strconv.ParseInt(text, 10, 32); err == nil {
		return strconv.FormatInt(n, 10)
	}
	return text
}

// numberEnd returns the end of the numeric constant starting at i.
func numberEnd(sql string, i int) int {
	digits := func(j int) int {
		for j < len(sql) && sql[j] >= '0' && sql[j] <= '9' {
			j++
		}
		return j
	}
	j := digits(i)
	if j < len(sql) && sql[j] == '.' {
		j = digits(j + 1)
	}
	if j < len(sql) && (sql[j] == 'e' || sql[j] == 'E') {
		k := j + 1
		if k < len(sql) && (sql[k] == '+' || sql[k] == '-') {
			k++
		}
		if k < len(sql) && sql[k] >= '0' && sql[k] <= '9' {
			j = digits(k)
		}
	}
	return j
}

// blockCommentEnd returns the end of the (possibly nested) comment at i.
func blockCommentEnd(sql string, i int) (int, bool) {
	depth := 0
	for i+1 < len(sql) {
		switch {
		case sql[i] == '/' && sql[i+1] == '*':
			depth++
			i += 2
		case sql[i] == '*' && sql[i+1] == '/':
			depth--
			i += 2
			if depth == 0 {
				return i, true
			}
		default:
			i++
		}
	}
	return 0, false
}

// hasPositionalClause reports whether sql may use numbers as column
// positions (ORDER BY 1, GROUP BY 2, DISTINCT ON (1)). Matches inside
// strings count too: that only keeps numbers out of the shape.
func hasPositionalClause(sql string) bool {
	return ContainsFold(sql, "order") || ContainsFold(sql, "group") || ContainsFold(sql, "distinct")
}

// scanParams calls fn for each $n parameter reference of a deparsed text,
// skipping string constants, quoted identifiers and comments. It returns
// false when fn does, or when the text holds a dollar quote.
func scanParams(text string, fn func(start, end, n int) bool) bool {
	i := 0
	for i < len(text) {
		c := text[i]
		switch {
		case c == '\'':
			j := i + 1
			for j < len(text) {
				if text[j] == '\\' && i > 0 && (text[i-1] == 'E' || text[i-1] == 'e') {
					j += 2
					continue
				}
				if text[j] == '\'' {
					if j+1 < len(text) && text[j+1] == '\'' {
						j += 2
						continue
					}
					break
				}
				j++
			}
			i = j + 1
		case c == '"':
			j := i + 1
			for j < len(text) {
				if text[j] == '"' {
					if j+1 < len(text) && text[j+1] == '"' {
						j += 2
						continue
					}
					break
				}
				j++
			}
			i = j + 1
		case c == '-' && i+1 < len(text) && text[i+1] == '-':
			for i < len(text) && text[i] != '\n' {
				i++
			}
		case c == '/' && i+1 < len(text) && text[i+1] == '*':
			end, ok := blockCommentEnd(text, i)
			if !ok {
				return false
			}
			i = end
		case c == '$' && (i == 0 || !isIdentByte(text[i-1])):
			j := i + 1
			for j < len(text) && text[j] >= '0' && text[j] <= '9' {
				j++
			}
			if j == i+1 {
				return false // a dollar quote
			}
			n, err := strconv.Atoi(text[i+1 : j])
			if err != nil || !fn(i, j, n) {
				return false
			}
			i = j
		case isIdentByte(c):
			for i < len(text) && isIdentByte(text[i]) {
				i++
			}
		default:
			i++
		}
	}
	return true
}
