package rewrite

import "strings"

// alwaysTokens are the texts that make a statement worth parsing whatever the
// declarations say. Each one is there for a reason:
//
//   - set_config, pg_settings: the two ways besides SET to change a setting
//     (pg_settings is an updatable view over set_config);
//   - role, authorization: SET ROLE / SET SESSION AUTHORIZATION and their
//     RESET forms, which the proxy checks against the tenant map;
//   - reset, discard: RESET ALL / DISCARD ALL restore the tenant setting to
//     its startup value, which the proxy wants to know about;
//   - ts_stat, ts_rewrite, crosstab, connectby and query_to_xml (whose
//     name contains _to_xml): functions that run a query given as text (the
//     two before it from tablefunc), which could assemble set_config from
//     pieces;
//   - _to_xml: also table_to_xml, schema_to_xml, database_to_xml,
//     cursor_to_xml and their _xmlschema forms, which return a table's
//     stored rows named by a string, an OID, a schema or a cursor (refused
//     with declared tables: tableExport);
//   - search_path: SET, SET LOCAL, function SET clauses and set_config()
//     of it must not put pg_catalog after another schema (searchPathSet;
//     SET SCHEMA, which does not name it, sets a single schema);
//   - domain, type, rename: CREATE DOMAIN, CREATE TYPE and ALTER ...
//     RENAME, which must not make a type named like a pg_catalog one where
//     it would be found first (typeShadow);
//   - pin_next, pin_challenge: the pin's functions, refused unqualified too;
//   - u&: Unicode escapes (U&'...' and U&"...") can spell any name without
//     its letters appearing in the text;
//   - a backslash: E'...' escapes (and backslashes in ordinary strings when
//     standard_conforming_strings is off) can do the same;
//   - a NUL byte: never valid in a query; Analyze refuses it.
//   - pgcloak: pgcloak's own statement and portal names (ReservedPrefix),
//     which PREPARE, EXECUTE, DEALLOCATE, DECLARE, FETCH, MOVE and CLOSE
//     must not name; quoted or not, such a name contains the word unless
//     it is spelt with Unicode escapes, which u& catches;
//   - client_encoding, names (SET NAMES), standard_conforming_strings: the
//     settings that decide how PostgreSQL lexes a text (see lexerSet), and
//     array_nulls, which decides how it reads an array's text;
//   - prepare, execute, deallocate: SQL-level prepared statements, which
//     the proxy follows by name (Plan.Prepared).
var alwaysTokens = []string{
	"set_config", "pg_settings", "role", "authorization", "reset", "discard",
	"_to_xml", "search_path", "domain", "type", "rename", "ts_stat", "ts_rewrite", "crosstab", "connectby", "pin_next", "pin_challenge",
	"u&", `\`, "\x00",
	"pgcloak", "client_encoding", "names", "standard_conforming_strings", "array_nulls",
	"prepare", "execute", "deallocate",
}

// tenantWords are the keywords of the statements Plan.Opaque reports,
// matched as whole words by MightNeedTenantAnalysis. Keywords cannot be
// quoted or escaped, and PostgreSQL folds only ASCII letters in them, so
// each statement of an opaque kind shows one of these words in plain ASCII
// letters with no letter or underscore directly before or after it
// (comments, dollar quotes and digits count as separators, which only
// errs towards parsing): DO; CREATE/ALTER FUNCTION, PROCEDURE, ALTER
// ROUTINE; CREATE RULE; CREATE [EVENT|CONSTRAINT] TRIGGER; CREATE
// [MATERIALIZED|RECURSIVE] VIEW; ALTER ROLE/USER/DATABASE ... SET (role is
// an alwaysTokens substring); CREATE FOREIGN TABLE, IMPORT FOREIGN SCHEMA;
// CREATE SUBSCRIPTION; CREATE AGGREGATE, CREATE/ALTER OPERATOR (whose
// functions are named, not called). CREATE CAST calls a function only
// WITH FUNCTION, which the word function catches.
var tenantWords = []string{
	"do", "function", "procedure", "routine", "rule", "trigger", "view",
	"user", "database", "foreign", "subscription", "aggregate", "operator",
}

// buildTokens collects the MightNeedAnalysis tokens: alwaysTokens, every
// declared table name, every index column name and the longest component of
// the tenant setting (a setting name always contains each of its components
// as one identifier, quoted or not, so any one of them is a sound trigger;
// the longest is the most selective).
func (s *Schema) buildTokens() {
	add := func(tok string) {
		tok = asciiLower(tok)
		if tok == "" {
			return
		}
		list := s.byFirst[tok[0]]
		for _, t := range list {
			if t == tok {
				return
			}
		}
		s.byFirst[tok[0]] = append(list, tok)
	}
	for _, t := range alwaysTokens {
		add(t)
	}
	for _, t := range s.tables {
		add(t.name)
		for i := range t.cols {
			if searchable(&t.cols[i]) {
				add(t.cols[i].IndexColumn)
			}
		}
	}
	longest := ""
	for _, part := range strings.Split(s.setting, ".") {
		if len(part) > len(longest) {
			longest = part
		}
	}
	add(longest)
	// Tokens are matched case-insensitively for ASCII letters; index the
	// upper-case first byte too so the scan needs no per-byte folding.
	for c := 'a'; c <= 'z'; c++ {
		s.byFirst[c-'a'+'A'] = s.byFirst[c]
	}
}

// MightNeedAnalysis reports whether sql could need Analyze: whether it
// mentions a declared table, an index column, the tenant setting or any of a
// few tenancy-relevant words (see alwaysTokens). When it returns false the
// text cannot touch a declared column or the tenant and the proxy may forward
// it without parsing. False positives only cost a parse (and the plan cache
// absorbs repeats); a false negative would be a security bug, so every token
// errs on the side of true.
//
// MightNeedAnalysis does not allocate. It matches ASCII letters
// case-insensitively; PostgreSQL folds only ASCII letters in unquoted
// identifiers, and quoted identifiers or strings that differ in non-ASCII
// case name different objects anyway.
func (s *Schema) MightNeedAnalysis(sql string) bool {
	for i := 0; i < len(sql); i++ {
		for _, tok := range s.byFirst[sql[i]] {
			if len(sql)-i >= len(tok) && hasPrefixFold(sql[i:], tok) {
				return true
			}
		}
	}
	return false
}

// MightNeedTenantAnalysis is MightNeedAnalysis for sessions with a tenant:
// it also reports texts that may hold a statement Plan.Opaque would name
// (see tenantWords), which the proxy refuses in those sessions. It does not
// allocate.
func (s *Schema) MightNeedTenantAnalysis(sql string) bool {
	return s.MightNeedAnalysis(sql) || hasTenantWord(sql)
}

// tokenWords are the keywords of the statements Plan.Outlives names, as
// tenantWords are Opaque's: WITH HOLD, TEMP and TEMPORARY (a temporary
// table cannot be made without one of them or the schema pg_temp, which
// is one word here: underscores join words; its real name pg_temp_<n> is
// the word pg_temp_ before a digit). A temporary sequence needs TEMP; a
// type or domain in the temporary schema, or a search_path that puts it
// first so that CREATE TABLE makes a temporary table, needs pg_temp; a
// sequence kept past its ON COMMIT DROP table needs OWNED (BY NONE).
var tokenWords = []string{"hold", "temp", "temporary", "pg_temp", "pg_temp_", "pg_toast_temp_", "owned"}

// MightNeedTokenAnalysis is MightNeedTenantAnalysis for sessions whose
// tenant changes by tenant token: it also reports texts that may hold a
// statement Plan.Outlives would name.
func (s *Schema) MightNeedTokenAnalysis(sql string) bool {
	return s.MightNeedTenantAnalysis(sql) || hasWord(sql, tokenWords)
}

// hasTenantWord reports whether sql holds one of tenantWords as a maximal
// run of ASCII letters and underscores, in any ASCII case.
func hasTenantWord(sql string) bool { return hasWord(sql, tenantWords) }

// hasWord reports whether sql holds one of words as a maximal run of ASCII
// letters and underscores, in any ASCII case.
func hasWord(sql string, words []string) bool {
	for i := 0; i < len(sql); {
		if !isWordByte(sql[i]) {
			i++
			continue
		}
		j := i + 1
		for j < len(sql) && isWordByte(sql[j]) {
			j++
		}
		for _, w := range words {
			if len(w) == j-i && hasPrefixFold(sql[i:j], w) {
				return true
			}
		}
		i = j
	}
	return false
}

func isWordByte(c byte) bool {
	return c == '_' || ('a' <= c && c <= 'z') || ('A' <= c && c <= 'Z')
}

// hasPrefixFold reports whether s starts with tok, where tok is lower-case
// and ASCII letters in s match either case. len(s) >= len(tok).
// ContainsFold reports whether text contains tok, ASCII letters of text
// compared without case, as PostgreSQL folds keywords and unquoted
// identifiers (no Unicode folding: PostgreSQL never reads the Kelvin sign
// as k). tok must be lower-case ASCII. It runs on every statement of a
// session under tenancy, several times: one comparison per byte until the
// first byte of tok matches.
func ContainsFold(text, tok string) bool {
	if tok == "" {
		return true
	}
	lo, up := tok[0], tok[0]
	if 'a' <= lo && lo <= 'z' {
		up = lo - ('a' - 'A')
	}
	for i := 0; i+len(tok) <= len(text); i++ {
		if c := text[i]; (c == lo || c == up) && hasPrefixFold(text[i+1:], tok[1:]) {
			return true
		}
	}
	return false
}

func hasPrefixFold(s, tok string) bool {
	for j := 0; j < len(tok); j++ {
		c := s[j]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != tok[j] {
			return false
		}
	}
	return true
}

// asciiLower lower-cases ASCII letters only, as PostgreSQL's identifier
// folding does.
func asciiLower(s string) string {
	b := []byte(s)
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}
