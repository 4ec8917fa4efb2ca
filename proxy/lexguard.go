package proxy

import (
	"fmt"
	"strings"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5/pgproto3"
)

// The lexer guard (SPEC §5.4). pgcloak reads SQL as pg_query lexes it: UTF8
// text with standard_conforming_strings on. PostgreSQL converts a
// statement from the client encoding before lexing it, and with SJIS, BIG5,
// GBK, GB18030 or UHC the second byte of a character can be a backslash or
// a quote; with standard_conforming_strings off a backslash escapes a quote
// in '...'. Either way PostgreSQL would cut a text into other statements
// than the ones pgcloak analysed. So in a session with a tenant, and in
// every session when tables are declared, a startup parameter or options
// entry that sets either to anything else is refused, and so is every
// statement once PostgreSQL reports (ParameterStatus) that either changed
// anyway: a role or database default, a function that sets it.
//
// Accepted client encodings: UTF8 (any spelling PostgreSQL accepts: UTF8,
// utf-8, Unicode) and SQL_ASCII, which PostgreSQL does not convert: the
// bytes it lexes are the bytes pgcloak read (psql in a C locale asks for
// it).

// lexerParameter reports, for a GUC name, whether it is one the lexer
// guard watches, and if so the refusal reason for value ("" when value is
// accepted).
func lexerParameter(name, value string) (watched bool, reason string) {
	switch strings.ToLower(name) {
	case "client_encoding":
		if acceptedClientEncoding(value) {
			return true, ""
		}
		return true, "client_encoding is " + printable(value) + "; pgcloak reads SQL as UTF8"
	case "standard_conforming_strings":
		if boolOn(value) {
			return true, ""
		}
		return true, "standard_conforming_strings is " + printable(value) + "; pgcloak reads SQL with standard_conforming_strings on"
	case "array_nulls":
		// Not reported by ParameterStatus: only startup values are seen.
		if boolOn(value) {
			return true, ""
		}
		return true, "array_nulls is " + printable(value) + "; pgcloak reads arrays with array_nulls on"
	}
	return false, ""
}

// acceptedClientEncoding reports whether an encoding name is UTF8 or
// SQL_ASCII as PostgreSQL resolves names (clean_encoding_name in
// src/common/encnames.c: only letters and digits count, case-insensitively;
// "unicode" is UTF8).
func acceptedClientEncoding(name string) bool {
	var b strings.Builder
	for _, c := range strings.ToLower(name) {
		if c >= 'a' && c <= 'z' || c >= '0' && c <= '9' {
			b.WriteRune(c)
		}
	}
	switch b.String() {
	case "utf8", "unicode", "sqlascii":
		return true
	}
	return false
}

// boolOn reports whether PostgreSQL's parse_bool reads value as true
// (src/backend/utils/adt/bool.c: a prefix of true or yes, on, or 1, in any
// case). Anything else is off or invalid.
func boolOn(value string) bool {
	v := strings.ToLower(value)
	switch {
	case v == "":
		return false
	case strings.HasPrefix("true", v), strings.HasPrefix("yes", v):
		return true
	}
	return v == "on" || v == "1"
}

// printable quotes a parameter value for a refusal message: it is a
// setting value, not data, but it is shown bounded and quoted.
func printable(v string) string {
	if len(v) > 32 {
		v = v[:32] + "..."
	}
	return fmt.Sprintf("%q", v)
}

// checkLexerParameters refuses startup parameters, and options entries,
// that set client_encoding or standard_conforming_strings to a value the
// lexer guard does not accept.
func checkLexerParameters(params map[string]string) error {
	check := func(where, name, value string) error {
		if _, reason := lexerParameter(name, value); reason != "" {
			return &clientError{
				code:  pgerrcode.FeatureNotSupported,
				msg:   fmt.Sprintf("%s: %s; connect with client_encoding=UTF8, standard_conforming_strings on and array_nulls on", where, reason),
				fatal: true,
			}
		}
		return nil
	}
	for k, v := range params {
		if k == "options" {
			for _, kv := range optionSettings(v) {
				if err := check("startup options", kv[0], kv[1]); err != nil {
					return err
				}
			}
			continue
		}
		if err := check("startup parameter", k, v); err != nil {
			return err
		}
	}
	return nil
}

