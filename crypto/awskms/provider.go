package awskms

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/aws/smithy-go/logging"
	"github.com/pgcloak/pgcloak/crypto"
)

// Defaults of Options.
const (
	DefaultCallTimeout = 5 * time.Second
	DefaultMaxAttempts = 3
)

// maxBackoff caps the SDK's delay between two attempts. The first retry
// waits up to 50ms (1s after throttling), doubling after that.
const maxBackoff = 2 * time.Second

// ErrUnavailable is the cause of every failure that is the key service's,
// not the wrapped key's: unreachable, throttling, timed out, a disabled
// key, missing permissions. It is never a verdict on a value.
var ErrUnavailable = errors.New("key service unavailable")

// Options configures a Provider.
type Options struct {
	// Region is the AWS region of the keys (keys.aws.region). Required.
	Region string

	// Endpoint overrides the KMS endpoint (keys.aws.endpoint), e.g. a VPC
	// endpoint, LocalStack or testenv.KMS. Empty: the region's endpoint.
	Endpoint string

	// KeyID is the default KEK (keys.aws.key_id): a key id, key ARN, alias
	// name or alias ARN. Required.
	KeyID string

	// TenantKeyIDs maps a tenant to a KEK of its own (keys.tenants.T.key_id).
	TenantKeyIDs map[string]string

	// CallTimeout bounds each operation, retries included. Zero means
	// DefaultCallTimeout.
	CallTimeout time.Duration

	// MaxAttempts bounds the attempts of one operation, the first
	// included. Zero means DefaultMaxAttempts; 1 disables retries.
	MaxAttempts int

	// DeletionWindowDays is the waiting period ScheduleTenantKeyDeletion
	// asks for, 7 to 30 days. Zero means KMS's default, 30.
	DeletionWindowDays int
}

// Provider is a crypto.Provider over AWS KMS (see the package
// documentation). Credentials come from the SDK's default chain:
// environment, shared files, web identity, ECS or EC2 instance roles.
// A Provider is immutable and safe for concurrent use.
type Provider struct {
	client         *kms.Client
	defaultKey     string
	tenantKeys     map[string]string
	timeout        time.Duration
	deletionWindow int32
}

var _ crypto.Provider = (*Provider)(nil)

// New builds a Provider. It loads the SDK's configuration (ctx bounds
// that) but makes no KMS call; use Ping to check that the default key is
// reachable.
func New(ctx context.Context, o Options) (*Provider, error) {
	switch {
	case o.Region == "":
		return nil, errors.New("awskms: region is required")
	case o.KeyID == "":
		return nil, errors.New("awskms: key id is required")
	case o.CallTimeout < 0:
		return nil, fmt.Errorf("awskms: call timeout %s is negative", o.CallTimeout)
	case o.MaxAttempts < 0:
		return nil, fmt.Errorf("awskms: max attempts %d is negative", o.MaxAttempts)
	case o.DeletionWindowDays != 0 && (o.DeletionWindowDays < 7 || o.DeletionWindowDays > 30):
		return nil, fmt.Errorf("awskms: deletion window %d days is not from 7 to 30", o.DeletionWindowDays)
	}
	for tenant, key := range o.TenantKeyIDs {
		if tenant == "" || key == "" {
			return nil, fmt.Errorf("awskms: tenant %q: want a tenant name and a key id", tenant)
		}
	}
	if o.CallTimeout == 0 {
		o.CallTimeout = DefaultCallTimeout
	}
	if o.MaxAttempts == 0 {
		o.MaxAttempts = DefaultMaxAttempts
	}

	cfg, err := config.LoadDefaultConfig(ctx,
		config.WithRegion(o.Region),
		// The SDK would print its warnings to stderr, outside pgcloak's
		// log; what matters reaches the caller in the errors.
		config.WithLogger(logging.Nop{}),
		config.WithRetryer(func() aws.Retryer {
			return retry.NewStandard(func(so *retry.StandardOptions) {
				so.MaxAttempts = o.MaxAttempts
				so.MaxBackoff = maxBackoff
			})
		}),
	)
	if err != nil {
		return nil, fmt.Errorf("awskms: load aws configuration: %w", err)
	}
	client := kms.NewFromConfig(cfg, func(ko *kms.Options) {
		if o.Endpoint != "" {
			ko.BaseEndpoint = aws.String(o.Endpoint)
		}
	})
	return &Provider{
		client:         client,
		defaultKey:     o.KeyID,
		tenantKeys:     maps.Clone(o.TenantKeyIDs),
		timeout:        o.CallTimeout,
		deletionWindow: int32(o.DeletionWindowDays),
	}, nil
}

