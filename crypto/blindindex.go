package crypto

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"sync"
	"unicode"
	"unicode/utf8"
)

// BlindIndexSize is the length of a blind-index value: HMAC-SHA256
// truncated to 128 bits.
const BlindIndexSize = 16

// Normalization is how a value is normalised before it is indexed. Its
// values are the strings of the configuration's encrypt.tables[].columns[]
// .normalize and are persisted implicitly in every index value: never change
// what one means.
type Normalization string

// Normalisations.
const (
	// NormalizeNone indexes the value as given. The empty Normalization
	// means the same.
	NormalizeNone Normalization = "none"
	// NormalizeLower indexes strings.ToLower of the value (Unicode simple
	// lower-case mapping, no NFC), for case-insensitive equality.
	NormalizeLower Normalization = "lower"
)

// BlindIndex computes equality-searchable index values with one tenant's
// index key. It is immutable and safe for concurrent use.
type BlindIndex struct {
	// pool hands out HMAC states cloned from one keyed at load time, so that
	// no call reads the raw key (which eviction zeroes).
	pool sync.Pool
}

// bidxState is one goroutine's HMAC and scratch space.
type bidxState struct {
	mac hash.Hash
	msg []byte
	sum [sha256.Size]byte
}

// newBlindIndex keys HMAC-SHA256 with a 32-byte index key. It does not keep
// key: the keyed HMAC state is cloned for each user.
func newBlindIndex(key []byte) (*BlindIndex, error) {
	if len(key) != KeySize {
		return nil, errors.New("crypto: index key must be 32 bytes")
	}
	base := hmac.New(sha256.New, key)
	base.Reset() // precompute the padded-key states once
	cloner, ok := base.(hash.Cloner)
	if !ok {
		return nil, errors.New("crypto: HMAC-SHA256 state cannot be cloned")
	}
	if _, err := cloner.Clone(); err != nil {
		return nil, fmt.Errorf("crypto: clone HMAC-SHA256 state: %w", err)
	}
	b := &BlindIndex{}
	b.pool.New = func() any {
		c, err := cloner.Clone() // read-only on base: safe concurrently
		if err != nil {
			panic("crypto: clone HMAC-SHA256 state: " + err.Error()) // checked above
		}
		return &bidxState{mac: c}
	}
	return b, nil
}

// Sum computes the blind index of value, the canonical text of a value of
// the cell id, after normalising it, and appends the BlindIndexSize bytes
// to dst. It panics on a Normalization it does not know, which config
// validation rules out.
//
// The index is HMAC-SHA256(index key, message) truncated to its first 16
// bytes, where the message length-prefixes every part:
//
//	0x01 | len(tenant) (uint32 BE) | tenant
//	     | len(table)  (uint32 BE) | table   ("schema.table")
//	     | len(column) (uint32 BE) | column
//	     | len(value)  (uint32 BE) | normalised value
//
// The index key is the tenant's own, so equal values of different tenants
// have unrelated indexes; the tenant is in the message as well, so they
// would stay unrelated even under a shared key. Equal values of different
// columns have unrelated indexes because the column is in the message.
func (b *BlindIndex) Sum(dst, value []byte, id ValueID, norm Normalization) []byte {
	s := b.pool.Get().(*bidxState)
	m := s.msg[:0]
	m = append(m, FormatV1)
	m = appendString(m, id.Tenant)
	m = appendString(m, id.Table)
	m = appendString(m, id.Column)
	switch norm {
	case NormalizeNone, "":
		m = binary.BigEndian.AppendUint32(m, uint32(len(value)))
		m = append(m, value...)
	case NormalizeLower:
		at := len(m)
		m = append(m, 0, 0, 0, 0)
		m = appendLower(m, value)
		binary.BigEndian.PutUint32(m[at:], uint32(len(m)-at-4))
	default:
		b.pool.Put(s)
		panic(fmt.Sprintf("crypto: unknown normalization %q", string(norm)))
	}
	s.mac.Reset()
	s.mac.Write(m)
	sum := s.mac.Sum(s.sum[:0])
	dst = append(dst, sum[:BlindIndexSize]...)
	clear(m) // the message holds the plaintext
	if cap(m) <= 4096 {
		s.msg = m
	} else {
		s.msg = nil
	}
	b.pool.Put(s)
	return dst
}

// appendLower appends strings.ToLower(string(s)) to b without converting:
// each rune, an invalid byte decoding as U+FFFD, maps through
// unicode.ToLower as strings.Map does.
func appendLower(b, s []byte) []byte {
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if 'A' <= c && c <= 'Z' {
				c += 'a' - 'A'
			}
			b = append(b, c)
			i++
			continue
		}
		r, size := utf8.DecodeRune(s[i:])
		b = utf8.AppendRune(b, unicode.ToLower(r))
		i += size
	}
	return b
}
