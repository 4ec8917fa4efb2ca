package proxy

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/pgcloak/pgcloak/coltype"
	"github.com/pgcloak/pgcloak/config"
)

// rowShape is what the proxy must do to each field of a result row.
type rowShape struct {
	fields []fieldPlan
	any    bool // some field is declared or hidden
	hidden int  // fields the client does not see
}

// fieldPlan is one result field.
type fieldPlan struct {
	declared declaredField
	ok       bool         // the field is a declared column (not its index column)
	hidden   bool         // the field is an index column: the client never sees it
	opener   ColumnOpener // decryptRow's, for a declared field: set on first use
	// openerGen is resultState.gen when opener was made: a token that
	// switches the tenant makes every field's opener stale.
	openerGen uint64
	format    int16 // 0 text, 1 binary: the format the client asked for
	// upFormat is the format upstream sends the field in: the client's,
	// or binary for a declared column of a Bind the proxy rewrote so (see
	// binaryResults).
	upFormat int16
}

// portal is what the upstream goroutine knows of a bound portal.
type portal struct {
	stmt      string
	gen       uint64    // the statement's generation when it was bound
	epoch     uint64    // the shapeBoard epoch it was bound in
	formats   []int16   // the client's result formats
	upFormats []int16   // what upstream was asked for; nil: the same
	bound     *rowShape // the statement's shape as the Bind knew it (pending.shape)
	shape     *rowShape // its rows' shape: from a Describe 'P', else bound with the formats
}

// resultState is the upstream goroutine's view of the session's statements
// and portals. Only upstreamLoop touches it.
type resultState struct {
	portals  map[string]*portal
	current  *rowShape                 // shape of the rows now arriving
	copyOut  *copyOut                  // the COPY TO whose rows are now arriving
	scratch  []byte                    // decryptRow's plaintext buffer
	opener   Opener                    // decryptRow's, made on first use
	columns  map[ValueRef]ColumnOpener // the opener's, per declared column
	suppress bool                      // a decrypt error was sent: drop the rest up to ReadyForQuery
	// tenant is whose values are opened: the session's, or for a token
	// session the tenant PostgreSQL last confirmed; gen counts its changes.
	tenant string
	gen    uint64
}

// setTenant switches the tenant whose values are opened (upstream
// goroutine).
func (rs *resultState) setTenant(tenant string) {
	if tenant == rs.tenant {
		return
	}
	rs.tenant = tenant
	rs.gen++
	rs.opener, rs.columns = nil, nil
}

// track records a forwarded client message whose responses are awaited. It
// is a no-op for sessions that decrypt nothing.
//
// Entries are built only for sessions that decrypt, so a session that does
// not allocates nothing here.
func (s *session) track(msg pgproto3.FrontendMessage) {
	if !s.tracks {
		return
	}
	switch m := msg.(type) {
	case *pgproto3.Query:
		s.expect(pendQuery)
	case *pgproto3.Sync:
		s.expect(pendSync)
	case *pgproto3.FunctionCall:
		s.expect(pendFunctionCall)
	case *pgproto3.Parse:
		s.pending.push(&pending{kind: pendParse, name: m.Name})
	case *pgproto3.Bind:
		// The formats are copied: pgproto3 reuses the message's buffers.
		s.pending.push(&pending{kind: pendBind, name: m.DestinationPortal, stmt: m.PreparedStatement,
			resultFormats: append([]int16(nil), m.ResultFormatCodes...)})
	case *pgproto3.Describe:
		s.pending.push(&pending{kind: pendDescribe, name: m.Name, target: m.ObjectType, gen: s.stmtGen[m.Name], epoch: s.shapes.epoch})
	case *pgproto3.Execute:
		s.pending.push(&pending{kind: pendExecute, name: m.Portal})
	case *pgproto3.Close:
		s.pending.push(&pending{kind: pendClose, name: m.Name, target: m.ObjectType})
	}
}

// expect records a response group of the given kind, for sessions that
// track them.
func (s *session) expect(kind pendingKind) {
	if s.tracks {
		s.pending.push(&pending{kind: kind})
	}
}

