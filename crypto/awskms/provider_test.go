package awskms

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgcloak/pgcloak/crypto"
	"github.com/pgcloak/pgcloak/testenv"
)

// fakeCredentials points the SDK's default chain at static test
// credentials only: no shared files, no instance metadata.
func fakeCredentials(t *testing.T) {
	t.Helper()
	dir := t.TempDir()
	t.Setenv("AWS_ACCESS_KEY_ID", "AKIDPGCLOAKTEST")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "pgcloak-test-secret")
	t.Setenv("AWS_SESSION_TOKEN", "")
	t.Setenv("AWS_PROFILE", "")
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(dir, "config"))
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(dir, "credentials"))
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
}

// fixture is an emulator with a default key and a provider using it.
type fixture struct {
	kms        *testenv.KMS
	defaultKey testenv.KMSKey
	p          *Provider
}

// newFixture starts an emulator and a provider whose default key is
// alias/pgcloak; edit adjusts the options (tenant keys, timeouts).
func newFixture(t *testing.T, edit func(*Options, *testenv.KMS)) *fixture {
	t.Helper()
	fakeCredentials(t)
	k := testenv.StartKMS(t)
	def := k.CreateKey("pgcloak default")
	if err := k.CreateAlias("alias/pgcloak", def.ID); err != nil {
		t.Fatal(err)
	}
	o := Options{Region: testenv.KMSRegion, Endpoint: k.URL, KeyID: "alias/pgcloak"}
	if edit != nil {
		edit(&o, k)
	}
	p, err := New(t.Context(), o)
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{kms: k, defaultKey: def, p: p}
}

var (
	acmeData  = crypto.KeyContext{Tenant: "acme", Purpose: crypto.PurposeData}
	acmeIndex = crypto.KeyContext{Tenant: "acme", Purpose: crypto.PurposeIndex}
	acmePHI   = crypto.KeyContext{Tenant: "acme", KeyClass: "phi", Purpose: crypto.PurposeData}
	globex    = crypto.KeyContext{Tenant: "globex", Purpose: crypto.PurposeData}
)

func TestRoundTrip(t *testing.T) {
	f := newFixture(t, nil)
	ctx := t.Context()

	for _, kc := range []crypto.KeyContext{acmeData, acmeIndex, acmePHI} {
		t.Run(string(kc.Purpose)+"/"+kc.KeyClass, func(t *testing.T) {
			plain, wrapped, kekID, err := f.p.GenerateDataKey(ctx, kc)
			if err != nil {
				t.Fatal(err)
			}
			if len(plain) != crypto.KeySize || kekID != f.defaultKey.ARN {
				t.Errorf("GenerateDataKey: got %d bytes, kek %q; want %d bytes, kek %s", len(plain), kekID, crypto.KeySize, f.defaultKey.ARN)
			}
			got, err := f.p.Unwrap(ctx, kc, wrapped)
			if err != nil || !bytes.Equal(got, plain) {
				t.Errorf("Unwrap: got %d bytes, %v; want the generated key", len(got), err)
			}
		})
	}

	t.Run("wrap", func(t *testing.T) {
		key := bytes.Repeat([]byte{7}, crypto.KeySize)
		wrapped, kekID, err := f.p.Wrap(ctx, acmeData, key)
		if err != nil || kekID != f.defaultKey.ARN {
			t.Fatalf("Wrap: got kek %q, %v; want %s", kekID, err, f.defaultKey.ARN)
		}
		if bytes.Contains(wrapped, key) {
			t.Error("Wrap: the wrapped key contains the plaintext")
		}
		got, err := f.p.Unwrap(ctx, acmeData, wrapped)
		if err != nil || !bytes.Equal(got, key) {
			t.Errorf("Unwrap: got %x, %v; want %x", got, err, key)
		}
		if _, _, err := f.p.Wrap(ctx, acmeData, key[:16]); err == nil {
			t.Error("Wrap of a 16-byte key: got no error")
		}
	})

	if err := f.p.Ping(ctx); err != nil {
		t.Errorf("Ping: %v", err)
	}
	if got := f.kms.KeyCalls("GenerateDataKey", f.defaultKey.ID); got != 3 {
		t.Errorf("GenerateDataKey calls on the default key: got %d, want 3", got)
	}
}

