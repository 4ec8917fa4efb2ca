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
// It is meant for the refusal path only: it parses the text once per
// statement.
func (s *Schema) RefusedPrefix(cache *Cache, sql string) (*Plan, error) {
	whole, err := s.Cached(cache, sql)
	if err == nil {
		return whole, nil
	}
	var r *Refusal
	if !errors.As(err, &r) || r.kind == kindSyntax {
		return nil, err
	}
	stmts, serr := pg_query.SplitWithParser(sql, false)
	if serr != nil || len(stmts) < 2 {
		return nil, err
	}
	for k := range stmts {
		if _, kerr := s.Cached(cache, stmts[k]); kerr != nil {
			if k == 0 {
				return nil, kerr
			}
			prefix, perr := s.Cached(cache, strings.Join(stmts[:k], ";"))
			if perr != nil {
				return nil, perr
			}
			return prefix, kerr
		}
	}
	// Every statement passes alone but not together; refuse it all.
	return nil, err
}
