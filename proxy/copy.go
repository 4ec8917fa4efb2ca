package proxy

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/pgcloak/pgcloak/coltype"
	"github.com/pgcloak/pgcloak/rewrite"
)

// COPY on declared tables.
//
// COPY ... FROM STDIN: the client goroutine cuts the CopyData stream into
// rows (text, CSV or binary; a row may span CopyData messages), seals each
// declared field, appends the index fields the rewritten COPY names last,
// and forwards one CopyData per client CopyData. Memory is bounded by the
// longest row. A row PostgreSQL would reject for its shape or a value
// invalid for its declared type ends the COPY with CopyFail: PostgreSQL
// rolls the COPY back, and the proxy replaces its "COPY from stdin failed"
// error with the precise one. Nothing of the COPY is stored.
//
// COPY ... TO STDOUT: before the COPY the proxy describes a query with the
// same output columns (under its own statement name) to learn which fields
// are declared columns; the upstream goroutine then opens those fields of
// every row and writes them back in the COPY's format.

// copyState is shared by a COPY's two halves: the client goroutine sets
// failure, the upstream goroutine reads it and owns the rest.
type copyState struct {
	plan *rewrite.CopyPlan
	// failure is the error that made the proxy abort a COPY FROM.
	failure atomic.Pointer[clientError]
	// shape is what the describe of a COPY TO found (upstream goroutine).
	shape *rowShape
}

// copyIn transforms the rows of one COPY FROM STDIN (client goroutine).
type copyIn struct {
	state *copyState
	plan  *rewrite.CopyPlan
	buf   []byte  // the unconsumed start of a row
	scan  rowScan // how far nextRow read that row
	row   int     // rows read, as COPY's error context counts them
	crlf  bool    // text rows end in \r\n (decided by the first row)
	done  bool    // the end-of-data marker or binary trailer was seen
	// binary: the file header has been passed on
	header bool
}

// startCopyIn begins a COPY FROM of a declared table.
func (s *session) startCopyIn(st *copyState) {
	s.copyIn = &copyIn{state: st, plan: st.plan}
}

// handleCopyMessage forwards CopyData, CopyDone and CopyFail of a COPY
// FROM that the proxy transforms.
func (s *session) handleCopyMessage(msg pgproto3.FrontendMessage) error {
	ci := s.copyIn
	if ci.state.failure.Load() != nil {
		// The COPY was aborted: PostgreSQL drops these anyway.
		if _, ok := msg.(*pgproto3.CopyData); !ok {
			s.copyIn = nil
		}
		return nil
	}
	var out []byte
	var err error
	switch m := msg.(type) {
	case *pgproto3.CopyData:
		out, err = ci.feed(s, m.Data, false)
	case *pgproto3.CopyDone:
		out, err = ci.feed(s, nil, true)
		s.copyIn = nil
	case *pgproto3.CopyFail:
		s.copyIn = nil
		return s.upstreamOut.send(m)
	}
	if err != nil {
		var ce *clientError
		if !errors.As(err, &ce) {
			ce = &clientError{code: pgerrcode.InternalError, msg: fmt.Sprintf("internal error (session %d)", s.id), cause: err}
		}
		if ce.cause != nil {
			s.log.Warn().Err(ce.cause).Str("sqlstate", ce.code).Msg("COPY aborted")
		}
		ci.state.failure.Store(ce)
		return s.upstreamOut.send(&pgproto3.CopyFail{Message: "pgcloak: " + ce.msg})
	}
	if len(out) > 0 {
		if err := s.upstreamOut.send(&pgproto3.CopyData{Data: out}); err != nil {
			return err
		}
	}
	if _, ok := msg.(*pgproto3.CopyDone); ok {
		return s.upstreamOut.send(msg)
	}
	return nil
}

// copyError is a COPY row error: PostgreSQL's SQLSTATE and message, and
// the row as its CONTEXT would name it.
func (ci *copyIn) copyError(code, msg string) error {
	return &clientError{code: code, msg: msg, where: fmt.Sprintf("COPY %s, line %d", ci.plan.Relation, ci.row)}
}

