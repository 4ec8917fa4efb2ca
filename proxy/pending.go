package proxy

import "sync"

// pendingKind says which client message a pending entry stands for, and so
// which upstream responses it accounts for.
type pendingKind uint8

const (
	pendQuery        pendingKind = iota + 1 // ... ReadyForQuery
	pendParse                               // ParseComplete
	pendBind                                // BindComplete
	pendDescribe                            // [ParameterDescription] RowDescription | NoData
	pendExecute                             // DataRow* CommandComplete | EmptyQueryResponse | PortalSuspended | CopyInResponse...
	pendClose                               // CloseComplete
	pendSync                                // ReadyForQuery
	pendFunctionCall                        // FunctionCallResponse ReadyForQuery
	pendRefusal                             // a refused Parse replaced by the raising statement: swallow its ParseComplete and BindComplete, relay its error
	pendCopyDescribe                        // the describe ahead of a COPY TO: swallow everything up to its ReadyForQuery
)

// pending is one client message whose responses have not all arrived. The
// client goroutine creates it when it forwards the message; the upstream
// goroutine consumes it as the responses arrive. Its fields are written
// before it is pushed and only read after.
type pending struct {
	kind pendingKind

	// name is the statement (Parse, Describe 'S', Close 'S') or portal
	// (Bind, Describe 'P', Execute, Close 'P') the message names.
	name string
	// stmt is the statement a Bind binds.
	stmt string
	// target is 'S' or 'P' for Describe and Close.
	target byte
	// resultFormats are a Bind's result format codes; upFormats, when
	// set, the ones the proxy sent upstream instead.
	resultFormats []int16
	upFormats     []int16
	// gen is the statement's generation a Describe 'S' or Bind saw
	// (shapeBoard); shape is the statement's row shape a Bind went by (nil:
	// none, or unknown and the proxy describes the portal).
	gen   uint64
	shape *rowShape
	// epoch is the shapeBoard epoch a Describe 'S' or Bind was sent in.
	epoch uint64
	// prepared is the rewritten statement a Parse or Describe 'S' names.
	prepared *preparedStatement
	// copy is the COPY a Query or pendCopyDescribe runs on a declared
	// table.
	copy *copyState
	// own marks a Describe 'P' or a Close the proxy sent itself (see
	// handleExecute, parseRewritten, token.go): its RowDescription, NoData
	// or CloseComplete is not relayed.
	own bool
	// token is the pin of a token statement whose portal a Bind, Describe
	// 'P' or Execute names (token.go).
	token *tokenPin
	// seal is what a token session's Bind sealed (extended.go): marked
	// done at its BindComplete.
	seal *portalSeal
	// reprepared is the statement a token session's own Parse prepared
	// again, for the idle count idle (reprepare), and confirmed marks a
	// client's Parse whose statement it records: both are confirmed at
	// the ParseComplete.
	reprepared, confirmed *upstreamParse
	idle                  int64
}

// pendingQueue is the FIFO of client messages awaiting responses, shared by
// a session's two goroutines: the client goroutine pushes, the upstream
// goroutine peeks and pops. PostgreSQL answers messages in order, so the
// head of the queue is always what the next response answers.
type pendingQueue struct {
	mu    sync.Mutex
	items []*pending
	head  int
}

func (q *pendingQueue) push(p *pending) {
	q.mu.Lock()
	q.items = append(q.items, p)
	q.mu.Unlock()
}

// empty reports whether no response is awaited.
func (q *pendingQueue) empty() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.head == len(q.items)
}

// peek returns the oldest entry, or nil.
func (q *pendingQueue) peek() *pending {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.head == len(q.items) {
		return nil
	}
	return q.items[q.head]
}

// pop removes and returns the oldest entry, or nil.
func (q *pendingQueue) pop() *pending {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.head == len(q.items) {
		return nil
	}
	p := q.items[q.head]
	q.items[q.head] = nil
	q.head++
	if q.head == len(q.items) {
		q.items = q.items[:0]
		q.head = 0
	}
	return p
}

// skipToSync drops entries up to, not including, the next pendSync or
// pendQuery: what PostgreSQL does with the rest of an extended-protocol
// batch after an error. A rewritten statement whose Parse PostgreSQL
// skipped is marked failed, as one whose Parse it rejected: the client's
// name is free again.
func (q *pendingQueue) skipToSync() {
	q.mu.Lock()
	defer q.mu.Unlock()
	for q.head < len(q.items) {
		p := q.items[q.head]
		k := p.kind
		if k == pendSync || k == pendQuery || k == pendFunctionCall || k == pendCopyDescribe {
			break
		}
		if k == pendParse && p.prepared != nil {
			p.prepared.failed.Store(true)
		}
		q.items[q.head] = nil
		q.head++
	}
	if q.head == len(q.items) {
		q.items = q.items[:0]
		q.head = 0
	}
}