// shapeOf reads a RowDescription, rewriting declared fields in place to show
// the declared type, and returns the shape their values need.
func (s *session) shapeOf(rd *pgproto3.RowDescription) (*rowShape, error) {
	shape := &rowShape{fields: make([]fieldPlan, len(rd.Fields))}
	if !s.decrypts {
		return shape, nil // an unscoped session sees the stored bytea
	}
	// On the relay loop's thread a table the catalog has not placed (or
	// forgot since the loop looked: a SIGHUP reset it) gives up
	// (errLoopWouldWait from lookup); the loop hands rd over as it came.
	for i := range rd.Fields {
		f := &rd.Fields[i]
		d, ok, err := s.decl.catalog.lookup(s.keyCtx(), columnOrigin{f.TableOID, f.TableAttributeNumber})
		if err != nil {
			return nil, err
		}
		shape.fields[i].format = f.Format
		shape.fields[i].upFormat = f.Format
		if !ok {
			continue
		}
		shape.any = true
		if d.index {
			// The application never names an index column (the rewriter
			// refuses it), so it only arrives through * or RETURNING *.
			shape.fields[i].hidden = true
			shape.hidden++
			continue
		}
		shape.fields[i].declared = d
		shape.fields[i].ok = true
		f.DataTypeOID = coltype.OID(d.column.Type)
		f.DataTypeSize = typeSize(d.column.Type)
		f.TypeModifier = -1
	}
	if shape.hidden > 0 {
		visible := rd.Fields[:0]
		for i, f := range rd.Fields {
			if !shape.fields[i].hidden {
				visible = append(visible, f)
			}
		}
		rd.Fields = visible
	}
	return shape, nil
}

// dropHidden removes the values of hidden fields from a row's values, in
// place.
func dropHidden(values [][]byte, shape *rowShape) [][]byte {
	if shape.hidden == 0 {
		return values
	}
	out := values[:0]
	for i, v := range values {
		if i >= len(shape.fields) || !shape.fields[i].hidden {
			out = append(out, v)
		}
	}
	return out
}

// withFormats returns shape with the result formats of a Bind: what the
// client asked for, and what upstream was asked for (nil: the same).
func withFormats(shape *rowShape, formats, upFormats []int16) *rowShape {
	if shape == nil || !shape.any {
		return shape
	}
	if upFormats == nil {
		upFormats = formats
	}
	out := &rowShape{fields: make([]fieldPlan, len(shape.fields)), any: true, hidden: shape.hidden}
	copy(out.fields, shape.fields)
	visible := 0 // the client's formats count the fields it sees
	for i := range out.fields {
		out.fields[i].format = formatAt(formats, visible)
		out.fields[i].upFormat = formatAt(upFormats, i)
		if !out.fields[i].hidden {
			visible++
		}
	}
	return out
}

// formatAt is the format code of column i under a Bind's result format
// codes: none means text, one applies to all.
func formatAt(formats []int16, i int) int16 {
	switch {
	case len(formats) == 0:
		return 0
	case len(formats) == 1:
		return formats[0]
	case i < len(formats):
		return formats[i]
	}
	return 0
}

