package proxy

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/pgcloak/pgcloak/coltype"
	"github.com/pgcloak/pgcloak/rewrite"
)

// Extended query protocol on declared columns.
//
// A Parse whose rewrite transforms parameters (encrypts a value bound for a
// declared column, computes a blind index for a search) is prepared
// upstream under a name of the proxy's own, "pgcloak:s<n>", and remembered
// in session.statements under the client's name. Every Bind of it is
// rewritten from the plan: the client's values for declared columns are
// canonicalised for the declared type (whatever format the client sent),
// sealed or indexed under the session tenant's keys and sent as binary
// bytea; plain parameters pass through as they came.
//
// Why a name of our own: a Bind whose values pass through untouched must
// never reach a statement that expects ciphertext. Statements that take
// plain parameters keep the client's names; statements that take
// transformed ones live only under names no client Bind can reach with
// untransformed values (client names with the reserved prefix are
// refused). Forgetting a named entry is therefore always safe: a Bind then
// names a statement PostgreSQL does not have. The unnamed statement keeps
// its name: every Parse of it replaces the entry, in the same order as
// PostgreSQL replaces the statement.

// reservedPrefix starts the names of the proxy's own statements.
const reservedPrefix = rewrite.ReservedPrefix

// raiseStatement is the statement name refusals in the extended protocol
// raise their error through.
const raiseStatement = reservedPrefix + "raise"

// preparedStatement is a client statement whose Binds are transformed.
type preparedStatement struct {
	upstream string // the name PostgreSQL knows it by
	plan     *rewrite.Plan
	// clientOIDs are the parameter types the client's Parse gave (0 or
	// missing: unspecified).
	clientOIDs []uint32
	// nparams is how many parameters the client's statement takes.
	nparams int
	// failed is set by the upstream goroutine when PostgreSQL rejected
	// the Parse: the name is free again.
	failed atomic.Bool
	// token is set for a tenant token statement (token.go); plan is then
	// nil.
	token *tokenStmt
	// sealedUnder is, in a token session, the tenant under which the
	// statement's literals for encrypted columns were sealed at Parse: a
	// Bind under another tenant is refused (see handleParse).
	sealedUnder string
	// up is, for a named statement of a token session, what the proxy
	// sent PostgreSQL, to prepare it again (reprepare).
	up *upstreamParse
	// pinRound is, for a token statement, the round its Parse was sent in.
	pinRound int64
}

// upstreamParse is the Parse the proxy sent PostgreSQL for a named
// statement of a token session: done is the count of idle ReadyForQuery
// messages (tokenUpstream.idle) when PostgreSQL last confirmed it (set by
// the upstream goroutine at its ParseComplete), sentIdle and sentRound
// when the proxy last sent it again.
type upstreamParse struct {
	name, text string
	oids       []uint32
	done       atomic.Int64
	sentIdle   int64
	sentRound  int64
}

// reprepare prepares a named statement of a token session again (Close,
// Parse) at its first Bind after the session was idle. A token session may
// be shared: behind pgbouncer in transaction mode, another client's
// transaction runs on it between two of this client's, and through SQL the
// proxy cannot read (a DBA's function that runs text it is given) it can
// DEALLOCATE the statement the proxy prepared and PREPARE its own under
// the same name, which this client's next Bind would then run under its
// tenant (found by review on 2026-12-08). A client's own statements are
// thus parsed once per transaction that uses them.
//
// It counts as done when PostgreSQL confirms the Parse: one it skipped
// (after an error earlier in the round) is sent again at the next Bind of
// a later round (found by review on 2026-12-08: a ROLLBACK TO after such
// an error left the other client's statement in place).
func (s *session) reprepare(up *upstreamParse) {
	if up == nil {
		return
	}
	idle := s.tokUp.idle.Load()
	if up.done.Load() == idle || up.sentIdle == idle && up.sentRound == s.upstreamOut.syncs {
		return
	}
	up.sentIdle, up.sentRound = idle, s.upstreamOut.syncs
	s.pending.push(&pending{kind: pendClose, name: up.name, target: 'S', own: true})
	s.upstreamOut.send(&pgproto3.Close{ObjectType: 'S', Name: up.name})
	s.pending.push(&pending{kind: pendParse, name: up.name, own: true, reprepared: up, idle: idle})
	s.upstreamOut.send(&pgproto3.Parse{Name: up.name, Query: up.text, ParameterOIDs: up.oids})
}

// upstreamParseOf returns the record reprepare goes by, for a Parse sent in
// a token session under a name.
func (s *session) upstreamParseOf(name, text string, oids []uint32) *upstreamParse {
	if !s.tokens || name == "" {
		return nil
	}
	up := &upstreamParse{name: name, text: text, oids: append([]uint32(nil), oids...), sentIdle: -1}
	up.done.Store(-1) // until PostgreSQL confirms the client's Parse
	return up
}

// clientOID is the type the client gave parameter j (0-based), or 0.
func (ps *preparedStatement) clientOID(j int) uint32 {
	if j < len(ps.clientOIDs) {
		return ps.clientOIDs[j]
	}
	return 0
}

// newPreparedStatement builds the entry for a rewritten Parse.
func newPreparedStatement(plan *rewrite.Plan, clientOIDs []uint32) *preparedStatement {
	ps := &preparedStatement{plan: plan, clientOIDs: append([]uint32(nil), clientOIDs...), nparams: len(clientOIDs)}
	for _, p := range plan.Params {
		ps.nparams = max(ps.nparams, p.Param)
	}
	return ps
}

