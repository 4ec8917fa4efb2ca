package rewrite

import (
	"strings"

	pg_query "github.com/pganalyze/pg_query_go/v5"
)

// Deallocation reads sql as one DEALLOCATE [PREPARE] name statement. It
// returns the statement name it drops, and ok false for anything else
// (DEALLOCATE ALL, several statements, other SQL, SQL that does not parse).
//
// Drivers that evict prepared statements with SQL (psycopg 3 does) name the
// statement as they prepared it; a session whose statement pgcloak prepared
// upstream under a name of its own must send that name instead.
func Deallocation(sql string) (name string, ok bool) {
	tree, err := pg_query.Parse(sql)
	if err != nil || len(tree.Stmts) != 1 {
		return "", false
	}
	d := tree.Stmts[0].GetStmt().GetDeallocateStmt()
	if d == nil || d.Name == "" {
		return "", false
	}
	return d.Name, true
}

// DeallocateSQL is the DEALLOCATE statement that drops the named statement.
func DeallocateSQL(name string) string { return "DEALLOCATE " + quoteIdent(name) }

// DropsAllStatements reports whether sql holds DEALLOCATE ALL or DISCARD
// ALL, which drop every prepared statement of the session. SQL that does
// not parse counts when it mentions either: forgetting statements is the
// safe side (a Bind of a forgotten name fails upstream).
func DropsAllStatements(sql string) bool {
	tree, err := pg_query.Parse(sql)
	if err != nil {
		lower := strings.ToLower(sql)
		return strings.Contains(lower, "deallocate") || strings.Contains(lower, "discard")
	}
	for _, raw := range tree.Stmts {
		switch n := raw.GetStmt(); {
		case n.GetDeallocateStmt() != nil && n.GetDeallocateStmt().Name == "":
			return true
		case n.GetDiscardStmt() != nil && n.GetDiscardStmt().Target == pg_query.DiscardMode_DISCARD_ALL:
			return true
		}
	}
	return false
}
