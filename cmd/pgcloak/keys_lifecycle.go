package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/pgcloak/pgcloak/audit"
	"github.com/pgcloak/pgcloak/config"
	"github.com/pgcloak/pgcloak/crypto"
	"github.com/pgcloak/pgcloak/keystore"
	"github.com/spf13/cobra"
)

// tenantKeyDeleter is implemented by a key provider that gives tenants KEKs
// of their own (the AWS KMS provider with keys.tenants): shredding all of a
// tenant's keys also schedules the deletion of its KEK, so that backups of
// pgcloak.data_keys cannot be unwrapped either. scheduled is false when the
// tenant has no KEK of its own (keyID "") or it was already scheduled.
type tenantKeyDeleter interface {
	ScheduleTenantKeyDeletion(ctx context.Context, tenant string) (keyID string, scheduled bool, err error)
}

// keysTimeout bounds one keys command's work on the key store.
const keysTimeout = 2 * time.Minute

// keyAdmin is what the keys commands that work on the key store share: the
// configuration, a pool as upstream.user, the store and the audit stream.
type keyAdmin struct {
	cfg    *config.Config
	pool   *pgxpool.Pool
	store  *keystore.Store
	audit  *audit.Logger
	stdout io.Writer
	closers
}

// openKeyAdmin loads the configuration at path and opens the key store
// (creating its schema when ensure is set). Errors come back as exit
// errors, without secrets.
func openKeyAdmin(ctx context.Context, cmd *cobra.Command, path string, ensure bool) (_ *keyAdmin, err error) {
	cfg, err := config.Load(path)
	if err != nil {
		return nil, &exitError{code: exitFailure, err: err}
	}
	a := &keyAdmin{cfg: cfg, stdout: cmd.OutOrStdout()}
	defer func() {
		if err != nil {
			a.close()
		}
	}()
	auditLog, auditCloser, err := audit.Open(cfg.Audit.Output, cmd.OutOrStdout(), cmd.ErrOrStderr())
	if err != nil {
		return nil, a.fail(err)
	}
	a.audit = auditLog.WithActor(cliActor(cmd))
	a.closers = append(a.closers, auditCloser.Close)
	a.pool, err = upstreamPool(cfg.Upstream, "pgcloak", upstreamPoolMaxConns)
	if err != nil {
		return nil, a.fail(err)
	}
	a.closers = append(a.closers, func() error { a.pool.Close(); return nil })
	if !ensure {
		a.store = keystore.New(a.pool)
		return a, nil
	}
	if a.store, err = openKeyStore(ctx, cfg.Upstream, a.pool); err != nil {
		return nil, a.fail(err)
	}
	return a, nil
}

// fail turns err into exit status 1 with the upstream password redacted.
func (a *keyAdmin) fail(err error) error {
	return &exitError{code: exitFailure, err: fmt.Errorf("pgcloak: %w", redact(err, a.cfg.Upstream.Password))}
}

// withKeyAdmin runs fn for a keys command under keysTimeout with the key
// store open. When changes is set (a command that changes keys) it creates
// the key store's schema when missing and then loads keys.provider, before
// fn runs, so that a broken provider configuration fails before any key
// changes; otherwise provider is nil. It closes what it opened.
func withKeyAdmin(cmd *cobra.Command, path string, changes bool, fn func(ctx context.Context, a *keyAdmin, provider crypto.Provider) error) error {
	ctx, cancel := context.WithTimeout(cmd.Context(), keysTimeout)
	defer cancel()
	a, err := openKeyAdmin(ctx, cmd, path, changes)
	if err != nil {
		return err
	}
	defer a.close()
	var provider crypto.Provider
	if changes {
		if provider, err = keyProvider(ctx, a.cfg.Keys); err != nil {
			return a.fail(err)
		}
	}
	return fn(ctx, a, provider)
}

// className is how output names a key class.
func className(c string) string {
	if c == crypto.DefaultKeyClass {
		return "default"
	}
	return c
}

// tenantFlags registers --tenant (required) and, when class is not nil,
// --key-class.
func tenantFlags(cmd *cobra.Command, tenant, class *string) {
	cmd.Flags().StringVar(tenant, "tenant", "", "tenant whose keys to act on")
	cmd.MarkFlagRequired("tenant")
	if class != nil {
		cmd.Flags().StringVar(class, "key-class", crypto.DefaultKeyClass, "key class (a column's key_class; default: the default class)")
	}
}

