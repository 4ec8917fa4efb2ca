package crypto

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"encoding/binary"
	"errors"
	"testing"
)

type envelopeVector struct {
	Name      string `json:"name"`
	Key       string `json:"key"`
	Version   uint32 `json:"version"`
	Tenant    string `json:"tenant"`
	Table     string `json:"table"`
	Column    string `json:"column"`
	Nonce     string `json:"nonce"`
	Plaintext string `json:"plaintext"`
	Sealed    string `json:"sealed"`
}

// TestEnvelopeVectors checks the value format byte for byte against vectors
// computed outside Go (testdata/envelope_vectors.json).
func TestEnvelopeVectors(t *testing.T) {
	var vectors []envelopeVector
	readVectors(t, "envelope_vectors.json", &vectors)
	if len(vectors) == 0 {
		t.Fatal("no vectors")
	}
	for _, v := range vectors {
		t.Run(v.Name, func(t *testing.T) {
			e := mustEnvelope(t, mustHex(t, v.Key), v.Version)
			id := ValueID{Tenant: v.Tenant, Table: v.Table, Column: v.Column}
			want := mustHex(t, v.Sealed)

			got := e.seal(nil, []byte(v.Plaintext), mustHex(t, v.Nonce), id)
			if !bytes.Equal(got, want) {
				t.Errorf("seal:\ngot  %x\nwant %x", got, want)
			}
			pt, err := e.Open(nil, want, id)
			if err != nil {
				t.Fatalf("open: got %v, want nil", err)
			}
			if string(pt) != v.Plaintext {
				t.Errorf("open: got %q, want %q", pt, v.Plaintext)
			}
			if ver, err := KeyVersion(want); err != nil || ver != v.Version {
				t.Errorf("KeyVersion: got %d, %v, want %d, nil", ver, err, v.Version)
			}
		})
	}
}

// TestEnvelopeIndependentFormat rebuilds a sealed value from the documented
// format with crypto/cipher directly.
func TestEnvelopeIndependentFormat(t *testing.T) {
	key := testKey(1)
	id := ValueID{Tenant: "acme", Table: "public.patients", Column: "ssn"}
	sealed := mustEnvelope(t, key, 9).Seal(nil, []byte("123-45-6789"), id)

	if sealed[0] != 0x01 {
		t.Fatalf("format byte: got %#x, want 0x01", sealed[0])
	}
	if v := binary.BigEndian.Uint32(sealed[1:5]); v != 9 {
		t.Fatalf("version: got %d, want 9", v)
	}
	var aad []byte
	aad = append(aad, 0x01, 0, 0, 0, 9)
	for _, s := range []string{id.Tenant, id.Table, id.Column} {
		aad = binary.BigEndian.AppendUint32(aad, uint32(len(s)))
		aad = append(aad, s...)
	}
	block, _ := aes.NewCipher(key)
	gcm, _ := cipher.NewGCM(block)
	pt, err := gcm.Open(nil, sealed[5:17], sealed[17:], aad)
	if err != nil {
		t.Fatalf("open with the documented aad: %v", err)
	}
	if string(pt) != "123-45-6789" {
		t.Errorf("plaintext: got %q, want %q", pt, "123-45-6789")
	}
	if len(sealed) != len("123-45-6789")+Overhead {
		t.Errorf("length: got %d, want %d", len(sealed), len("123-45-6789")+Overhead)
	}
}