// relay handles one upstream message for a session that decrypts: it keeps
// the pending queue and statement state in step with PostgreSQL and
// decrypts rows. It returns false when the message must not be forwarded.
func (s *session) relay(msg pgproto3.BackendMessage) (bool, error) {
	rs := &s.results
	head := s.pending.peek()
	if head != nil && head.kind == pendCopyDescribe {
		return s.relayCopyDescribe(msg, head)
	}
	switch m := msg.(type) {
	case *pgproto3.CopyInResponse:
		if head != nil && head.copy != nil && head.copy.plan.From {
			// The client sends its own columns; the index columns are
			// the proxy's.
			if n := len(head.copy.plan.Columns); len(m.ColumnFormatCodes) > n {
				m.ColumnFormatCodes = m.ColumnFormatCodes[:n]
			}
		}
	case *pgproto3.CopyOutResponse:
		if head != nil && head.copy != nil && !head.copy.plan.From && head.copy.shape != nil && head.copy.shape.any {
			rs.copyOut = &copyOut{state: head.copy, plan: head.copy.plan}
			if shape := head.copy.shape; shape.hidden > 0 && len(m.ColumnFormatCodes) == len(shape.fields) {
				visible := m.ColumnFormatCodes[:0]
				for i, f := range m.ColumnFormatCodes {
					if !shape.fields[i].hidden {
						visible = append(visible, f)
					}
				}
				m.ColumnFormatCodes = visible
			}
		}
	case *pgproto3.CopyData:
		if rs.suppress {
			return false, nil
		}
		if rs.copyOut != nil {
			data, err := rs.copyOut.transform(s, m.Data)
			if err != nil {
				rs.copyOut = nil
				return false, s.suppressWith(err)
			}
			m.Data = data
		}
	case *pgproto3.CopyDone:
		rs.copyOut = nil
	case *pgproto3.CloseComplete:
		if head != nil && head.kind == pendRefusal {
			return false, nil // its ParseComplete, BindComplete and error follow
		}
		if p := s.pending.pop(); p != nil {
			if p.target != 'S' {
				delete(rs.portals, p.name)
			}
			if p.own {
				return false, nil // the proxy's own Close: a token portal, or the unnamed statement's upstream name
			}
		}
	case *pgproto3.ParseComplete:
		if head != nil && head.kind == pendRefusal {
			return false, nil // its BindComplete and error follow
		}
		if p := s.pending.pop(); p != nil {
			if p.reprepared != nil {
				p.reprepared.done.Store(p.idle)
			}
			if p.confirmed != nil {
				p.confirmed.done.Store(p.idle)
			}
			if p.own {
				return false, nil // the proxy's own Parse: a statement prepared again
			}
		}
	case *pgproto3.BindComplete:
		if head != nil && head.kind == pendRefusal {
			return false, nil
		}
		if p := s.pending.pop(); p != nil {
			if p.seal != nil {
				p.seal.done.Store(true)
			}
			rs.portals[p.name] = &portal{stmt: p.stmt, gen: p.gen, epoch: p.epoch, formats: p.resultFormats, upFormats: p.upFormats, bound: p.shape}
		}
	case *pgproto3.ParameterDescription:
		// Part of a statement Describe; its RowDescription or NoData
		// follows. A rewritten statement shows the client's parameters.
		if head != nil && head.kind == pendDescribe && head.prepared != nil {
			m.ParameterOIDs = head.prepared.clientParameterTypes(m.ParameterOIDs)
		}
	case *pgproto3.RowDescription:
		shape, err := s.shapeOf(m)
		if err != nil {
			return false, err
		}
		if head != nil && head.kind == pendDescribe {
			s.pending.pop()
			if head.target == 'S' {
				s.shapes.put(head.name, head.gen, head.epoch, shape)
			} else if p := rs.portals[head.name]; p == nil {
				// A cursor DECLAREd in SQL: its rows come as described.
				rs.portals[head.name] = &portal{shape: shape}
			} else {
				if p.upFormats != nil && !askedFormats(shape, p.upFormats) {
					// Not the portal the Bind asked formats of: SQL
					// closed it and declared a cursor of that name. Its
					// rows come as described, as they would directly.
					p.upFormats, p.formats = nil, nil
					for i := range shape.fields {
						if !shape.fields[i].hidden {
							p.formats = append(p.formats, shape.fields[i].upFormat)
						}
					}
				}
				if p.upFormats != nil {
					// Show the client the formats it asked for.
					visible := 0
					for i := range shape.fields {
						if shape.fields[i].hidden {
							continue
						}
						f := formatAt(p.formats, visible)
						m.Fields[visible].Format = f
						shape.fields[i].format = f
						visible++
					}
				}
				p.shape = shape
				if p.gen != 0 {
					// libpq's PQexecPrepared describes the portal, never
					// the statement: post the statement's shape from it.
					s.shapes.put(p.stmt, p.gen, p.epoch, shape)
				}
			}
			if head.own {
				return false, nil // the proxy's own Describe
			}
		} else {
			rs.current = shape // simple query, or FETCH inside one
		}
	case *pgproto3.NoData:
		if head != nil && head.kind == pendDescribe {
			s.pending.pop()
			if head.target == 'S' {
				s.shapes.put(head.name, head.gen, head.epoch, nil)
			} else if p := rs.portals[head.name]; p != nil && p.gen != 0 {
				p.shape = &rowShape{}                     // no rows, whatever the Bind thought
				s.shapes.put(p.stmt, p.gen, p.epoch, nil) // known to return no rows
			}
			if head.own {
				return false, nil // the proxy's own Describe
			}
		}
	case *pgproto3.DataRow:
		if rs.suppress {
			return false, nil
		}
		shape := rs.current
		if head != nil && head.kind == pendExecute {
			shape = s.portalShape(head.name)
		}
		if shape != nil && shape.any {
			if err := s.decryptRow(m, shape); err == errLoopWouldWait {
				return false, err // a key to load: the loop hands the row over
			} else if err != nil {
				return false, s.suppressWith(err)
			}
			m.Values = dropHidden(m.Values, shape)
		}
		return !rs.suppress, nil
	case *pgproto3.CommandComplete, *pgproto3.EmptyQueryResponse, *pgproto3.PortalSuspended:
		rs.current = nil
		if head != nil && head.kind == pendExecute {
			s.pending.pop()
		}
	case *pgproto3.ErrorResponse:
		rs.current = nil
		rs.copyOut = nil
		if head != nil && head.copy != nil {
			if ce := head.copy.failure.Load(); ce != nil {
				// The proxy aborted the COPY: say why, not "COPY from
				// stdin failed".
				m.Code, m.Message, m.Where, m.Detail, m.Hint = ce.code, "pgcloak: "+ce.msg, ce.where, "", ""
			}
		}
		if head != nil && head.kind == pendParse && head.prepared != nil {
			head.prepared.failed.Store(true)
		}
		if head != nil && head.kind != pendQuery && head.kind != pendFunctionCall {
			s.pending.skipToSync()
		}
	case *pgproto3.ReadyForQuery:
		s.pending.pop()
		rs.current = nil
		rs.copyOut = nil
		rs.suppress = false
		if m.TxStatus == 'I' {
			clear(rs.portals) // portals do not outlive their transaction
		}
	}
	return !rs.suppress, nil
}

