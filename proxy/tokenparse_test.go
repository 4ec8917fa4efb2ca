package proxy

import (
	"regexp"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"

	pg_query "github.com/pganalyze/pg_query_go/v5"
	"github.com/pgcloak/pgcloak/keystore"
)

// TestParseTokenStatementAgrees: the fast path for the plain SET form
// recognises exactly what PostgreSQL's grammar (pg_query) does, and
// leaves every other text to the parser.
func TestParseTokenStatementAgrees(t *testing.T) {
	for _, text := range []string{
		`SET LOCAL pgcloak.tenant_token = 'eyJh.eyJz.sig-_'`,
		`set local pgcloak.tenant_token='a.b.c'`,
		` SET  SESSION  pgcloak.tenant_token  TO  'a.b.c' `,
		"\nSET\tpgcloak.tenant_token\n=\n'abc'\n",
		`SET pgcloak.tenant_token TO''`,
		`SET LOCAL pgcloak.tenant_token = 'ab''c'`,
		`SET LOCAL pgcloak.tenant_token = E'a\x62c'`,
		`SET LOCAL pgcloak.tenant_token = /* c */ 'abc'`,
		`SET LOCAL pgcloak . tenant_token = 'abc'`,
		`SET LOCAL "pgcloak".tenant_token = 'abc'`,
		`SET LOCAL pgcloak.tenant_token = U&'abc'`,
		`SET LOCAL pgcloak.tenant_token = 'a b'`,
		`SET LOCAL pgcloak.tenant_tokens = 'abc'`,
		`RESET pgcloak.tenant_token`,
		`SET LOCAL pgcloak.tenant_token TO DEFAULT`,
		`SELECT pg_catalog.set_config('pgcloak.tenant_token', 'abc', true)`,
		`select set_config('pgcloak.tenant_token', $1, true)`,
		` SELECT pg_catalog . set_config ( 'PGCLOAK.TENANT_TOKEN' , $12 , FALSE ) `,
		`SELECT pg_catalog.set_config('pgcloak.tenant_token', 'a.b-c_d', false)`,
		`SELECT pg_catalog.set_config('pgcloak.tenant_token', $1::text, true)`,
		`SELECT pg_catalog.set_config('pgcloak.tenant_token', $1, true) AS x`,
		`SELECT pg_catalog.set_config('pgcloak.tenant_token', $1, 't')`,
		`SELECT pg_catalog.set_config('pgcloak.tenant_token', 'a''b', true)`,
		`SELECT pg_catalog.set_config('pgcloak.tenant_token', $1, true), 1`,
		`SELECT "set_config"('pgcloak.tenant_token', $1, true)`,
		`SELECT pg_catalog.set_config('pgcloak.tenant_token', $1, true) FROM t`,
		`SELECT pg_catalog.set_config('pgcloak.tenant_token', $1, true);`,
		"SET LOCAL pgcloak.tenant_token = 'a.b.c' ;\n",
	} {
		fast, fastErr := parseTokenStatement(text)
		var want *tokenStmt
		var wantErr error
		res, err := pg_query.Parse(text)
		if err != nil || len(res.Stmts) != 1 {
			t.Errorf("%q: pg_query: %v", text, err)
			continue
		}
		want, wantErr = tokenStatement(res.Stmts[0].Stmt)
		if (fastErr == nil) != (wantErr == nil) {
			t.Errorf("%q: error %v, the parser's %v", text, fastErr, wantErr)
			continue
		}
		if (fast == nil) != (want == nil) || fast != nil && *fast != *want {
			t.Errorf("%q: got %+v, the parser's %+v", text, fast, want)
		}
		if _, _, ok := plainTokenSet(text); ok && (want == nil || want.form != tokenSet) {
			t.Errorf("%q: the fast path took a text the parser does not read as SET", text)
		}
		if _, _, _, ok := plainTokenSetConfig(text); ok && (want == nil || want.form != tokenSetConfig) {
			t.Errorf("%q: the fast path took a text the parser does not read as set_config", text)
		}
	}
	// The fast path is taken for the usual forms.
	for _, text := range []string{`SELECT pg_catalog.set_config('pgcloak.tenant_token', $1, true)`, `select set_config('pgcloak.tenant_token', 'a.b.c', false)`} {
		if _, _, _, ok := plainTokenSetConfig(text); !ok {
			t.Errorf("%q: not on the fast path", text)
		}
	}
	for _, text := range []string{`SET LOCAL pgcloak.tenant_token = 'a.b.c'`, `set pgcloak.tenant_token to 'a.b.c'`} {
		if _, _, ok := plainTokenSet(text); !ok {
			t.Errorf("%q: not on the fast path", text)
		}
	}
}

