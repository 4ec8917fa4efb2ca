package proxy

import (
	"bytes"
	"encoding/binary"
	"io"
	"math/rand/v2"
	"testing"
)

// chunkedReader returns its bytes a few at a time, as a socket may.
type chunkedReader struct {
	b   []byte
	rnd *rand.Rand
}

func (r *chunkedReader) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	n := min(len(p), len(r.b), 1+r.rnd.IntN(700))
	copy(p, r.b[:n])
	r.b = r.b[n:]
	return n, nil
}

// TestFramesWholeMessages: however the bytes arrive, frames hands out
// exactly the messages that were sent, one whole message at a time (also
// those larger than its buffer), and hands a header the decoder refuses
// out alone.
func TestFramesWholeMessages(t *testing.T) {
	var stream bytes.Buffer
	var want [][]byte
	add := func(typ byte, body []byte) {
		m := append([]byte{typ, 0, 0, 0, 0}, body...)
		binary.BigEndian.PutUint32(m[1:], uint32(4+len(body)))
		stream.Write(m)
		want = append(want, m)
	}
	rnd := rand.New(rand.NewPCG(1, 2))
	for i := range 300 {
		size := rnd.IntN(300)
		if i%50 == 7 {
			size = 100_000 // larger than any read
		}
		add("QPBES"[i%5], bytes.Repeat([]byte{byte(i)}, size))
	}
	f := newFrames(&chunkedReader{b: stream.Bytes(), rnd: rnd}, 1<<20, frontendTypes, 8<<10)
	for i, w := range want {
		if err := f.next(); err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		if !bytes.Equal(f.feed.b, w) {
			t.Fatalf("message %d: got %d bytes, want %d", i, len(f.feed.b), len(w))
		}
	}
	if err := f.next(); err != io.EOF {
		t.Fatalf("after the last message: %v, want EOF", err)
	}

	for _, bad := range [][]byte{
		{'Q', 0, 0, 0, 2},          // length below 4
		{'Q', 0x7f, 0, 0, 0},       // over maxBody
		{'z', 0, 0, 0, 4},          // not a frontend message type
		{'Q', 0xff, 0xff, 0xff, 0}, // negative
	} {
		f := newFrames(bytes.NewReader(append(bad, "rest of it"...)), 1<<20, frontendTypes, 8<<10)
		if err := f.next(); err != nil {
			t.Fatalf("%x: %v", bad, err)
		}
		if !bytes.Equal(f.feed.b, bad) {
			t.Errorf("%x: handed out %x, want the header alone", bad, f.feed.b)
		}
	}
}