// suppressWith reports a result that could not be decrypted and drops the
// rest of it, up to ReadyForQuery. The session goes on.
func (s *session) suppressWith(err error) error {
	s.results.suppress = true
	var ce *clientError
	if !errors.As(err, &ce) || ce.cause != nil {
		s.log.Error().Err(err).Msg("result not decrypted")
	}
	resp := errorResponse(err, s.id)
	resp.Severity, resp.SeverityUnlocalized = "ERROR", "ERROR"
	return s.sendClient(resp)
}

// askedFormats reports whether the fields of a described portal come in the
// formats its Bind asked upstream for.
func askedFormats(shape *rowShape, up []int16) bool {
	if len(shape.fields) != len(up) {
		return false
	}
	for i := range shape.fields {
		if shape.fields[i].upFormat != up[i] {
			return false
		}
	}
	return true
}

// portalShape is the shape of rows an Execute of the named portal returns.
func (s *session) portalShape(name string) *rowShape {
	p := s.results.portals[name]
	if p == nil {
		return nil
	}
	if p.shape == nil {
		// Built once per portal, not per row, from the shape the Bind
		// went by: the portal keeps the statement it was bound to even if
		// the name is parsed again. A Bind that knew none made the proxy
		// describe the portal (handleExecute), which set p.shape.
		p.shape = withFormats(p.bound, p.formats, p.upFormats)
	}
	return p.shape
}

