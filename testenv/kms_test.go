package testenv

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"
)

// kmsCall posts one JSON 1.1 request to the emulator and returns the HTTP
// status and the decoded answer.
func kmsCall(t *testing.T, k *KMS, op string, req map[string]any) (int, map[string]any) {
	t.Helper()
	return kmsCallCtx(t, t.Context(), k, op, req, true)
}

func kmsCallCtx(t *testing.T, ctx context.Context, k *KMS, op string, req map[string]any, auth bool) (int, map[string]any) {
	t.Helper()
	resp, err := http.DefaultClient.Do(kmsHTTPRequest(ctx, k, op, req, auth))
	if err != nil {
		return 0, map[string]any{"transport": err.Error()}
	}
	defer resp.Body.Close()
	var out map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatalf("%s: decode answer: %v", op, err)
	}
	return resp.StatusCode, out
}

// kmsHTTPRequest builds a JSON 1.1 request, signed with a signature the
// emulator does not check when auth is set.
func kmsHTTPRequest(ctx context.Context, k *KMS, op string, req map[string]any, auth bool) *http.Request {
	body, err := json.Marshal(req)
	if err != nil {
		panic(err)
	}
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, k.URL+"/", bytes.NewReader(body))
	if err != nil {
		panic(err)
	}
	hr.Header.Set("Content-Type", "application/x-amz-json-1.1")
	hr.Header.Set("X-Amz-Target", "TrentService."+op)
	if auth {
		hr.Header.Set("Authorization", "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20260101/us-east-1/kms/aws4_request, SignedHeaders=host, Signature=00")
	}
	return hr
}

// wantKMSError checks that an answer is the error errType.
func wantKMSError(t *testing.T, what string, status int, out map[string]any, wantStatus int, errType string) {
	t.Helper()
	if status != wantStatus || out["__type"] != errType {
		t.Errorf("%s: got %d %v, want %d %s", what, status, out, wantStatus, errType)
	}
}

func TestKMSRoundTrip(t *testing.T) {
	k := StartKMS(t)
	key := k.CreateKey("test")
	if err := k.CreateAlias("alias/app", key.ID); err != nil {
		t.Fatal(err)
	}
	ec := map[string]any{"pgcloak:tenant": "acme", "pgcloak:purpose": "data"}

	for _, keyID := range []string{key.ID, key.ARN, "alias/app", "arn:aws:kms:" + KMSRegion + ":" + KMSAccount + ":alias/app"} {
		t.Run(keyID, func(t *testing.T) {
			status, gen := kmsCall(t, k, "GenerateDataKey", map[string]any{"KeyId": keyID, "KeySpec": "AES_256", "EncryptionContext": ec})
			if status != 200 || gen["KeyId"] != key.ARN {
				t.Fatalf("GenerateDataKey: got %d %v, want 200 and KeyId %s", status, gen, key.ARN)
			}
			// Decrypt needs no KeyId: the blob names its key. The
			// context's order in JSON does not matter.
			status, dec := kmsCall(t, k, "Decrypt", map[string]any{"CiphertextBlob": gen["CiphertextBlob"],
				"EncryptionContext": map[string]any{"pgcloak:purpose": "data", "pgcloak:tenant": "acme"}})
			if status != 200 || dec["Plaintext"] != gen["Plaintext"] || dec["KeyId"] != key.ARN {
				t.Fatalf("Decrypt: got %d %v, want the generated plaintext", status, dec)
			}
		})
	}

	status, enc := kmsCall(t, k, "Encrypt", map[string]any{"KeyId": key.ID, "Plaintext": "c2VjcmV0", "EncryptionContext": ec})
	if status != 200 {
		t.Fatalf("Encrypt: got %d %v", status, enc)
	}
	status, dec := kmsCall(t, k, "Decrypt", map[string]any{"CiphertextBlob": enc["CiphertextBlob"], "EncryptionContext": ec, "KeyId": "alias/app"})
	if status != 200 || dec["Plaintext"] != "c2VjcmV0" {
		t.Errorf("Decrypt of Encrypt: got %d %v, want plaintext c2VjcmV0", status, dec)
	}
	status, gen := kmsCall(t, k, "GenerateDataKey", map[string]any{"KeyId": key.ID, "NumberOfBytes": 32})
	if pt, _ := gen["Plaintext"].(string); status != 200 || len(pt) != 44 {
		t.Errorf("GenerateDataKey NumberOfBytes 32: got %d %v, want a 32-byte plaintext", status, gen)
	}
	if got := k.Calls("GenerateDataKey"); got != 5 {
		t.Errorf("Calls(GenerateDataKey): got %d, want 5", got)
	}
	if got := k.KeyCalls("Decrypt", "alias/app"); got != 5 {
		t.Errorf("KeyCalls(Decrypt, alias/app): got %d, want 5", got)
	}
	status, list := kmsCall(t, k, "ListAliases", map[string]any{})
	if aliases, _ := list["Aliases"].([]any); status != 200 || len(aliases) != 1 {
		t.Errorf("ListAliases: got %d %v, want one alias", status, list)
	}
	status, desc := kmsCall(t, k, "DescribeKey", map[string]any{"KeyId": "alias/app"})
	if md, _ := desc["KeyMetadata"].(map[string]any); status != 200 || md["Arn"] != key.ARN || md["KeyState"] != "Enabled" || md["Enabled"] != true {
		t.Errorf("DescribeKey: got %d %v, want the enabled key", status, desc)
	}
}

