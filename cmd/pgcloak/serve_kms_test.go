package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/pgcloak/pgcloak/crypto"
	"github.com/pgcloak/pgcloak/testenv"
)

// TestServeKMS runs serve with keys.provider aws against testenv's KMS
// emulator: acme has a key of its own (keys.tenants), globex uses the
// default key. Tenants write and read through the proxy; when KMS fails, a
// tenant whose keys are not cached gets SQLSTATE 58000 while a tenant whose
// keys are keeps working, and everyone recovers when KMS does.
func TestServeKMS(t *testing.T) {
	f := newKeysFixture(t)
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	emu, defaultKey, acmeKey := f.useKMS(t)

	// First process: both tenants' keys are created by KMS, each under its
	// own KEK.
	s := startServe(t, f.pg, f.db, f.edit)
	acme := s.connectAs(t, keysAcmeRole, keysRolePass, f.db)
	globex := s.connectAs(t, keysGlobexRole, keysRolePass, f.db)
	for _, w := range []struct {
		conn      *pgx.Conn
		name, ssn string
	}{{acme, "alice", "123-45-6789"}, {globex, "carol", "555-12-3456"}} {
		if _, err := w.conn.Exec(ctx, fmt.Sprintf("insert into patients (name, ssn) values ('%s', '%s')", w.name, w.ssn)); err != nil {
			t.Fatalf("insert %s: %v", w.name, err)
		}
	}
	wantRead(ctx, t, "acme", acme, "alice", "123-45-6789")
	wantRead(ctx, t, "globex", globex, "carol", "555-12-3456")
	for _, c := range []struct {
		key  testenv.KMSKey
		what string
	}{{acmeKey, "acme's key"}, {defaultKey, "the default key"}} {
		// One data key and one index key each.
		if got := emu.KeyCalls("GenerateDataKey", c.key.ID); got != 2 {
			t.Errorf("GenerateDataKey calls on %s: got %d, want 2", c.what, got)
		}
	}
	acme.Close(ctx)
	globex.Close(ctx)
	if code := s.shutdown(t); code != 0 {
		t.Fatalf("first serve: exit code %d, want 0", code)
	}
	audit := s.stdout.String()
	containsAll(t, "audit", audit, `"kek_id":"`+acmeKey.ARN+`"`, `"kek_id":"`+defaultKey.ARN+`"`)

	// The wrapped keys are bound to their tenant by the encryption context:
	// KMS itself refuses globex's key under acme's context.
	t.Run("context", func(t *testing.T) {
		var wrapped []byte
		if err := f.direct.QueryRow(ctx, "select wrapped from pgcloak.data_keys where tenant = 'globex' and purpose = 'data' and version = 1").Scan(&wrapped); err != nil {
			t.Fatal(err)
		}
		client := emulatorClient(ctx, t, emu)
		globexCtx := crypto.KeyContext{Tenant: "globex", Purpose: crypto.PurposeData}.EncryptionContext()
		acmeCtx := crypto.KeyContext{Tenant: "acme", Purpose: crypto.PurposeData}.EncryptionContext()
		_, err := client.Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: wrapped, EncryptionContext: acmeCtx})
		var invalid *types.InvalidCiphertextException
		if !errors.As(err, &invalid) {
			t.Errorf("Decrypt of globex's key under acme's context: got %v, want InvalidCiphertextException", err)
		}
		out, err := client.Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: wrapped, EncryptionContext: globexCtx})
		if err != nil || len(out.Plaintext) != crypto.KeySize || aws.ToString(out.KeyId) != defaultKey.ARN {
			t.Errorf("Decrypt of globex's key under its context: got %v; want a %d-byte key of %s", err, crypto.KeySize, defaultKey.ARN)
		}
	})

	// Second process: its cache starts empty. acme reads (its keys are
	// unwrapped and cached), then KMS fails.
	s = startServe(t, f.pg, f.db, f.edit)
	acme = s.connectAs(t, keysAcmeRole, keysRolePass, f.db)
	wantRead(ctx, t, "acme", acme, "alice", "123-45-6789")
	emu.Fail("Decrypt", testenv.KMSInternalException, -1)
	emu.Fail("GenerateDataKey", testenv.KMSInternalException, -1)
	failedDecrypts := emu.Calls("Decrypt")

	globex = s.connectAs(t, keysGlobexRole, keysRolePass, f.db)
	initech := s.connectAs(t, keysInitechRole, keysRolePass, f.db)
	t.Run("cold tenant read", func(t *testing.T) {
		var name, ssn string
		err := globex.QueryRow(ctx, "select name, ssn from patients").Scan(&name, &ssn)
		wantKeyServiceError(t, err, "globex")
		if got := emu.Calls("Decrypt") - failedDecrypts; got < 1 {
			t.Errorf("Decrypt calls while failing: got %d, want at least 1", got)
		}
	})
	t.Run("cold tenant first write", func(t *testing.T) {
		_, err := initech.Exec(ctx, "insert into patients (name, ssn) values ('dave', '999-00-1111')")
		wantKeyServiceError(t, err, "initech")
	})
	t.Run("cached tenant", func(t *testing.T) {
		if _, err := acme.Exec(ctx, "insert into patients (name, ssn) values ('bob', '222-33-4444')"); err != nil {
			t.Errorf("acme's insert while KMS fails: %v", err)
		}
		wantRead(ctx, t, "acme", acme, "bob", "222-33-4444")
	})

	// KMS is back: the refused sessions are still usable.
	emu.ClearFaults()
	wantRead(ctx, t, "globex after recovery", globex, "carol", "555-12-3456")
	if _, err := initech.Exec(ctx, "insert into patients (name, ssn) values ('dave', '999-00-1111')"); err != nil {
		t.Errorf("initech's insert after recovery: %v", err)
	}
	wantRead(ctx, t, "initech after recovery", initech, "dave", "999-00-1111")

	for _, c := range []*pgx.Conn{acme, globex, initech} {
		c.Close(ctx)
	}
	if code := s.shutdown(t); code != 0 {
		t.Errorf("second serve: exit code %d, want 0", code)
	}
	logs := s.stdout.String() + s.stderr.String()
	containsNone(t, "audit or log", audit+logs, "123-45-6789", "555-12-3456", "222-33-4444", "999-00-1111", keysRolePass, testenv.FakeAWSSecretAccessKey)
}

