package proxy

import (
	"encoding/binary"
	"io"

	"github.com/jackc/pgx/v5/pgproto3"
)

// encoder is any pgproto3 message: every message pgcloak writes is encoded
// by pgproto3, never by hand (with one exception, wideParameterDescription).
type encoder interface {
	Encode(dst []byte) ([]byte, error)
}

// wideParameterDescription is a ParameterDescription with more than 65535
// parameters, which PostgreSQL sends for a statement prepared with that many
// ($65536 and up): its Int16 count wraps around, and clients such as pgx take
// the count from the message length instead. pgproto3 decodes it that way but
// refuses to encode it, so it is written here exactly as PostgreSQL writes it:
// the same bytes, count wrapped to 16 bits. It is the one message pgcloak
// encodes without pgproto3.
type wideParameterDescription struct{ *pgproto3.ParameterDescription }

func (m wideParameterDescription) Encode(dst []byte) ([]byte, error) {
	n := len(m.ParameterOIDs)
	dst = append(dst, 't')
	dst = binary.BigEndian.AppendUint32(dst, uint32(4+2+4*n))
	dst = binary.BigEndian.AppendUint16(dst, uint16(n)) // wraps, as PostgreSQL's does
	for _, oid := range m.ParameterOIDs {
		dst = binary.BigEndian.AppendUint32(dst, oid)
	}
	return dst, nil
}

// outboxFlushSize bounds how much one direction buffers before it writes even
// though more input is already waiting, so a large result or COPY streams
// through with bounded memory.
const outboxFlushSize = 64 << 10

// outbox queues encoded messages for one direction of a session and writes
// them in one call per batch. It is not safe for concurrent use; a session
// guards the client outbox with a mutex because refusals and relayed results
// share it.
//
// pgproto3's Backend and Frontend have their own Send/Flush, but Flush there
// reallocates its buffer after every batch larger than 1 KiB; the outbox keeps
// one buffer for the life of the session.
type outbox struct {
	w   io.Writer
	buf []byte
	err error // first encode error, reported by flush
	// syncs counts the Query, Sync and FunctionCall messages sent, each of
	// which PostgreSQL answers with one ReadyForQuery (see repin.go).
	syncs int64
}

func newOutbox(w io.Writer) *outbox {
	return &outbox{w: w, buf: make([]byte, 0, 8192)}
}

// send appends msg to the batch. When the batch has grown past
// outboxFlushSize it is written at once.
func (o *outbox) send(msg encoder) error {
	if o.err != nil {
		return o.err
	}
	buf, err := msg.Encode(o.buf)
	if err != nil {
		o.err = err
		return err
	}
	o.buf = buf
	switch msg.(type) {
	case *pgproto3.Query, *pgproto3.Sync, *pgproto3.FunctionCall:
		o.syncs++
	}
	if len(o.buf) >= outboxFlushSize {
		return o.flush()
	}
	return nil
}

// sendRaw appends a whole encoded message to the batch, as send does.
func (o *outbox) sendRaw(msg []byte) error {
	if o.err != nil {
		return o.err
	}
	o.buf = append(o.buf, msg...)
	if len(o.buf) >= outboxFlushSize {
		return o.flush()
	}
	return nil
}

// pending reports whether messages are waiting to be written.
func (o *outbox) pending() bool { return len(o.buf) > 0 }

// flush writes the batch.
func (o *outbox) flush() error {
	if o.err != nil {
		return o.err
	}
	if len(o.buf) == 0 {
		return nil
	}
	_, err := o.w.Write(o.buf)
	o.buf = o.buf[:0]
	if err != nil {
		o.err = err
	}
	return err
}

// flushingReader is the io.Reader pgproto3 reads a connection through. Just
// before it would go back to the socket for more bytes — that is, when every
// message already received has been handled — it calls beforeRead, which
// flushes the other direction's outbox. That gives one write per batch of
// input: a pipeline of 100 Sync-separated statements arriving in one TCP
// segment leaves in one write, and a lone query is never held back.
//
// It also counts the bytes it has delivered, which the startup code compares
// with the bytes of the messages it handled: to detect data sent after an
// SSLRequest before the TLS handshake, and to know that nothing is left in
// pgproto3's buffer when a session moves to the relay loop.
type flushingReader struct {
	r          io.Reader
	beforeRead func() error
	n          int64 // bytes delivered
	err        error // the last error from the connection itself
}

// connErr returns the error the connection reported, if any. When pgproto3
// fails to receive a message and connErr is nil, the bytes were read fine
// and the message itself is malformed: decoders may return io.EOF for a
// missing terminator, so the error's type alone cannot tell a disconnect
// from a protocol violation.
func (fr *flushingReader) connErr() error { return fr.err }

func (fr *flushingReader) Read(p []byte) (int, error) {
	if fr.beforeRead != nil {
		if err := fr.beforeRead(); err != nil {
			fr.err = err
			return 0, err
		}
	}
	n, err := fr.r.Read(p)
	fr.n += int64(n)
	if err != nil {
		fr.err = err
	}
	return n, err
}

// upstreamReadBuffer is the size of a session's upstream read buffer.
const upstreamReadBuffer = 32 << 10
