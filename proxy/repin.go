package proxy

import (
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/pgcloak/pgcloak/keystore"
)

// Pinning again after DISCARD.
//
// A session's pin lives in its currval() of pgcloak.pin_marker (keystore's
// doc.go, "The verified tenant pin"). DISCARD ALL and DISCARD SEQUENCES
// forget it, and pgcloak.current_tenant() is then NULL: row-level security
// shows nothing, which is safe but is not what the application asked for
// (pgbouncer sends DISCARD ALL whenever it hands a server connection to
// another client). So after forwarding a simple Query whose text mentions
// DISCARD, or a Sync after a Bind of a statement whose text does, the
// client goroutine pins the
// session again before it reads the client's next message: it draws a
// challenge and calls pgcloak.pin() as pinTenant does, with its own
// messages, whose answers the upstream goroutine takes out of the stream.
// A text that only mentions the word costs two round trips and pins the
// same tenant again, which changes nothing.
//
// The upstream goroutine knows which answers are the proxy's by counting:
// PostgreSQL answers every Query, Sync and FunctionCall with exactly one
// ReadyForQuery, in order, so the answers to the proxy's Sync number n are
// the messages after ReadyForQuery n-1 up to ReadyForQuery n.

// internalCall is one statement of the proxy's own in the middle of a
// session, waiting for its answer.
type internalCall struct {
	target int64 // the ReadyForQuery that ends its answer (1-based)
	first  []byte
	code   string // SQLSTATE of an error, if one came
	done   chan struct{}
}

// repinState is shared by the two goroutines of a session.
type repinState struct {
	mu      sync.Mutex
	call    *internalCall
	rfqSeen int64 // ReadyForQuery messages received (upstream goroutine)
	pending bool  // a pin is owed (client goroutine)
	// discards holds the prepared statements whose text mentions
	// DISCARD; bound is set when one was bound since the last Sync.
	discards map[string]bool
	bound    bool
}

// mentionsDiscard reports whether sql contains "discard" in any case.
func mentionsDiscard(sql string) bool { return containsFold(sql, "discard") }

// repinsAfterDiscard reports whether the session's pin must be renewed
// after DISCARD: a session with a verified pin.
func (s *session) repinsAfterDiscard() bool { return s.scoped && !s.tokens && s.srv.pinner != nil }

// afterClientMessage runs in the client goroutine after msg was handled:
// it notes whether the client is in the middle of a round, and when msg
// completed a round that may have discarded the pin (DISCARD; for a token
// session also RESET), it makes the pin owed: beforeClientMessage or
// beforeTokenMessage makes it before the next round.
func (s *session) afterClientMessage(msg pgproto3.FrontendMessage) error {
	switch msg.(type) {
	case *pgproto3.Sync, *pgproto3.FunctionCall:
		s.tok.midRound = false
	case *pgproto3.Query:
		// Ends a round, unless sent inside an extended-protocol one:
		// that round still waits for its Sync, and the proxy's own
		// statements (which use the unnamed statement) must wait too.
	case *pgproto3.CopyData, *pgproto3.CopyDone, *pgproto3.CopyFail, *pgproto3.Flush:
		// A Flush asks for answers; it neither starts nor ends a round.
	default:
		s.tok.midRound = true
	}
	mentions := mentionsDiscard
	switch {
	case s.tokens:
		mentions = mayDropPin
	case !s.repinsAfterDiscard():
		return nil
	}
	r := &s.repin
	switch m := msg.(type) {
	case *pgproto3.Parse:
		if mentions(m.Query) {
			if r.discards == nil {
				r.discards = make(map[string]bool)
			}
			r.discards[m.Name] = true
		} else {
			delete(r.discards, m.Name)
		}
	case *pgproto3.Bind:
		r.bound = r.bound || r.discards[m.PreparedStatement]
	case *pgproto3.Close:
		if m.ObjectType == 'S' {
			delete(r.discards, m.Name)
		}
	case *pgproto3.Query:
		if mentions(m.String) {
			r.pending = true
		}
	case *pgproto3.Sync:
		if r.bound {
			r.bound, r.pending = false, true
		}
	}
	return nil
}