// TenantKEK returns the configured id of the KEK that wraps tenant's data
// keys: its own key when keys.tenants lists it, else the default key.
func (p *Provider) TenantKEK(tenant string) string {
	if key, ok := p.tenantKeys[tenant]; ok {
		return key
	}
	return p.defaultKey
}

// GenerateDataKey implements crypto.Provider with KMS GenerateDataKey
// (AES_256) under the tenant's KEK. kekID is the key ARN KMS reports.
func (p *Provider) GenerateDataKey(ctx context.Context, kc crypto.KeyContext) (plaintext, wrapped []byte, kekID string, err error) {
	key := p.TenantKEK(kc.Tenant)
	cctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	out, err := p.client.GenerateDataKey(cctx, &kms.GenerateDataKeyInput{
		KeyId:             aws.String(key),
		KeySpec:           types.DataKeySpecAes256,
		EncryptionContext: kc.EncryptionContext(),
	})
	if err != nil {
		return nil, nil, "", p.failure(ctx, "GenerateDataKey", kc.Tenant, key, err)
	}
	if len(out.Plaintext) != crypto.KeySize || len(out.CiphertextBlob) == 0 {
		clear(out.Plaintext)
		return nil, nil, "", fmt.Errorf("awskms: GenerateDataKey with key %s for tenant %q: want a %d-byte key and its ciphertext, got %d bytes: %w",
			key, kc.Tenant, crypto.KeySize, len(out.Plaintext), ErrUnavailable)
	}
	return out.Plaintext, out.CiphertextBlob, kmsKeyID(out.KeyId, key), nil
}

// Wrap implements crypto.Provider with KMS Encrypt under the tenant's KEK.
// kekID is the key ARN KMS reports.
func (p *Provider) Wrap(ctx context.Context, kc crypto.KeyContext, plaintextKey []byte) (wrapped []byte, kekID string, err error) {
	if len(plaintextKey) != crypto.KeySize {
		return nil, "", fmt.Errorf("awskms: data key must be %d bytes", crypto.KeySize)
	}
	key := p.TenantKEK(kc.Tenant)
	cctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	out, err := p.client.Encrypt(cctx, &kms.EncryptInput{
		KeyId:             aws.String(key),
		Plaintext:         plaintextKey,
		EncryptionContext: kc.EncryptionContext(),
	})
	if err != nil {
		return nil, "", p.failure(ctx, "Encrypt", kc.Tenant, key, err)
	}
	return out.CiphertextBlob, kmsKeyID(out.KeyId, key), nil
}

// Unwrap implements crypto.Provider with KMS Decrypt under kc's context.
// A tenant's own KEK is named in the request, so KMS refuses a key wrapped
// by any other; keys of the default KEK are decrypted with whichever key
// the blob names (see the package documentation).
func (p *Provider) Unwrap(ctx context.Context, kc crypto.KeyContext, wrapped []byte) ([]byte, error) {
	in := &kms.DecryptInput{CiphertextBlob: wrapped, EncryptionContext: kc.EncryptionContext()}
	key := p.TenantKEK(kc.Tenant)
	if _, own := p.tenantKeys[kc.Tenant]; own {
		in.KeyId = aws.String(key)
	}
	cctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	out, err := p.client.Decrypt(cctx, in)
	if err != nil {
		return nil, p.failure(ctx, "Decrypt", kc.Tenant, key, err)
	}
	if len(out.Plaintext) != crypto.KeySize {
		clear(out.Plaintext)
		return nil, fmt.Errorf("awskms: Decrypt with key %s for tenant %q: not a data key: %w", key, kc.Tenant, crypto.ErrUnwrap)
	}
	return out.Plaintext, nil
}

// Ping checks that the default KEK exists and is enabled (DescribeKey),
// for readiness checks. Its errors wrap ErrUnavailable.
func (p *Provider) Ping(ctx context.Context) error {
	cctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	out, err := p.client.DescribeKey(cctx, &kms.DescribeKeyInput{KeyId: aws.String(p.defaultKey)})
	if err != nil {
		return p.unavailable(ctx, "DescribeKey", "", p.defaultKey, err)
	}
	if md := out.KeyMetadata; md == nil || md.KeyState != types.KeyStateEnabled {
		state := "unknown"
		if md != nil {
			state = string(md.KeyState)
		}
		return fmt.Errorf("awskms: default key %s is %s, not Enabled: %w", p.defaultKey, state, ErrUnavailable)
	}
	return nil
}

