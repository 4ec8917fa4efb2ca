package proxy

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/pgcloak/pgcloak/coltype"
	"github.com/pgcloak/pgcloak/config"
	"github.com/pgcloak/pgcloak/crypto"
	"github.com/pgcloak/pgcloak/rewrite"
)

// ValueRef names one declared column for the key layer.
type ValueRef struct {
	Table     string // schema.table
	Column    string
	KeyClass  string
	Normalize string // a searchable column's normalisation (none | lower)
}

// Keys is the key layer as the proxy uses it: everything a session needs to
// encrypt, index and decrypt one value for its tenant. Implementations are
// safe for concurrent use and fail closed: an error means no value.
type Keys interface {
	Seal(ctx context.Context, tenant string, ref ValueRef, plaintext []byte) ([]byte, error)
	BlindIndex(ctx context.Context, tenant string, ref ValueRef, normalized []byte) ([]byte, error)
	// NewOpener returns an Opener of the tenant's values for one
	// goroutine that opens many.
	NewOpener(tenant string) Opener
}

// Opener opens the tenant's values for one goroutine.
type Opener interface {
	// Column returns an opener of one column's values that keeps what it
	// can between them.
	Column(ref ValueRef) ColumnOpener
}

// ColumnOpener opens one column's stored values for an Opener's goroutine
// and appends the plaintext to dst.
type ColumnOpener interface {
	Open(ctx context.Context, dst, value []byte) ([]byte, error)
}

func valueRef(t *config.Table, c *config.Column) ValueRef {
	return ValueRef{Table: t.QualifiedName(), Column: c.Name, KeyClass: c.KeyClass, Normalize: string(c.Normalize)}
}

func refOf(c rewrite.ColumnRef) ValueRef {
	return ValueRef{Table: c.Schema + "." + c.Table, Column: c.Column.Name, KeyClass: c.Column.KeyClass, Normalize: string(c.Column.Normalize)}
}

// lobFunctions are the fast-path functions libpq's lo_* calls use, by their
// pg_proc OIDs (src/include/catalog/pg_proc.dat). Every other FunctionCall
// is refused: a fast-path call is not SQL the proxy can analyse.
var lobFunctions = map[uint32]bool{
	715:  true, // lo_create
	952:  true, // lo_open
	953:  true, // lo_close
	954:  true, // loread
	955:  true, // lowrite
	956:  true, // lo_lseek
	957:  true, // lo_creat
	958:  true, // lo_tell
	964:  true, // lo_unlink
	1004: true, // lo_truncate
	3170: true, // lo_lseek64
	3171: true, // lo_tell64
	3172: true, // lo_truncate64
}

// handleQuery forwards a simple-protocol Query, rewritten when it touches
// declared columns, or refuses it.
func (s *session) handleQuery(q *pgproto3.Query) error {
	s.copyIn, s.dropCopy = nil, false // a COPY FROM the client abandoned
	if pure(s.decl) {
		return s.upstreamOut.send(q)
	}
	if s.tokens && containsFold(q.String, pinAliasPrefix) {
		s.track(q)
		return s.refuse(errPinAlias)
	}
	if containsFold(q.String, "tenant_token") {
		if s.tokens {
			return s.handleTokenQuery(q)
		}
		s.track(q)
		return s.refuse(tokensNotAllowed())
	}
	if s.tokens && mayHoldRows(q.String) {
		s.tok.holdRound = s.upstreamOut.syncs + 1
	}
	if text, err := s.catalogView(q.String); err != nil {
		s.track(q)
		return s.refuse(err)
	} else if text != q.String {
		q = &pgproto3.Query{String: text}
	}
	if s.decl.schema != nil && containsFold(q.String, "copy") && s.decl.schema.MightNeedAnalysis(q.String) {
		if plan, err := s.decl.schema.Cached(s.decl.plans, q.String); err == nil && plan.Copy != nil {
			return s.handleCopy(plan)
		}
	}
	if s.decrypts && (s.decl.tenancyCfg.AllowDynamicSQL || mayRedefine(q.String)) {
		s.shapes.stale() // see shapeBoard
	}
	if s.decrypts && mayDeallocate(q.String) {
		s.track(q)
		if sent, err := s.deallocate(q); sent || err != nil {
			return err
		}
		return s.forwardQuery(q, true)
	}
	return s.forwardQuery(q, false)
}