// feed consumes data (and, at eof, what is left) and returns the
// transformed rows that are complete.
func (ci *copyIn) feed(s *session, data []byte, eof bool) ([]byte, error) {
	if ci.done {
		return nil, nil // after the end marker: PostgreSQL ignores the rest
	}
	ci.buf = append(ci.buf, data...)
	var out []byte
	var err error
	var n int
	if ci.plan.Format == rewrite.CopyBinary {
		out, n, err = ci.feedBinary(s, ci.buf, eof)
	} else {
		out, n, err = ci.feedText(s, ci.buf, eof)
	}
	if err != nil {
		return nil, err
	}
	rest := copy(ci.buf, ci.buf[n:])
	ci.buf = ci.buf[:rest]
	if len(ci.buf) > maxCopyRow {
		return nil, errCopyRowTooLong
	}
	if eof && len(ci.buf) > 0 && !ci.done {
		return nil, &clientError{code: pgerrcode.BadCopyFileFormat, msg: "unexpected EOF in COPY data"}
	}
	return out, nil
}

// feedText transforms the complete text or CSV rows at the start of buf
// and returns them and how many bytes they took.
func (ci *copyIn) feedText(s *session, buf []byte, eof bool) ([]byte, int, error) {
	p := ci.plan
	var out []byte
	used := 0
	for used < len(buf) && !ci.done {
		rowLen, eolLen, ok, next, err := nextRow(p, buf[used:], ci.scan)
		if err != nil {
			return nil, 0, err
		}
		ci.scan = rowScan{}
		if !ok {
			if !eof {
				ci.scan = next // the row's start will be buf's
				break
			}
			rowLen, eolLen = len(buf)-used, 0 // a last row without a newline
		}
		row := buf[used : used+rowLen]
		used += rowLen + eolLen
		ci.row++
		if ci.row == 1 {
			ci.crlf = bytes.HasSuffix(row, []byte("\r"))
		}
		if ci.crlf {
			row = bytes.TrimSuffix(row, []byte("\r"))
		}
		if string(row) == `\.` {
			ci.done = true
			out = append(out, row...)
			out = append(out, '\n')
			break
		}
		if ci.row == 1 && p.Header {
			out = append(out, buf[used-rowLen-eolLen:used]...)
			continue
		}
		if out, err = ci.transformRow(s, out, row); err != nil {
			return nil, 0, err
		}
		if ci.crlf {
			out = append(out, '\r')
		}
		out = append(out, '\n')
	}
	return out, used, nil
}

// transformRow appends row, with its declared fields sealed and its index
// fields appended, to out (without the end of line).
func (ci *copyIn) transformRow(s *session, out, row []byte) ([]byte, error) {
	p := ci.plan
	fields := splitFields(p, row)
	if len(fields) < len(p.Columns) {
		name := "?"
		if c := p.Columns[len(fields)]; c.Column != nil {
			name = c.Column.Name
		}
		return nil, ci.copyError(pgerrcode.BadCopyFileFormat, fmt.Sprintf("missing data for column %q", name))
	}
	if len(fields) > len(p.Columns) {
		return nil, ci.copyError(pgerrcode.BadCopyFileFormat, "extra data after last expected column")
	}
	ctx := context.Background()
	var plaintexts [][]byte // by field, for the index fields
	if len(p.Indexes) > 0 {
		plaintexts = make([][]byte, len(fields))
	}
	for i, raw := range fields {
		if i > 0 {
			out = append(out, p.Delimiter)
		}
		col := p.Columns[i]
		if col.Column == nil {
			out = append(out, raw.text...)
			continue
		}
		value, null, err := decodeField(p, raw)
		if err != nil {
			return nil, ci.copyError(pgerrcode.BadCopyFileFormat, err.Error())
		}
		if null {
			out = append(out, p.Null...)
			continue
		}
		sealed, err := s.keyedValue(ctx, col, false, string(value))
		if err != nil {
			return nil, ci.withContext(err, col)
		}
		if plaintexts != nil {
			plaintexts[i] = value
		}
		out = appendByteaField(p, out, sealed)
	}
	for _, i := range p.Indexes {
		out = append(out, p.Delimiter)
		if plaintexts[i] == nil {
			out = append(out, p.Null...)
			continue
		}
		idx, err := s.keyedValue(ctx, p.Columns[i], true, string(plaintexts[i]))
		if err != nil {
			return nil, ci.withContext(err, p.Columns[i])
		}
		out = appendByteaField(p, out, idx)
	}
	return out, nil
}