func TestKMSErrors(t *testing.T) {
	k := StartKMS(t)
	key := k.CreateKey("test")
	other := k.CreateKey("other")
	ec := map[string]any{"pgcloak:tenant": "acme", "pgcloak:purpose": "data"}
	_, gen := kmsCall(t, k, "GenerateDataKey", map[string]any{"KeyId": key.ARN, "KeySpec": "AES_256", "EncryptionContext": ec})
	blob := gen["CiphertextBlob"]

	t.Run("context", func(t *testing.T) {
		for name, ctx := range map[string]map[string]any{
			"other tenant":  {"pgcloak:tenant": "globex", "pgcloak:purpose": "data"},
			"other purpose": {"pgcloak:tenant": "acme", "pgcloak:purpose": "index"},
			"extra pair":    {"pgcloak:tenant": "acme", "pgcloak:purpose": "data", "pgcloak:key_class": "phi"},
			"none":          nil,
		} {
			status, out := kmsCall(t, k, "Decrypt", map[string]any{"CiphertextBlob": blob, "EncryptionContext": ctx})
			wantKMSError(t, name, status, out, 400, KMSInvalidCiphertextException)
		}
	})
	t.Run("tampered", func(t *testing.T) {
		raw, err := base64.StdEncoding.DecodeString(blob.(string))
		if err != nil {
			t.Fatal(err)
		}
		raw[len(raw)-1] ^= 1 // the tag
		status, out := kmsCall(t, k, "Decrypt", map[string]any{"CiphertextBlob": raw, "EncryptionContext": ec})
		wantKMSError(t, "tampered", status, out, 400, KMSInvalidCiphertextException)
		status, out = kmsCall(t, k, "Decrypt", map[string]any{"CiphertextBlob": "AQID", "EncryptionContext": ec})
		wantKMSError(t, "short", status, out, 400, KMSInvalidCiphertextException)
	})
	t.Run("incorrect key", func(t *testing.T) {
		status, out := kmsCall(t, k, "Decrypt", map[string]any{"CiphertextBlob": blob, "EncryptionContext": ec, "KeyId": other.ARN})
		wantKMSError(t, "Decrypt with another KeyId", status, out, 400, KMSIncorrectKeyException)
	})
	t.Run("unknown", func(t *testing.T) {
		status, out := kmsCall(t, k, "Encrypt", map[string]any{"KeyId": "alias/nope", "Plaintext": "eA=="})
		wantKMSError(t, "unknown alias", status, out, 400, KMSNotFoundException)
		status, out = kmsCall(t, k, "DescribeKey", map[string]any{"KeyId": "00000000-0000-4000-8000-000000000000"})
		wantKMSError(t, "unknown key", status, out, 400, KMSNotFoundException)
	})
	t.Run("validation", func(t *testing.T) {
		status, out := kmsCall(t, k, "GenerateDataKey", map[string]any{"KeyId": key.ID})
		wantKMSError(t, "no KeySpec", status, out, 400, KMSValidationException)
		status, out = kmsCall(t, k, "CreateAlias", map[string]any{"AliasName": "nope", "TargetKeyId": key.ID})
		wantKMSError(t, "alias without alias/", status, out, 400, KMSValidationException)
		status, out = kmsCall(t, k, "Frobnicate", map[string]any{})
		wantKMSError(t, "unknown operation", status, out, 400, kmsUnsupportedOperation)
	})
	t.Run("no authorization", func(t *testing.T) {
		status, out := kmsCallCtx(t, t.Context(), k, "DescribeKey", map[string]any{"KeyId": key.ID}, false)
		wantKMSError(t, "unsigned", status, out, 400, kmsMissingAuthentication)
	})
	t.Run("disabled", func(t *testing.T) {
		if status, out := kmsCall(t, k, "DisableKey", map[string]any{"KeyId": key.ARN}); status != 200 {
			t.Fatalf("DisableKey: got %d %v", status, out)
		}
		status, out := kmsCall(t, k, "Decrypt", map[string]any{"CiphertextBlob": blob, "EncryptionContext": ec})
		wantKMSError(t, "Decrypt, disabled", status, out, 400, KMSDisabledException)
		status, out = kmsCall(t, k, "GenerateDataKey", map[string]any{"KeyId": key.ID, "KeySpec": "AES_256"})
		wantKMSError(t, "GenerateDataKey, disabled", status, out, 400, KMSDisabledException)
		if err := k.EnableKey(key.ID); err != nil {
			t.Fatal(err)
		}
		if status, out := kmsCall(t, k, "Decrypt", map[string]any{"CiphertextBlob": blob, "EncryptionContext": ec}); status != 200 {
			t.Errorf("Decrypt, enabled again: got %d %v, want 200", status, out)
		}
	})
	t.Run("pending deletion", func(t *testing.T) {
		status, out := kmsCall(t, k, "ScheduleKeyDeletion", map[string]any{"KeyId": "alias/none"})
		wantKMSError(t, "ScheduleKeyDeletion by alias", status, out, 400, KMSNotFoundException)
		status, out = kmsCall(t, k, "ScheduleKeyDeletion", map[string]any{"KeyId": key.ID, "PendingWindowInDays": 7})
		if status != 200 || out["KeyState"] != KMSKeyPendingDeletion || out["KeyId"] != key.ARN {
			t.Fatalf("ScheduleKeyDeletion: got %d %v", status, out)
		}
		status, out = kmsCall(t, k, "Decrypt", map[string]any{"CiphertextBlob": blob, "EncryptionContext": ec})
		wantKMSError(t, "Decrypt, pending deletion", status, out, 400, KMSInvalidStateException)
		status, out = kmsCall(t, k, "EnableKey", map[string]any{"KeyId": key.ID})
		wantKMSError(t, "EnableKey, pending deletion", status, out, 400, KMSInvalidStateException)
		if state, err := k.KeyState(key.ARN); state != KMSKeyPendingDeletion || err != nil {
			t.Errorf("KeyState: got %q, %v; want %s", state, err, KMSKeyPendingDeletion)
		}
		if err := k.DeleteKey(key.ID); err != nil {
			t.Fatal(err)
		}
		status, out = kmsCall(t, k, "Decrypt", map[string]any{"CiphertextBlob": blob, "EncryptionContext": ec})
		wantKMSError(t, "Decrypt, deleted", status, out, 400, KMSNotFoundException)
		var ke *KMSError
		if _, err := k.KeyState(key.ID); !errors.As(err, &ke) || ke.Type != KMSNotFoundException {
			t.Errorf("KeyState of a deleted key: got %v, want %s", err, KMSNotFoundException)
		}
	})
}

