package rewrite

import (
	"strings"

	pg_query "github.com/pganalyze/pg_query_go/v5"
)

// Deallocations is what a simple-protocol text drops of the session's
// prepared statements. The proxy keeps its own view of them (rewritten
// statements, row shapes by statement name), which must follow.
type Deallocations struct {
	// Names are the statements DEALLOCATE [PREPARE] name drops, in order.
	Names []string
	// Whole: the text is exactly one DEALLOCATE name (Names[0]). Drivers
	// that evict prepared statements with SQL (psycopg 3 does) send it so;
	// a statement pgcloak prepared upstream under a name of its own must
	// be dropped by that name instead.
	Whole bool
	// All: DEALLOCATE ALL or DISCARD ALL, which drop every statement. A
	// text that does not parse counts too: forgetting statements is the
	// safe side (a Bind of a forgotten name fails upstream).
	All bool
}

// ReadDeallocations parses sql once for what it deallocates. Call it only
// for texts that mention DEALLOCATE or DISCARD.
func ReadDeallocations(sql string) Deallocations {
	tree, err := pg_query.Parse(sql)
	if err != nil {
		lower := strings.ToLower(sql)
		return Deallocations{All: strings.Contains(lower, "deallocate") || strings.Contains(lower, "discard")}
	}
	var d Deallocations
	for _, raw := range tree.Stmts {
		switch n := raw.GetStmt(); {
		case n.GetDeallocateStmt() != nil && n.GetDeallocateStmt().Name == "":
			d.All = true
		case n.GetDeallocateStmt() != nil:
			d.Names = append(d.Names, n.GetDeallocateStmt().Name)
		case n.GetDiscardStmt() != nil && n.GetDiscardStmt().Target == pg_query.DiscardMode_DISCARD_ALL:
			d.All = true
		}
	}
	d.Whole = len(tree.Stmts) == 1 && len(d.Names) == 1
	return d
}

// DeallocateSQL is the DEALLOCATE statement that drops the named statement.
func DeallocateSQL(name string) string { return "DEALLOCATE " + quoteIdent(name) }