// forwardQuery forwards a simple Query as it is when it cannot change what
// the session may touch, or analysed, rewritten or refused. tracked says
// whether handleQuery already expects q's answers.
//
// Everything that may give up on the relay loop's thread (errLoopWouldWait:
// a text whose shape or plan is not cached, a key that is not, a refusal to
// explain) happens before q is tracked, so that the goroutines can handle
// q again from the start.
func (s *session) forwardQuery(q *pgproto3.Query, tracked bool) error {
	track := func() {
		if !tracked {
			s.track(q)
		}
	}
	if !s.needsAnalysis(q.String) {
		track()
		return s.upstreamOut.send(q)
	}
	sp, lits, known := s.cachedShape(q.String)
	if !known {
		return errLoopWouldWait
	}
	if sp != nil && s.checkPlan(sp.Plan) == nil {
		text, err := q.String, error(nil)
		if !sp.Plan.Passthrough {
			if text, err = s.renderShape(sp, lits); err == errLoopWouldWait {
				return err
			}
		}
		track()
		s.shapes.named(sp.Plan.Prepared)
		return s.sendRendered(q, text, err)
	}
	// No shape, or a refused one: the exact text decides and explains.
	plan, err, known := s.cachedPlan(q.String)
	if !known {
		return errLoopWouldWait
	}
	if err == nil {
		err = s.checkPlan(plan)
	}
	if err != nil {
		if s.onLoop {
			return errLoopWouldWait // refuseStatement parses the text again
		}
		track()
		return s.refuseStatement(q.String, err)
	}
	text := q.String
	if !plan.Passthrough && !unchanged(plan, q.String) {
		if text, err = s.render(plan); err == errLoopWouldWait {
			return err
		}
	}
	track()
	s.shapes.named(plan.Prepared)
	return s.sendRendered(q, text, err)
}

// sendRendered forwards q's rendered text, or refuses q when rendering
// failed.
func (s *session) sendRendered(q *pgproto3.Query, text string, err error) error {
	if err != nil {
		return s.refuse(err)
	}
	if text == q.String {
		return s.upstreamOut.send(q)
	}
	s.srv.audit.obs.StatementRewritten()
	return s.upstreamOut.send(&pgproto3.Query{String: text})
}

// cachedShape is Schema.AnalyzeShape, except on the relay loop's thread,
// which does not parse: known is false when the text's shape is not
// cached yet.
func (s *session) cachedShape(sql string) (*rewrite.ShapePlan, []rewrite.Literal, bool) {
	if s.onLoop {
		return s.decl.schema.CachedShape(s.decl.plans, sql)
	}
	sp, lits := s.decl.schema.AnalyzeShape(s.decl.plans, sql)
	return sp, lits, true
}

// cachedPlan is Schema.Cached, except on the relay loop's thread, which
// does not parse: known is false when the text's plan is not cached yet.
func (s *session) cachedPlan(sql string) (*rewrite.Plan, error, bool) {
	if s.onLoop {
		return s.decl.schema.Peek(s.decl.plans, sql)
	}
	plan, err := s.decl.schema.Cached(s.decl.plans, sql)
	return plan, err, true
}