// upstreamOIDs are the parameter types of the rewritten statement's Parse:
// bytea for what the proxy computes, the client's own types for the rest.
func (ps *preparedStatement) upstreamOIDs() []uint32 {
	if len(ps.plan.Params) == 0 {
		return nil
	}
	oids := make([]uint32, len(ps.plan.Params))
	for i, p := range ps.plan.Params {
		switch p.Kind {
		case rewrite.ParamPlain:
			oids[i] = ps.clientOID(p.Param - 1)
		case rewrite.ParamData, rewrite.ParamIndex:
			oids[i] = pgtype.ByteaOID
		case rewrite.ParamIndexArray:
			oids[i] = pgtype.ByteaArrayOID
		}
	}
	return oids
}

// clientParameterTypes turns the ParameterDescription PostgreSQL gave for
// the rewritten statement into the one the client's statement would have
// had: the declared type for parameters bound to declared columns.
func (ps *preparedStatement) clientParameterTypes(upstream []uint32) []uint32 {
	out := make([]uint32, ps.nparams)
	for j := range out {
		if oid := ps.clientOID(j); oid != 0 {
			out[j] = oid
			continue
		}
		if ps.token != nil {
			out[j] = pgtype.TextOID // set_config's value
			continue
		}
		out[j] = pgtype.TextOID // a parameter the statement never uses
		for i, p := range ps.plan.Params {
			if p.Param != j+1 {
				continue
			}
			switch p.Kind {
			case rewrite.ParamPlain:
				if i < len(upstream) {
					out[j] = upstream[i]
				}
			case rewrite.ParamData, rewrite.ParamIndex:
				out[j] = coltype.OID(p.Column.Column.Type)
			case rewrite.ParamIndexArray:
				out[j] = arrayOID(p.Column.Column.Type)
			}
			if p.Kind == rewrite.ParamPlain {
				break // PostgreSQL's own inference wins
			}
		}
	}
	return out
}

// unnamedUpstream is the upstream name of the client's unnamed statement
// when the proxy rewrote it.
const unnamedUpstream = reservedPrefix + "u"

// parseRewritten forwards a Parse whose plan transforms parameters or (in
// a token session) whose literals were sealed under sealedUnder; orig is
// the client's text.
func (s *session) parseRewritten(m *pgproto3.Parse, plan *rewrite.Plan, text, sealedUnder string) error {
	if m.Name != "" {
		if old := s.statements[m.Name]; old != nil && !old.failed.Load() {
			return s.refuseExtended(&clientError{code: pgerrcode.DuplicatePreparedStatement, msg: fmt.Sprintf("prepared statement %q already exists", m.Name)})
		}
	}
	s.fixName(m.Name, m.Query)
	ps := newPreparedStatement(plan, m.ParameterOIDs)
	ps.sealedUnder = sealedUnder
	if m.Name != "" {
		s.stmtSeq++
		ps.upstream = reservedPrefix + "s" + strconv.FormatUint(s.stmtSeq, 10)
	} else {
		// The unnamed statement too lives upstream under a name of the
		// proxy's own. PostgreSQL skips messages after an error until
		// Sync, so a client's plain Parse or Close of "" that the proxy
		// forwarded may never have replaced a rewritten statement; a
		// later Bind of "" must then not reach one that takes ciphertext
		// with the client's values as they are. Upstream's "" only ever
		// holds plain statements.
		ps.upstream = unnamedUpstream
		s.pending.push(&pending{kind: pendClose, name: ps.upstream, target: 'S', own: true})
		s.upstreamOut.send(&pgproto3.Close{ObjectType: 'S', Name: ps.upstream})
	}
	s.statements[m.Name] = ps
	s.newGeneration(m.Name)
	s.shapes.parsed(m.Name, s.stmtGen[m.Name], text)
	up := &pgproto3.Parse{Name: ps.upstream, Query: text, ParameterOIDs: ps.upstreamOIDs()}
	if m.Name != "" {
		ps.up = s.upstreamParseOf(up.Name, up.Query, up.ParameterOIDs)
	}
	s.pending.push(&pending{kind: pendParse, name: m.Name, prepared: ps, confirmed: ps.up, idle: s.tokUp.idle.Load()})
	s.srv.audit.obs.StatementRewritten()
	return s.upstreamOut.send(up)
}