// TestContextMismatch checks that KMS binds a wrapped key to its tenant,
// purpose and key class.
func TestContextMismatch(t *testing.T) {
	f := newFixture(t, nil)
	ctx := t.Context()
	_, wrapped, _, err := f.p.GenerateDataKey(ctx, acmeData)
	if err != nil {
		t.Fatal(err)
	}
	for name, kc := range map[string]crypto.KeyContext{
		"other tenant":    globex,
		"other purpose":   acmeIndex,
		"other key class": acmePHI,
	} {
		t.Run(name, func(t *testing.T) {
			got, err := f.p.Unwrap(ctx, kc, wrapped)
			if !errors.Is(err, crypto.ErrUnwrap) || got != nil {
				t.Errorf("Unwrap: got %d bytes, %v; want ErrUnwrap", len(got), err)
			}
		})
	}
	t.Run("tampered", func(t *testing.T) {
		bad := bytes.Clone(wrapped)
		bad[len(bad)-1] ^= 1
		if _, err := f.p.Unwrap(ctx, acmeData, bad); !errors.Is(err, crypto.ErrUnwrap) {
			t.Errorf("Unwrap: got %v, want ErrUnwrap", err)
		}
	})
}

// TestTenantKey checks bring-your-own-key: a tenant listed in
// TenantKeyIDs has its keys wrapped and unwrapped by its own KEK only.
func TestTenantKey(t *testing.T) {
	var acmeKey testenv.KMSKey
	f := newFixture(t, func(o *Options, k *testenv.KMS) {
		acmeKey = k.CreateKey("acme's own")
		if err := k.CreateAlias("alias/acme", acmeKey.ID); err != nil {
			t.Fatal(err)
		}
		o.TenantKeyIDs = map[string]string{"acme": "alias/acme"}
	})
	ctx := t.Context()

	if got := f.p.TenantKEK("acme"); got != "alias/acme" {
		t.Errorf("TenantKEK(acme): got %q, want alias/acme", got)
	}
	if got := f.p.TenantKEK("globex"); got != "alias/pgcloak" {
		t.Errorf("TenantKEK(globex): got %q, want alias/pgcloak", got)
	}

	_, acmeWrapped, kekID, err := f.p.GenerateDataKey(ctx, acmeData)
	if err != nil || kekID != acmeKey.ARN {
		t.Fatalf("GenerateDataKey(acme): got kek %q, %v; want %s", kekID, err, acmeKey.ARN)
	}
	_, globexWrapped, kekID, err := f.p.GenerateDataKey(ctx, globex)
	if err != nil || kekID != f.defaultKey.ARN {
		t.Fatalf("GenerateDataKey(globex): got kek %q, %v; want %s", kekID, err, f.defaultKey.ARN)
	}
	if _, err := f.p.Unwrap(ctx, acmeData, acmeWrapped); err != nil {
		t.Errorf("Unwrap(acme): %v", err)
	}
	if _, err := f.p.Unwrap(ctx, globex, globexWrapped); err != nil {
		t.Errorf("Unwrap(globex): %v", err)
	}
	for _, c := range []struct {
		op, key string
		want    int
	}{
		{"GenerateDataKey", acmeKey.ID, 1},
		{"GenerateDataKey", f.defaultKey.ID, 1},
		{"Decrypt", acmeKey.ID, 1},
		{"Decrypt", f.defaultKey.ID, 1},
	} {
		if got := f.kms.KeyCalls(c.op, c.key); got != c.want {
			t.Errorf("%s calls on %s: got %d, want %d", c.op, c.key, got, c.want)
		}
	}

	// A key of acme's wrapped by the default KEK (say, from before acme had
	// its own) is refused: only acme's key unwraps acme's keys.
	stray, _, err := (&Provider{client: f.p.client, defaultKey: f.p.defaultKey, timeout: f.p.timeout}).Wrap(ctx, acmeData, make([]byte, crypto.KeySize))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.p.Unwrap(ctx, acmeData, stray); !errors.Is(err, crypto.ErrUnwrap) {
		t.Errorf("Unwrap(acme) of a key wrapped by the default KEK: got %v, want ErrUnwrap", err)
	}
}

