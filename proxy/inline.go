package proxy

import (
	"encoding/binary"
	"errors"
	"strings"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/pgcloak/pgcloak/rewrite"
)

// The tests by which the relay loop decides, message by message, whether it
// may hand a message of a session under tenancy to the session's handlers
// on its own thread (tenantloop_linux.go), or must give the session back to
// its goroutines first.

// inlineClient reports whether the loop may hand msg to the session's
// handlers: whether they will forward it without waiting for anything
// (an answer from upstream, the catalog) and without parsing it. Statements
// that need analysis, Binds that need keys, are handed over too: their
// handlers give up before they change anything (errLoopWouldWait) when a
// plan or a key is not cached.
func (s *session) inlineClient(msg pgproto3.FrontendMessage) bool {
	if s.repin.pending || s.copyIn != nil || s.unlexable.Load() != nil {
		return false
	}
	if s.tokens && s.tok.clearOwed {
		return false // a pin to clear: upstream's answers
	}
	if s.tokens && s.tok.awaitExec != nil {
		// A token statement's portal is bound: its Describe and its
		// Execute (the pin) run here; anything else, which closes the
		// portal first, goes to the goroutines.
		switch m := msg.(type) {
		case *pgproto3.Describe:
			return m.ObjectType == 'P' && m.Name == ""
		case *pgproto3.Execute:
			return m.Portal == "" && m.MaxRows == 0
		}
		return false
	}
	switch m := msg.(type) {
	case *pgproto3.Bind:
		// A token statement's Bind too: the handler gives up where it
		// would wait (a JWKS fetch).
		return true
	case *pgproto3.Sync, *pgproto3.Flush, *pgproto3.Describe, *pgproto3.Close, *pgproto3.Execute:
		return true
	case *pgproto3.Query:
		// A token session's token statements in a simple Query too: the
		// handler gives up where it would wait (a JWKS fetch).
		return s.loopText(m.String, s.tokens)
	case *pgproto3.Parse:
		// A token statement's Parse too when it is a plain form, which
		// parseToken reads without pg_query; any other text naming the
		// setting is parsed, by the goroutines.
		if strings.HasPrefix(m.Name, reservedPrefix) {
			return false
		}
		if s.tokens && containsFold(m.Query, "tenant_token") {
			return plainTokenStatement(m.Query) != nil && s.loopText(m.Query, true)
		}
		return s.loopText(m.Query, false)
	case *pgproto3.CopyData, *pgproto3.CopyDone, *pgproto3.CopyFail:
		return true // no COPY the proxy transforms (copyIn is nil)
	}
	return false // FunctionCall: refused or relayed by the goroutines
}

// loopText reports whether the loop may hand a statement's text to the
// handlers: none of the texts they treat apart (the catalog as declared,
// COPY, statements that redefine or deallocate prepared statements, and
// unless tokens is set tenant tokens), which may wait for upstream.
func (s *session) loopText(sql string, tokens bool) bool {
	if pure(s.decl) {
		return true
	}
	if !tokens && containsFold(sql, "tenant_token") || containsFold(sql, "copy") {
		return false
	}
	if s.scoped && s.decl.views != nil && rewrite.MentionsCatalog(sql) {
		return false
	}
	return !s.decrypts || !(s.decl.tenancyCfg.AllowDynamicSQL || mayRedefine(sql) || mayDeallocate(sql))
}

// inlineUpstream reports whether the loop may hand upstream's message raw
// (whole, not yet decoded) to the session's handler: anything but a
// RowDescription naming a table the catalog has not placed yet or a
// declared column, the rows of a result with declared columns, COPY data
// the proxy transforms, and whatever answers the proxy's own COPY.
func (s *session) inlineUpstream(raw []byte) bool {
	if head := s.pending.peek(); head != nil && (head.kind == pendCopyDescribe || head.copy != nil) {
		return false
	}
	switch raw[0] {
	case 'T':
		return !s.decrypts || s.knownFields(raw[5:])
	case 'd':
		return s.results.copyOut == nil
	}
	return true
}

// knownFields reports whether a RowDescription's body names only columns
// the catalog already placed: shapeOf then does not wait for it. A body it
// cannot read is left to the goroutines, whose decoder says what is wrong
// with it.
func (s *session) knownFields(body []byte) bool {
	if len(body) < 2 {
		return false
	}
	n := int(binary.BigEndian.Uint16(body))
	body = body[2:]
	for range n {
		end := 0
		for end < len(body) && body[end] != 0 {
			end++
		}
		if len(body) < end+1+18 {
			return false
		}
		f := body[end+1:]
		table := binary.BigEndian.Uint32(f)
		attnum := binary.BigEndian.Uint16(f[4:])
		if _, known := s.decl.catalog.peek(columnOrigin{table, attnum}); !known {
			return false
		}
		body = f[18:]
	}
	return true
}

// rowsNeedKeys reports whether the DataRow now arriving belongs to a
// result with declared columns (relay's test, without decrypting).
func (s *session) rowsNeedKeys() bool {
	rs := &s.results
	if rs.suppress {
		return false
	}
	shape := rs.current
	if head := s.pending.peek(); head != nil && head.kind == pendExecute {
		shape = s.portalShape(head.name)
	}
	return shape != nil && shape.any
}

// rawRow reports whether a DataRow that inlineUpstream let through may be
// forwarded without being decoded: the handler would neither take it as
// the answer to a statement of the proxy's own nor change it.
func (s *session) rawRow() bool {
	if s.rowsNeedKeys() || s.tokens && (s.tokUp.cur != nil || s.tokUp.execPending) {
		return false // a tenant pin's row is the proxy's
	}
	s.repin.mu.Lock()
	defer s.repin.mu.Unlock()
	return s.repin.call == nil
}

// errLoopWouldWait is what a handler run on the relay loop's thread returns,
// before it has changed anything, when it would have to wait: the loop
// gives the session back with the message undone.
var errLoopWouldWait = errors.New("relay loop: the handler would wait")
