package audit

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

// TestKeyLifecycleEvents checks the fields of the key lifecycle events:
// identities, versions and KEK ids, and each event on one JSON line.
func TestKeyLifecycleEvents(t *testing.T) {
	var buf bytes.Buffer
	l := New(&buf)
	l.KeyRotated("acme", "phi", "data", 3, "encryption limit")
	l.KeyRewrapped("acme", "", "index", 1, "local:old", "local:new")
	l.TenantShredded(Shred{Tenant: "acme", Versions: 4, KEKID: "arn:aws:kms:k", DeletionScheduled: true})
	l.TenantShredded(Shred{Tenant: "acme", KeyClass: "phi", OneClass: true, Versions: 2})
	l.KeyPurgeReceived("shred", "acme", "", 2)
	l.KeyPurgeReceived("reconnect", "", "", 7)
	var nilLogger *Logger
	nilLogger.KeyRotated("acme", "", "data", 1, "") // discards

	want := []map[string]any{
		{"event": "key_rotated", "tenant": "acme", "key_class": "phi", "purpose": "data", "version": 3.0, "reason": "encryption limit"},
		{"event": "key_rewrapped", "tenant": "acme", "key_class": "", "purpose": "index", "version": 1.0, "old_kek_id": "local:old", "kek_id": "local:new"},
		{"event": "tenant_shredded", "tenant": "acme", "versions": 4.0, "all_key_classes": true, "kek_id": "arn:aws:kms:k", "kek_deletion_scheduled": true},
		{"event": "tenant_shredded", "tenant": "acme", "versions": 2.0, "key_class": "phi"},
		{"event": "key_purge_received", "kind": "shred", "tenant": "acme", "key_class": "", "keys": 2.0},
		{"event": "key_purge_received", "kind": "reconnect", "all_tenants": true, "keys": 7.0},
	}
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != len(want) {
		t.Fatalf("got %d lines, want %d:\n%s", len(lines), len(want), buf.String())
	}
	for i, line := range lines {
		var got map[string]any
		if err := json.Unmarshal([]byte(line), &got); err != nil {
			t.Fatalf("line %d: %v", i+1, err)
		}
		if got["stream"] != "audit" || got["time"] == nil {
			t.Errorf("line %d: got %v, want stream audit and a time", i+1, got)
		}
		delete(got, "stream")
		delete(got, "time")
		if len(got) != len(want[i]) {
			t.Errorf("line %d: got fields %v, want %v", i+1, got, want[i])
		}
		for k, v := range want[i] {
			if got[k] != v {
				t.Errorf("line %d: %s: got %v, want %v", i+1, k, got[k], v)
			}
		}
	}
}

// decodeLines decodes each JSON line of buf.
func decodeLines(t *testing.T, buf *bytes.Buffer) []map[string]any {
	t.Helper()
	var out []map[string]any
	for i, line := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("line %d: %v", i+1, err)
		}
		out = append(out, m)
	}
	return out
}

// TestSessionClient: a session's client address is recorded when known.
func TestSessionClient(t *testing.T) {
	var buf bytes.Buffer
	l := New(&buf)
	l.SessionStarted(Session{ID: 7, Role: "acme_app", Database: "app", Tenant: "acme", Client: "192.0.2.10:51234"})
	l.SessionEnded(Session{ID: 7, Role: "acme_app", Database: "app", Tenant: "acme", Client: "192.0.2.10:51234"})
	l.SessionStarted(Session{ID: 8, Role: "acme_app", Database: "app", Tenant: "acme"})
	got := decodeLines(t, &buf)
	for i, want := range []any{"192.0.2.10:51234", "192.0.2.10:51234", nil} {
		if got[i]["client"] != want {
			t.Errorf("line %d: client: got %v, want %v", i+1, got[i]["client"], want)
		}
	}
}

// TestActor: the events of a Logger with an actor carry it; the Logger it
// came from does not.
func TestActor(t *testing.T) {
	var buf bytes.Buffer
	base := New(&buf)
	base.WithActor(Actor{OSUser: "root", Name: "alice (CHG-42)"}).KeyRotated("acme", "", "data", 2, "")
	base.WithActor(Actor{OSUser: "postgres"}).EncryptExistingStarted(EncryptExisting{Table: "public.patients"})
	base.KeyRotated("acme", "", "data", 3, "")
	var nilLogger *Logger
	nilLogger.WithActor(Actor{OSUser: "root"}).KeyRotated("acme", "", "data", 1, "") // discards

	got := decodeLines(t, &buf)
	if len(got) != 3 {
		t.Fatalf("got %d lines, want 3", len(got))
	}
	want := []map[string]any{
		{"os_user": "root", "name": "alice (CHG-42)"},
		{"os_user": "postgres"},
		nil,
	}
	for i, w := range want {
		a, _ := got[i]["actor"].(map[string]any)
		if w == nil {
			if got[i]["actor"] != nil {
				t.Errorf("line %d: actor: got %v, want none", i+1, got[i]["actor"])
			}
			continue
		}
		if len(a) != len(w) {
			t.Errorf("line %d: actor: got %v, want %v", i+1, a, w)
		}
		for k, v := range w {
			if a[k] != v {
				t.Errorf("line %d: actor.%s: got %v, want %v", i+1, k, a[k], v)
			}
		}
	}
	if got[1]["event"] != "encrypt_existing_started" || got[1]["table"] != "public.patients" || got[1]["all_tenants"] != true {
		t.Errorf("line 2: got %v, want encrypt_existing_started of public.patients for all tenants", got[1])
	}
}