func TestSealAppendsWithExactCapacity(t *testing.T) {
	e := mustEnvelope(t, testKey(1), 1)
	id := ValueID{"acme", "public.t", "c"}
	prefix := []byte("prefix")
	got := e.Seal(prefix, []byte("hello"), id)
	if want := len(prefix) + 5 + Overhead; len(got) != want || cap(got) != want {
		t.Errorf("len, cap: got %d, %d, want %d, %d", len(got), cap(got), want, want)
	}
	if !bytes.Equal(got[:len(prefix)], prefix) {
		t.Errorf("prefix: got %q, want %q", got[:len(prefix)], prefix)
	}
	pt, err := e.Open([]byte("x"), got[len(prefix):], id)
	if err != nil || string(pt) != "xhello" {
		t.Errorf("open: got %q, %v, want %q, nil", pt, err, "xhello")
	}

	if raceEnabled {
		return // allocation counts are meaningless under the race detector
	}
	buf := make([]byte, 0, 64)
	hello := []byte("hello")
	allocs := testing.AllocsPerRun(100, func() {
		buf = e.Seal(buf[:0], hello, id)
	})
	if allocs != 0 {
		t.Errorf("Seal into a large enough dst: got %v allocations, want 0", allocs)
	}
	sealed := e.Seal(nil, []byte("hello"), id)
	out := make([]byte, 0, 64)
	allocs = testing.AllocsPerRun(100, func() {
		out, _ = e.Open(out[:0], sealed, id)
	})
	if allocs != 0 {
		t.Errorf("Open into a large enough dst: got %v allocations, want 0", allocs)
	}
}

// TestOpenRejectsTampering flips every bit of a sealed value, truncates it
// at every length and extends it: each must be ErrDecrypt.
func TestOpenRejectsTampering(t *testing.T) {
	e := mustEnvelope(t, testKey(1), 5)
	id := ValueID{"acme", "public.patients", "ssn"}
	sealed := e.Seal(nil, []byte("123-45-6789"), id)

	for i := range sealed {
		for bit := range 8 {
			v := bytes.Clone(sealed)
			v[i] ^= 1 << bit
			if pt, err := e.Open(nil, v, id); err != ErrDecrypt {
				t.Fatalf("bit %d of byte %d flipped: got %q, %v, want ErrDecrypt", bit, i, pt, err)
			}
		}
	}
	for n := range len(sealed) {
		if pt, err := e.Open(nil, sealed[:n], id); err != ErrDecrypt {
			t.Fatalf("truncated to %d bytes: got %q, %v, want ErrDecrypt", n, pt, err)
		}
	}
	if _, err := e.Open(nil, append(bytes.Clone(sealed), 0), id); err != ErrDecrypt {
		t.Errorf("extended by a byte: got %v, want ErrDecrypt", err)
	}
	if _, err := e.Open(nil, sealed, id); err != nil {
		t.Errorf("untouched: got %v, want nil", err)
	}
}

// TestOpenRejectsOtherIdentity flips every bit of each associated-data
// string and tries other tenants, tables, columns, key versions and keys.
func TestOpenRejectsOtherIdentity(t *testing.T) {
	key := testKey(1)
	e := mustEnvelope(t, key, 5)
	id := ValueID{"acme", "public.patients", "ssn"}
	sealed := e.Seal(nil, []byte("123-45-6789"), id)

	fields := []struct {
		name string
		get  func(*ValueID) *string
	}{
		{"tenant", func(v *ValueID) *string { return &v.Tenant }},
		{"table", func(v *ValueID) *string { return &v.Table }},
		{"column", func(v *ValueID) *string { return &v.Column }},
	}
	for _, f := range fields {
		t.Run(f.name, func(t *testing.T) {
			orig := *f.get(&id)
			for i := range len(orig) {
				for bit := range 8 {
					other := id
					b := []byte(orig)
					b[i] ^= 1 << bit
					*f.get(&other) = string(b)
					if _, err := e.Open(nil, sealed, other); err != ErrDecrypt {
						t.Fatalf("byte %d bit %d flipped: got %v, want ErrDecrypt", i, bit, err)
					}
				}
			}
			for _, s := range []string{"", orig + "x", orig[:len(orig)-1]} {
				other := id
				*f.get(&other) = s
				if _, err := e.Open(nil, sealed, other); err != ErrDecrypt {
					t.Errorf("%s %q: got %v, want ErrDecrypt", f.name, s, err)
				}
			}
		})
	}

	t.Run("length prefixes", func(t *testing.T) {
		v := e.Seal(nil, []byte("x"), ValueID{"acme", "ab", "c"})
		if _, err := e.Open(nil, v, ValueID{"acme", "a", "bc"}); err != ErrDecrypt {
			t.Errorf(`("ab","c") opened as ("a","bc"): got %v, want ErrDecrypt`, err)
		}
		v = e.Seal(nil, []byte("x"), ValueID{"ac", "me.t", "c"})
		if _, err := e.Open(nil, v, ValueID{"acme", ".t", "c"}); err != ErrDecrypt {
			t.Errorf("tenant/table boundary moved: got %v, want ErrDecrypt", err)
		}
	})
	t.Run("other version of the same key", func(t *testing.T) {
		if _, err := mustEnvelope(t, key, 6).Open(nil, sealed, id); err != ErrDecrypt {
			t.Errorf("got %v, want ErrDecrypt", err)
		}
		// The version is authenticated: relabelling the value does not help.
		v := bytes.Clone(sealed)
		binary.BigEndian.PutUint32(v[1:5], 6)
		if _, err := mustEnvelope(t, key, 6).Open(nil, v, id); err != ErrDecrypt {
			t.Errorf("relabelled: got %v, want ErrDecrypt", err)
		}
	})
	t.Run("other key", func(t *testing.T) {
		if _, err := mustEnvelope(t, testKey(2), 5).Open(nil, sealed, id); err != ErrDecrypt {
			t.Errorf("got %v, want ErrDecrypt", err)
		}
	})
}