// beforeClientMessage runs in the client goroutine before msg is handled:
// a pin owed since the last round is made first, between rounds, never
// while PostgreSQL expects COPY data (a COPY FROM STDIN whose text
// mentions DISCARD).
func (s *session) beforeClientMessage(msg pgproto3.FrontendMessage) error {
	if !s.repin.pending || s.tok.midRound || isCopyData(msg) || !s.repinsAfterDiscard() {
		return nil
	}
	return s.pinAgain()
}

// pinAgain draws a challenge and calls pgcloak.pin() in the middle of the
// session. In a failed transaction block (25P02) the pin stays owed and is
// tried again after the client's next round; any other failure ends the
// session, which must not go on without its tenant.
func (s *session) pinAgain() error {
	challenge, code, err := s.callInternal(keystore.ChallengeStatement)
	if err != nil {
		return err
	}
	if code == pgerrcode.InFailedSQLTransaction {
		return nil
	}
	if code != "" {
		return fmt.Errorf("pinning the tenant again after DISCARD failed upstream with SQLSTATE %s", code)
	}
	c, err := strconv.ParseInt(string(challenge), 10, 64)
	if err != nil {
		return fmt.Errorf("pinning the tenant again: pgcloak.pin_challenge() returned %q", challenge)
	}
	mac := s.srv.pinner.MAC(c, s.tenant, s.proof)
	_, code, err = s.callInternal(pinSQL, s.pinArgs(mac)...)
	if err != nil {
		return err
	}
	if code == pgerrcode.InFailedSQLTransaction {
		return nil
	}
	if code != "" {
		return fmt.Errorf("pinning the tenant again after DISCARD failed upstream with SQLSTATE %s", code)
	}
	s.repin.pending = false
	return nil
}

// callInternal sends one statement of the proxy's own behind everything the
// client sent so far and waits until the upstream goroutine has taken its
// answer out of the stream. It returns the first column of the first row
// and the SQLSTATE of an error.
func (s *session) callInternal(sql string, params ...[]byte) ([]byte, string, error) {
	call := &internalCall{done: make(chan struct{})}
	s.repin.mu.Lock()
	call.target = s.upstreamOut.syncs + 1
	s.repin.call = call
	s.repin.mu.Unlock()
	if err := s.sendInternal(sql, params); err != nil {
		return nil, "", fmt.Errorf("upstream write: %w", err)
	}
	for {
		select {
		case <-call.done:
			return call.first, call.code, nil
		case <-time.After(100 * time.Millisecond):
			if s.closed.Load() {
				return nil, "", errDone
			}
		}
	}
}

// takeInternal runs in the upstream goroutine for every message received:
// it reports whether msg answers a statement of the proxy's own, which the
// client must not see.
func (s *session) takeInternal(msg pgproto3.BackendMessage) bool {
	s.repin.mu.Lock()
	defer s.repin.mu.Unlock()
	call := s.repin.call
	_, rfq := msg.(*pgproto3.ReadyForQuery)
	if call == nil || s.repin.rfqSeen < call.target-1 {
		if rfq {
			s.repin.rfqSeen++
		}
		return false
	}
	switch m := msg.(type) {
	case *pgproto3.ParameterStatus, *pgproto3.NoticeResponse:
		return false // the client's to see, and the lexer guard's to note
	case *pgproto3.DataRow:
		if call.first == nil && len(m.Values) > 0 && m.Values[0] != nil {
			call.first = append([]byte{}, m.Values[0]...)
		}
	case *pgproto3.ErrorResponse:
		call.code = m.Code
	case *pgproto3.ReadyForQuery:
		s.repin.rfqSeen++
		s.repin.call = nil
		close(call.done)
	}
	return true
}