// withContext adds the row and column to a value's error.
func (ci *copyIn) withContext(err error, col rewrite.ColumnRef) error {
	var ce *clientError
	if errors.As(err, &ce) && ce.cause == nil {
		c := *ce
		c.where = fmt.Sprintf("COPY %s, line %d, column %s", ci.plan.Relation, ci.row, col.Column.Name)
		return &c
	}
	return err
}

// feedBinary transforms the complete tuples at the start of buf.
func (ci *copyIn) feedBinary(s *session, buf []byte, eof bool) ([]byte, int, error) {
	p := ci.plan
	var out []byte
	used := 0
	if !ci.header {
		if len(buf) < len(binarySignature)+8 {
			return nil, 0, nil
		}
		if !bytes.Equal(buf[:len(binarySignature)], binarySignature) {
			return nil, 0, &clientError{code: pgerrcode.BadCopyFileFormat, msg: "COPY file signature not recognized"}
		}
		ext := binary.BigEndian.Uint32(buf[len(binarySignature)+4:])
		if ext > 1<<20 {
			return nil, 0, &clientError{code: pgerrcode.BadCopyFileFormat, msg: "invalid COPY file header (wrong length)"}
		}
		hlen := len(binarySignature) + 8 + int(ext)
		if len(buf) < hlen {
			return nil, 0, nil
		}
		out = append(out, buf[:hlen]...)
		used, ci.header = hlen, true
	}
	ctx := context.Background()
	for !ci.done {
		if len(buf)-used >= 2 {
			// The field count first, as PostgreSQL checks it: a tuple that
			// announces another count is refused before its fields come
			// (and nextTuple, which reads the pending tuple again for each
			// CopyData, walks no more than the table's fields).
			if count := int16(binary.BigEndian.Uint16(buf[used:])); count != -1 && int(count) != len(p.Columns) {
				ci.row++
				return nil, 0, ci.copyError(pgerrcode.BadCopyFileFormat, fmt.Sprintf("row field count is %d, expected %d", count, len(p.Columns)))
			}
		}
		tuple, n, ok := nextTuple(buf[used:])
		if !ok {
			break
		}
		if tuple == nil { // the trailer
			out = append(out, buf[used:used+n]...)
			used += n
			ci.done = true
			break
		}
		ci.row++
		if len(tuple) != len(p.Columns) {
			return nil, 0, ci.copyError(pgerrcode.BadCopyFileFormat, fmt.Sprintf("row field count is %d, expected %d", len(tuple), len(p.Columns)))
		}
		out = binary.BigEndian.AppendUint16(out, uint16(len(tuple)+len(p.Indexes)))
		texts := make([]string, len(tuple))
		for i, v := range tuple {
			col := p.Columns[i]
			if col.Column == nil || v == nil {
				out = appendBinaryField(out, v)
				continue
			}
			text, err := paramText(col.Column.Type, binaryOID(col), pgtype.BinaryFormatCode, v)
			if err != nil {
				return nil, 0, ci.withContext(valueError(col, err), col)
			}
			sealed, err := s.keyedValue(ctx, col, false, text)
			if err != nil {
				return nil, 0, ci.withContext(err, col)
			}
			texts[i] = text
			out = appendBinaryField(out, sealed)
		}
		for _, i := range p.Indexes {
			if tuple[i] == nil {
				out = appendBinaryField(out, nil)
				continue
			}
			idx, err := s.keyedValue(ctx, p.Columns[i], true, texts[i])
			if err != nil {
				return nil, 0, ci.withContext(err, p.Columns[i])
			}
			out = appendBinaryField(out, idx)
		}
		used += n
	}
	return out, used, nil
}

// binaryOID is the type a binary COPY sends a declared column's values in:
// the declared type, which is what describing the table shows.
func binaryOID(c rewrite.ColumnRef) uint32 { return coltype.OID(c.Column.Type) }

var binarySignature = []byte("PGCOPY\n\xff\r\n\x00")

