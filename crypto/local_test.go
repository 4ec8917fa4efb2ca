package crypto

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

type localWrapVector struct {
	Name      string `json:"name"`
	MasterKey string `json:"master_key"`
	Tenant    string `json:"tenant"`
	KeyClass  string `json:"key_class"`
	Purpose   string `json:"purpose"`
	DataKey   string `json:"data_key"`
	Nonce     string `json:"nonce"`
	Wrapped   string `json:"wrapped"`
}

func mustLocalProvider(t testing.TB, master []byte) *LocalProvider {
	t.Helper()
	p, err := NewLocalProvider(master)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestLocalWrapVectors checks the wrapped-key format against vectors
// computed outside Go (testdata/localwrap_vectors.json).
func TestLocalWrapVectors(t *testing.T) {
	var vectors []localWrapVector
	readVectors(t, "localwrap_vectors.json", &vectors)
	if len(vectors) == 0 {
		t.Fatal("no vectors")
	}
	for _, v := range vectors {
		t.Run(v.Name, func(t *testing.T) {
			p := mustLocalProvider(t, mustHex(t, v.MasterKey))
			kc := KeyContext{Tenant: v.Tenant, KeyClass: v.KeyClass, Purpose: Purpose(v.Purpose)}
			want := mustHex(t, v.Wrapped)
			if got := p.wrap(kc, mustHex(t, v.DataKey), mustHex(t, v.Nonce)); !bytes.Equal(got, want) {
				t.Errorf("wrap:\ngot  %x\nwant %x", got, want)
			}
			key, err := p.Unwrap(context.Background(), kc, want)
			if err != nil || !bytes.Equal(key, mustHex(t, v.DataKey)) {
				t.Errorf("unwrap: got %x, %v, want %s, nil", key, err, v.DataKey)
			}
		})
	}
}

func TestLocalProviderWrapUnwrap(t *testing.T) {
	ctx := context.Background()
	p := mustLocalProvider(t, testKey(9))
	kc := KeyContext{Tenant: "acme", KeyClass: "phi", Purpose: PurposeData}

	plaintext, wrapped, kekID, err := p.GenerateDataKey(ctx, kc)
	if err != nil {
		t.Fatal(err)
	}
	if len(plaintext) != KeySize || len(wrapped) != wrappedLocalSize {
		t.Fatalf("lengths: got %d, %d, want %d, %d", len(plaintext), len(wrapped), KeySize, wrappedLocalSize)
	}
	if kekID != p.KEKID() || !strings.HasPrefix(kekID, "local:") || len(kekID) != len("local:")+16 {
		t.Errorf("kek id: got %q, want local: and 16 hex digits, equal to KEKID()", kekID)
	}
	if bytes.Contains(wrapped, plaintext) {
		t.Error("wrapped key contains the plaintext key")
	}
	got, err := p.Unwrap(ctx, kc, wrapped)
	if err != nil || !bytes.Equal(got, plaintext) {
		t.Fatalf("unwrap: got %x, %v, want the generated key, nil", got, err)
	}

	others := map[string]KeyContext{
		"other tenant":   {Tenant: "globex", KeyClass: "phi", Purpose: PurposeData},
		"other class":    {Tenant: "acme", KeyClass: "", Purpose: PurposeData},
		"other purpose":  {Tenant: "acme", KeyClass: "phi", Purpose: PurposeIndex},
		"shifted fields": {Tenant: "acmephi", KeyClass: "", Purpose: PurposeData},
	}
	for name, other := range others {
		if key, err := p.Unwrap(ctx, other, wrapped); !errors.Is(err, ErrUnwrap) {
			t.Errorf("%s: got %x, %v, want ErrUnwrap", name, key, err)
		}
	}
	if _, err := mustLocalProvider(t, testKey(10)).Unwrap(ctx, kc, wrapped); !errors.Is(err, ErrUnwrap) {
		t.Errorf("other master key: got %v, want ErrUnwrap", err)
	}
	for i := range wrapped {
		w := bytes.Clone(wrapped)
		w[i] ^= 0x80
		if _, err := p.Unwrap(ctx, kc, w); !errors.Is(err, ErrUnwrap) {
			t.Fatalf("byte %d flipped: got %v, want ErrUnwrap", i, err)
		}
	}
	for n := range len(wrapped) {
		if _, err := p.Unwrap(ctx, kc, wrapped[:n]); !errors.Is(err, ErrUnwrap) {
			t.Fatalf("truncated to %d: got %v, want ErrUnwrap", n, err)
		}
	}

	rewrapped, _, err := p.Wrap(ctx, kc, plaintext)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(rewrapped, wrapped) {
		t.Error("two wraps of one key: got equal output, want fresh nonces")
	}

	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := p.Unwrap(cancelled, kc, wrapped); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled context: got %v, want context.Canceled", err)
	}
}