// wantRead checks that the tenant of conn finds name by its SSN and reads
// the SSN back in plaintext.
func wantRead(ctx context.Context, t *testing.T, what string, conn *pgx.Conn, name, ssn string) {
	t.Helper()
	var gotName, gotSSN string
	err := conn.QueryRow(ctx, "select name, ssn from patients where ssn = $1", ssn).Scan(&gotName, &gotSSN)
	if err != nil || gotName != name || gotSSN != ssn {
		t.Errorf("%s: got %q %q, %v; want %s %s", what, gotName, gotSSN, err, name, ssn)
	}
}

// wantKeyServiceError checks that err is the proxy's ErrorResponse for a
// key service failure of tenant.
func wantKeyServiceError(t *testing.T, err error, tenant string) {
	t.Helper()
	var pgErr *pgconn.PgError
	want := "pgcloak: key service unavailable for tenant " + tenant
	if !errors.As(err, &pgErr) || pgErr.Code != "58000" || !strings.HasPrefix(pgErr.Message, want) {
		t.Errorf("got %v, want SQLSTATE 58000 %q", err, want)
	}
}

// awsKeysYAML is a keys section with keys.provider aws: the emulator at
// endpoint, the default KEK keyID, then extra, more lines of the section
// (tenants, cache_ttl) indented by two spaces.
func awsKeysYAML(endpoint, keyID, extra string) string {
	return fmt.Sprintf(`keys:
  provider: aws
  aws:
    region: %s
    endpoint: %s
    key_id: %s
`, testenv.KMSRegion, endpoint, keyID) + extra
}

// withKeys replaces the keys section of checkConfig's output cfg with keys.
func withKeys(t *testing.T, cfg, keys string) string {
	t.Helper()
	const local = "keys:\n  local:\n    master_key_file: master.key\n"
	if !strings.Contains(cfg, local) {
		t.Fatal("config: no keys section to replace")
	}
	return strings.Replace(cfg, local, keys, 1)
}

// emulatorClient is a KMS client of the emulator, without retries.
func emulatorClient(ctx context.Context, t *testing.T, emu *testenv.KMS) *kms.Client {
	t.Helper()
	cfg, err := awsconfig.LoadDefaultConfig(ctx, awsconfig.WithRegion(testenv.KMSRegion), awsconfig.WithRetryMaxAttempts(1))
	if err != nil {
		t.Fatal(err)
	}
	return kms.NewFromConfig(cfg, func(o *kms.Options) { o.BaseEndpoint = aws.String(emu.URL) })
}

// TestServeKMSUnreachable checks that serve refuses to start when the
// default key cannot be reached, saying which setting to look at.
func TestServeKMSUnreachable(t *testing.T) {
	pg := testenv.Shared(t)
	testenv.FakeAWSCredentials(t)
	emu := testenv.StartKMS(t)
	cases := []struct{ name, keyID, endpoint, want string }{
		{"unknown key", "alias/missing", emu.URL, "NotFoundException"},
		{"disabled key", "", emu.URL, "Disabled"},
		{"nothing listening", "alias/pgcloak", "http://" + freeAddr(t), "key service unavailable"},
	}
	key := emu.CreateKey("disabled")
	if err := emu.DisableKey(key.ID); err != nil {
		t.Fatal(err)
	}
	cases[1].keyID = key.ARN
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg := checkConfig(pg.Addr(), "disable", "", testenv.ScramUser, testenv.ScramPassword, "postgres")
			cfg = withKeys(t, cfg, awsKeysYAML(c.endpoint, c.keyID, ""))
			cfg += "encrypt:\n  tables:\n    - name: patients\n      columns:\n        - name: ssn\n          type: text\n"
			start := time.Now()
			r := pgcloak(t, "serve", "-c", writeFile(t, "pgcloak.yaml", cfg))
			if r.code != 1 {
				t.Errorf("exit code: got %d, want 1", r.code)
			}
			if !strings.Contains(r.stderr, "keys.aws.key_id: ") || !strings.Contains(r.stderr, c.want) {
				t.Errorf("stderr: got %q, want keys.aws.key_id and %q", r.stderr, c.want)
			}
			if d := time.Since(start); d > 30*time.Second {
				t.Errorf("serve took %v to give up", d)
			}
		})
	}
}