func newKeysRotateCmd() *cobra.Command {
	var path, tenant, class, purpose string
	cmd := &cobra.Command{
		Use:   "rotate -c FILE --tenant T [--key-class C] [--purpose data|index]",
		Short: "Make a new active data key version for a tenant",
		Long: `Make a new active version of tenant T's key of class C (default: the default
class) and purpose data (default) or index, and print it. New writes use it at
once on every replica (they are told through LISTEN/NOTIFY); values sealed
under older versions stay readable. A tenant without keys gets version 1.

Rotating the index purpose makes existing blind indexes unmatchable until they
are recomputed: rotate data keys unless you are re-indexing. A tenant whose
keys are shredded is refused: re-enable it with keys create.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			p := crypto.Purpose(purpose)
			if !p.Valid() {
				return usageError(cmd, fmt.Errorf("--purpose must be data or index, got %q", purpose))
			}
			return withKeyAdmin(cmd, path, true, func(ctx context.Context, a *keyAdmin, provider crypto.Provider) error {
				if _, err := a.store.Active(ctx, tenant, class, p); errors.Is(err, crypto.ErrKeyShredded) {
					return a.fail(fmt.Errorf("tenant %s's keys of class %s are shredded; run keys create to give it new ones", tenant, className(class)))
				} else if err != nil && !errors.Is(err, crypto.ErrKeyNotFound) {
					return a.fail(err)
				}
				id, err := a.store.Rotate(ctx, provider, tenant, class, p)
				if err != nil {
					return a.fail(err)
				}
				a.audit.KeyRotated(id.Tenant, id.KeyClass, string(id.Purpose), int(id.Version), "")
				fmt.Fprintf(a.stdout, "Rotated tenant %s, key class %s, purpose %s: version %d is active.\n", tenant, className(class), p, id.Version)
				if id.Version > 1 {
					fmt.Fprintln(a.stdout, "Older versions stay readable; pgcloak reencrypt moves their values to the new version.")
				}
				if p == crypto.PurposeIndex {
					fmt.Fprintln(a.stdout, "Existing blind indexes no longer match until they are recomputed.")
				}
				return nil
			})
		},
	}
	configFlag(cmd, &path)
	actorFlag(cmd)
	tenantFlags(cmd, &tenant, &class)
	cmd.Flags().StringVar(&purpose, "purpose", string(crypto.PurposeData), "key purpose: data or index")
	return cmd
}

func newKeysCreateCmd() *cobra.Command {
	var path, tenant, class string
	cmd := &cobra.Command{
		Use:   "create -c FILE --tenant T [--key-class C]",
		Short: "Give a tenant new keys (after a shred)",
		Long: `Create new data and index keys of class C (default: the default class) for
tenant T, typically to accept new writes for a tenant whose keys were
shredded; its old values stay undecryptable. Tenants get keys on their first
write anyway, so this is only needed after a shred. It refuses a tenant that
already has an active data key: use keys rotate for that.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withKeyAdmin(cmd, path, true, func(ctx context.Context, a *keyAdmin, provider crypto.Provider) error {
				w, err := a.store.Active(ctx, tenant, class, crypto.PurposeData)
				switch {
				case err == nil:
					return a.fail(fmt.Errorf("tenant %s already has an active data key of class %s (version %d); use keys rotate", tenant, className(class), w.ID.Version))
				case !errors.Is(err, crypto.ErrKeyNotFound) && !errors.Is(err, crypto.ErrKeyShredded):
					return a.fail(err)
				}
				for _, p := range []crypto.Purpose{crypto.PurposeData, crypto.PurposeIndex} {
					if p == crypto.PurposeIndex {
						_, err := a.store.Active(ctx, tenant, class, p)
						if err == nil {
							continue // the index key survived (only data was shredded by hand)
						}
						if !errors.Is(err, crypto.ErrKeyNotFound) && !errors.Is(err, crypto.ErrKeyShredded) {
							return a.fail(err)
						}
					}
					id, err := a.store.Rotate(ctx, provider, tenant, class, p)
					if err != nil {
						return a.fail(err)
					}
					w, err := a.store.Version(ctx, id)
					if err != nil {
						return a.fail(err)
					}
					a.audit.KeyCreated(id.Tenant, id.KeyClass, string(id.Purpose), int(id.Version), w.KEKID)
					fmt.Fprintf(a.stdout, "Created tenant %s, key class %s, purpose %s: version %d is active.\n", tenant, className(class), p, id.Version)
				}
				return nil
			})
		},
	}
	configFlag(cmd, &path)
	actorFlag(cmd)
	tenantFlags(cmd, &tenant, &class)
	return cmd
}