func TestSealNeverRepeatsANonce(t *testing.T) {
	const n = 100_000
	e := mustEnvelope(t, testKey(1), 1)
	id := ValueID{"acme", "public.t", "c"}
	seen := make(map[[NonceSize]byte]struct{}, n)
	buf := make([]byte, 0, Overhead+1)
	for i := range n {
		buf = e.Seal(buf[:0], []byte("x"), id)
		nonce := [NonceSize]byte(buf[5:headerSize])
		if _, dup := seen[nonce]; dup {
			t.Fatalf("seal %d: nonce %x repeated", i, nonce)
		}
		seen[nonce] = struct{}{}
	}
}

func TestKeyVersion(t *testing.T) {
	e := mustEnvelope(t, testKey(1), 0x01020304)
	sealed := e.Seal(nil, nil, ValueID{})
	if v, err := KeyVersion(sealed); err != nil || v != 0x01020304 {
		t.Errorf("sealed: got %d, %v, want %d, nil", v, err, 0x01020304)
	}
	bad := map[string][]byte{
		"empty":          nil,
		"short":          sealed[:Overhead-1],
		"format 0x02":    append([]byte{0x02}, sealed[1:]...),
		"version 0":      append([]byte{0x01, 0, 0, 0, 0}, sealed[5:]...),
		"plaintext-like": []byte("this is not a sealed value at all"),
	}
	for name, v := range bad {
		if got, err := KeyVersion(v); !errors.Is(err, ErrDecrypt) {
			t.Errorf("%s: got %d, %v, want ErrDecrypt", name, got, err)
		}
	}
}

func TestNewEnvelopeRejectsBadKeys(t *testing.T) {
	if _, err := newEnvelope(make([]byte, 16), 1); err == nil {
		t.Error("16-byte key: got nil error, want one")
	}
	if _, err := newEnvelope(make([]byte, 32), 0); err == nil {
		t.Error("version 0: got nil error, want one")
	}
}

func BenchmarkSeal(b *testing.B) {
	e := mustEnvelope(b, testKey(1), 1)
	id := ValueID{"acme", "public.patients", "ssn"}
	pt := []byte("123-45-6789")
	buf := make([]byte, 0, 128)
	b.ReportAllocs()
	for b.Loop() {
		buf = e.Seal(buf[:0], pt, id)
	}
}

func BenchmarkOpen(b *testing.B) {
	e := mustEnvelope(b, testKey(1), 1)
	id := ValueID{"acme", "public.patients", "ssn"}
	sealed := e.Seal(nil, []byte("123-45-6789"), id)
	buf := make([]byte, 0, 128)
	b.ReportAllocs()
	for b.Loop() {
		buf, _ = e.Open(buf[:0], sealed, id)
	}
}