// nextTuple parses one binary COPY tuple at the start of buf: its fields
// (nil for NULL) and length; a nil tuple with ok is the trailer. ok is
// false when buf does not yet hold a whole tuple.
func nextTuple(buf []byte) (fields [][]byte, n int, ok bool) {
	if len(buf) < 2 {
		return nil, 0, false
	}
	count := int16(binary.BigEndian.Uint16(buf))
	if count == -1 {
		return nil, 2, true
	}
	n = 2
	fields = make([][]byte, 0, max(count, 0))
	for range int(max(count, 0)) {
		if len(buf) < n+4 {
			return nil, 0, false
		}
		l := int32(binary.BigEndian.Uint32(buf[n:]))
		n += 4
		if l < 0 {
			fields = append(fields, nil)
			continue
		}
		if len(buf) < n+int(l) {
			return nil, 0, false
		}
		fields = append(fields, buf[n:n+int(l):n+int(l)])
		n += int(l)
	}
	if len(fields) == 0 {
		fields = [][]byte{} // a tuple of no fields, not the trailer
	}
	return fields, n, true
}

func appendBinaryField(out, v []byte) []byte {
	if v == nil {
		return binary.BigEndian.AppendUint32(out, 0xffffffff)
	}
	out = binary.BigEndian.AppendUint32(out, uint32(len(v)))
	return append(out, v...)
}

// field is one raw field of a text or CSV row.
type field struct {
	text   []byte
	quoted bool // CSV: some part of it was quoted
}

// nextRow finds the end of the first row of a text or CSV stream: the
// row's length and the length of its newline. ok is false when buf holds
// no complete row yet.
//
// PostgreSQL also ends lines at a bare carriage return when the first line
// ends so; the proxy does not follow that style, so a carriage return
// outside a quoted field that is not followed by a newline is refused: read
// as data, it would let a row the proxy never saw (a header line ending in
// a bare CR, then plaintext) reach PostgreSQL.
//
// The scan starts at sc (where an earlier call for the same row stopped)
// and, when the row is not complete, returns where to go on from: before
// a byte whose meaning depends on the next one, which has not come yet.
// So a long row sent in many CopyData messages is read once, not again
// from its start for each.
func nextRow(p *rewrite.CopyPlan, buf []byte, sc rowScan) (rowLen, eolLen int, ok bool, next rowScan, err error) {
	inQuote := sc.inQuote
	for i := sc.pos; i < len(buf); i++ {
		c := buf[i]
		last := i+1 == len(buf)
		switch {
		case p.Format == rewrite.CopyText && c == '\\':
			if last {
				return 0, 0, false, rowScan{i, inQuote}, nil
			}
			i++ // the escaped byte is data, a newline too
		case p.Format == rewrite.CopyCSV && inQuote && c == p.Escape && p.Escape != p.Quote && last:
			return 0, 0, false, rowScan{i, inQuote}, nil
		case p.Format == rewrite.CopyCSV && inQuote && c == p.Escape && p.Escape != p.Quote && (buf[i+1] == p.Quote || buf[i+1] == p.Escape):
			i++
		case p.Format == rewrite.CopyCSV && c == p.Quote:
			inQuote = !inQuote
		case c == '\r' && !inQuote && last:
			return 0, 0, false, rowScan{i, inQuote}, nil
		case c == '\r' && !inQuote && buf[i+1] != '\n':
			return 0, 0, false, rowScan{}, errBareCR
		case c == '\n' && !inQuote:
			return i, 1, true, rowScan{}, nil
		}
	}
	return 0, 0, false, rowScan{len(buf), inQuote}, nil
}

// rowScan is where nextRow stopped in a row it has not found the end of.
type rowScan struct {
	pos     int
	inQuote bool
}

// maxCopyRow bounds what the proxy holds of one COPY row or binary tuple
// while it waits for the rest.
const maxCopyRow = 64 << 20

// errCopyRowTooLong refuses a COPY row longer than maxCopyRow.
var errCopyRowTooLong = &clientError{code: pgerrcode.ProgramLimitExceeded, msg: fmt.Sprintf("a COPY row longer than %d MiB is not supported", maxCopyRow>>20)}