// decryptRow replaces every declared field of row with its plaintext, in
// the format the field asks for.
//
// The plaintexts of a row share one buffer that the next row reuses: the
// row is encoded for the client before the next one is read.
func (s *session) decryptRow(row *pgproto3.DataRow, shape *rowShape) error {
	ctx := s.keyCtx()
	buf := s.results.scratch[:0]
	defer func() {
		if cap(buf) <= 1<<20 { // keep a long value's buffer no longer than its row
			s.results.scratch = buf[:0]
		}
	}()
	for i := range shape.fields {
		f := &shape.fields[i]
		if !f.ok || i >= len(row.Values) || row.Values[i] == nil {
			continue
		}
		stored := row.Values[i]
		if f.upFormat == 0 {
			// The row's buffer is the proxy's until the next read.
			var ok bool
			if stored, ok = decodeBytea(stored); !ok {
				return s.decryptFailed(f.declared.table, f.declared.column)
			}
		}
		start := len(buf)
		out, null, err := s.openField(ctx, f, buf, stored)
		if err != nil {
			return err
		}
		if null {
			row.Values[i] = nil
			continue
		}
		buf = out
		plain := buf[start:len(buf):len(buf)]
		if len(plain) == 0 {
			plain = []byte{} // an empty value, not NULL
		}
		if f.format == 1 {
			enc, err := encodeBinary(f.declared.column.Type, plain)
			if err != nil {
				return err
			}
			plain = enc
		}
		row.Values[i] = plain
	}
	return nil
}

// decodeBytea decodes bytea's text output, \x and hex digits, in place.
func decodeBytea(v []byte) ([]byte, bool) {
	if len(v) < 2 || v[0] != '\\' || v[1] != 'x' {
		return nil, false
	}
	n, err := hex.Decode(v[2:], v[2:])
	if err != nil {
		return nil, false
	}
	return v[2 : 2+n], true
}

// openField opens a stored value of a declared field for the session's
// tenant and appends the plaintext to dst. null reports a value that did
// not open while on_decrypt_error is null (audited); any other failure is
// the error the client gets.
func (s *session) openField(ctx context.Context, f *fieldPlan, dst, stored []byte) (out []byte, null bool, err error) {
	if s.results.tenant == "" {
		return dst, false, errNoTenantRead
	}
	if f.opener == nil || f.openerGen != s.results.gen {
		f.opener, f.openerGen = s.columnOpener(f.declared.ref), s.results.gen
	}
	out, err = f.opener.Open(ctx, dst, stored)
	if err == nil {
		return out, false, nil
	}
	t, c := f.declared.table, f.declared.column
	if !isDecryptFailure(err) {
		// The key service, not the value, failed: never hide that
		// behind NULLs.
		return dst, false, keyError(s.results.tenant, err)
	}
	if s.decl.encrypt.OnDecryptError == config.DecryptErrorNull {
		s.auditEvent(func() { s.srv.audit.decryptFailed(s, t, c) })
		return dst, true, nil
	}
	return dst, false, s.decryptFailed(t, c)
}

// columnOpener returns the session's opener of a declared column's values.
// Shapes keep it per field, so this runs once per result, not per row.
func (s *session) columnOpener(ref ValueRef) ColumnOpener {
	rs := &s.results
	if rs.opener == nil {
		rs.opener = s.srv.keys.NewOpener(rs.tenant)
		rs.columns = make(map[ValueRef]ColumnOpener)
	}
	c := rs.columns[ref]
	if c == nil {
		c = rs.opener.Column(ref)
		rs.columns[ref] = c
	}
	return c
}

// errNoTenantRead refuses a row with declared columns to a token session
// that has no tenant: it sees neither plaintext nor ciphertext.
var errNoTenantRead = &clientError{code: pgerrcode.InsufficientPrivilege,
	msg: "this session has no tenant, so it cannot read encrypted columns (present a tenant token first)"}

// decryptFailed reports a value that did not open for the session's
// tenant. The message names the column only; why it failed stays unsaid
// (another tenant's row, tampering and a shredded key look the same).
func (s *session) decryptFailed(t *config.Table, c *config.Column) error {
	if s.results.tenant == "" {
		return errNoTenantRead
	}
	s.srv.audit.decryptFailed(s, t, c)
	return &clientError{code: pgerrcode.ExternalRoutineInvocationException,
		msg: fmt.Sprintf("cannot decrypt %s.%s for this session's tenant", t.QualifiedName(), c.Name)}
}