// refuseStatement refuses a simple query the way PostgreSQL fails one: the
// statements before the refused one still run (rewritten as usual), in the
// same Query, so a BEGIN before it opens the transaction the error then
// aborts, and an implicit transaction rolls them back.
func (s *session) refuseStatement(sql string, err error) error {
	prefix, perr := s.decl.schema.RefusedPrefix(s.decl.plans, sql, s.checkPlan)
	if prefix == nil || perr == nil {
		return s.refuse(err)
	}
	if cerr := s.checkPlan(prefix); cerr != nil {
		return s.refuse(cerr)
	}
	text, rerr := s.render(prefix)
	if rerr != nil {
		return s.refuse(rerr)
	}
	// The prefix runs: its PREPARE and DEALLOCATE take effect whatever the
	// refusal then aborts (they are not transactional).
	s.shapes.named(prefix.Prepared)
	code, msg := s.publicError(perr)
	return s.upstreamOut.send(&pgproto3.Query{String: text + ";" + s.raiseSQL(perr, code, msg)})
}

// handleParse forwards an extended-protocol Parse, rewritten when it
// touches declared columns, or refuses it. See extended.go.
func (s *session) handleParse(m *pgproto3.Parse) error {
	s.copyIn, s.dropCopy = nil, false // a COPY FROM the client abandoned
	if pure(s.decl) {
		return s.upstreamOut.send(m)
	}
	if s.tokens && containsFold(m.Query, pinAliasPrefix) {
		return s.refuseExtended(errPinAlias)
	}
	if containsFold(m.Query, "tenant_token") {
		if s.tokens {
			if err := s.checkFixedName(m.Name, m.Query); err != nil {
				return s.refuseExtended(err)
			}
			return s.parseToken(m)
		}
		return s.refuseExtended(tokensNotAllowed())
	}
	if strings.HasPrefix(m.Name, reservedPrefix) {
		return s.refuseExtended(errReservedName)
	}
	if text, err := s.catalogView(m.Query); err != nil {
		return s.refuseExtended(err)
	} else if text != m.Query {
		m = &pgproto3.Parse{Name: m.Name, Query: text, ParameterOIDs: m.ParameterOIDs}
	}
	if err := s.checkFixedName(m.Name, m.Query); err != nil {
		return s.refuseExtended(err)
	}
	if !s.needsAnalysis(m.Query) {
		return s.parsePlain(m, m.Query)
	}
	plan, err, known := s.cachedPlan(m.Query)
	if !known {
		return errLoopWouldWait // nothing changed yet
	}
	if err == nil {
		err = s.checkPlan(plan)
	}
	if err != nil {
		return s.refuseExtended(err)
	}
	// Literals for declared columns are sealed now, once: every execution
	// of the statement stores the same ciphertext, as it would store the
	// same constant. Sealing may give up on the relay loop: before the
	// session changes.
	text := strings.Join(plan.Segments, "")
	var renderErr error
	if len(plan.Slots) > 0 && !plan.Passthrough && plan.Copy == nil && len(plan.RoleChanges) == 0 {
		if text, renderErr = s.render(plan); renderErr == errLoopWouldWait {
			return renderErr
		}
	}
	s.shapes.named(plan.Prepared)
	if plan.Passthrough {
		return s.parsePlain(m, m.Query)
	}
	if plan.Copy != nil {
		return s.refuseExtended(&clientError{code: pgerrcode.FeatureNotSupported, msg: "COPY on a table with encrypted columns must be sent as a simple query, not through the extended query protocol"})
	}
	if len(plan.RoleChanges) > 0 {
		return s.refuseExtended(&clientError{code: pgerrcode.FeatureNotSupported, msg: "SET ROLE and SET SESSION AUTHORIZATION are not supported through the extended query protocol"})
	}
	if renderErr != nil {
		return s.refuseExtended(renderErr)
	}
	// In a token session, literals are sealed once, at Parse, under the
	// tenant of that moment; a token may switch the tenant before a Bind,
	// which handleBind then refuses. (ActiveRecord without prepared
	// statements sends its literals so: Parse, Bind and Execute of the
	// unnamed statement, in the token's transaction.) Such a statement
	// lives upstream under a name of the proxy's own, as a rewritten one
	// does: a Parse of the client's name that PostgreSQL skipped or
	// rejected then leaves no statement sealed for one tenant that a Bind
	// under another could reach (found by review on 2026-12-08).
	sealed := ""
	if s.tokens && len(plan.Slots) > 0 {
		sealed = s.tenant
	}
	if identityParams(plan.Params) && sealed == "" {
		return s.parsePlain(m, text)
	}
	return s.parseRewritten(m, plan, text, sealed)
}