func newKeysRewrapCmd() *cobra.Command {
	var path, tenant string
	cmd := &cobra.Command{
		Use:   "rewrap -c FILE --tenant T",
		Short: "Wrap a tenant's data keys again under its current KEK",
		Long: `Unwrap every version of tenant T's keys that is not shredded with the key
provider and wrap it again under the key-encryption key the provider now uses
for T (keys.aws.key_id or T's keys.tenants entry, or the local master key),
updating pgcloak.data_keys. The data keys do not change, so no stored value is
touched and nothing needs re-encrypting. Use it after moving a tenant to a KEK
of its own, or after a KMS key change. It is all or nothing.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withKeyAdmin(cmd, path, true, func(ctx context.Context, a *keyAdmin, provider crypto.Provider) error {
				done, err := a.store.Rewrap(ctx, provider, tenant)
				if err != nil {
					return a.fail(err)
				}
				for _, r := range done {
					a.audit.KeyRewrapped(r.ID.Tenant, r.ID.KeyClass, string(r.ID.Purpose), int(r.ID.Version), r.OldKEK, r.NewKEK)
				}
				if len(done) == 0 {
					fmt.Fprintf(a.stdout, "Tenant %s has no keys to rewrap.\n", tenant)
					return nil
				}
				fmt.Fprintf(a.stdout, "Rewrapped %d key versions of tenant %s under KEK %s.\n", len(done), tenant, done[len(done)-1].NewKEK)
				return nil
			})
		},
	}
	configFlag(cmd, &path)
	actorFlag(cmd)
	tenantFlags(cmd, &tenant, nil)
	return cmd
}

func newKeysShredCmd() *cobra.Command {
	var (
		path, tenant, class string
		yes                 bool
	)
	cmd := &cobra.Command{
		Use:   "shred -c FILE --tenant T [--key-class C] --yes",
		Short: "Destroy a tenant's keys (crypto-shredding)",
		Long: `Destroy every key version of tenant T, of all its key classes or only of
class C with --key-class: their wrapped bytes are deleted from
pgcloak.data_keys. Every running replica purges them from its cache at once
(LISTEN/NOTIFY), and T's values then read as undecryptable (SQLSTATE 39000).
New writes for T are refused until keys create gives it new keys.

When the key provider gives T a KEK of its own (keys.tenants with AWS KMS),
shredding all of T's classes also schedules that KMS key's deletion, which is
what makes backups of the database useless for T. New keys for T then need
a new KMS key in keys.tenants before keys create (shred prints the steps).
With a KEK shared between
tenants (the local master key, keys.aws.key_id), a backup of pgcloak.data_keys
taken before the shred still opens T's values together with that KEK.

This cannot be undone. It refuses to run without --yes.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !yes {
				return usageError(cmd, fmt.Errorf("keys shred destroys tenant %s's keys for good; add --yes to confirm", tenant))
			}
			oneClass := cmd.Flags().Changed("key-class")
			return withKeyAdmin(cmd, path, true, func(ctx context.Context, a *keyAdmin, provider crypto.Provider) error {
				var (
					n   int
					err error
				)
				if oneClass {
					n, err = a.store.ShredKeyClass(ctx, tenant, class)
				} else {
					n, err = a.store.Shred(ctx, tenant)
				}
				if err != nil {
					return a.fail(err)
				}
				ev := audit.Shred{Tenant: tenant, KeyClass: class, OneClass: oneClass, Versions: n}
				what := "all key classes"
				if oneClass {
					what = "key class " + className(class)
				}
				fmt.Fprintf(a.stdout, "Shredded tenant %s (%s): %d key versions destroyed; running replicas purge them now.\n", tenant, what, n)

				var kekErr error
				switch d, ok := provider.(tenantKeyDeleter); {
				case oneClass:
					fmt.Fprintln(a.stdout, "The tenant's KEK is kept: its other key classes still use it.")
				case ok:
					ev.KEKID, ev.DeletionScheduled, kekErr = d.ScheduleTenantKeyDeletion(ctx, tenant)
					switch {
					case kekErr != nil:
					case ev.KEKID == "":
						fmt.Fprintln(a.stdout, "The tenant has no KEK of its own: backups of pgcloak.data_keys taken before now still open its values with the shared KEK.")
					case ev.DeletionScheduled:
						fmt.Fprintf(a.stdout, "Scheduled the deletion of the tenant's KMS key %s.\n", ev.KEKID)
						newTenantKEKHint(a.stdout, a.cfg, tenant)
					default:
						fmt.Fprintf(a.stdout, "The tenant's KMS key %s was already scheduled for deletion.\n", ev.KEKID)
						newTenantKEKHint(a.stdout, a.cfg, tenant)
					}
				default:
					fmt.Fprintln(a.stdout, "The key provider has no per-tenant KEK: backups of pgcloak.data_keys taken before now still open the tenant's values with the master key.")
				}
				a.audit.TenantShredded(ev)
				if kekErr != nil {
					return a.fail(fmt.Errorf("the keys are shredded, but scheduling the deletion of tenant %s's KMS key failed (run keys shred again): %w", tenant, kekErr))
				}
				return nil
			})
		},
	}
	configFlag(cmd, &path)
	actorFlag(cmd)
	tenantFlags(cmd, &tenant, &class)
	cmd.Flags().BoolVar(&yes, "yes", false, "confirm that the keys are to be destroyed")
	return cmd
}