func TestEncryptionContext(t *testing.T) {
	got := KeyContext{Tenant: "acme", Purpose: PurposeIndex}.EncryptionContext()
	if len(got) != 2 || got["pgcloak:tenant"] != "acme" || got["pgcloak:purpose"] != "index" {
		t.Errorf("default class: got %v", got)
	}
	got = KeyContext{Tenant: "acme", KeyClass: "phi", Purpose: PurposeData}.EncryptionContext()
	if len(got) != 3 || got["pgcloak:key_class"] != "phi" || got["pgcloak:purpose"] != "data" {
		t.Errorf("class phi: got %v", got)
	}
}

func TestWriteAndLoadMasterKey(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "master.key")
	if err := WriteLocalMasterKey(path); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm != 0o600 {
		t.Errorf("mode: got %04o, want 0600", perm)
	}
	content, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(content) != 65 || content[64] != '\n' {
		t.Errorf("content: got %d bytes, want 64 hex digits and a newline", len(content))
	}
	if _, err := hex.DecodeString(string(content[:64])); err != nil {
		t.Errorf("content: %v", err)
	}

	err = WriteLocalMasterKey(path)
	if err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Errorf("second write: got %v, want a refusal to overwrite", err)
	}
	if again, _ := os.ReadFile(path); !bytes.Equal(again, content) {
		t.Error("second write changed the file")
	}

	p, err := LoadLocalProvider(path)
	if err != nil {
		t.Fatal(err)
	}
	key, _ := hex.DecodeString(string(content[:64]))
	if want := mustLocalProvider(t, key).KEKID(); p.KEKID() != want {
		t.Errorf("kek id: got %s, want %s", p.KEKID(), want)
	}

	other := filepath.Join(dir, "other.key")
	if err := WriteLocalMasterKey(other); err != nil {
		t.Fatal(err)
	}
	q, err := LoadLocalProvider(other)
	if err != nil {
		t.Fatal(err)
	}
	if p.KEKID() == q.KEKID() {
		t.Error("two fresh master keys: got the same kek id")
	}
}

func TestLoadMasterKeyRefusesOpenModes(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "master.key")
	if err := WriteLocalMasterKey(path); err != nil {
		t.Fatal(err)
	}
	content, _ := os.ReadFile(path)
	for _, mode := range []os.FileMode{0o644, 0o640, 0o604, 0o660, 0o602, 0o610} {
		if err := os.Chmod(path, mode); err != nil {
			t.Fatal(err)
		}
		_, err := LoadLocalProvider(path)
		if err == nil {
			t.Errorf("mode %04o: got nil error, want a refusal", mode)
			continue
		}
		msg := err.Error()
		if !strings.Contains(msg, path) || !strings.Contains(msg, fmt.Sprintf("%04o", mode)) {
			t.Errorf("mode %04o: got %q, want the path and the mode", mode, msg)
		}
		if strings.Contains(msg, string(content[:64])) || strings.Contains(msg, string(content[:8])) {
			t.Errorf("mode %04o: error %q quotes the key", mode, msg)
		}
	}
	for _, mode := range []os.FileMode{0o600, 0o400} {
		os.Chmod(path, mode)
		if _, err := LoadLocalProvider(path); err != nil {
			t.Errorf("mode %04o: got %v, want nil", mode, err)
		}
	}
}

func TestLoadMasterKeyRejectsBadContent(t *testing.T) {
	dir := t.TempDir()
	secretish := "g" + strings.Repeat("a", 63) // not hex at its first digit
	cases := map[string]string{
		"empty":             "",
		"raw 32 bytes":      string(testKey(1)),
		"short hex":         strings.Repeat("ab", 31) + "\n",
		"long hex":          strings.Repeat("ab", 33) + "\n",
		"not hex":           secretish + "\n",
		"two newlines":      strings.Repeat("ab", 32) + "\n\n",
		"crlf":              strings.Repeat("ab", 32) + "\r\n",
		"leading space":     " " + strings.Repeat("ab", 32),
		"hex and a comment": strings.Repeat("ab", 32) + "\n# key\n",
	}
	for name, content := range cases {
		path := filepath.Join(dir, strings.ReplaceAll(name, " ", "_"))
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := LoadLocalProvider(path)
		if err == nil {
			t.Errorf("%s: got nil error, want one", name)
			continue
		}
		if !strings.Contains(err.Error(), path) {
			t.Errorf("%s: got %q, want the path", name, err)
		}
		if strings.Contains(err.Error(), "'g'") || strings.Contains(err.Error(), secretish[:8]) {
			t.Errorf("%s: error %q quotes the content", name, err)
		}
	}
	ok := filepath.Join(dir, "no newline")
	os.WriteFile(ok, []byte(strings.Repeat("AB", 32)), 0o600)
	if _, err := LoadLocalProvider(ok); err != nil {
		t.Errorf("upper-case hex without newline: got %v, want nil", err)
	}
	if _, err := LoadLocalProvider(filepath.Join(dir, "missing")); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Errorf("missing file: got %v, want an error naming it", err)
	}
	if _, err := LoadLocalProvider(dir); err == nil {
		t.Error("a directory: got nil error, want one")
	}
}
