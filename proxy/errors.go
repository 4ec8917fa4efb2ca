package proxy

import (
	"errors"
	"fmt"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5/pgproto3"
)

// clientError is an error pgcloak decided to show the client. Its message is
// public: it never holds values, keys, tokens or passwords. The cause, if
// any, is only logged.
type clientError struct {
	code  string // SQLSTATE
	msg   string // without the "pgcloak: " prefix
	fatal bool   // the session ends after it is sent
	where string // CONTEXT, e.g. "COPY patients, line 3"
	cause error
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
	}
}