// ScheduleTenantKeyDeletion schedules the deletion of tenant's own KEK, for
// `pgcloak keys shred`. KMS makes the key unusable at once and destroys it
// after the waiting period (Options.DeletionWindowDays), so the tenant's
// wrapped data keys - in backups too - can never be unwrapped again.
//
// A tenant without a key of its own has nothing to schedule: keyID is ""
// and scheduled false. Otherwise keyID is the key's ARN and scheduled is
// true once the key is pending deletion, also when it already was. A key
// that does not exist is an error: a mistyped key id must not pass for a
// shredded one.
func (p *Provider) ScheduleTenantKeyDeletion(ctx context.Context, tenant string) (keyID string, scheduled bool, err error) {
	key, own := p.tenantKeys[tenant]
	if !own {
		return "", false, nil
	}
	cctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	// ScheduleKeyDeletion takes no alias: resolve it first.
	desc, err := p.client.DescribeKey(cctx, &kms.DescribeKeyInput{KeyId: aws.String(key)})
	if err != nil {
		return "", false, p.unavailable(ctx, "DescribeKey", tenant, key, err)
	}
	md := desc.KeyMetadata
	if md == nil || md.Arn == nil {
		return "", false, fmt.Errorf("awskms: DescribeKey %s for tenant %q: no key metadata: %w", key, tenant, ErrUnavailable)
	}
	arn := *md.Arn
	if md.KeyState == types.KeyStatePendingDeletion {
		return arn, true, nil
	}
	in := &kms.ScheduleKeyDeletionInput{KeyId: aws.String(arn)}
	if p.deletionWindow != 0 {
		in.PendingWindowInDays = aws.Int32(p.deletionWindow)
	}
	if _, err := p.client.ScheduleKeyDeletion(cctx, in); err != nil {
		return arn, false, p.unavailable(ctx, "ScheduleKeyDeletion", tenant, arn, err)
	}
	return arn, true, nil
}

// failure classifies the error of a GenerateDataKey, Encrypt or Decrypt
// with key for tenant (see the package documentation). ctx is the
// caller's, without the call timeout.
func (p *Provider) failure(ctx context.Context, op, tenant, key string, err error) error {
	var (
		invalid   *types.InvalidCiphertextException
		incorrect *types.IncorrectKeyException
		state     *types.KMSInvalidStateException
		notFound  *types.NotFoundException
	)
	switch {
	case errors.As(err, &invalid), errors.As(err, &incorrect):
		return fmt.Errorf("awskms: %s with key %s for tenant %q: %w", op, key, tenant, crypto.ErrUnwrap)
	case errors.As(err, &state), errors.As(err, &notFound):
		if _, own := p.tenantKeys[tenant]; own && p.keyGone(ctx, key) {
			return fmt.Errorf("awskms: %s: key %s of tenant %q is pending deletion or deleted: %w", op, key, tenant, crypto.ErrKeyShredded)
		}
	}
	return p.unavailable(ctx, op, tenant, key, err)
}

// keyGone reports whether KMS says key is pending deletion or does not
// exist. Any other answer, an error included, is false: only a key known
// to be gone makes a tenant shredded.
func (p *Provider) keyGone(ctx context.Context, key string) bool {
	cctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	out, err := p.client.DescribeKey(cctx, &kms.DescribeKeyInput{KeyId: aws.String(key)})
	var notFound *types.NotFoundException
	if errors.As(err, &notFound) {
		return true
	}
	if err != nil || out.KeyMetadata == nil {
		return false
	}
	s := out.KeyMetadata.KeyState
	return s == types.KeyStatePendingDeletion || s == types.KeyStatePendingReplicaDeletion
}

// unavailable wraps err as ErrUnavailable, naming the operation, the tenant
// and the key. When the caller's own ctx has ended, that is the error
// instead: the caller gave up, the service did not fail.
func (p *Provider) unavailable(ctx context.Context, op, tenant, key string, err error) error {
	what := "awskms: " + op + " with key " + key
	if tenant != "" {
		what += fmt.Sprintf(" for tenant %q", tenant)
	}
	if ctx.Err() != nil {
		return fmt.Errorf("%s: %w", what, context.Cause(ctx))
	}
	return fmt.Errorf("%s: %w: %w", what, ErrUnavailable, err)
}

// kmsKeyID is the key id KMS reported, or the one asked for when it
// reported none.
func kmsKeyID(reported *string, asked string) string {
	if reported != nil && *reported != "" {
		return *reported
	}
	return asked
}
