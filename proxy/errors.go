package proxy

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/pgcloak/pgcloak/rewrite"
)

// clientError is an error pgcloak decided to show the client. Its message is
// public: it never holds values, keys, tokens or passwords. The cause, if
// any, is only logged.
type clientError struct {
	code  string // SQLSTATE
	msg   string // without the "pgcloak: " prefix
	fatal bool   // the session ends after it is sent
	where string // CONTEXT, e.g. "COPY patients, line 3"
	// schema, table and column name the declared object the error is
	// about, if any (ErrorResponse's SCHEMA, TABLE and COLUMN fields).
	schema, table, column string
	cause                 error
}

func (e *clientError) Error() string {
	if e.cause != nil {
		return fmt.Sprintf("%s (%s): %v", e.msg, e.code, e.cause)
	}
	return fmt.Sprintf("%s (%s)", e.msg, e.code)
}

func (e *clientError) Unwrap() error { return e.cause }

// protocolViolation ends a session whose client sent something that is not
// the PostgreSQL protocol: a malformed, truncated or oversized message.
func protocolViolation(format string, args ...any) *clientError {
	return &clientError{code: pgerrcode.ProtocolViolation, msg: fmt.Sprintf(format, args...), fatal: true}
}

// upstreamUnavailable ends a session that could not reach its upstream.
func upstreamUnavailable(cause error) *clientError {
	return &clientError{
		code:  pgerrcode.SQLClientUnableToEstablishSQLConnection,
		msg:   "cannot connect to the upstream server",
		fatal: true,
		cause: cause,
	}
}

// errorResponse translates any error into the message the client sees. It is
// the one place errors leave the proxy. A clientError keeps its code and
// message; anything else is an internal error whose cause stays in the log,
// named only by the session id.
func errorResponse(err error, sessionID uint64) *pgproto3.ErrorResponse {
	var ce *clientError
	if !errors.As(err, &ce) {
		ce = &clientError{
			code:  pgerrcode.InternalError,
			msg:   fmt.Sprintf("internal error (session %d)", sessionID),
			fatal: true,
		}
	}
	severity := "ERROR"
	if ce.fatal {
		severity = "FATAL"
	}
	return &pgproto3.ErrorResponse{
		Severity:            severity,
		SeverityUnlocalized: severity,
		Code:                ce.code,
		Message:             "pgcloak: " + ce.msg,
		Where:               ce.where,
		SchemaName:          ce.schema,
		TableName:           ce.table,
		ColumnName:          ce.column,
	}
}

// Refusals raised through PostgreSQL.
//
// A refused statement is replaced by one that raises an error upstream, so
// the refusal arrives in order with everything else in flight and
// PostgreSQL applies its own transaction semantics to it (see refuse and
// refuseExtended). PostgreSQL logs that statement and its error
// (log_statement, log_min_error_statement), so neither may carry anything
// of the client's: a refusal's message can quote the client's text (a
// syntax error's "at or near ..."). Upstream raises only a fixed message,
// raisedMessage, with the refusal's SQLSTATE and a DETAIL numbering it in
// the session; the proxy keeps the real message and fields, and puts them
// into the ErrorResponse it relays to the client (substituteRefusal).

// raisedMessage is the only message a refusal raised through PostgreSQL
// carries upstream; raisedDetail numbers it.
const (
	raisedMessage = "pgcloak: statement refused"
	raisedDetail  = "pgcloak refusal "
)

// raiseWhere is the context PostgreSQL attaches to an error raised by
// raiseSQL; the proxy strips it so the client sees only its own message.
const raiseWhere = "PL/pgSQL function inline_code_block"

// raisedRefusal is what the client is told for one raised refusal.
type raisedRefusal struct {
	id                    uint64
	msg                   string // with the "pgcloak: " prefix
	schema, table, column string
	position              int32
}

// raisedRefusals are a session's refusals raised upstream whose errors have
// not come back yet, oldest first. The client goroutine adds; the upstream
// goroutine takes.
type raisedRefusals struct {
	mu      sync.Mutex
	seq     uint64
	pending []raisedRefusal
}

// maxRaisedRefusals bounds the refusals kept for a session; a raise that
// never ran (skipped in an aborted batch) is dropped once a later one comes
// back, and this bounds a session that never reads its results.
const maxRaisedRefusals = 1024

// raiseSQL is a statement that fails with the SQLSTATE of a refusal and
// raisedMessage; msg (the client's message, from publicError) and the
// declared object err names are kept for the ErrorResponse the client gets.
func (s *session) raiseSQL(err error, code, msg string) string {
	r := raisedRefusal{msg: msg}
	var ref *rewrite.Refusal
	var ce *clientError
	switch {
	case errors.As(err, &ref):
		r.schema, r.table, r.column, r.position = ref.Schema, ref.Table, ref.Column, ref.Position
	case errors.As(err, &ce):
		r.schema, r.table, r.column = ce.schema, ce.table, ce.column
	}
	rr := &s.raised
	rr.mu.Lock()
	rr.seq++
	r.id = rr.seq
	if len(rr.pending) >= maxRaisedRefusals {
		rr.pending = append(rr.pending[:0], rr.pending[1:]...)
	}
	rr.pending = append(rr.pending, r)
	rr.mu.Unlock()
	return "DO $pgcloak$BEGIN RAISE EXCEPTION USING ERRCODE = '" + sanitizeSQLState(code) +
		"', MESSAGE = '" + raisedMessage + "', DETAIL = '" + raisedDetail + strconv.FormatUint(r.id, 10) +
		"'; END$pgcloak$"
}

// substituteRefusal puts the client's message and fields into the error a
// raised refusal came back as. Errors arrive in the order the raises were
// sent, so refusals older than this one were skipped (their batch failed
// before them) and are dropped. It reports whether e was a raised refusal.
func (s *session) substituteRefusal(e *pgproto3.ErrorResponse) bool {
	if e.Message != raisedMessage || !strings.HasPrefix(e.Where, raiseWhere) || !strings.HasPrefix(e.Detail, raisedDetail) {
		return false
	}
	id, err := strconv.ParseUint(e.Detail[len(raisedDetail):], 10, 64)
	if err != nil {
		return false
	}
	e.Where, e.Detail = "", ""
	rr := &s.raised
	rr.mu.Lock()
	defer rr.mu.Unlock()
	for i, r := range rr.pending {
		if r.id == id {
			e.Message = r.msg
			e.SchemaName, e.TableName, e.ColumnName = r.schema, r.table, r.column
			e.Position = r.position
			rr.pending = append(rr.pending[:0], rr.pending[i+1:]...)
			return true
		}
	}
	return true // not this session's own: it stays the fixed message
}

func sanitizeSQLState(code string) string {
	if len(code) != 5 {
		return pgerrcode.InternalError
	}
	for _, c := range code {
		if !(c >= '0' && c <= '9' || c >= 'A' && c <= 'Z') {
			return pgerrcode.InternalError
		}
	}
	return code
}