// parsePlain forwards a Parse whose parameters pass through, under the
// client's name.
func (s *session) parsePlain(m *pgproto3.Parse, text string) error {
	if s.decrypts && len(s.statements) > 0 {
		if m.Name == "" {
			delete(s.statements, "")
		} else if old := s.statements[m.Name]; old != nil && !old.failed.Load() {
			return s.refuseExtended(&clientError{code: pgerrcode.DuplicatePreparedStatement, msg: fmt.Sprintf("prepared statement %q already exists", m.Name)})
		} else if old != nil {
			// PostgreSQL rejected or skipped the rewritten Parse: the name
			// is free there, and is now this plain statement's.
			delete(s.statements, m.Name)
		}
	}
	s.fixName(m.Name, m.Query)
	if s.decrypts {
		s.newGeneration(m.Name)
		text = s.parseDeallocation(m.Name, text)
		s.shapes.parsed(m.Name, s.stmtGen[m.Name], text)
		if m.Name != "" {
			s.shapes.named([]rewrite.PreparedUse{{Op: rewrite.PreparedPrepare, Name: m.Name}})
		}
	}
	if up := s.upstreamParseOf(m.Name, text, m.ParameterOIDs); up != nil {
		if s.plainNamed == nil {
			s.plainNamed = make(map[string]*upstreamParse)
		}
		s.plainNamed[m.Name] = up
		s.pending.push(&pending{kind: pendParse, name: m.Name, confirmed: up, idle: s.tokUp.idle.Load()})
	} else {
		s.track(m)
	}
	if text == m.Query {
		return s.upstreamOut.send(m)
	}
	s.srv.audit.obs.StatementRewritten()
	return s.upstreamOut.send(&pgproto3.Parse{Name: m.Name, Query: text, ParameterOIDs: m.ParameterOIDs})
}

// handleBind forwards a Bind, transforming its parameters when it binds a
// rewritten statement.
//
// The parameters are transformed before anything else changes: on the
// relay loop's thread a key that is not cached gives up (errLoopWouldWait)
// and the goroutines handle the Bind again from the start.
func (s *session) handleBind(m *pgproto3.Bind) error {
	ps, err := s.rewritten(m.PreparedStatement)
	out := m
	switch {
	case err != nil:
	case ps != nil && ps.failed.Load():
		// PostgreSQL rejected its Parse: say so in the client's terms.
		err = &clientError{code: pgerrcode.InvalidSQLStatementName, msg: fmt.Sprintf("prepared statement %q does not exist", m.PreparedStatement)}
	case ps == nil && s.tokens && m.PreparedStatement != "" && s.plainNamed[m.PreparedStatement] == nil:
		// A name the proxy did not prepare through the protocol, or
		// closed or discarded since: PostgreSQL's statement of that name,
		// if any, was prepared by SQL (PREPARE), which the proxy does not
		// prepare again after another client's transaction, or by SQL it
		// could not read (a DBA's function that runs text), and must not
		// take the token or the plaintext the client binds for the
		// statement it prepared (found by review on 2026-12-08).
		err = errBindUnprepared(m.PreparedStatement)
	case s.tokens && ps != nil && ps.token != nil:
		s.bindDeallocation(m.DestinationPortal, m.PreparedStatement)
		return s.bindToken(m, ps)
	case s.tokens && ps != nil && ps.sealedUnder != "" && ps.sealedUnder != s.tenant:
		err = &clientError{code: pgerrcode.FeatureNotSupported,
			msg: "this statement's values for encrypted columns were sealed under another tenant when it was prepared; prepare it again after the token, or send the values as parameters"}
	case ps != nil:
		if out, err = s.transformBind(m, ps); err == errLoopWouldWait {
			return err
		}
	}
	s.bindDeallocation(m.DestinationPortal, m.PreparedStatement)
	if err != nil {
		return s.refuseExtended(err)
	}
	var seal *portalSeal
	if s.tokens {
		seal = s.noteBoundFor(m.DestinationPortal, ps)
	}
	// The formats are copied: pgproto3 reuses the message's buffers. The
	// shape the Bind goes by travels with it, so that both goroutines use
	// the same one whatever happens to the statement's name meanwhile.
	gen := s.stmtGen[m.PreparedStatement]
	shape, known := s.shapes.lookup(m.PreparedStatement, gen, len(m.ResultFormatCodes))
	p := &pending{kind: pendBind, name: m.DestinationPortal, stmt: m.PreparedStatement,
		resultFormats: append([]int16(nil), m.ResultFormatCodes...), gen: gen, shape: shape, epoch: s.shapes.epoch, seal: seal}
	s.shapes.bound(m.DestinationPortal, m.PreparedStatement)
	if known {
		delete(s.unshaped, m.DestinationPortal)
	} else {
		s.unshaped[m.DestinationPortal] = true
	}
	if s.tokens {
		if ps != nil {
			s.reprepare(ps.up)
		} else {
			s.reprepare(s.plainNamed[m.PreparedStatement])
		}
	}
	if up := binaryResults(shape, m.ResultFormatCodes); up != nil {
		if out == m {
			b := *m
			out = &b
		}
		out.ResultFormatCodes, p.upFormats = up, up
	}
	s.pending.push(p)
	return s.upstreamOut.send(out)
}

// handleDescribe forwards a Describe, naming a rewritten statement by its
// upstream name.
func (s *session) handleDescribe(m *pgproto3.Describe) error {
	if m.ObjectType != 'S' {
		delete(s.unshaped, m.Name) // its RowDescription gives the shape
		s.track(m)
		return s.upstreamOut.send(m)
	}
	ps, err := s.rewritten(m.Name)
	if err != nil {
		return s.refuseExtended(err)
	}
	if ps == nil {
		s.track(m)
		return s.upstreamOut.send(m)
	}
	s.pending.push(&pending{kind: pendDescribe, name: m.Name, target: 'S', prepared: ps, gen: s.stmtGen[m.Name], epoch: s.shapes.epoch})
	return s.upstreamOut.send(&pgproto3.Describe{ObjectType: 'S', Name: ps.upstream})
}