// newTenantKEKHint tells how a tenant whose own KMS key is pending
// deletion gets keys again: keys create alone would wrap the new data keys
// under that key, which KMS refuses (KMSInvalidStateException), so the
// tenant needs a new KMS key in keys.tenants first.
func newTenantKEKHint(w io.Writer, cfg *config.Config, tenant string) {
	aws := cfg.Keys.AWS
	create := "aws kms create-key --region " + aws.Region
	if aws.Endpoint != "" {
		create += " --endpoint-url " + aws.Endpoint
	}
	create += fmt.Sprintf(" --description %q --query KeyMetadata.Arn --output text", "pgcloak tenant "+tenant)
	fmt.Fprintf(w, `To accept new writes for tenant %[1]s again, it needs a new KMS key (keys create
alone fails: the old one is pending deletion):
  1. create one:  %[2]s
  2. set keys.tenants.%[1]s.key_id (%[3]s) to the new key's ARN (or an alias of it);
  3. run:         pgcloak keys create -c %[4]s --tenant %[1]s
Running replicas pick up the new key id after a restart (keys is not reloaded on SIGHUP).
`, tenant, create, setAt(cfg, "keys.tenants."+tenant+".key_id"), cfg.File)
}

func newKeysListCmd() *cobra.Command {
	var (
		path, tenant string
		count        bool
	)
	cmd := &cobra.Command{
		Use:   "list -c FILE [--tenant T] [--count]",
		Short: "List data key versions, and how many values each protects",
		Long: `List the data key versions in pgcloak.data_keys, of tenant T or of every
tenant: key class, purpose, version, state (active, retired, shredded), the
KEK that wraps it, when it was created, and for data keys how many
encryptions replicas have reserved under it (an upper bound on the values it
sealed; pgcloak rotates a key after keys.rotate_after_encryptions, 2^30 by
default).

With --count it also counts, per declared column, the stored values by the key
version in their header (0x01 | version). A value does not say which tenant
sealed it, so the counts cover the rows upstream.user can see: with --tenant,
tenancy.setting is set to T for the count, so that tables under row-level
security that applies to upstream.user count T's rows only; other tables
count every tenant's rows, whose versions are numbered per tenant. The output
says which applies to each table.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withKeyAdmin(cmd, path, false, func(ctx context.Context, a *keyAdmin, _ crypto.Provider) error {
				infos, err := a.store.List(ctx, tenant)
				var pgErr *pgconn.PgError
				if errors.As(err, &pgErr) && pgErr.Code == pgerrcode.UndefinedTable {
					fmt.Fprintln(a.stdout, "No keys: pgcloak.data_keys does not exist yet (serve creates it).")
					return nil
				}
				if err != nil {
					return a.fail(err)
				}
				printKeys(a.stdout, infos)
				if count {
					fmt.Fprintln(a.stdout)
					if err := countVersions(ctx, a, tenant); err != nil {
						return a.fail(err)
					}
				}
				return nil
			})
		},
	}
	configFlag(cmd, &path)
	cmd.Flags().StringVar(&tenant, "tenant", "", "list this tenant's keys only")
	cmd.Flags().BoolVar(&count, "count", false, "count the stored values of each declared column by key version")
	return cmd
}

func printKeys(w io.Writer, infos []keystore.KeyInfo) {
	if len(infos) == 0 {
		fmt.Fprintln(w, "No keys.")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TENANT\tKEY CLASS\tPURPOSE\tVERSION\tSTATE\tKEK ID\tCREATED AT\tENCRYPTIONS")
	for _, k := range infos {
		sealed := "-"
		if k.ID.Purpose == crypto.PurposeData {
			sealed = fmt.Sprint(k.SealsReserved)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\n", k.ID.Tenant, className(k.ID.KeyClass), k.ID.Purpose, k.ID.Version,
			k.State, k.KEKID, k.CreatedAt.UTC().Format(time.RFC3339), sealed)
	}
	tw.Flush()
}

// countVersionsSQL counts the values of one column by the key version in
// their header: 0x01 | version (uint32 BE). Values not in that format
// (plaintext not yet encrypted, garbage) get a NULL version.
const countVersionsSQL = `
SELECT CASE WHEN length(v) >= 5 AND get_byte(v, 0) = 1
            THEN (get_byte(v, 1)::bigint << 24) | (get_byte(v, 2)::bigint << 16)
               | (get_byte(v, 3)::bigint << 8) | get_byte(v, 4)::bigint
       END AS version,
       count(*)
FROM (SELECT %s::bytea AS v FROM %s WHERE %[1]s IS NOT NULL) AS t
GROUP BY 1
ORDER BY 1 NULLS LAST`

// countVersions prints, per declared column, how many values name each key
// version, in one transaction (which pins tenant when one is given).
func countVersions(ctx context.Context, a *keyAdmin, tenant string) error {
	tables := a.cfg.Encrypt.Tables
	if len(tables) == 0 {
		fmt.Fprintln(a.stdout, "No declared tables to count.")
		return nil
	}
	tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TABLE\tCOLUMN\tKEY CLASS\tVERSION\tVALUES\tROWS COUNTED")
	var pinner *keystore.Pinner
	if tenant != "" {
		p, err := openPinner(ctx, a.cfg, a.pool)
		if err != nil {
			return err
		}
		defer p.Close()
		pinner = p
	}
	// Not read-only: pinning the tenant draws from a sequence. It only
	// reads the tables.
	err := pgx.BeginFunc(ctx, a.pool, func(tx pgx.Tx) error {
		if pinner != nil {
			if err := pinner.PinTx(ctx, tx, a.cfg.Tenancy.Setting, tenant); err != nil {
				return err
			}
		}
		for _, t := range tables {
			table := pgx.Identifier{t.Schema, t.Name}.Sanitize()
			var rls bool
			if err := tx.QueryRow(ctx, `SELECT row_security_active($1::text::regclass)`, table).Scan(&rls); err != nil {
				return fmt.Errorf("%s: %w", t.QualifiedName(), err)
			}
			scope := "all tenants (no row-level security for upstream.user)"
			switch {
			case rls && tenant != "":
				scope = "tenant " + tenant + " (row-level security)"
			case rls:
				scope = "those row-level security shows upstream.user"
			}
			for _, c := range t.Columns {
				col := pgx.Identifier{c.Name}.Sanitize()
				rows, err := tx.Query(ctx, fmt.Sprintf(countVersionsSQL, col, table))
				if err != nil {
					return fmt.Errorf("%s.%s: %w", t.QualifiedName(), c.Name, err)
				}
				type bucket struct {
					version *int64
					n       int64
				}
				buckets, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (bucket, error) {
					var b bucket
					return b, r.Scan(&b.version, &b.n)
				})
				if err != nil {
					return fmt.Errorf("%s.%s: %w", t.QualifiedName(), c.Name, err)
				}
				if len(buckets) == 0 {
					fmt.Fprintf(tw, "%s\t%s\t%s\t-\t0\t%s\n", t.QualifiedName(), c.Name, className(c.KeyClass), scope)
				}
				for _, b := range buckets {
					v := "not encrypted"
					if b.version != nil {
						v = fmt.Sprint(*b.version)
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\n", t.QualifiedName(), c.Name, className(c.KeyClass), v, b.n, scope)
				}
			}
		}
		return nil
	})
	tw.Flush()
	return err
}
