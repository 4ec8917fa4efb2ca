package proxy

import (
	"encoding/binary"
	"errors"
	"io"
	"strings"
)

// frames cuts one direction of a session into whole protocol messages
// before pgproto3 decodes them. pgproto3's decoders buffer what they read
// ahead; fed one whole message at a time from feed, they keep nothing
// between two messages, so every byte not yet decoded is in buf. That is
// what lets a session change hands between messages: its own goroutines
// read the connection through next, the relay loop (tenantloop_linux.go)
// appends what it reads to buf itself, and neither loses what the other
// left half read.
type frames struct {
	src     io.Reader // the goroutines' source: the connection, through a flushingReader
	buf     []byte    // bytes read; buf[off:] are not yet decoded
	off     int
	feed    feedReader
	maxBody int
	types   string // the message types the decoder accepts; "" for any
	read    int    // the free space a read is given at least
}

// Read sizes: results can be large, so upstream is read in bigger chunks
// than pgproto3's own 8 KiB (fewer reads, and fewer flushes to the client,
// which happen before each read); clients mostly send small messages.
const (
	upstreamFrameRead = 32 << 10
	clientFrameRead   = 8 << 10
)

func newFrames(src io.Reader, maxBody int, types string, read int) *frames {
	return &frames{src: src, buf: make([]byte, 0, 2*read), maxBody: maxBody, types: types, read: read}
}

// feedReader hands pgproto3 the complete messages the relay has framed.
type feedReader struct{ b []byte }

var errFeedEmpty = errors.New("relay: message decoder wanted more bytes than the frame held")

func (f *feedReader) Read(p []byte) (int, error) {
	if len(f.b) == 0 {
		return 0, errFeedEmpty
	}
	n := copy(p, f.b)
	f.b = f.b[n:]
	return n, nil
}

// whole returns the length of the first message in buf[off:], 0 while it
// is incomplete. A header the decoder refuses on its own (a length out of
// range, an unknown type) counts as a whole 5-byte message: the decoder
// fails on it before wanting the body.
func (f *frames) whole() int {
	b := f.buf[f.off:]
	if len(b) < 5 {
		return 0
	}
	size := int(int32(binary.BigEndian.Uint32(b[1:])))
	if size < 4 || size-4 > f.maxBody || f.types != "" && strings.IndexByte(f.types, b[0]) < 0 {
		return 5
	}
	if len(b) < 1+size {
		return 0
	}
	return 1 + size
}

// firstSize returns the wire size of the first message once its header is
// buffered (whole or not), else 0.
func (f *frames) firstSize() int {
	b := f.buf[f.off:]
	if len(b) < 5 {
		return 0
	}
	return 1 + int(int32(binary.BigEndian.Uint32(b[1:])))
}

// peek returns the first whole message's bytes without taking it, or nil.
func (f *frames) peek() []byte {
	n := f.whole()
	if n == 0 {
		return nil
	}
	return f.buf[f.off : f.off+n]
}

// take hands the first whole message (which peek or whole found) to the
// decoder's feed.
func (f *frames) take(n int) {
	f.feed.b = f.buf[f.off : f.off+n]
	f.off += n
}

// buffered reports whether bytes wait to be decoded.
func (f *frames) buffered() bool { return f.off < len(f.buf) }

// next reads from src until a whole message is buffered and hands it to
// the decoder. An error is src's: the connection's.
func (f *frames) next() error {
	for {
		if n := f.whole(); n > 0 {
			f.take(n)
			return nil
		}
		space := f.space()
		n, err := f.src.Read(space)
		f.buf = f.buf[:len(f.buf)+n]
		if n == 0 && err != nil {
			return err
		}
	}
}

// space makes room after the buffered bytes for at least one read, and for
// the whole first message once its header is in, and returns it.
func (f *frames) space() []byte {
	want := f.read
	if rest := f.buf[f.off:]; len(rest) >= 5 {
		if size := int(int32(binary.BigEndian.Uint32(rest[1:]))); size > 0 && 1+size > len(rest) {
			want = max(want, 1+size-len(rest))
		}
	}
	if f.off == len(f.buf) {
		f.buf, f.off = f.buf[:0], 0
		if cap(f.buf) > 8*f.read && want <= f.read {
			f.buf = make([]byte, 0, 2*f.read) // after a large message
		}
	}
	if cap(f.buf)-len(f.buf) < want {
		rest := f.buf[f.off:]
		if len(rest)+want <= cap(f.buf) {
			f.buf = f.buf[:copy(f.buf, rest)] // may overlap: copy is a memmove
		} else {
			f.buf = append(make([]byte, 0, len(rest)+want+f.read), rest...)
		}
		f.off = 0
	}
	return f.buf[len(f.buf):cap(f.buf)]
}