// handleExecute forwards an Execute. When neither the client nor an
// earlier Describe of its statement told the proxy the portal's row shape
// (a driver that binds and executes without describing), or SQL may have
// redefined the portal or its statement since it was bound (see
// shapeBoard), or the portal was not bound through the protocol at all (a
// cursor DECLAREd in SQL), a Describe of the portal goes first, whose answer
// only the proxy reads: a result whose declared columns the proxy could not
// tell would reach the client as ciphertext, or be opened as another
// column. An Execute of a portal whose statement is a DEALLOCATE or
// DISCARD ALL updates the session's statements first (deallocate.go).
func (s *session) handleExecute(m *pgproto3.Execute) error {
	if err := s.executeDeallocation(m.Portal); err != nil {
		return s.refuseExtended(err)
	}
	if s.boundElsewhere(m.Portal) {
		return s.refuseExtended(errBoundElsewhere)
	}
	if s.tokens && (m.MaxRows > 0 || s.shapes.portals[m.Portal].redefines) {
		// It may leave rows to read on: a token statement later in this
		// round is refused, and one in a later round waits for its answer.
		s.tok.ranRound = s.upstreamOut.syncs + 1
		s.tok.holdRound = s.tok.ranRound
	}
	if s.unshaped[m.Portal] || !s.shapes.fresh(m.Portal) {
		delete(s.unshaped, m.Portal)
		s.shapes.described(m.Portal)
		s.pending.push(&pending{kind: pendDescribe, name: m.Portal, target: 'P', own: true})
		if err := s.upstreamOut.send(&pgproto3.Describe{ObjectType: 'P', Name: m.Portal}); err != nil {
			return err
		}
	}
	s.track(m)
	s.shapes.executed(m.Portal, s.decl.tenancyCfg.AllowDynamicSQL)
	return s.upstreamOut.send(m)
}

// handleClose forwards a Close, naming a rewritten statement by its
// upstream name and forgetting it.
func (s *session) handleClose(m *pgproto3.Close) error {
	s.closeDeallocation(m.ObjectType, m.Name)
	if m.ObjectType != 'S' {
		delete(s.unshaped, m.Name)
		// boundFor keeps the portal: PostgreSQL skips a Close after an
		// error in its round, and an Execute of a portal it closed fails.
		s.shapes.closed(m.Name)
		s.track(m)
		return s.upstreamOut.send(m)
	}
	s.newGeneration(m.Name)
	s.shapes.named([]rewrite.PreparedUse{{Op: rewrite.PreparedDeallocate, Name: m.Name}})
	ps, err := s.rewritten(m.Name)
	if err != nil {
		return s.refuseExtended(err)
	}
	delete(s.plainNamed, m.Name)
	if ps == nil {
		s.track(m)
		return s.upstreamOut.send(m)
	}
	delete(s.statements, m.Name)
	s.track(m)
	return s.upstreamOut.send(&pgproto3.Close{ObjectType: 'S', Name: ps.upstream})
}

// errBindUnprepared refuses, in a token session, a Bind of a named
// statement the proxy does not hold as prepared through the protocol.
func errBindUnprepared(name string) error {
	return &clientError{code: pgerrcode.InvalidSQLStatementName,
		msg: fmt.Sprintf("prepared statement %q does not exist (in a session whose tenant comes from tenant tokens, a statement is bound only after a Parse of it; PREPARE in SQL is run with EXECUTE)", name)}
}

// errBoundElsewhere refuses the Execute of a portal whose values were
// sealed or indexed for another tenant than the session's now: its rows
// would be stamped with one tenant and sealed for another, or searched
// with another tenant's blind index and silently not found.
var errBoundElsewhere = &clientError{code: pgerrcode.FeatureNotSupported,
	msg: "this portal's values for encrypted columns were sealed under another tenant when it was bound; bind it again after the token"}

// portalSeal is what a token session knows of the values a Bind of a
// portal sealed or indexed. A Bind that PostgreSQL skips (after an error
// earlier in its round) or rejects leaves the portal of that name as it
// was, so the portal's earlier Bind counts until this one is known to have
// taken (found by review on 2026-12-08: an Execute after a skipped Bind
// stored values sealed for one tenant in a row stamped with another).
type portalSeal struct {
	tenant string      // the tenant the values were sealed for; "" none
	round  int64       // upstreamOut.syncs when the Bind was sent
	prev   *portalSeal // the portal's earlier Bind (client goroutine)
	done   atomic.Bool // set by the upstream goroutine at BindComplete
}

// noteBoundFor records, in a token session, the tenant a portal's Bind
// seals or indexes values for ("" for none), and returns the record for
// its pending entry.
func (s *session) noteBoundFor(portal string, ps *preparedStatement) *portalSeal {
	e := &portalSeal{round: s.upstreamOut.syncs, prev: s.boundFor[portal]}
	if ps != nil && ps.plan != nil && (ps.sealedUnder != "" || hasKeyedParams(ps.plan.Params)) {
		e.tenant = s.tenant
	}
	if e.prev != nil && e.prev.done.Load() {
		e.prev.prev = nil // what PostgreSQL kept before that one is gone
	}
	if e.prev == nil && e.tenant == "" {
		delete(s.boundFor, portal)
		return nil
	}
	if s.boundFor == nil {
		s.boundFor = make(map[string]*portalSeal)
	}
	s.boundFor[portal] = e
	return e
}