// errNameFixed refuses, in a token session, to give a statement name that
// held a statement another text. A token session may be shared: behind
// pgbouncer in transaction mode one client's transaction can close a
// statement (a Close, DEALLOCATE, DISCARD ALL) and prepare another of the
// same name, and the next client's Bind of the name would then hand its
// token, or its plaintext for an encrypted column, to a statement that
// passes them to PostgreSQL as they are, or run SQL of the other client's
// under its tenant (found by review on 2026-12-08).
var errNameFixed = &clientError{code: pgerrcode.FeatureNotSupported,
	msg: "in a session whose tenant comes from tenant tokens, a prepared statement name cannot be prepared again with another text; use a new name"}

// fixName records, in a token session, the text of a named statement.
func (s *session) fixName(name, text string) {
	if !s.tokens || name == "" {
		return
	}
	if s.fixedNames == nil {
		s.fixedNames = make(map[string]string)
	}
	s.fixedNames[name] = text
}

// checkFixedName refuses a Parse of a fixed name with another text.
func (s *session) checkFixedName(name, text string) error {
	if fixed, ok := s.fixedNames[name]; ok && fixed != text {
		return errNameFixed
	}
	return nil
}

// fixedName reports whether name is fixed (see fixName).
func (s *session) fixedName(name string) bool {
	_, ok := s.fixedNames[name]
	return ok
}

// handleFunctionCall forwards large-object fast-path calls and refuses the
// rest.
func (s *session) handleFunctionCall(m *pgproto3.FunctionCall) error {
	s.copyIn, s.dropCopy = nil, false
	if lobFunctions[m.Function] || pure(s.decl) {
		s.track(m)
		return s.upstreamOut.send(m)
	}
	s.expect(pendQuery) // the refusal goes upstream as a Query
	return s.refuse(&clientError{code: pgerrcode.FeatureNotSupported, msg: fmt.Sprintf("fast-path function call %d is not supported (only large-object functions are)", m.Function)})
}

// pure reports whether a configuration is pure passthrough: no declared
// tables and no way for a session to have a tenant (no tenant roles, no
// JWT). Such sessions have nothing for pgcloak to protect, so it analyses
// nothing and refuses nothing PostgreSQL would accept (SPEC §4); sessions
// under a configuration without any tenancy section do not even reach the
// message handlers (they go to the relay loop).
func pure(d *declarations) bool {
	t := &d.tenancyCfg
	return len(d.encrypt.Tables) == 0 && len(t.Login.Roles) == 0 && t.Mode != config.ModeJWT &&
		!t.JWT.HasVerificationKey() && len(t.TokenRoles) == 0
}

// needsAnalysis is the cheap pre-check: false means sql cannot change what
// this session may touch, and it is forwarded without parsing. Sessions
// with a tenant also look for the statements they must not run
// (rewrite.Plan.Opaque).
func (s *session) needsAnalysis(sql string) bool {
	switch {
	case s.decl.schema == nil:
		return false
	case s.tokens:
		return s.decl.schema.MightNeedTokenAnalysis(sql)
	case s.scoped:
		return s.decl.schema.MightNeedTenantAnalysis(sql)
	}
	return s.decl.schema.MightNeedAnalysis(sql)
}