func TestDisabledKey(t *testing.T) {
	f := newFixture(t, nil)
	ctx := t.Context()
	_, wrapped, _, err := f.p.GenerateDataKey(ctx, acmeData)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.kms.DisableKey(f.defaultKey.ID); err != nil {
		t.Fatal(err)
	}
	_, err = f.p.Unwrap(ctx, acmeData, wrapped)
	if !errors.Is(err, ErrUnavailable) || errors.Is(err, crypto.ErrUnwrap) || errors.Is(err, crypto.ErrKeyShredded) {
		t.Errorf("Unwrap under a disabled key: got %v, want ErrUnavailable only", err)
	}
	if _, _, _, err := f.p.GenerateDataKey(ctx, acmeData); !errors.Is(err, ErrUnavailable) {
		t.Errorf("GenerateDataKey under a disabled key: got %v, want ErrUnavailable", err)
	}
	if err := f.p.Ping(ctx); !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "Disabled") {
		t.Errorf("Ping: got %v, want ErrUnavailable saying Disabled", err)
	}
	// DisabledException is a 400: not retried.
	if got := f.kms.Calls("Decrypt"); got != 1 {
		t.Errorf("Decrypt calls: got %d, want 1", got)
	}
	if err := f.kms.EnableKey(f.defaultKey.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := f.p.Unwrap(ctx, acmeData, wrapped); err != nil {
		t.Errorf("Unwrap once enabled again: %v", err)
	}
}

func TestRetry(t *testing.T) {
	f := newFixture(t, nil)
	ctx := t.Context()
	_, wrapped, _, err := f.p.GenerateDataKey(ctx, acmeData)
	if err != nil {
		t.Fatal(err)
	}

	for _, errType := range []string{testenv.KMSInternalException, testenv.KMSThrottlingException, testenv.KMSDependencyTimeoutException} {
		t.Run(errType, func(t *testing.T) {
			f.kms.ResetCalls()
			f.kms.Fail("Decrypt", errType, DefaultMaxAttempts-1)
			if _, err := f.p.Unwrap(ctx, acmeData, wrapped); err != nil {
				t.Errorf("Unwrap after %d injected failures: %v", DefaultMaxAttempts-1, err)
			}
			if got := f.kms.Calls("Decrypt"); got != DefaultMaxAttempts {
				t.Errorf("Decrypt calls: got %d, want %d", got, DefaultMaxAttempts)
			}
		})
	}

	t.Run("exhausted", func(t *testing.T) {
		f.kms.ResetCalls()
		f.kms.Fail("GenerateDataKey", "", DefaultMaxAttempts)
		_, _, _, err := f.p.GenerateDataKey(ctx, acmeData)
		if !errors.Is(err, ErrUnavailable) {
			t.Errorf("GenerateDataKey: got %v, want ErrUnavailable", err)
		}
		if got := f.kms.Calls("GenerateDataKey"); got != DefaultMaxAttempts {
			t.Errorf("GenerateDataKey calls: got %d, want %d", got, DefaultMaxAttempts)
		}
		if _, _, _, err := f.p.GenerateDataKey(ctx, acmeData); err != nil {
			t.Errorf("GenerateDataKey once the failures are over: %v", err)
		}
	})
}