// errBareCR refuses COPY data whose lines end in a bare carriage return.
var errBareCR = &clientError{code: pgerrcode.BadCopyFileFormat, msg: "COPY data with lines ending in a carriage return alone is not supported (end lines with a newline, or a carriage return and a newline)"}

// splitFields cuts a row (without its newline) at its delimiters.
func splitFields(p *rewrite.CopyPlan, row []byte) []field {
	var fields []field
	start, quoted, inQuote := 0, false, false
	for i := 0; i < len(row); i++ {
		c := row[i]
		switch {
		case p.Format == rewrite.CopyText && c == '\\':
			i++
		case p.Format == rewrite.CopyCSV && inQuote && c == p.Escape && p.Escape != p.Quote && i+1 < len(row) && (row[i+1] == p.Quote || row[i+1] == p.Escape):
			i++
		case p.Format == rewrite.CopyCSV && c == p.Quote:
			inQuote, quoted = !inQuote, true
		case c == p.Delimiter && !inQuote:
			fields = append(fields, field{text: row[start:i], quoted: quoted})
			start, quoted = i+1, false
		}
	}
	return append(fields, field{text: row[start:], quoted: quoted})
}

// decodeField returns a field's value, or null.
func decodeField(p *rewrite.CopyPlan, f field) (value []byte, null bool, err error) {
	if !f.quoted && string(f.text) == p.Null {
		return nil, true, nil
	}
	if p.Format == rewrite.CopyCSV {
		return unquoteCSV(p, f.text), false, nil
	}
	v, err := unescapeText(f.text)
	return v, false, err
}

func unquoteCSV(p *rewrite.CopyPlan, raw []byte) []byte {
	out := make([]byte, 0, len(raw))
	inQuote := false
	for i := 0; i < len(raw); i++ {
		c := raw[i]
		switch {
		case inQuote && c == p.Escape && i+1 < len(raw) && (raw[i+1] == p.Quote || raw[i+1] == p.Escape) && (p.Escape != p.Quote || raw[i+1] == p.Quote):
			out = append(out, raw[i+1])
			i++
		case c == p.Quote:
			inQuote = !inQuote
		default:
			out = append(out, c)
		}
	}
	return out
}

// unescapeText undoes COPY's text-format escapes.
func unescapeText(raw []byte) ([]byte, error) {
	if bytes.IndexByte(raw, '\\') < 0 {
		return raw, nil
	}
	out := make([]byte, 0, len(raw))
	for i := 0; i < len(raw); i++ {
		c := raw[i]
		if c != '\\' || i+1 == len(raw) {
			out = append(out, c)
			continue
		}
		i++
		switch c = raw[i]; c {
		case 'b':
			out = append(out, '\b')
		case 'f':
			out = append(out, '\f')
		case 'n':
			out = append(out, '\n')
		case 'r':
			out = append(out, '\r')
		case 't':
			out = append(out, '\t')
		case 'v':
			out = append(out, '\v')
		case 'x':
			v, n := 0, 0
			for n < 2 && i+1 < len(raw) && isHexDigit(raw[i+1]) {
				v = v<<4 | hexVal(raw[i+1])
				i++
				n++
			}
			if n == 0 {
				out = append(out, 'x')
			} else {
				out = append(out, byte(v))
			}
		case '0', '1', '2', '3', '4', '5', '6', '7':
			v := int(c - '0')
			for n := 1; n < 3 && i+1 < len(raw) && raw[i+1] >= '0' && raw[i+1] <= '7'; n++ {
				v = v<<3 | int(raw[i+1]-'0')
				i++
			}
			out = append(out, byte(v))
		default:
			out = append(out, c)
		}
	}
	return out, nil
}