// optionSettings returns the name=value settings a StartupMessage's
// options parameter makes, read as PostgreSQL reads it: split at unescaped
// white space, a backslash taking the next byte literally (pg_split_opts
// in src/backend/utils/init/postinit.c), then parsed with getopt and the
// backend's option letters (process_postgres_switches in
// src/backend/tcop/postgres.c), where -c NAME=VALUE and --NAME=VALUE set a
// GUC and a dash in NAME means an underscore. glibc's getopt permutes, so
// options after other arguments count; "--" ends them. A malformed entry
// makes PostgreSQL refuse the login, so what this returns for one does not
// matter.
func optionSettings(options string) [][2]string {
	var args []string
	var cur []byte
	escaped, in := false, false
	for i := 0; i < len(options); i++ {
		c := options[i]
		if !escaped && isCSpace(c) {
			if in {
				args = append(args, string(cur))
				cur, in = cur[:0], false
			}
			continue
		}
		in = true
		if !escaped && c == '\\' {
			escaped = true
			continue
		}
		escaped = false
		cur = append(cur, c)
	}
	if in {
		args = append(args, string(cur))
	}

	// Option letters that take an argument, from the optstring
	// "B:bC:c:D:d:EeFf:h:ijk:lN:nOPp:r:S:sTt:v:W:-:".
	const withArg = "BCcDdfhkNprStvW-"
	var out [][2]string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			break
		}
		if len(a) < 2 || a[0] != '-' {
			continue
		}
		for j := 1; j < len(a); j++ {
			if strings.IndexByte(withArg, a[j]) < 0 {
				continue
			}
			arg := a[j+1:]
			if arg == "" && i+1 < len(args) {
				i++
				arg = args[i]
			}
			if a[j] == 'c' || a[j] == '-' {
				name, value, _ := strings.Cut(arg, "=")
				out = append(out, [2]string{strings.ReplaceAll(name, "-", "_"), value})
			}
			break
		}
	}
	return out
}

// isCSpace is isspace in the C locale.
func isCSpace(c byte) bool {
	return c == ' ' || c >= '\t' && c <= '\r'
}

// noteParameterStatus records a ParameterStatus from upstream: when it
// reports client_encoding or standard_conforming_strings at a value the
// lexer guard does not accept, every later statement of the session is
// refused (see refuseUnlexable).
func (s *session) noteParameterStatus(m *pgproto3.ParameterStatus) {
	if !s.lexGuard {
		return
	}
	if watched, reason := lexerParameter(m.Name, m.Value); watched && reason != "" {
		s.unlexable.CompareAndSwap(nil, &reason)
	}
}

// refuseUnlexable refuses msg when upstream has reported a client_encoding
// or standard_conforming_strings that makes PostgreSQL lex SQL otherwise
// than pgcloak: statements, binds and executions, in either protocol, are
// refused with 0A000 before any byte of them reaches PostgreSQL, until the
// session ends. A statement that sets the value back is SQL too, lexed the
// way pgcloak cannot follow, so nothing is let through. It reports whether
// msg was refused.
func (s *session) refuseUnlexable(msg pgproto3.FrontendMessage) (bool, error) {
	reason := s.unlexable.Load()
	if reason == nil {
		return false, nil
	}
	err := &clientError{
		code: pgerrcode.FeatureNotSupported,
		msg:  *reason + " and refuses statements until the session ends; reconnect with client_encoding=UTF8 and standard_conforming_strings on",
	}
	switch m := msg.(type) {
	case *pgproto3.Query:
		s.copyIn, s.dropCopy = nil, false
		s.track(m)
		return true, s.refuse(err)
	case *pgproto3.FunctionCall:
		s.copyIn, s.dropCopy = nil, false
		s.expect(pendQuery) // the refusal goes upstream as a Query
		return true, s.refuse(err)
	case *pgproto3.Parse, *pgproto3.Bind, *pgproto3.Execute:
		return true, s.refuseExtended(err)
	}
	return false, nil
}