// checkExecutes refuses, in a session that decrypts, an EXECUTE with
// arguments of a statement name the session has not prepared (see
// shapeBoard.names), as PostgreSQL would (26000), but without sending it:
// PostgreSQL logs a failed statement's text, and the arguments of an
// EXECUTE of a statement pgcloak refused to PREPARE are plaintext meant
// for a declared column. Sessions allowed to run SQL pgcloak cannot read
// may prepare statements it never sees, and are not checked.
func (s *session) checkExecutes(plan *rewrite.Plan) error {
	if !s.decrypts || s.decl.tenancyCfg.AllowDynamicSQL || len(plan.Prepared) == 0 {
		return nil
	}
	var added, removed map[string]bool
	cleared := false
	for _, u := range plan.Prepared {
		switch {
		case u.Op == rewrite.PreparedPrepare:
			if added == nil {
				added = make(map[string]bool)
			}
			added[u.Name] = true
			delete(removed, u.Name)
		case u.Op == rewrite.PreparedDeallocate && u.Name == "":
			cleared, added, removed = true, nil, nil
		case u.Op == rewrite.PreparedDeallocate:
			if removed == nil {
				removed = make(map[string]bool)
			}
			removed[u.Name] = true
			delete(added, u.Name)
		case u.Op == rewrite.PreparedExecute && u.Args:
			if !added[u.Name] && (cleared || removed[u.Name] || !s.shapes.names[u.Name]) {
				return &clientError{code: pgerrcode.InvalidSQLStatementName, msg: fmt.Sprintf("prepared statement %q does not exist", u.Name)}
			}
		}
	}
	return nil
}

// unchanged reports whether a plan forwards its text as it came: no
// rewrite, only findings (Opaque, LexerChange) that checkPlan allowed.
func unchanged(plan *rewrite.Plan, sql string) bool {
	return len(plan.Slots) == 0 && len(plan.Segments) == 1 && plan.Segments[0] == sql && !plan.ResetsSettings
}

// checkPlan applies the session's tenancy to an analysed statement: role
// changes must stay with the session's tenant, and a session with a tenant
// may neither change how PostgreSQL lexes its text nor (unless
// tenancy.allow_dynamic_sql) run SQL pgcloak cannot read.
func (s *session) checkPlan(plan *rewrite.Plan) error {
	if s.scoped && plan.LexerChange != nil {
		return plan.LexerChange
	}
	if s.scoped && plan.Opaque != nil && !s.decl.tenancyCfg.AllowDynamicSQL {
		return plan.Opaque
	}
	if err := s.checkExecutes(plan); err != nil {
		return err
	}
	if s.tokens {
		for _, u := range plan.Prepared {
			if u.Op == rewrite.PreparedPrepare && s.fixedName(u.Name) {
				return errNameFixed
			}
		}
	}
	if s.tokens && plan.Outlives != "" {
		return &clientError{code: pgerrcode.FeatureNotSupported, msg: plan.Outlives + " is not allowed in a session whose tenant comes from tenant tokens: it would outlive the transaction, and the next one may be another tenant's (use a cursor without HOLD, or ON COMMIT DROP)"}
	}
	for _, rc := range plan.RoleChanges {
		if rc.Target == "" {
			continue // RESET ROLE / SESSION AUTHORIZATION DEFAULT: back to the login role
		}
		tenant, scoped, err := resolveTenant(s.decl.tenancyCfg, rc.Target)
		if err != nil || scoped != s.scoped || tenant != s.tenant {
			return tenantRefusal("SET " + strings.ToUpper(strings.ReplaceAll(rc.Kind, "_", " ")) + " to a role of another tenant")
		}
	}
	if (!s.scoped || s.tenant == "") && (len(plan.Slots) > 0 || hasKeyedParams(plan.Params)) {
		return errNoTenantWrite
	}
	return nil
}

// errNoTenantWrite refuses a write or search of an encrypted column to a
// session without a tenant.
var errNoTenantWrite = &clientError{code: pgerrcode.InsufficientPrivilege, msg: "this session has no tenant, so it cannot write or search encrypted columns"}