// The regular expressions the plain readers replaced: the reference for
// what they accept, except that (?i) also folds ſ and K (Kelvin) into s
// and k, which PostgreSQL's lexer does not, and that the readers also take
// one semicolon at the end (the expressions see the text without it).
var (
	trailingSemicolon     = regexp.MustCompile(`(?s)^(.*);[\t\n\f\r ]*$`)
	plainTokenSetRE       = regexp.MustCompile(`(?i)^\s*SET\s+(?:(LOCAL|SESSION)\s+)?pgcloak\.tenant_token(?:\s*=|\s+TO)\s*'([A-Za-z0-9_.-]*)'\s*$`)
	plainTokenSetConfigRE = regexp.MustCompile(`(?i)^\s*SELECT\s+(?:pg_catalog\s*\.\s*)?set_config\s*\(\s*'pgcloak\.tenant_token'\s*,\s*(?:\$([1-9][0-9]{0,4})|'([A-Za-z0-9_.-]*)')\s*,\s*(true|false)\s*\)\s*$`)
)

// checkPlainAgainstRE fails when a plain reader and its regular expression
// disagree on text: on whether it matches (for ASCII text) or on what it
// reads.
func checkPlainAgainstRE(t *testing.T, text string) {
	t.Helper()
	ascii := true
	for i := 0; i < len(text); i++ {
		if text[i] >= utf8.RuneSelf {
			ascii = false
		}
	}
	ref := text
	if m := trailingSemicolon.FindStringSubmatch(text); m != nil {
		ref = m[1]
	}
	local, token, ok := plainTokenSet(text)
	if m := plainTokenSetRE.FindStringSubmatch(ref); m != nil {
		if ascii && !ok {
			t.Errorf("%q: the expression reads SET, plainTokenSet does not", text)
		} else if ok && (local != strings.EqualFold(m[1], "local") || token != m[2]) {
			t.Errorf("%q: plainTokenSet read local %v token %q, the expression %q %q", text, local, token, m[1], m[2])
		}
	} else if ok {
		t.Errorf("%q: plainTokenSet reads SET, the expression does not", text)
	}
	param, token, local, ok := plainTokenSetConfig(text)
	if m := plainTokenSetConfigRE.FindStringSubmatch(ref); m != nil {
		wantParam := 0
		if m[1] != "" {
			wantParam, _ = strconv.Atoi(m[1])
		}
		if ascii && !ok {
			t.Errorf("%q: the expression reads set_config, plainTokenSetConfig does not", text)
		} else if ok && (param != wantParam || token != m[2] || local != strings.EqualFold(m[3], "true")) {
			t.Errorf("%q: plainTokenSetConfig read %d %q %v, the expression %q %q %q", text, param, token, local, m[1], m[2], m[3])
		}
	} else if ok {
		t.Errorf("%q: plainTokenSetConfig reads set_config, the expression does not", text)
	}
}

var plainSeeds = []string{
	`SET LOCAL pgcloak.tenant_token = 'eyJh.eyJz.sig-_'`,
	`set local pgcloak.tenant_token='a.b.c'`,
	` SET  SESSION  pgcloak.tenant_token  TO  'a.b.c' `,
	"\nSET\tpgcloak.tenant_token\n=\n'abc'\n",
	"\fSET\rLOCAL\rpgcloak.tenant_token\f=\f'abc'\f",
	`SET pgcloak.tenant_token TO''`,
	`SET pgcloak.tenant_tokenTO'x'`,
	`SET pgcloak.tenant_token TO'x'`,
	`SET LOCALpgcloak.tenant_token = 'x'`,
	`SET local pgcloak.tenant_token = 'x' ;`,
	`SET SESSION LOCAL pgcloak.tenant_token = 'x'`,
	`SET LOCAL pgcloak.tenant_token = 'ab''c'`,
	`SET LOCAL pgcloak.tenant_token = 'a b'`,
	`SET LOCAL pgcloak.tenant_token = 'abc`,
	`SET LOCAL pgcloak.tenant_token = abc`,
	"SET LOCAL pgcloak.tenant_token = 'abc'\v",
	"ſet LOCAL pgcloak.tenant_token = 'x'",
	"SET LOCAL pgcloak.tenant_to\u212aen = 'x'",
	`SELECT pg_catalog.set_config('pgcloak.tenant_token', 'abc', true)`,
	`select set_config('pgcloak.tenant_token', $1, true)`,
	` SELECT pg_catalog . set_config ( 'PGCLOAK.TENANT_TOKEN' , $12 , FALSE ) `,
	`SELECT pg_catalog set_config('pgcloak.tenant_token', $1, true)`,
	`SELECT pg_catalogset_config('pgcloak.tenant_token', $1, true)`,
	`SELECT set_config('pgcloak.tenant_token', $99999, true)`,
	`SELECT set_config('pgcloak.tenant_token', $100000, true)`,
	`SELECT set_config('pgcloak.tenant_token', $0, true)`,
	`SELECT set_config('pgcloak.tenant_token', $01, true)`,
	`SELECT set_config('pgcloak.tenant_token', $, true)`,
	`SELECT set_config('pgcloak.tenant_token', $1, truex)`,
	`SELECT set_config('pgcloak.tenant_token', $1, true) x`,
	`SELECTset_config('pgcloak.tenant_token', $1, true)`,
	`SELECT pg_catalog.set_config('pgcloak.tenant_token', $1, true);`,
	"SET LOCAL pgcloak.tenant_token = 'a.b.c' ;\n",
	`SET LOCAL pgcloak.tenant_token = 'a.b.c';;`,
	`SET LOCAL pgcloak.tenant_token = 'a.b.c'; SELECT 1`,
	`SET LOCAL pgcloak.tenant_token = 'a.b;c'`,
}

