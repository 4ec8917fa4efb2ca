package proxy

import (
	"strconv"
	"strings"

	"github.com/pgcloak/pgcloak/keystore"
)

// The two plain token forms that skip the parser, read by hand: they are in
// every transaction of a pooled application, and a regular expression over
// a JWT cost 5 % of the proxy's CPU there. Each reader accepts exactly one
// spelling family and reports ok false for anything else, which then goes
// to pg_query: no comment, no escape string, no quoted identifier, no
// character outside ASCII (PostgreSQL's lexer takes ſ or K for identifier
// characters, never for s or k, so only ASCII letters fold).

// plainTokenStatement is text read as a token statement by plainTokenSet or
// plainTokenSetConfig; nil when neither reads it.
func plainTokenStatement(text string) *tokenStmt {
	if local, token, ok := plainTokenSet(text); ok {
		return &tokenStmt{form: tokenSet, local: local, token: token}
	}
	if param, token, local, ok := plainTokenSetConfig(text); ok {
		return &tokenStmt{form: tokenSetConfig, local: local, token: token, param: param}
	}
	return nil
}

// plainTokenSet reads SET [LOCAL|SESSION] pgcloak.tenant_token {=|TO}
// '<token>' with a token of base64url characters and dots (a JWT), between
// any whitespace, and an optional semicolon at the end.
func plainTokenSet(text string) (local bool, token string, ok bool) {
	p := plainScan{s: text}
	p.spaces()
	if !p.word("set") || p.spaces() == 0 {
		return false, "", false
	}
	for _, scope := range [...]string{"local", "session"} {
		at := p.i
		if p.word(scope) && p.spaces() > 0 {
			local = scope == "local"
			break
		}
		p.i = at
	}
	if !p.word(tokenSetting) {
		return false, "", false
	}
	if n := p.spaces(); !p.byte('=') && (n == 0 || !p.word("to")) {
		return false, "", false
	}
	p.spaces()
	token, ok = p.tokenLiteral()
	if !ok {
		return false, "", false
	}
	return local, token, p.end()
}

// plainTokenSetConfig reads SELECT [pg_catalog.]set_config(
// 'pgcloak.tenant_token', $n or '<token>', true|false) between any
// whitespace, with an optional semicolon at the end; param is n (1 to
// 99999), or 0 with the token in the text.
func plainTokenSetConfig(text string) (param int, token string, local bool, ok bool) {
	p := plainScan{s: text}
	p.spaces()
	if !p.word("select") || p.spaces() == 0 {
		return 0, "", false, false
	}
	if at := p.i; p.word("pg_catalog") {
		p.spaces()
		if p.byte('.') {
			p.spaces()
		} else {
			p.i = at
		}
	}
	if !p.word("set_config") {
		return 0, "", false, false
	}
	p.spaces()
	if !p.byte('(') {
		return 0, "", false, false
	}
	p.spaces()
	if !p.word("'" + tokenSetting + "'") {
		return 0, "", false, false
	}
	p.spaces()
	if !p.byte(',') {
		return 0, "", false, false
	}
	p.spaces()
	if p.byte('$') {
		start := p.i
		if p.i < len(p.s) && p.s[p.i] >= '1' && p.s[p.i] <= '9' {
			p.i++
			for p.i < len(p.s) && p.i-start < 5 && isDigit(p.s[p.i]) {
				p.i++
			}
		}
		if p.i == start {
			return 0, "", false, false
		}
		param, _ = strconv.Atoi(p.s[start:p.i])
	} else if token, ok = p.tokenLiteral(); !ok {
		return 0, "", false, false
	}
	p.spaces()
	if !p.byte(',') {
		return 0, "", false, false
	}
	p.spaces()
	switch {
	case p.word("true"):
		local = true
	case p.word("false"):
	default:
		return 0, "", false, false
	}
	p.spaces()
	if !p.byte(')') {
		return 0, "", false, false
	}
	return param, token, local, p.end()
}

// plainScan is a position in a statement's text for the plain readers.
type plainScan struct {
	s string
	i int
}

// spaces skips what PostgreSQL's lexer and RE2's \s both call whitespace
// (space, tab, newline, carriage return, form feed) and reports how much.
func (p *plainScan) spaces() int {
	start := p.i
	for p.i < len(p.s) {
		switch p.s[p.i] {
		case ' ', '\t', '\n', '\r', '\f':
			p.i++
		default:
			return p.i - start
		}
	}
	return p.i - start
}

// word consumes w (lower-case ASCII) in any ASCII case.
func (p *plainScan) word(w string) bool {
	if len(p.s)-p.i < len(w) {
		return false
	}
	for j := 0; j < len(w); j++ {
		c := p.s[p.i+j]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != w[j] {
			return false
		}
	}
	p.i += len(w)
	return true
}

// end reports whether only whitespace is left, with at most one semicolon
// in it (drivers send "...;" as they were given it; the statement is the
// same).
func (p *plainScan) end() bool {
	p.spaces()
	if p.byte(';') {
		p.spaces()
	}
	return p.i == len(p.s)
}

// byte consumes c.
func (p *plainScan) byte(c byte) bool {
	if p.i < len(p.s) && p.s[p.i] == c {
		p.i++
		return true
	}
	return false
}

// tokenLiteral consumes '<token>': base64url characters and dots only, so
// that the literal has no quote, backslash or other character to escape.
func (p *plainScan) tokenLiteral() (string, bool) {
	if !p.byte('\'') {
		return "", false
	}
	start := p.i
	for p.i < len(p.s) && isTokenChar(p.s[p.i]) {
		p.i++
	}
	token := p.s[start:p.i]
	return token, p.byte('\'')
}

func isTokenChar(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || isDigit(c) || c == '_' || c == '.' || c == '-'
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

// literalSQL replaces $1..$n in sql with the values as string literals, in
// one pass, so that no value is scanned for parameters again
// (standard_conforming_strings is on in every session with a tenant: the
// lexer guard holds it there). sql is one of keystore's statements, whose
// only $ are its parameters.
func literalSQL(sql string, values ...string) string {
	var b strings.Builder
	b.Grow(len(sql) + 16*len(values))
	for {
		d := strings.IndexByte(sql, '$')
		if d < 0 {
			b.WriteString(sql)
			return b.String()
		}
		end := d + 1
		for end < len(sql) && isDigit(sql[end]) {
			end++
		}
		b.WriteString(sql[:d])
		if end == d+1 {
			b.WriteByte('$')
		} else {
			i, _ := strconv.Atoi(sql[d+1 : end])
			b.WriteString(keystore.QuoteLiteral(values[i-1]))
		}
		sql = sql[end:]
	}
}
