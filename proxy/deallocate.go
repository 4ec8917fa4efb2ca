package proxy

import (
	"fmt"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/pgcloak/pgcloak/rewrite"
)

// DEALLOCATE and DISCARD ALL in SQL, over either protocol.
//
// A client statement whose Binds pgcloak rewrites lives upstream under a
// name of pgcloak's own (extended.go), so SQL that deallocates the
// client's name must drop pgcloak's statement instead, and the session must
// forget the client's name for it. Drivers evict prepared statements this
// way: psycopg 3 sends DEALLOCATE _pg3_N, through the extended protocol
// (Parse, Bind, Execute of the unnamed statement) unless the connection is
// in pipeline mode.
//
// Both protocols share one reading of the text (readDeallocation) and one
// bookkeeping (deallocated):
//
//   - A simple Query runs when it arrives: handleQuery reads it, updates
//     the session and, for a text that is just DEALLOCATE [PREPARE] name of
//     a statement pgcloak prepared under its own name, sends DEALLOCATE of
//     that name in its place.
//   - A Parse only prepares the text: parsePlain reads it and, for that
//     same kind of text, prepares DEALLOCATE of pgcloak's name under the
//     client's statement name. Nothing is forgotten until an Execute of a
//     portal bound to it, in the order the client sent its messages, which
//     is the order PostgreSQL runs them in, pipelines included. Describe and
//     Close pass through: PostgreSQL answers for the statement it holds,
//     which has the same shape (no parameters, no rows).
//
// The session forgets as it sends, before PostgreSQL says whether the
// statement ran. Forgetting is the safe side (a later Bind of the name gets
// 26000 from PostgreSQL), the same as for Close.

// deallocation is what one DEALLOCATE or DISCARD text drops.
type deallocation struct {
	rewrite.Deallocations
	// target is, for a text that is just DEALLOCATE [PREPARE] name, the
	// statement pgcloak prepared upstream for the client's name, which
	// the text must drop in its place; nil for any other text, and for a
	// name PostgreSQL knows as the client's own (or not at all): such a
	// text goes upstream as it came and PostgreSQL answers.
	target *preparedStatement
}

// mayDeallocate is the cheap pre-check: false means sql deallocates no
// statement.
func mayDeallocate(sql string) bool {
	return containsFold(sql, "deallocate") || containsFold(sql, "discard")
}

// readDeallocation reads what sql deallocates, against the session's
// statements as they are now (client goroutine).
func (s *session) readDeallocation(sql string) *deallocation {
	d := &deallocation{Deallocations: rewrite.ReadDeallocations(sql)}
	if d.Whole {
		if ps := s.statements[d.Names[0]]; ps != nil && ps.upstream != "" && !ps.failed.Load() {
			d.target = ps
		}
	}
	return d
}

// upstreamSQL is the text PostgreSQL runs in place of the client's: a
// DEALLOCATE of the target's upstream name, or "" for the client's text.
func (d *deallocation) upstreamSQL() string {
	if d.target == nil {
		return ""
	}
	return rewrite.DeallocateSQL(d.target.upstream)
}

// deallocated updates the session for a deallocation PostgreSQL is about
// to run (client goroutine). Each name it drops starts a new generation,
// so no shape of its is trusted for a statement later prepared under that
// name (by SQL PREPARE, which the proxy does not see as a Parse).
func (s *session) deallocated(d *deallocation) {
	if d.target != nil && s.statements[d.Names[0]] == d.target {
		delete(s.statements, d.Names[0])
	}
	for _, name := range d.Names {
		s.newGeneration(name)
		delete(s.plainNamed, name)
	}
	if d.All {
		for name := range s.stmtGen {
			if name != "" {
				s.newGeneration(name)
				delete(s.statements, name)
			}
		}
		clear(s.plainNamed)
	}
}

// deallocate keeps the session's view of its prepared statements in step
// with a simple Query that deallocates some, and reports whether it sent
// the text itself: a text that is just DEALLOCATE name of a statement
// pgcloak prepared upstream under its own name drops that one instead.
func (s *session) deallocate(q *pgproto3.Query) (bool, error) {
	d := s.readDeallocation(q.String)
	s.deallocated(d)
	if up := d.upstreamSQL(); up != "" {
		return true, s.upstreamOut.send(&pgproto3.Query{String: up})
	}
	return false, nil
}

// preparedDeallocations follows the client's prepared statements whose
// text deallocates statements, and the portals bound to them, for the
// client goroutine alone.
type preparedDeallocations struct {
	// statements are by the client's statement name; an entry counts
	// only in the generation of the name it was parsed in.
	statements map[string]preparedDeallocation
	// portals are by portal name, from the Bind to the first Execute.
	portals map[string]*deallocation
}

type preparedDeallocation struct {
	gen uint64
	d   *deallocation
}

// parseDeallocation reads a Parse's text for what it deallocates and
// returns the text to prepare upstream in its place, or text (client
// goroutine). Call it once the statement name's generation is the new
// one's.
func (s *session) parseDeallocation(name, text string) string {
	delete(s.deallocs.statements, name)
	if !mayDeallocate(text) {
		return text
	}
	d := s.readDeallocation(text)
	if !d.All && len(d.Names) == 0 {
		return text
	}
	if s.deallocs.statements == nil {
		s.deallocs.statements = make(map[string]preparedDeallocation)
	}
	s.deallocs.statements[name] = preparedDeallocation{gen: s.stmtGen[name], d: d}
	if up := d.upstreamSQL(); up != "" {
		return up
	}
	return text
}

// bindDeallocation records a Bind of portal to stmt (client goroutine).
// Call it for every Bind, refused ones too: the portal it names is
// replaced or lost either way.
func (s *session) bindDeallocation(portal, stmt string) {
	delete(s.deallocs.portals, portal)
	ds, ok := s.deallocs.statements[stmt]
	if !ok || ds.gen != s.stmtGen[stmt] {
		return
	}
	if s.deallocs.portals == nil {
		s.deallocs.portals = make(map[string]*deallocation)
	}
	s.deallocs.portals[portal] = ds.d
}

// executeDeallocation updates the session for an Execute of portal that
// deallocates statements (client goroutine). It refuses, as PostgreSQL
// would refuse it, 26000, an Execute that would drop a statement pgcloak
// prepared under its own name once the client's name no longer stands for
// it (a DEALLOCATE run twice, or after a Close or DEALLOCATE ALL): the
// prepared text names pgcloak's statement, not the client's name.
func (s *session) executeDeallocation(portal string) error {
	d := s.deallocs.portals[portal]
	if d == nil {
		return nil
	}
	delete(s.deallocs.portals, portal) // PostgreSQL runs a utility portal once
	if d.target != nil && (s.statements[d.Names[0]] != d.target || d.target.failed.Load()) {
		return &clientError{code: pgerrcode.InvalidSQLStatementName, msg: fmt.Sprintf("prepared statement %q does not exist", d.Names[0])}
	}
	s.deallocated(d)
	return nil
}

// closeDeallocation forgets a statement or portal the client closed
// (client goroutine).
func (s *session) closeDeallocation(objectType byte, name string) {
	if objectType == 'S' {
		delete(s.deallocs.statements, name)
	} else {
		delete(s.deallocs.portals, name)
	}
}