// TestPlainReadersAgreeWithExpressions: the hand-written readers accept
// what the regular expressions they replaced accepted (ASCII text), read
// the same parts, and accept nothing else.
func TestPlainReadersAgreeWithExpressions(t *testing.T) {
	for _, text := range plainSeeds {
		checkPlainAgainstRE(t, text)
	}
	// Variations of the accepted forms: every whitespace, case and scope.
	for _, ws := range []string{" ", "\t", "\n\r", "  \f"} {
		for _, scope := range []string{"", "LOCAL" + ws, "session" + ws, "Local" + ws} {
			for _, eq := range []string{"=", ws + "=", ws + "TO" + ws, ws + "to"} {
				checkPlainAgainstRE(t, ws+"SeT"+ws+scope+"PgCloak.Tenant_Token"+eq+"'a.B-c_9'"+ws)
			}
		}
		for _, arg := range []string{"$7", "'a.b'", "''"} {
			for _, b := range []string{"true", "FALSE"} {
				checkPlainAgainstRE(t, "SELECT"+ws+"pg_catalog"+ws+"."+ws+"set_config"+ws+"("+ws+"'pgcloak.TENANT_token'"+ws+","+ws+arg+ws+","+ws+b+ws+")"+ws)
			}
		}
	}
	// The readers fold ASCII only: these go to the parser, which reads no
	// SET in them.
	for _, text := range []string{"ſet LOCAL pgcloak.tenant_token = 'x'", "SET LOCAL pgcloak.tenant_to\u212aen = 'x'"} {
		if !plainTokenSetRE.MatchString(text) {
			t.Fatalf("%q: the expression no longer folds it; drop this case", text)
		}
		if _, _, ok := plainTokenSet(text); ok {
			t.Errorf("%q: plainTokenSet took a text whose letters PostgreSQL does not fold", text)
		}
	}
}

// FuzzPlainReaders: on any text, the plain readers agree with the
// expressions they replaced.
func FuzzPlainReaders(f *testing.F) {
	for _, s := range plainSeeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, text string) { checkPlainAgainstRE(t, text) })
}

// TestLiteralSQL: the pin statements come out with every parameter as a
// string literal, in one pass (a value that looks like $1 stays as it is).
func TestLiteralSQL(t *testing.T) {
	paramRef := regexp.MustCompile(`\$[0-9]+`)
	reference := func(sql string, values ...string) string {
		return paramRef.ReplaceAllStringFunc(sql, func(ref string) string {
			i, _ := strconv.Atoi(ref[1:])
			return keystore.QuoteLiteral(values[i-1])
		})
	}
	values := []string{"acme", "v1:0:n'o$2", "7", "12", "mac$1", "app.tenant_id", keystore.ProofSetting}
	for _, sql := range []string{
		keystore.NextStatement(true, `"a"`),
		keystore.NextStatement(false, `"pgcloak:pin:x:"`),
		keystore.ClearStatement(`"b"`),
		"no parameters",
		"$",
		"a $ b $7$1",
	} {
		got, want := literalSQL(sql, values...), reference(sql, values...)
		if got != want {
			t.Errorf("literalSQL(%q):\n got %s\nwant %s", sql, got, want)
		}
	}
	if got := literalSQL("SELECT $1, $2", "it's", "$1"); got != `SELECT 'it''s', '$1'` {
		t.Errorf("literalSQL scanned a value again or quoted wrongly: %s", got)
	}
}

// TestTokenQueryPlainNeedsNoSplit: a text that is one plain token statement
// gives tokenQuery the piece that splitting it with the parser gives (the
// trailing semicolon sends the same statement down that path).
func TestTokenQueryPlainNeedsNoSplit(t *testing.T) {
	n := 0
	for _, text := range plainSeeds {
		if plainTokenStatement(text) == nil {
			continue
		}
		n++
		fast, err := tokenQuery(text)
		if err != nil {
			t.Fatalf("%q: %v", text, err)
		}
		split, err := tokenQuery(text + ";")
		if err != nil {
			t.Fatalf("%q + ';': %v", text, err)
		}
		if len(fast) != 1 || len(split) != 1 || fast[0].token == nil || split[0].token == nil || *fast[0].token != *split[0].token || fast[0].text != split[0].text {
			t.Errorf("%q: tokenQuery gave %+v, split by the parser %+v", text, fast, split)
		}
	}
	if n < 5 {
		t.Fatalf("only %d seeds are plain token statements", n)
	}
}