func isHexDigit(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func hexVal(c byte) int {
	switch {
	case c <= '9':
		return int(c - '0')
	case c >= 'a':
		return int(c-'a') + 10
	}
	return int(c-'A') + 10
}

// appendByteaField writes a bytea value as COPY's text or CSV format
// carries it: \x and hex digits, the backslash escaped in text format.
func appendByteaField(p *rewrite.CopyPlan, out, v []byte) []byte {
	if p.Format == rewrite.CopyText {
		out = append(out, '\\')
	}
	out = append(out, '\\', 'x')
	return hex.AppendEncode(out, v)
}

// appendTextValue writes value escaped for COPY's text format.
func appendTextValue(p *rewrite.CopyPlan, out, value []byte) []byte {
	for _, c := range value {
		switch c {
		case '\\':
			out = append(out, '\\', '\\')
		case '\n':
			out = append(out, '\\', 'n')
		case '\r':
			out = append(out, '\\', 'r')
		case '\t':
			out = append(out, '\\', 't')
		case '\b':
			out = append(out, '\\', 'b')
		case '\f':
			out = append(out, '\\', 'f')
		case '\v':
			out = append(out, '\\', 'v')
		default:
			if c == p.Delimiter {
				out = append(out, '\\')
			}
			out = append(out, c)
		}
	}
	return out
}

// appendCSVValue writes value for COPY's CSV format, quoted when it must
// be (as PostgreSQL's CSV output quotes).
func appendCSVValue(p *rewrite.CopyPlan, out, value []byte) []byte {
	need := len(value) == 0 && p.Null == "" || string(value) == p.Null || string(value) == `\.`
	for _, c := range value {
		if c == p.Delimiter || c == p.Quote || c == '\n' || c == '\r' || c == p.Escape {
			need = true
			break
		}
	}
	if !need {
		return append(out, value...)
	}
	out = append(out, p.Quote)
	for _, c := range value {
		if c == p.Quote || c == p.Escape {
			out = append(out, p.Escape)
		}
		out = append(out, c)
	}
	return append(out, p.Quote)
}

// copyOut decrypts the rows of one COPY TO STDOUT (upstream goroutine).
type copyOut struct {
	state   *copyState
	plan    *rewrite.CopyPlan
	rows    int
	buf     []byte // binary: an incomplete tuple
	header  bool   // binary: the file header has been passed on
	scratch []byte // the plaintext of the value being written
}

// transform decrypts the declared fields of the rows in one CopyData.
func (co *copyOut) transform(s *session, data []byte) ([]byte, error) {
	p, shape := co.plan, co.state.shape
	if p.Format == rewrite.CopyBinary {
		return co.transformBinary(s, data)
	}
	co.rows++
	header := co.rows == 1 && p.Header
	if header && shape.hidden == 0 {
		return data, nil
	}
	row := bytes.TrimSuffix(data, []byte("\n"))
	fields := splitFields(p, row)
	if len(fields) != len(shape.fields) {
		return nil, fmt.Errorf("COPY TO: row has %d fields, the describe %d", len(fields), len(shape.fields))
	}
	ctx := context.Background()
	out := make([]byte, 0, len(data)*2)
	first := true
	for i, f := range fields {
		fp := &shape.fields[i]
		if fp.hidden {
			continue // an index column; in the header, its name
		}
		if !first {
			out = append(out, p.Delimiter)
		}
		first = false
		if !fp.ok || header {
			out = append(out, f.text...)
			continue
		}
		value, null, err := decodeField(p, f)
		if err != nil || null {
			out = append(out, f.text...)
			continue
		}
		stored, ok := decodeBytea(value)
		if !ok {
			return nil, s.decryptFailed(fp.declared.table, fp.declared.column)
		}
		var plain []byte
		plain, null, err = s.openField(ctx, fp, co.scratch[:0], stored)
		if err != nil {
			return nil, err
		}
		co.scratch = plain
		switch {
		case null:
			out = append(out, p.Null...) // on_decrypt_error: null
		case p.Format == rewrite.CopyCSV:
			out = appendCSVValue(p, out, plain)
		default:
			out = appendTextValue(p, out, plain)
		}
	}
	if len(row) < len(data) {
		out = append(out, '\n')
	}
	return out, nil
}

func (co *copyOut) transformBinary(s *session, data []byte) ([]byte, error) {
	co.buf = append(co.buf, data...)
	buf := co.buf
	var out []byte
	used := 0
	if !co.header {
		if len(buf) < len(binarySignature)+8 {
			return nil, nil
		}
		hlen := len(binarySignature) + 8 + int(binary.BigEndian.Uint32(buf[len(binarySignature)+4:]))
		if len(buf) < hlen {
			return nil, nil
		}
		out = append(out, buf[:hlen]...)
		used, co.header = hlen, true
	}
	ctx := context.Background()
	for {
		tuple, n, ok := nextTuple(buf[used:])
		if !ok {
			break
		}
		if tuple == nil {
			out = append(out, buf[used:used+n]...)
			used += n
			continue
		}
		shape := co.state.shape
		if len(tuple) != len(shape.fields) {
			return nil, fmt.Errorf("COPY TO: tuple has %d fields, the describe %d", len(tuple), len(shape.fields))
		}
		out = binary.BigEndian.AppendUint16(out, uint16(len(tuple)-shape.hidden))
		for i, v := range tuple {
			fp := &shape.fields[i]
			if fp.hidden {
				continue
			}
			if !fp.ok || v == nil {
				out = appendBinaryField(out, v)
				continue
			}
			plain, null, err := s.openField(ctx, fp, co.scratch[:0], v)
			if err != nil {
				return nil, err
			}
			co.scratch = plain
			if null {
				out = appendBinaryField(out, nil)
				continue
			}
			enc, err := encodeBinary(fp.declared.column.Type, plain)
			if err != nil {
				return nil, err
			}
			out = appendBinaryField(out, enc)
		}
		used += n
	}
	rest := copy(co.buf, co.buf[used:])
	co.buf = co.buf[:rest]
	return out, nil
}

// describeForCopy sends, ahead of a COPY TO, the describe of its query
// under the proxy's own statement name. The responses are swallowed; the
// RowDescription fills st.shape.
func (s *session) describeForCopy(st *copyState) error {
	s.pending.push(&pending{kind: pendCopyDescribe, copy: st})
	s.upstreamOut.send(&pgproto3.Parse{Name: copyStatement, Query: st.plan.Describe})
	s.upstreamOut.send(&pgproto3.Describe{ObjectType: 'S', Name: copyStatement})
	s.upstreamOut.send(&pgproto3.Close{ObjectType: 'S', Name: copyStatement})
	return s.upstreamOut.send(&pgproto3.Sync{})
}

// copyStatement is the statement name of describeForCopy.
const copyStatement = reservedPrefix + "copy"

// relayCopyDescribe swallows the responses to describeForCopy.
func (s *session) relayCopyDescribe(msg pgproto3.BackendMessage, head *pending) (bool, error) {
	switch m := msg.(type) {
	case *pgproto3.RowDescription:
		shape, err := s.shapeOf(m)
		if err != nil {
			return false, err
		}
		head.copy.shape = shape
	case *pgproto3.ReadyForQuery:
		s.pending.pop()
	case *pgproto3.ErrorResponse:
		// The COPY that follows fails the same way, or runs without the
		// describe: then its declared fields stay ciphertext.
		s.log.Debug().Str("sqlstate", m.Code).Msg("describe for COPY TO failed")
	case *pgproto3.ParseComplete, *pgproto3.ParameterDescription, *pgproto3.NoData, *pgproto3.CloseComplete:
	default:
		return true, nil // NoticeResponse, ParameterStatus, NotificationResponse
	}
	return false, nil
}

// handleCopy forwards a COPY on a declared table.
func (s *session) handleCopy(plan *rewrite.Plan) error {
	st := &copyState{plan: plan.Copy}
	query := func() error {
		if s.tracks {
			s.pending.push(&pending{kind: pendQuery, copy: st})
		}
		return s.upstreamOut.send(&pgproto3.Query{String: strings.Join(plan.Segments, "")})
	}
	if !plan.Copy.From {
		if !s.decrypts {
			return query() // an unscoped session copies ciphertext
		}
		if err := s.describeForCopy(st); err != nil {
			return err
		}
		return query()
	}
	if err := s.checkPlan(plan); err != nil || !s.scoped {
		if err == nil {
			err = &clientError{code: pgerrcode.InsufficientPrivilege, msg: "this session has no tenant, so it cannot write encrypted columns"}
		}
		s.expect(pendQuery)
		return s.refuse(err)
	}
	s.startCopyIn(st)
	s.srv.audit.obs.StatementRewritten()
	return query()
}