// boundElsewhere reports whether an Execute of portal may run values
// sealed or indexed for another tenant than the session's now: its latest
// Bind's, and, until that Bind is known to have taken, the Binds before
// it. An Execute in the same round as the Bind runs only if the Bind
// took.
func (s *session) boundElsewhere(portal string) bool {
	for e := s.boundFor[portal]; e != nil; e = e.prev {
		if e.tenant != "" && e.tenant != s.tenant {
			return true
		}
		if e.done.Load() || e.round == s.upstreamOut.syncs {
			return false
		}
	}
	return false
}

// rewritten returns the rewritten statement the client calls name, nil for
// a statement whose parameters pass through, and an error for a name the
// proxy reserves.
func (s *session) rewritten(name string) (*preparedStatement, error) {
	ps := s.statements[name]
	if ps == nil && strings.HasPrefix(name, reservedPrefix) {
		return nil, errReservedName
	}
	return ps, nil
}

var errReservedName = &clientError{code: pgerrcode.InvalidSQLStatementName, msg: fmt.Sprintf("statement names starting with %q are reserved", reservedPrefix)}

// transformBind builds the upstream Bind of a rewritten statement.
func (s *session) transformBind(m *pgproto3.Bind, ps *preparedStatement) (*pgproto3.Bind, error) {
	if s.tenant == "" && hasKeyedParams(ps.plan.Params) {
		// A token session whose token ended since the statement was
		// prepared (checkPlan said so at the Parse of a session without).
		return nil, errNoTenantWrite
	}
	if len(m.Parameters) != ps.nparams {
		return nil, &clientError{code: pgerrcode.ProtocolViolation,
			msg: fmt.Sprintf("bind message supplies %d parameters, but prepared statement %q requires %d", len(m.Parameters), m.PreparedStatement, ps.nparams)}
	}
	fc := m.ParameterFormatCodes
	if len(fc) > 1 && len(fc) != len(m.Parameters) {
		return nil, &clientError{code: pgerrcode.ProtocolViolation,
			msg: fmt.Sprintf("bind message has %d parameter formats but %d parameters", len(fc), len(m.Parameters))}
	}
	ctx := s.keyCtx()
	n := len(ps.plan.Params)
	out := &pgproto3.Bind{
		DestinationPortal:    m.DestinationPortal,
		PreparedStatement:    ps.upstream,
		ParameterFormatCodes: make([]int16, n),
		Parameters:           make([][]byte, n),
		ResultFormatCodes:    m.ResultFormatCodes,
	}
	for i, src := range ps.plan.Params {
		j := src.Param - 1
		v, f := m.Parameters[j], formatAt(fc, j)
		if src.Kind == rewrite.ParamPlain {
			out.Parameters[i], out.ParameterFormatCodes[i] = v, f
			continue
		}
		out.ParameterFormatCodes[i] = pgtype.BinaryFormatCode
		if v == nil {
			continue // NULL stays NULL: nothing to seal, no index
		}
		var err error
		switch src.Kind {
		case rewrite.ParamData, rewrite.ParamIndex:
			out.Parameters[i], err = s.keyedParam(ctx, src, ps.clientOID(j), f, v)
		case rewrite.ParamIndexArray:
			out.Parameters[i], err = s.indexArrayParam(ctx, src, ps.clientOID(j), f, v)
		default:
			err = fmt.Errorf("bind: parameter kind %v", src.Kind)
		}
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}

// keyedParam seals or indexes one parameter value.
func (s *session) keyedParam(ctx context.Context, src rewrite.ParamSource, oid uint32, format int16, v []byte) ([]byte, error) {
	typ := src.Column.Column.Type
	if oid == 0 {
		oid = coltype.OID(typ)
	}
	if err := stringParamType(typ, oid, format); err != nil {
		return nil, valueError(src.Column, err)
	}
	text, err := paramText(typ, oid, format, v)
	if err != nil {
		return nil, valueError(src.Column, err)
	}
	return s.keyedValue(ctx, src.Column, src.Kind == rewrite.ParamIndex, text)
}

// stringParamType refuses a parameter for a text or varchar column that
// the client typed as another type and sent as text: PostgreSQL would read
// it as that type and store that type's output ('0012' as int4 is '12',
// 'yes' as bool is 'true'), where pgcloak would seal the text as sent
// (found by review on 2026-12-08). Binary integers and numerics are read
// as PostgreSQL prints them (paramText); other types are refused too.
func stringParamType(typ string, oid uint32, format int16) error {
	if typ != "text" && typ != "varchar" {
		return nil
	}
	switch oid {
	case pgtype.TextOID, pgtype.VarcharOID, pgtype.UnknownOID:
		return nil
	case pgtype.Int2OID, pgtype.Int4OID, pgtype.Int8OID, pgtype.NumericOID:
		if format == pgtype.BinaryFormatCode {
			return nil
		}
	}
	return &clientError{code: pgerrcode.FeatureNotSupported,
		msg: fmt.Sprintf("a parameter for a %s column must be sent as text, varchar or of unspecified type, not as type %d, which PostgreSQL would convert", typ, oid)}
}

// keyedValue canonicalises text for its declared column and returns it
// sealed, or its blind index, under the session tenant's keys.
func (s *session) keyedValue(ctx context.Context, c rewrite.ColumnRef, index bool, text string) ([]byte, error) {
	canonical, err := coltype.Canonical(c.Column.Type, text)
	if err != nil {
		return nil, valueError(c, err)
	}
	var out []byte
	if index {
		out, err = s.srv.keys.BlindIndex(ctx, s.tenant, refOf(c), []byte(canonical))
	} else {
		out, err = s.srv.keys.Seal(ctx, s.tenant, refOf(c), []byte(canonical))
	}
	if err != nil {
		return nil, keyError(s.tenant, err)
	}
	return out, nil
}

// indexArrayParam turns an array of values (col = ANY($1)) into the
// bytea[] of their blind indexes, NULL elements staying NULL.
func (s *session) indexArrayParam(ctx context.Context, src rewrite.ParamSource, oid uint32, format int16, v []byte) ([]byte, error) {
	indexes, err := s.indexArray(ctx, src.Column, oid, format, v)
	if err != nil {
		return nil, err
	}
	m := typeMaps.Get().(*pgtype.Map)
	defer typeMaps.Put(m)
	return m.Encode(pgtype.ByteaArrayOID, pgtype.BinaryFormatCode, indexes, nil)
}

// indexArray returns the blind indexes of the elements of an array of c's
// values, given in format as the array type oid (0: the declared type's
// array); a NULL element's index is nil.
func (s *session) indexArray(ctx context.Context, c rewrite.ColumnRef, oid uint32, format int16, v []byte) ([][]byte, error) {
	src := rewrite.ParamSource{Column: c}
	typ := c.Column.Type
	if oid == 0 {
		oid = arrayOID(typ)
	}
	m := typeMaps.Get().(*pgtype.Map)
	defer typeMaps.Put(m)
	t, ok := m.TypeForOID(oid)
	if !ok {
		return nil, &clientError{code: pgerrcode.DatatypeMismatch, msg: fmt.Sprintf("%s: parameter type %d is not an array of %s", src.Column, oid, typ)}
	}
	ac, ok := t.Codec.(*pgtype.ArrayCodec)
	if !ok {
		return nil, &clientError{code: pgerrcode.DatatypeMismatch, msg: fmt.Sprintf("%s: = ANY needs an array parameter", src.Column)}
	}
	if err := stringParamType(typ, ac.ElementType.OID, format); err != nil {
		return nil, err
	}
	var (
		texts []string
		nulls []bool
	)
	switch format {
	case pgtype.TextFormatCode:
		elems, err := arrayTextElements(string(v))
		if err != nil {
			code := pgerrcode.InvalidTextRepresentation
			if err == errArrayBounds {
				code = pgerrcode.FeatureNotSupported
			}
			return nil, &clientError{code: code, msg: fmt.Sprintf("%s: %v", src.Column, err)}
		}
		for _, e := range elems {
			texts, nulls = append(texts, e.text), append(nulls, e.null)
		}
	case pgtype.BinaryFormatCode:
		vals, isNull, err := arrayBinaryElements(v, ac.ElementType.OID)
		if err != nil {
			return nil, &clientError{code: pgerrcode.InvalidBinaryRepresentation, msg: fmt.Sprintf("%s: %v", src.Column, err)}
		}
		for k, e := range vals {
			text := ""
			if !isNull[k] {
				if text, err = paramText(typ, ac.ElementType.OID, format, e); err != nil {
					return nil, valueError(src.Column, err)
				}
			}
			texts, nulls = append(texts, text), append(nulls, isNull[k])
		}
	default:
		return nil, &clientError{code: pgerrcode.ProtocolViolation, msg: fmt.Sprintf("unsupported format code: %d", format)}
	}
	indexes := make([][]byte, len(texts))
	for k, text := range texts {
		if nulls[k] {
			continue
		}
		var err error
		if indexes[k], err = s.keyedValue(ctx, src.Column, true, text); err != nil {
			return nil, err
		}
	}
	return indexes, nil
}

// paramText is a parameter's value in PostgreSQL's text format: as sent
// when the client used text, decoded through pgtype's codec for oid (the
// type the client declared, else the declared type) when it used binary.
func paramText(typ string, oid uint32, format int16, v []byte) (string, error) {
	if format == pgtype.TextFormatCode {
		return string(v), nil
	}
	if format != pgtype.BinaryFormatCode {
		return "", &clientError{code: pgerrcode.ProtocolViolation, msg: fmt.Sprintf("unsupported format code: %d", format)}
	}
	switch oid {
	case pgtype.JSONOID:
		// json's binary form is its text: decoding it into Go values and
		// encoding them again would drop duplicate keys and round numbers.
		return string(v), nil
	case pgtype.NumericOID:
		// pgtype reads a binary numeric without its display scale.
		text, err := numericBinaryText(v)
		if err != nil {
			return "", &clientError{code: pgerrcode.InvalidBinaryRepresentation, msg: "incorrect binary data format in a numeric parameter"}
		}
		return text, nil
	case pgtype.JSONBOID:
		if len(v) == 0 || v[0] != 1 {
			return "", &clientError{code: pgerrcode.InvalidBinaryRepresentation, msg: "unsupported jsonb version number in a jsonb parameter"}
		}
		return string(v[1:]), nil
	}
	m := typeMaps.Get().(*pgtype.Map)
	defer typeMaps.Put(m)
	t, ok := m.TypeForOID(oid)
	if !ok {
		return "", &clientError{code: pgerrcode.FeatureNotSupported, msg: fmt.Sprintf("binary parameters of type %d are not supported for a %s column", oid, typ)}
	}
	val, err := t.Codec.DecodeValue(m, oid, pgtype.BinaryFormatCode, v)
	if err != nil {
		return "", &clientError{code: pgerrcode.InvalidBinaryRepresentation, msg: fmt.Sprintf("incorrect binary data format in a %s parameter", t.Name)}
	}
	if val == nil {
		return "", &clientError{code: pgerrcode.InvalidBinaryRepresentation, msg: fmt.Sprintf("incorrect binary data format in a %s parameter", t.Name)}
	}
	buf, err := m.Encode(oid, pgtype.TextFormatCode, val, nil)
	if err != nil {
		return "", &clientError{code: pgerrcode.InvalidBinaryRepresentation, msg: fmt.Sprintf("incorrect binary data format in a %s parameter", t.Name)}
	}
	return string(buf), nil
}

// arrayOID is the OID of the array type of a declared type.
func arrayOID(typ string) uint32 { return arrayOIDs[typ] }

var arrayOIDs = func() map[string]uint32 {
	m := pgtype.NewMap()
	out := make(map[string]uint32)
	for _, typ := range coltype.Types() {
		if t, ok := m.TypeForName("_" + typ); ok {
			out[typ] = t.OID
		}
	}
	return out
}()

// refuseExtended refuses an extended-protocol message (a Parse or Bind)
// in order with everything else the client has in flight: the proxy
// prepares and executes, under its own statement name and the unnamed
// portal, a statement that raises the refusal. PostgreSQL reports it where
// the refused message was and skips the rest of the batch up to Sync, as
// it would have after the client's own message failed. The unnamed portal
// is lost, as it would be when the batch fails. The original message never
// reaches PostgreSQL.
func (s *session) refuseExtended(err error) error {
	code, msg := s.publicError(err)
	s.expect(pendRefusal)
	s.upstreamOut.send(&pgproto3.Close{ObjectType: 'S', Name: raiseStatement})
	s.upstreamOut.send(&pgproto3.Parse{Name: raiseStatement, Query: s.raiseSQL(err, code, msg)})
	s.upstreamOut.send(&pgproto3.Bind{PreparedStatement: raiseStatement})
	return s.upstreamOut.send(&pgproto3.Execute{})
}

// Results of declared columns in binary.
//
// PostgreSQL sends a bytea in text format as \x and hex digits: twice the
// bytes, and a decode per value. When the client goroutine binds a
// statement whose row shape it knows (from an earlier Describe), it asks
// upstream for the declared columns in binary whatever the client asked
// for; the upstream goroutine opens the raw value and answers in the
// client's format. The shape is trusted only if the statement has not been
// parsed or closed since it was described: each Parse and Close of a name
// starts a new generation, and the board keeps the generation a shape was
// described in.
//
// Drivers that cache descriptions but not statements (pgx's cache-describe
// mode) parse the unnamed statement again for every execution and bind it
// with the result formats of a Describe made long before, so the board also
// remembers shapes by statement text: a new generation of the same text has
// the same shape unless DDL changed the table, and then the driver's own
// cached description is as stale as the board's (see binaryResults).

//
// SQL can redefine statements and portals behind the protocol's back:
// PREPARE and DEALLOCATE of a statement name, DECLARE and CLOSE of a
// cursor (cursors are portals an Execute can name), DISCARD, and anything
// a DO block or function runs. So shapes also carry an epoch, which the
// client goroutine advances whenever it forwards SQL that may have done
// so: a simple query or an executed statement whose text names one of
// those commands (mayRedefine), and, in sessions allowed to run SQL pgcloak
// cannot read (tenancy.allow_dynamic_sql), every simple query and every
// Execute. A shape is trusted only in the epoch it was described in; a
// portal bound in an earlier epoch, or never bound through the protocol,
// is described again before it is executed. What no text shows is out of
// reach: a function created outside pgcloak (or earlier, when allowed)
// that redefines a statement when some other statement calls it.

// shapeBoard is where the upstream goroutine posts the row shapes of
// described statements for the client goroutine.
type shapeBoard struct {
	mu     sync.Mutex
	m      map[string]postedShape
	texts  map[string]parsedText  // statement name -> its text, per generation
	byText map[string]postedShape // statement text -> the shape last described

	// The client goroutine's alone, read and written without mu: the
	// current epoch, the statements whose text may redefine others
	// (by name, as last parsed), and the portals bound through the
	// protocol.
	epoch     uint64
	redefines map[string]bool
	portals   map[string]boundPortal
	// names are the statement names the session has prepared upstream
	// under the client's own name (a plain Parse, SQL PREPARE), as far as
	// the client goroutine can tell: checkExecutes refuses an EXECUTE
	// with arguments of any other name.
	names map[string]bool
}

type postedShape struct {
	gen   uint64
	epoch uint64
	shape *rowShape // nil: the statement returns no rows
}

// boundPortal is what the client goroutine knows of a portal it bound.
type boundPortal struct {
	epoch     uint64 // when its shape was last known
	redefines bool   // its statement's text may redefine others
}

// redefiningCommands are the words of the commands that define or drop
// prepared statements or cursors.
var redefiningCommands = []string{"prepare", "deallocate", "declare", "close", "discard"}

// mayRedefine reports whether running sql may redefine a prepared
// statement or a portal: whether it names one of redefiningCommands
// anywhere (in strings and comments too, erring towards describing).
func mayRedefine(sql string) bool {
	for _, w := range redefiningCommands {
		if containsFold(sql, w) {
			return true
		}
	}
	return false
}

// stale starts a new epoch: every shape and portal known so far is
// described again before it is trusted (client goroutine).
func (b *shapeBoard) stale() { b.epoch++ }

// bound records a Bind of portal to stmt (client goroutine).
func (b *shapeBoard) bound(portal, stmt string) {
	if b.portals == nil {
		b.portals = make(map[string]boundPortal)
	}
	b.portals[portal] = boundPortal{epoch: b.epoch, redefines: b.redefines[stmt]}
}

// fresh reports whether portal was bound through the protocol and nothing
// since may have redefined it (client goroutine).
func (b *shapeBoard) fresh(portal string) bool {
	p, ok := b.portals[portal]
	return ok && p.epoch == b.epoch
}

// described records that the proxy describes portal now (client
// goroutine): a portal bound through the protocol is fresh again; a
// cursor declared in SQL stays unknown, since it may outlive the
// transaction in which the upstream goroutine keeps its shape.
func (b *shapeBoard) described(portal string) {
	if p, ok := b.portals[portal]; ok {
		p.epoch = b.epoch
		b.portals[portal] = p
	}
}

// executed records an Execute of portal, which may redefine others
// (client goroutine).
func (b *shapeBoard) executed(portal string, always bool) {
	if always || b.portals[portal].redefines {
		b.stale()
	}
}

// named follows the statement names a text prepares and deallocates
// (client goroutine).
func (b *shapeBoard) named(uses []rewrite.PreparedUse) {
	for _, u := range uses {
		switch {
		case u.Op == rewrite.PreparedPrepare:
			if b.names == nil {
				b.names = make(map[string]bool)
			}
			b.names[u.Name] = true
		case u.Op == rewrite.PreparedDeallocate && u.Name == "":
			clear(b.names)
		case u.Op == rewrite.PreparedDeallocate:
			delete(b.names, u.Name)
		}
	}
}

// closed forgets a portal the client closed (client goroutine).
func (b *shapeBoard) closed(portal string) { delete(b.portals, portal) }

type parsedText struct {
	gen  uint64
	text string
}

// maxShapesByText bounds shapeBoard.byText; when full it starts over.
const maxShapesByText = 4096

// parsed records the text a statement name was parsed with in a generation
// (client goroutine).
func (b *shapeBoard) parsed(name string, gen uint64, text string) {
	if b.redefines == nil {
		b.redefines = make(map[string]bool)
	}
	if mayRedefine(text) {
		b.redefines[name] = true
	} else {
		delete(b.redefines, name)
	}
	b.mu.Lock()
	if b.texts == nil {
		b.texts = make(map[string]parsedText)
	}
	b.texts[name] = parsedText{gen, text}
	b.mu.Unlock()
}

// put posts the shape of a statement's generation as described in an
// epoch (upstream goroutine).
func (b *shapeBoard) put(name string, gen, epoch uint64, shape *rowShape) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.m == nil {
		b.m = make(map[string]postedShape)
	}
	b.m[name] = postedShape{gen, epoch, shape}
	if t, ok := b.texts[name]; ok && t.gen == gen && shape != nil && shape.any {
		if b.byText == nil || len(b.byText) >= maxShapesByText {
			b.byText = make(map[string]postedShape)
		}
		b.byText[t.text] = postedShape{gen, epoch, shape}
	}
}