// TestTimeout checks that a KMS that does not answer costs a bounded wait.
func TestTimeout(t *testing.T) {
	const timeout = 300 * time.Millisecond
	f := newFixture(t, func(o *Options, _ *testenv.KMS) { o.CallTimeout = timeout })
	ctx := t.Context()
	f.kms.SetLatency("", time.Hour)

	start := time.Now()
	_, _, _, err := f.p.GenerateDataKey(ctx, acmeData)
	elapsed := time.Since(start)
	if !errors.Is(err, ErrUnavailable) {
		t.Errorf("GenerateDataKey: got %v, want ErrUnavailable", err)
	}
	if elapsed > timeout+2*time.Second {
		t.Errorf("GenerateDataKey took %v, want about %v", elapsed, timeout)
	}
	if err := f.p.Ping(ctx); !errors.Is(err, ErrUnavailable) {
		t.Errorf("Ping: got %v, want ErrUnavailable", err)
	}

	t.Run("caller cancels", func(t *testing.T) {
		cctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
		defer cancel()
		_, err := f.p.Unwrap(cctx, acmeData, []byte("whatever"))
		if !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, ErrUnavailable) {
			t.Errorf("Unwrap: got %v, want the caller's context.DeadlineExceeded", err)
		}
	})
}

// TestShred checks ScheduleTenantKeyDeletion and what a tenant whose own
// key is gone gets afterwards.
func TestShred(t *testing.T) {
	var acmeKey testenv.KMSKey
	f := newFixture(t, func(o *Options, k *testenv.KMS) {
		acmeKey = k.CreateKey("acme's own")
		if err := k.CreateAlias("alias/acme", acmeKey.ID); err != nil {
			t.Fatal(err)
		}
		o.TenantKeyIDs = map[string]string{"acme": "alias/acme", "typo": "alias/missing"}
		o.DeletionWindowDays = 7
	})
	ctx := t.Context()
	_, acmeWrapped, _, err := f.p.GenerateDataKey(ctx, acmeData)
	if err != nil {
		t.Fatal(err)
	}
	_, globexWrapped, _, err := f.p.GenerateDataKey(ctx, globex)
	if err != nil {
		t.Fatal(err)
	}

	if id, scheduled, err := f.p.ScheduleTenantKeyDeletion(ctx, "globex"); id != "" || scheduled || err != nil {
		t.Errorf("ScheduleTenantKeyDeletion(globex): got %q %v %v; want nothing to schedule", id, scheduled, err)
	}
	if id, scheduled, err := f.p.ScheduleTenantKeyDeletion(ctx, "typo"); scheduled || err == nil {
		t.Errorf("ScheduleTenantKeyDeletion(typo): got %q %v %v; want an error", id, scheduled, err)
	}
	for range 2 { // the second time, the key already is pending deletion
		id, scheduled, err := f.p.ScheduleTenantKeyDeletion(ctx, "acme")
		if id != acmeKey.ARN || !scheduled || err != nil {
			t.Errorf("ScheduleTenantKeyDeletion(acme): got %q %v %v; want %s true", id, scheduled, err, acmeKey.ARN)
		}
	}
	if got := f.kms.KeyCalls("ScheduleKeyDeletion", acmeKey.ID); got != 1 {
		t.Errorf("ScheduleKeyDeletion calls: got %d, want 1", got)
	}
	if state, _ := f.kms.KeyState(acmeKey.ID); state != testenv.KMSKeyPendingDeletion {
		t.Errorf("acme's key: got state %q, want %s", state, testenv.KMSKeyPendingDeletion)
	}

	check := func(t *testing.T) {
		if _, err := f.p.Unwrap(ctx, acmeData, acmeWrapped); !errors.Is(err, crypto.ErrKeyShredded) {
			t.Errorf("Unwrap(acme): got %v, want ErrKeyShredded", err)
		}
		if _, _, _, err := f.p.GenerateDataKey(ctx, acmeIndex); !errors.Is(err, crypto.ErrKeyShredded) {
			t.Errorf("GenerateDataKey(acme): got %v, want ErrKeyShredded", err)
		}
		if _, err := f.p.Unwrap(ctx, globex, globexWrapped); err != nil {
			t.Errorf("Unwrap(globex): %v", err)
		}
	}
	t.Run("pending deletion", check)
	if err := f.kms.DeleteKey(acmeKey.ID); err != nil {
		t.Fatal(err)
	}
	t.Run("deleted", check)

	t.Run("default key", func(t *testing.T) {
		// The shared default key going away is an outage, not a shredded
		// tenant.
		if err := f.kms.ScheduleKeyDeletion(f.defaultKey.ID); err != nil {
			t.Fatal(err)
		}
		_, err := f.p.Unwrap(ctx, globex, globexWrapped)
		if !errors.Is(err, ErrUnavailable) || errors.Is(err, crypto.ErrKeyShredded) {
			t.Errorf("Unwrap(globex): got %v, want ErrUnavailable", err)
		}
	})
}