// identityParams reports whether a rewritten statement takes the client's
// parameters as they are: same numbers, all plain.
func identityParams(ps []rewrite.ParamSource) bool {
	for i, p := range ps {
		if p.Kind != rewrite.ParamPlain || p.Param != i+1 {
			return false
		}
	}
	return true
}

func hasKeyedParams(ps []rewrite.ParamSource) bool {
	for _, p := range ps {
		if p.Kind != rewrite.ParamPlain {
			return true
		}
	}
	return false
}

// render builds the statement text of a plan, with every slot's value
// canonicalised for its declared type and encrypted or indexed under the
// session tenant's keys. Nothing in the result is plaintext of a declared
// column.
func (s *session) render(plan *rewrite.Plan) (string, error) {
	ctx := s.keyCtx()
	var b strings.Builder
	for i, seg := range plan.Segments {
		b.WriteString(seg)
		if i == len(plan.Slots) {
			break
		}
		slot := plan.Slots[i]
		if slot.Value == nil {
			b.WriteString("NULL")
			continue
		}
		var err error
		if slot.Kind == rewrite.SlotIndexArray {
			err = s.writeIndexArray(ctx, &b, slot.Column, *slot.Value)
		} else {
			err = s.writeKeyedValue(ctx, &b, slot.Column, slot.Kind == rewrite.SlotIndex, *slot.Value)
		}
		if err != nil {
			return "", err
		}
	}
	return b.String(), nil
}

// renderShape builds the statement text of a shape plan from the literals
// of this statement: plain ones as written, keyed ones encrypted or indexed.
func (s *session) renderShape(sp *rewrite.ShapePlan, lits []rewrite.Literal) (string, error) {
	ctx := s.keyCtx()
	var b strings.Builder
	for i, part := range sp.Parts {
		b.WriteString(part)
		if i == len(sp.Refs) {
			break
		}
		ps := sp.Plan.Params[sp.Refs[i]]
		lit := lits[ps.Param-1]
		var err error
		switch ps.Kind {
		case rewrite.ParamPlain:
			b.WriteString(lit.Text)
		case rewrite.ParamData, rewrite.ParamIndex:
			err = s.writeKeyedValue(ctx, &b, ps.Column, ps.Kind == rewrite.ParamIndex, lit.Value)
		default:
			err = fmt.Errorf("render shape: parameter kind %v", ps.Kind)
		}
		if err != nil {
			return "", err
		}
	}
	return b.String(), nil
}

// writeKeyedValue canonicalises value for its declared column and writes it
// encrypted (or, for index, as its blind index) under the session tenant's
// keys, as a bytea literal.
func (s *session) writeKeyedValue(ctx context.Context, b *strings.Builder, c rewrite.ColumnRef, index bool, value string) error {
	out, err := s.keyedValue(ctx, c, index, value)
	if err != nil {
		return err
	}
	writeByteaLiteral(b, out)
	return nil
}

// writeIndexArray writes the blind indexes of an array literal's elements
// (col = ANY('{...}')) as a bytea[] literal.
func (s *session) writeIndexArray(ctx context.Context, b *strings.Builder, c rewrite.ColumnRef, literal string) error {
	indexes, err := s.indexArray(ctx, c, arrayOID(c.Column.Type), pgtype.TextFormatCode, []byte(literal))
	if err != nil {
		return err
	}
	m := typeMaps.Get().(*pgtype.Map)
	defer typeMaps.Put(m)
	text, err := m.Encode(pgtype.ByteaArrayOID, pgtype.TextFormatCode, indexes, nil)
	if err != nil {
		return err
	}
	// The E'' form reads the same whatever standard_conforming_strings is.
	b.WriteString("E'")
	for _, ch := range text {
		switch ch {
		case '\\', '\'':
			b.WriteByte(ch)
		}
		b.WriteByte(ch)
	}
	b.WriteString("'::pg_catalog.bytea[]")
	return nil
}

