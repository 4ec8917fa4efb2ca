package rewrite

import (
	"errors"
	"strings"

	pg_query "github.com/pganalyze/pg_query_go/v5"
)

// RefusedPrefix explains a refused multi-statement text the way PostgreSQL
// would execute it: statements before the refused one run, then the error
// aborts the rest. It returns the plan of the statements before the first
// refused statement (nil when the first statement is refused or the text
// does not parse — PostgreSQL parses a whole simple query before running any
// of it) together with that statement's refusal.
//
// check, when not nil, is what the caller refuses in an analysed plan
// (the session's judgement of Plan.RoleChanges, Opaque, LexerChange): a
// statement whose plan it refuses counts as refused with its error.
//
// It is meant for the refusal path only: it parses the text once per
// statement.
func (s *Schema) RefusedPrefix(cache *Cache, sql string, check func(*Plan) error) (*Plan, error) {
	analyse := func(text string) (*Plan, error) {
		p, err := s.Cached(cache, text)
		if err == nil && check != nil {
			err = check(p)
		}
		return p, err
	}
	whole, err := analyse(sql)
	if err == nil {
		return whole, nil
	}
	var r *Refusal
	if errors.As(err, &r) && r.kind == kindSyntax {
		return nil, err
	}
	stmts, serr := pg_query.SplitWithParser(sql, false)
	if serr != nil || len(stmts) < 2 {
		return nil, err
	}
	for k := range stmts {
		if _, kerr := analyse(stmts[k]); kerr != nil {
			if k == 0 {
				return nil, kerr
			}
			prefix, perr := analyse(strings.Join(stmts[:k], ";"))
			if perr != nil {
				return nil, perr
			}
			return prefix, kerr
		}
	}
	// Every statement passes alone but not together; refuse it all.
	return nil, err
}
