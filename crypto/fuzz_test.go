package crypto

import (
	"context"
	"testing"
)

// FuzzOpen feeds arbitrary bytes to Envelope.Open and Keyring.Open: they
// must never panic and never open anything but what was sealed. Seeds are
// genuine values, their truncations and relabelled versions.
func FuzzOpen(f *testing.F) {
	key := testKey(11)
	env, err := newEnvelope(key, 1)
	if err != nil {
		f.Fatal(err)
	}
	id := ValueID{"acme", "public.patients", "ssn"}
	sealed := env.Seal(nil, []byte("123-45-6789"), id)
	f.Add(sealed)
	f.Add(sealed[:Overhead])
	f.Add(sealed[:Overhead-1])
	f.Add([]byte{})
	f.Add([]byte{0x01})
	f.Add([]byte{0x01, 0, 0, 0, 2})
	f.Add(append([]byte{0x02}, sealed[1:]...))
	f.Add([]byte("\\x0100000001"))

	ring := NewKeyCache(NewMemoryKeySource(), mustLocalProvider(f, testKey(12)), CacheOptions{}).Keyring("acme")
	ctx := context.Background()
	if _, err := ring.Seal(ctx, nil, []byte("x"), ssnColumn); err != nil { // create acme's version 1
		f.Fatal(err)
	}

	f.Fuzz(func(t *testing.T, value []byte) {
		// Only "123-45-6789" was ever sealed under this key (by this process
		// or by the one that wrote the seed corpus), so it is all that may open.
		if pt, err := env.Open(nil, value, id); err != ErrDecrypt && (err != nil || string(pt) != "123-45-6789") {
			t.Fatalf("Envelope.Open(%x): got %q, %v, want ErrDecrypt", value, pt, err)
		}
		if pt, err := ring.Open(ctx, nil, value, ssnColumn); err != ErrDecrypt {
			t.Fatalf("Keyring.Open(%x): got %q, %v, want ErrDecrypt", value, pt, err)
		}
		KeyVersion(value)
	})
}