// lookup returns the shape of a generation of a statement, or of the same
// text when that generation was not described (byText, with visible the
// number of fields the client expects: a shape that disagrees is stale),
// and whether it is known at all: a statement described as returning no
// rows has a nil shape, found.
//
// Only shapes described in the current epoch count (client goroutine).
func (b *shapeBoard) lookup(name string, gen uint64, visible int) (*rowShape, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if p, ok := b.m[name]; ok && p.gen == gen && p.epoch == b.epoch {
		return p.shape, true
	}
	if t, ok := b.texts[name]; ok && t.gen == gen {
		if p := b.byText[t.text]; p.shape != nil && p.epoch == b.epoch && (visible <= 1 || visible == len(p.shape.fields)-p.shape.hidden) {
			return p.shape, true
		}
	}
	return nil, false
}

// text returns the client's text of a statement's generation, if known
// (client goroutine).
func (b *shapeBoard) text(name string, gen uint64) (string, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	t, ok := b.texts[name]
	return t.text, ok && t.gen == gen
}

// newGeneration marks a statement name as parsed or closed again.
func (s *session) newGeneration(name string) {
	s.genSeq++
	s.stmtGen[name] = s.genSeq
}

// binaryResults returns the result formats to send upstream for a Bind of
// a statement of the given shape, or nil to send the client's as they are.
func binaryResults(shape *rowShape, client []int16) []int16 {
	if shape == nil || !shape.any {
		return nil
	}
	up := make([]int16, len(shape.fields))
	visible := 0 // the client's formats count the fields it sees
	for i, f := range shape.fields {
		switch {
		case f.ok || f.hidden:
			up[i] = pgtype.BinaryFormatCode
		default:
			up[i] = formatAt(client, visible)
		}
		if !f.hidden {
			visible++
		}
	}
	return up
}
