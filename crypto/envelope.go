package crypto

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"sync"
)

// FormatV1 is the first byte of every sealed value and of its associated
// data. It is persisted in every encrypted column: never renumber it, and
// give any future format a new, explicit value.
const FormatV1 byte = 0x01

// Sizes of the value format.
const (
	KeySize    = 32 // AES-256 data keys
	NonceSize  = 12 // AES-GCM standard nonce
	TagSize    = 16 // AES-GCM tag
	headerSize = 1 + 4 + NonceSize

	// Overhead is how many bytes Seal adds to a plaintext.
	Overhead = headerSize + TagSize
)

// ValueID names the cell a value belongs to. It is bound into the associated
// data of the value, so a value only opens for the exact tenant, table and
// column it was sealed for.
type ValueID struct {
	Tenant string
	Table  string // schema-qualified: "public.patients"
	Column string
}

// Envelope seals and opens values under one version of one tenant's data
// key. It holds the cipher.AEAD built once when the key was loaded. An
// Envelope is immutable and safe for concurrent use.
type Envelope struct {
	version uint32
	aead    cipher.AEAD
}

// newEnvelope builds the AEAD for a 32-byte data key. It does not keep key.
func newEnvelope(key []byte, version uint32) (*Envelope, error) {
	if len(key) != KeySize {
		return nil, errors.New("crypto: data key must be 32 bytes")
	}
	if version == 0 {
		return nil, errors.New("crypto: data key versions start at 1")
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	return &Envelope{version: version, aead: aead}, nil
}

// Version is the key version this Envelope seals with and opens.
func (e *Envelope) Version() uint32 { return e.version }

// Seal encrypts plaintext, the canonical text of one value, for the cell id
// and appends the sealed value to dst, which it returns. If dst lacks the
// room it allocates once, with exactly the capacity the result needs
// (len(dst)+len(plaintext)+Overhead). dst and plaintext must not overlap.
//
// The sealed value is what the bytea column stores:
//
//	+------+-------------------------+------------+------------------------+----------+
//	| 0x01 | key version (uint32 BE) | nonce (12) | AES-256-GCM ciphertext | tag (16) |
//	+------+-------------------------+------------+------------------------+----------+
//	   1              4                   12          len(plaintext)             16
//
// The nonce is random. With 96-bit random nonces one key may seal about 2^32
// values before the chance of a repeated nonce needs thinking about (NIST SP
// 800-38D, 8.3); rotate the tenant's key well before that.
//
// The associated data, not stored, binds the format byte, the key version
// and the cell; each string is prefixed with its length so that
// ("ab", "c") and ("a", "bc") differ:
//
//	0x01 | key version (uint32 BE)
//	     | len(tenant) (uint32 BE) | tenant
//	     | len(table)  (uint32 BE) | table   ("schema.table")
//	     | len(column) (uint32 BE) | column
func (e *Envelope) Seal(dst, plaintext []byte, id ValueID) []byte {
	return e.seal(dst, plaintext, nil, id)
}

// seal is Seal with a caller-chosen nonce when nonce is non-nil. Only tests
// choose nonces, to check fixed vectors; a repeated nonce under one key
// breaks GCM.
func (e *Envelope) seal(dst, plaintext, nonce []byte, id ValueID) []byte {
	ret, out := sliceForAppend(dst, len(plaintext)+Overhead)
	out[0] = FormatV1
	binary.BigEndian.PutUint32(out[1:5], e.version)
	n := out[5:headerSize]
	if nonce == nil {
		rand.Read(n) // never fails (crypto/rand, Go 1.24+)
	} else {
		copy(n, nonce)
	}
	aad := getAAD(e.version, id)
	e.aead.Seal(out[headerSize:headerSize], n, plaintext, *aad)
	putAAD(aad)
	return ret
}

// Open authenticates and decrypts a value sealed by Seal for the cell id and
// appends the plaintext to dst, allocating at most once. Any failure -
// too short, unknown format, another key version, another tenant, table or
// column, a flipped bit - is ErrDecrypt and nothing else.
func (e *Envelope) Open(dst, value []byte, id ValueID) ([]byte, error) {
	if len(value) < Overhead || value[0] != FormatV1 ||
		binary.BigEndian.Uint32(value[1:5]) != e.version {
		return nil, ErrDecrypt
	}
	aad := getAAD(e.version, id)
	out, err := e.aead.Open(dst, value[5:headerSize], value[headerSize:], *aad)
	putAAD(aad)
	if err != nil {
		return nil, ErrDecrypt
	}
	return out, nil
}

// KeyVersion returns the key version a sealed value names, so that the
// caller can find that version's key. A value too short to be sealed or of
// an unknown format is ErrDecrypt.
func KeyVersion(value []byte) (uint32, error) {
	if len(value) < Overhead || value[0] != FormatV1 {
		return 0, ErrDecrypt
	}
	v := binary.BigEndian.Uint32(value[1:5])
	if v == 0 {
		return 0, ErrDecrypt
	}
	return v, nil
}

// appendAAD appends the associated data of a value (see Seal).
func appendAAD(b []byte, version uint32, id ValueID) []byte {
	b = append(b, FormatV1)
	b = binary.BigEndian.AppendUint32(b, version)
	b = appendString(b, id.Tenant)
	b = appendString(b, id.Table)
	b = appendString(b, id.Column)
	return b
}

// appendString appends len(s) as a big-endian uint32 and then s.
func appendString(b []byte, s string) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(len(s)))
	return append(b, s...)
}

// aadPool recycles associated-data buffers: cipher.AEAD is an interface, so
// a stack buffer would escape and cost an allocation per value.
var aadPool = sync.Pool{New: func() any { b := make([]byte, 0, 128); return &b }}

func getAAD(version uint32, id ValueID) *[]byte {
	p := aadPool.Get().(*[]byte)
	*p = appendAAD((*p)[:0], version, id)
	return p
}

func putAAD(p *[]byte) {
	if cap(*p) > 4096 { // do not keep what one odd identifier grew
		return
	}
	aadPool.Put(p)
}

// sliceForAppend extends in by n bytes, reallocating with exactly the
// needed capacity when it lacks the room. It returns the whole slice and
// the n new bytes (as in crypto/cipher).
func sliceForAppend(in []byte, n int) (head, tail []byte) {
	if total := len(in) + n; cap(in) >= total {
		head = in[:total]
	} else {
		head = make([]byte, total)
		copy(head, in)
	}
	tail = head[len(in):]
	return head, tail
}