// TestNoKeyMaterialInErrors provokes every kind of error and checks that
// none quotes the data key or the wrapped key.
func TestNoKeyMaterialInErrors(t *testing.T) {
	f := newFixture(t, func(o *Options, k *testenv.KMS) {
		own := k.CreateKey("acme's own")
		o.TenantKeyIDs = map[string]string{"acme": own.ARN}
		o.CallTimeout = 200 * time.Millisecond
	})
	ctx := t.Context()
	plain, wrapped, _, err := f.p.GenerateDataKey(ctx, globex)
	if err != nil {
		t.Fatal(err)
	}
	var errs []error
	collect := func(err error) {
		if err == nil {
			t.Error("want an error, got none")
			return
		}
		errs = append(errs, err)
	}
	_, err = f.p.Unwrap(ctx, acmeData, wrapped) // incorrect key
	collect(err)
	_, err = f.p.Unwrap(ctx, crypto.KeyContext{Tenant: "initech", Purpose: crypto.PurposeData}, wrapped) // context
	collect(err)
	_, _, err = f.p.Wrap(ctx, globex, plain[:31])
	collect(err)
	f.kms.Fail("", "", -1)
	_, err = f.p.Unwrap(ctx, globex, wrapped)
	collect(err)
	_, _, err = f.p.Wrap(ctx, globex, plain)
	collect(err)
	f.kms.ClearFaults()
	f.kms.SetLatency("", time.Hour)
	_, err = f.p.Unwrap(ctx, globex, wrapped)
	collect(err)
	f.kms.SetLatency("", 0)
	_, _, err = f.p.ScheduleTenantKeyDeletion(ctx, "acme")
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = f.p.Wrap(ctx, acmeData, plain)
	collect(err)

	secrets := map[string]string{
		"key (hex)":       hex.EncodeToString(plain),
		"key (base64)":    base64.StdEncoding.EncodeToString(plain),
		"key (raw)":       string(plain),
		"wrapped (hex)":   hex.EncodeToString(wrapped),
		"wrapped (b64)":   base64.StdEncoding.EncodeToString(wrapped),
		"secret key":      "pgcloak-test-secret",
		"wrapped (raw16)": string(wrapped[len(wrapped)-16:]),
	}
	for _, err := range errs {
		t.Log(err)
		for name, s := range secrets {
			if strings.Contains(err.Error(), s) {
				t.Errorf("error %q contains the %s", err, name)
			}
		}
	}
	if len(errs) != 7 {
		t.Errorf("got %d errors, want 7", len(errs))
	}
}

func TestNewOptions(t *testing.T) {
	fakeCredentials(t)
	for name, o := range map[string]Options{
		"no region":       {KeyID: "alias/x"},
		"no key":          {Region: "us-east-1"},
		"negative":        {Region: "us-east-1", KeyID: "alias/x", CallTimeout: -time.Second},
		"window":          {Region: "us-east-1", KeyID: "alias/x", DeletionWindowDays: 3},
		"empty tenant id": {Region: "us-east-1", KeyID: "alias/x", TenantKeyIDs: map[string]string{"acme": ""}},
	} {
		if _, err := New(t.Context(), o); err == nil {
			t.Errorf("%s: got no error", name)
		}
	}
}