func TestKMSFaults(t *testing.T) {
	k := StartKMS(t)
	key := k.CreateKey("test")
	req := map[string]any{"KeyId": key.ID, "KeySpec": "AES_256"}

	k.Fail("GenerateDataKey", "", 2)
	for range 2 {
		status, out := kmsCall(t, k, "GenerateDataKey", req)
		wantKMSError(t, "injected", status, out, 500, KMSInternalException)
	}
	if status, out := kmsCall(t, k, "GenerateDataKey", req); status != 200 {
		t.Errorf("after the injected failures: got %d %v, want 200", status, out)
	}
	if status, _ := kmsCall(t, k, "DescribeKey", map[string]any{"KeyId": key.ID}); status != 200 {
		t.Errorf("another op: got %d, want 200", status)
	}
	if got := k.Calls("GenerateDataKey"); got != 3 {
		t.Errorf("Calls: got %d, want 3", got)
	}

	k.Fail("", KMSThrottlingException, -1)
	for range 3 {
		status, out := kmsCall(t, k, "DescribeKey", map[string]any{"KeyId": key.ID})
		wantKMSError(t, "injected for every op", status, out, 400, KMSThrottlingException)
	}
	k.Fail("Encrypt", KMSDependencyTimeoutException, 1)
	status, out := kmsCall(t, k, "Encrypt", map[string]any{"KeyId": key.ID, "Plaintext": "eA=="})
	wantKMSError(t, "op fault before every-op fault", status, out, 503, KMSDependencyTimeoutException)
	k.ClearFaults()
	if status, _ := kmsCall(t, k, "DescribeKey", map[string]any{"KeyId": key.ID}); status != 200 {
		t.Errorf("after ClearFaults: got %d, want 200", status)
	}

	t.Run("latency", func(t *testing.T) {
		k.SetLatency("DescribeKey", 150*time.Millisecond)
		start := time.Now()
		if status, _ := kmsCall(t, k, "DescribeKey", map[string]any{"KeyId": key.ID}); status != 200 {
			t.Errorf("delayed call: got %d, want 200", status)
		}
		if d := time.Since(start); d < 150*time.Millisecond {
			t.Errorf("delayed call took %v, want at least 150ms", d)
		}
		k.SetLatency("DescribeKey", time.Hour)
		ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
		defer cancel()
		start = time.Now()
		status, out := kmsCallCtx(t, ctx, k, "DescribeKey", map[string]any{"KeyId": key.ID}, true)
		if status != 0 || !strings.Contains(out["transport"].(string), "deadline") {
			t.Errorf("cancelled call: got %d %v, want a deadline error", status, out)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("cancelled call took %v", d)
		}
		k.SetLatency("DescribeKey", 0)
	})
}

// TestKMSCloseDuringCall checks that Close ends a delayed call rather than
// waiting for it.
func TestKMSCloseDuringCall(t *testing.T) {
	k, err := NewKMS()
	if err != nil {
		t.Fatal(err)
	}
	key := k.CreateKey("test")
	k.SetLatency("", time.Hour)
	done := make(chan int)
	go func() {
		resp, err := http.DefaultClient.Do(kmsHTTPRequest(context.Background(), k, "DescribeKey", map[string]any{"KeyId": key.ID}, true))
		if err != nil {
			done <- 0
			return
		}
		resp.Body.Close()
		done <- resp.StatusCode
	}()
	for k.Calls("DescribeKey") == 0 {
		time.Sleep(5 * time.Millisecond)
	}
	start := time.Now()
	if err := k.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	select {
	case status := <-done:
		if status != 0 {
			t.Errorf("call cut by Close: got status %d, want no answer", status)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the delayed call did not end after Close")
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Close took %v", d)
	}
	if err := k.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}
