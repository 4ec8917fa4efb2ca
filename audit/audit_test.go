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
