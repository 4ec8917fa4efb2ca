package main

import (
	"context"
	"fmt"

	"github.com/pgcloak/pgcloak/config"
	"github.com/pgcloak/pgcloak/crypto"
	"github.com/pgcloak/pgcloak/crypto/awskms"
)

// keyProvider builds the key provider keys.provider names: the local
// master key file, or AWS KMS with keys.aws's default key and the
// per-tenant keys of keys.tenants. ctx bounds loading the AWS
// configuration; no KMS call is made, so that `keys shred` still works
// while the default key is unavailable.
func keyProvider(ctx context.Context, k config.Keys) (crypto.Provider, error) {
	switch k.Provider {
	case config.ProviderLocal, "":
		p, err := crypto.LoadLocalProvider(k.Local.MasterKeyFile)
		if err != nil {
			return nil, fmt.Errorf("keys.local.master_key_file: %w", err)
		}
		return p, nil
	case config.ProviderAWS:
		tenants := make(map[string]string, len(k.Tenants))
		for tenant, tk := range k.Tenants {
			tenants[tenant] = tk.KeyID
		}
		p, err := awskms.New(ctx, awskms.Options{
			Region:       k.AWS.Region,
			Endpoint:     k.AWS.Endpoint,
			KeyID:        k.AWS.KeyID,
			TenantKeyIDs: tenants,
		})
		if err != nil {
			return nil, fmt.Errorf("keys.aws: %w", err)
		}
		return p, nil
	default:
		return nil, fmt.Errorf("keys.provider %q is not supported", k.Provider)
	}
}

// servingKeyProvider is keyProvider for serve. It also checks, as the key
// store's connection is checked, that a provider with a Ping method (AWS
// KMS: the default key exists and is enabled, one DescribeKey bounded by
// the provider's call timeout) is usable, so that a wrong region, key id,
// endpoint or missing credentials stop serve at once rather than failing
// every tenant's first write.
func servingKeyProvider(ctx context.Context, k config.Keys) (crypto.Provider, error) {
	p, err := keyProvider(ctx, k)
	if err != nil {
		return nil, err
	}
	if pinger, ok := p.(interface{ Ping(context.Context) error }); ok {
		if err := pinger.Ping(ctx); err != nil {
			return nil, fmt.Errorf("keys.aws.key_id: %w", err)
		}
	}
	return p, nil
}
