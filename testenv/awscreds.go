package testenv

import (
	"path/filepath"
	"testing"
)

// The static credentials FakeAWSCredentials sets. The KMS emulator accepts
// any; tests look for them in output that must not hold secrets.
const (
	FakeAWSAccessKeyID     = "AKIDPGCLOAKTEST"
	FakeAWSSecretAccessKey = "pgcloak-test-secret"
)

// FakeAWSCredentials points the AWS SDK's default credential chain at
// static test credentials only, for the rest of the test: no shared
// config or credentials files, no profile, no instance metadata. It uses
// t.Setenv, so the test must not be parallel.
func FakeAWSCredentials(t testing.TB) {
	t.Helper()
	dir := t.TempDir()
	t.Setenv("AWS_ACCESS_KEY_ID", FakeAWSAccessKeyID)
	t.Setenv("AWS_SECRET_ACCESS_KEY", FakeAWSSecretAccessKey)
	t.Setenv("AWS_SESSION_TOKEN", "")
	t.Setenv("AWS_PROFILE", "")
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(dir, "config"))
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(dir, "credentials"))
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
}
