package crypto

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"strings"
	"sync"
	"testing"
)

type blindIndexVector struct {
	Name      string `json:"name"`
	Key       string `json:"key"`
	Tenant    string `json:"tenant"`
	Table     string `json:"table"`
	Column    string `json:"column"`
	Normalize string `json:"normalize"`
	Value     string `json:"value"`
	Index     string `json:"index"`
}

func mustBlindIndex(t testing.TB, key []byte) *BlindIndex {
	t.Helper()
	b, err := newBlindIndex(key)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestBlindIndexVectors checks index values byte for byte against vectors
// computed outside Go (testdata/blindindex_vectors.json).
func TestBlindIndexVectors(t *testing.T) {
	var vectors []blindIndexVector
	readVectors(t, "blindindex_vectors.json", &vectors)
	if len(vectors) == 0 {
		t.Fatal("no vectors")
	}
	seen := map[string]string{}
	for _, v := range vectors {
		t.Run(v.Name, func(t *testing.T) {
			b := mustBlindIndex(t, mustHex(t, v.Key))
			got := b.Sum(nil, []byte(v.Value), ValueID{v.Tenant, v.Table, v.Column}, Normalization(v.Normalize))
			if want := mustHex(t, v.Index); !bytes.Equal(got, want) {
				t.Errorf("got %x, want %x", got, want)
			}
			if len(got) != BlindIndexSize {
				t.Errorf("length: got %d, want %d", len(got), BlindIndexSize)
			}
		})
		seen[v.Name] = v.Index
	}
	// The vectors themselves show the properties the SPEC promises.
	differ := [][2]string{
		{"ssn", "same ssn other tenant key"},
		{"ssn", "same ssn other column"},
		{"ab|c", "a|bc"},
		{"email lower", "email none keeps case"},
	}
	for _, d := range differ {
		if seen[d[0]] == seen[d[1]] {
			t.Errorf("%q and %q: got equal indexes, want different", d[0], d[1])
		}
	}
	if seen["email lower"] != seen["email already lower"] {
		t.Errorf("lower of %q and %q: got different indexes, want equal", "Alice@Example.COM", "alice@example.com")
	}
}

// TestBlindIndexIndependent recomputes an index from the documented message.
func TestBlindIndexIndependent(t *testing.T) {
	key := testKey(3)
	id := ValueID{"acme", "public.patients", "email"}
	got := mustBlindIndex(t, key).Sum([]byte("p"), []byte("Bob@X.org"), id, NormalizeLower)

	msg := []byte{0x01}
	for _, s := range []string{id.Tenant, id.Table, id.Column, "bob@x.org"} {
		msg = binary.BigEndian.AppendUint32(msg, uint32(len(s)))
		msg = append(msg, s...)
	}
	m := hmac.New(sha256.New, key)
	m.Write(msg)
	want := append([]byte("p"), m.Sum(nil)[:16]...)
	if !bytes.Equal(got, want) {
		t.Errorf("got %x, want %x", got, want)
	}
}

func TestBlindIndexSeparates(t *testing.T) {
	b := mustBlindIndex(t, testKey(3))
	base := ValueID{"acme", "public.patients", "ssn"}
	value := []byte("123-45-6789")
	ref := b.Sum(nil, value, base, NormalizeNone)
	others := map[string][]byte{
		"other tenant":  b.Sum(nil, value, ValueID{"globex", base.Table, base.Column}, NormalizeNone),
		"other table":   b.Sum(nil, value, ValueID{base.Tenant, "public.people", base.Column}, NormalizeNone),
		"other column":  b.Sum(nil, value, ValueID{base.Tenant, base.Table, "ssn2"}, NormalizeNone),
		"other value":   b.Sum(nil, []byte("123-45-6780"), base, NormalizeNone),
		"other key":     mustBlindIndex(t, testKey(4)).Sum(nil, value, base, NormalizeNone),
		"value shifted": b.Sum(nil, []byte("ssn123-45-6789"), ValueID{base.Tenant, base.Table, ""}, NormalizeNone),
	}
	for name, got := range others {
		if bytes.Equal(got, ref) {
			t.Errorf("%s: got the same index, want a different one", name)
		}
	}
	if again := b.Sum(nil, value, base, ""); !bytes.Equal(again, ref) {
		t.Errorf(`normalization "": got %x, want %x (as none)`, again, ref)
	}
}

func TestBlindIndexUnknownNormalizationPanics(t *testing.T) {
	b := mustBlindIndex(t, testKey(3))
	defer func() {
		if recover() == nil {
			t.Error("got no panic, want one")
		}
	}()
	b.Sum(nil, []byte("x"), ValueID{}, "upper")
}

func TestBlindIndexConcurrent(t *testing.T) {
	b := mustBlindIndex(t, testKey(3))
	id := ValueID{"acme", "public.t", "c"}
	want := b.Sum(nil, []byte("v"), id, NormalizeLower)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 1000 {
				if got := b.Sum(nil, []byte("V"), id, NormalizeLower); !bytes.Equal(got, want) {
					t.Errorf("got %x, want %x", got, want)
					return
				}
			}
		})
	}
	wg.Wait()
}

func TestBlindIndexAllocations(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are meaningless under the race detector")
	}
	b := mustBlindIndex(t, testKey(3))
	id := ValueID{"acme", "public.t", "c"}
	value := []byte("Alice@Example.com")
	buf := make([]byte, 0, BlindIndexSize)
	b.Sum(buf, value, id, NormalizeLower) // warm the pool
	allocs := testing.AllocsPerRun(100, func() {
		buf = b.Sum(buf[:0], value, id, NormalizeLower)
	})
	if allocs != 0 {
		t.Errorf("got %v allocations, want 0", allocs)
	}
}

func FuzzAppendLower(f *testing.F) {
	for _, s := range []string{"", "ABC", "ÉLODIE", "ẞ", "\xff\xfeA", "İstanbul", "ǅ", "😀X", "a\x00B"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if got, want := string(appendLower(nil, []byte(s))), strings.ToLower(s); got != want {
			t.Errorf("appendLower(%q): got %q, want %q (strings.ToLower)", s, got, want)
		}
	})
}

func BenchmarkBlindIndex(b *testing.B) {
	bi := mustBlindIndex(b, testKey(3))
	id := ValueID{"acme", "public.patients", "email"}
	value := []byte("alice@example.com")
	buf := make([]byte, 0, BlindIndexSize)
	b.ReportAllocs()
	for b.Loop() {
		buf = bi.Sum(buf[:0], value, id, NormalizeLower)
	}
}
