package main

import (
	"errors"
	"fmt"
	"time"

	"github.com/pgcloak/pgcloak/config"
	"github.com/pgcloak/pgcloak/tenanttoken"
	"github.com/spf13/cobra"
)

// defaultTokenTTL is the lifetime of a token pgcloak token prints.
const defaultTokenTTL = 10 * time.Minute

func newTokenCmd() *cobra.Command {
	var (
		path, tenant string
		ttl          time.Duration
	)
	cmd := &cobra.Command{
		Use:   "token --tenant T [--ttl 10m] -c FILE",
		Short: "Print a signed tenant token (HS256), for development and tests",
		Long: `Print a tenant token for tenant T, signed with FILE's tenancy.jwt.hs256_secret
(HS256), valid from now for --ttl (default 10m, at most
tenancy.jwt.max_lifetime). It carries exp, iat and nbf, iss and aud when
tenancy.jwt sets them, a random jti, sub "pgcloak-token", and the tenant at
tenancy.jwt.claim (a dot path such as app_metadata.tenant_id becomes nested
objects). pgcloak accepts it from a token role:

  psql -c "BEGIN; SET LOCAL pgcloak.tenant_token = '$(pgcloak token --tenant acme -c pgcloak.yaml)'; ..."

and, in tenancy mode jwt, as the password.

Tokens in production come from your identity provider; this command is for
development and tests. It refuses a configuration without hs256_secret
(with public_key_file or jwks_url, pgcloak holds no signing key). Anyone
with the secret can mint a token for any tenant: keep it as secret as the
master key.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if tenant == "" {
				return usageError(cmd, errors.New("--tenant must not be empty"))
			}
			// It signs and prints: only the signing secret must be set,
			// not the upstream passwords.
			cfg, err := config.Load(path, config.WithoutSecrets("tenancy.jwt.hs256_secret"))
			if err != nil {
				return &exitError{code: exitFailure, err: err}
			}
			tok, err := tenanttoken.Mint(cfg.Tenancy.JWT, tenant, ttl, time.Now())
			if err != nil {
				return &exitError{code: exitFailure, err: fmt.Errorf("pgcloak token: %s: %w", cfg.File, err)}
			}
			fmt.Fprintln(cmd.OutOrStdout(), tok)
			return nil
		},
	}
	configFlag(cmd, &path)
	cmd.Flags().StringVar(&tenant, "tenant", "", "the tenant the token names (required)")
	cmd.MarkFlagRequired("tenant")
	cmd.Flags().DurationVar(&ttl, "ttl", defaultTokenTTL, "how long the token is valid (at most tenancy.jwt.max_lifetime)")
	return cmd
}