// writeByteaLiteral writes v as E'\\x<hex>'::pg_catalog.bytea. The E”
// form reads the same whatever standard_conforming_strings is.
func writeByteaLiteral(b *strings.Builder, v []byte) {
	b.WriteString(`E'\\x`)
	var buf [64]byte
	for len(v) > 0 {
		n := min(len(v), len(buf)/2)
		hex.Encode(buf[:], v[:n])
		b.Write(buf[:2*n])
		v = v[n:]
	}
	b.WriteString(`'::pg_catalog.bytea`)
}

// valueError turns a value that is not valid for its declared type into the
// error PostgreSQL would give, naming the column but not the value.
func valueError(c rewrite.ColumnRef, err error) error {
	var ve *coltype.Error
	if errors.As(err, &ve) {
		return &clientError{code: ve.Code, msg: fmt.Sprintf("%s.%s.%s: %s", c.Schema, c.Table, c.Column.Name, ve.Message)}
	}
	return err
}

// keyError reports a key-layer failure without its cause's details.
func keyError(tenant string, err error) error {
	if errors.Is(err, crypto.ErrWouldWait) {
		return errLoopWouldWait // the relay loop gives the message to the goroutines
	}
	if errors.Is(err, crypto.ErrKeyShredded) {
		return &clientError{code: pgerrcode.ObjectNotInPrerequisiteState,
			msg: fmt.Sprintf("the keys of tenant %s were shredded; its writes are refused until an operator creates new keys (pgcloak keys create --tenant %s)", tenant, tenant)}
	}
	return &clientError{code: pgerrcode.SystemError, msg: fmt.Sprintf("key service unavailable for tenant %s", tenant), cause: err}
}

// refuse sends, in place of a refused simple Query or FunctionCall, a
// statement that raises the refusal upstream. The error then arrives in
// order with everything else the client has in flight, and PostgreSQL
// applies its own semantics to it: a transaction block is aborted, the rest
// of a multi-statement query is not run, and ReadyForQuery carries the true
// transaction status. The original statement never reaches PostgreSQL.
func (s *session) refuse(err error) error {
	if err == nil {
		err = errors.New("refusal without a cause")
	}
	code, msg := s.publicError(err)
	return s.upstreamOut.send(&pgproto3.Query{String: s.raiseSQL(err, code, msg)})
}

// publicError decides what a refused statement tells the client, logs the
// rest, and audits refused tenant changes.
func (s *session) publicError(err error) (code, msg string) {
	// A client that pipelined COPY data behind a refused statement (a
	// refused COPY) must not have it reach PostgreSQL, even to be ignored.
	s.dropCopy = true
	var ref *rewrite.Refusal
	var ce *clientError
	switch {
	case errors.As(err, &ref):
		code, msg = ref.Code, ref.Message
	case errors.As(err, &ce):
		code, msg = ce.code, ce.msg
		if ce.cause != nil {
			s.log.Warn().Err(ce.cause).Str("sqlstate", code).Msg("statement refused")
		}
	default:
		s.log.Error().Err(err).Msg("statement refused: internal error")
		code, msg = pgerrcode.InternalError, fmt.Sprintf("internal error (session %d)", s.id)
	}
	if code == pgerrcode.InsufficientPrivilege {
		s.srv.audit.tenantChangeRefused(s, msg)
	}
	s.srv.audit.obs.StatementRefused(code)
	return code, "pgcloak: " + msg
}

// tokensNotAllowed refuses a tenant token in a session of a role with a
// fixed tenant, or an unscoped one (SPEC §5.2).
func tokensNotAllowed() *clientError {
	return &clientError{code: pgerrcode.InsufficientPrivilege,
		msg: "only the sessions of token roles (tenancy.token_roles) may present a tenant token"}
}

// containsFold reports whether s contains sub, ASCII case-insensitively,
// without allocating.
func containsFold(s, sub string) bool { return rewrite.ContainsFold(s, sub) }
