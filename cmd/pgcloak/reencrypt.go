package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"

	"github.com/pgcloak/pgcloak/audit"
	"github.com/pgcloak/pgcloak/config"
	"github.com/pgcloak/pgcloak/crypto"
	"github.com/pgcloak/pgcloak/keystore"
	"github.com/pgcloak/pgcloak/migrate"
)

// batchFlags are the flags reencrypt and encrypt-existing share.
type batchFlags struct {
	config       string
	tenant       string
	tenantColumn string
	batchSize    int
	pause        time.Duration
}

func (f *batchFlags) register(cmd *cobra.Command, defaultBatch int) {
	configFlag(cmd, &f.config)
	actorFlag(cmd)
	cmd.Flags().StringVar(&f.tenant, "tenant", "", "only this tenant's rows (and set tenancy.setting to it, for row-level security)")
	cmd.Flags().StringVar(&f.tenantColumn, "tenant-column", migrate.DefaultTenantColumn, "the column that holds each row's tenant")
	cmd.Flags().IntVar(&f.batchSize, "batch-size", defaultBatch, "rows per batch; each batch is one short transaction")
	cmd.Flags().DurationVar(&f.pause, "pause", 50*time.Millisecond, "pause between batches")
}

func (f *batchFlags) check(cmd *cobra.Command) error {
	if f.batchSize <= 0 {
		return usageError(cmd, fmt.Errorf("--batch-size must be positive, got %d", f.batchSize))
	}
	if f.pause < 0 {
		return usageError(cmd, fmt.Errorf("--pause must not be negative, got %s", f.pause))
	}
	if f.tenantColumn == "" {
		return usageError(cmd, errors.New("--tenant-column must not be empty"))
	}
	return nil
}

func newReencryptCmd() *cobra.Command {
	var (
		f       batchFlags
		tables  []string
		reindex bool
	)
	cmd := &cobra.Command{
		Use:   "reencrypt -c FILE [--tenant T] [--table X]",
		Short: "Re-encrypt values written under old data-key versions",
		Long: `Rewrite the values of the declared tables that are still sealed under an
older data-key version than their tenant's active one (see "pgcloak keys
rotate"), under the active version.

It works online, while the application keeps writing through pgcloak: rows
are visited in primary-key order in batches (--batch-size), each batch is
one short transaction, and it sleeps --pause between batches. Every row is
updated with a compare-and-set on the value it read, so a concurrent write
by the application wins and is never overwritten. It is resumable: a run
that is interrupted (Ctrl-C) is continued by running it again, since only
values still under an old version are selected.

The tenant of a row is read from --tenant-column. Each tenant that has
data keys (all of them, or --tenant) is visited in turn, with
tenancy.setting set to it as the proxy would, so row-level security
policies on that setting let upstream.user see the tenant's rows.

Blind indexes: the index key's version is not recorded in index values, so
a rotated index key cannot be detected from the rows. After rotating a
tenant's index key, run with --reindex: it recomputes the blind index of
every searchable value and writes those that differ (so it reads every row,
and resumes by comparison). Until it has finished, equality searches miss
the rows it has not reached yet.

Values that do not open for their row's tenant, and rows whose tenant
column is NULL, are counted and left as they are; the command then exits 1.
Tenants whose keys were shredded are skipped.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := f.check(cmd); err != nil {
				return err
			}
			cfg, err := config.Load(f.config)
			if err != nil {
				return &exitError{code: exitFailure, err: err}
			}
			decls, err := selectTables(cmd, cfg, tables)
			if err != nil {
				return err
			}
			return runReencrypt(cmd, cfg, f, decls, reindex)
		},
	}
	f.register(cmd, migrate.DefaultBatchSize)
	cmd.Flags().StringArrayVar(&tables, "table", nil, "only this declared table (schema.table or table; repeatable)")
	cmd.Flags().BoolVar(&reindex, "reindex", false, "also recompute blind indexes (after rotating an index key)")
	return cmd
}

// selectTables returns the declared tables names picks (all of them when
// names is empty), refusing a config that declares none and a name that is
// not declared.
func selectTables(cmd *cobra.Command, cfg *config.Config, names []string) ([]config.Table, error) {
	if len(cfg.Encrypt.Tables) == 0 {
		return nil, &exitError{code: exitFailure, err: fmt.Errorf("pgcloak: %s declares no encrypted tables (encrypt.tables): nothing to do", cfg.File)}
	}
	if len(names) == 0 {
		return cfg.Encrypt.Tables, nil
	}
	var out []config.Table
	for _, n := range names {
		t, ok := declaredTable(cfg, n)
		if !ok {
			return nil, usageError(cmd, fmt.Errorf("table %q is not declared in %s (declared: %s)", n, cfg.File, declaredNames(cfg)))
		}
		out = append(out, *t)
	}
	return out, nil
}

// declaredTable finds a declared table by "schema.table" or "table" (in
// schema public), compared as PostgreSQL folds unquoted names.
func declaredTable(cfg *config.Config, name string) (*config.Table, bool) {
	schema, table, ok := strings.Cut(strings.ToLower(name), ".")
	if !ok {
		schema, table = "public", schema
	}
	return cfg.Encrypt.Table(schema, table)
}

func declaredNames(cfg *config.Config) string {
	names := make([]string, len(cfg.Encrypt.Tables))
	for i, t := range cfg.Encrypt.Tables {
		names[i] = t.QualifiedName()
	}
	return strings.Join(names, ", ")
}

func runReencrypt(cmd *cobra.Command, cfg *config.Config, f batchFlags, decls []config.Table, reindex bool) error {
	ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	stdout, stderr := cmd.OutOrStdout(), cmd.ErrOrStderr()

	rt, err := openMigration(ctx, cfg, "pgcloak reencrypt", cliActor(cmd), stdout, stderr)
	if err != nil {
		return setupError(ctx, "reencrypt", err)
	}
	defer rt.close()
	if err := preflight(ctx, rt, "reencrypt", f.tenantColumn, decls); err != nil {
		return err
	}

	ev := audit.Reencrypt{Tenant: f.tenant, Reindex: reindex}
	for _, t := range decls {
		ev.Tables = append(ev.Tables, t.QualifiedName())
	}
	rt.audit.ReencryptStarted(ev)
	progress := newProgress(stderr, "reencrypt")
	st, err := migrate.Reencrypt(ctx, migrate.ReencryptOptions{
		Options: rt.options(f, progress),
		Tables:  decls,
		Store:   rt.store,
		Reindex: reindex,
	})
	progress.finish(err)
	ev.Updated, ev.Left = st.Updated, st.Left()
	ev.Outcome = outcome(ctx, st, err)
	rt.audit.ReencryptFinished(ev)

	what := "re-encrypted"
	if reindex {
		what = "re-encrypted or re-indexed"
	}
	fmt.Fprintf(stdout, "reencrypt: %s %d rows in %d batches (%d rows visited)\n", what, st.Updated, st.Batches, st.Visited)
	for _, t := range st.ShreddedTenants {
		fmt.Fprintf(stdout, "reencrypt: skipped tenant %q: its data keys are shredded\n", t)
	}
	return reportEnd(ctx, "reencrypt", cfg, st, err, "values that do not open for their row's tenant")
}

// setupError is a migration's failure before its first batch. When the run
// was interrupted (Ctrl-C, SIGTERM) it says so, and that no row changed,
// rather than the "context canceled" of whichever step the interrupt cut
// short.
func setupError(ctx context.Context, command string, err error) error {
	if ctx.Err() != nil {
		return &exitError{code: exitFailure, err: fmt.Errorf("pgcloak: %s: interrupted before the first batch; no row was changed", command)}
	}
	return &exitError{code: exitFailure, err: fmt.Errorf("pgcloak: %s: %w", command, err)}
}

// preflightTimeout bounds the privilege check before a migration.
const preflightTimeout = 30 * time.Second

// preflight fails a migration command before any work (and before its
// progress bar) when upstream.user lacks a privilege it needs on one of
// tables, with the GRANT that fixes it; PostgreSQL would otherwise stop the
// first batch with 42501.
func preflight(ctx context.Context, rt *migration, command, tenantColumn string, tables []config.Table) error {
	pctx, cancel := context.WithTimeout(ctx, preflightTimeout)
	defer cancel()
	if err := requireMigrationPrivileges(pctx, rt.pool, command, tenantColumn, tables); err != nil {
		if ctx.Err() != nil {
			return setupError(ctx, command, err)
		}
		return &exitError{code: exitFailure, err: redact(fmt.Errorf("pgcloak: %s: %w", command, err), rt.cfg.Upstream.Password)}
	}
	return nil
}

// outcome names how a run ended, for the audit stream.
func outcome(ctx context.Context, st migrate.Stats, err error) string {
	switch {
	case err != nil && ctx.Err() != nil:
		return "interrupted"
	case err != nil:
		return "failed"
	case st.Left() > 0:
		return "incomplete"
	}
	return "complete"
}

// reportEnd prints what a run left undone and turns its end into the exit
// status: 0 when everything is done, 1 otherwise.
func reportEnd(ctx context.Context, name string, cfg *config.Config, st migrate.Stats, err error, undecryptable string) error {
	if err != nil {
		if ctx.Err() != nil {
			return &exitError{code: exitFailure, err: fmt.Errorf("pgcloak: %s: interrupted; the batches committed so far stay done, run the command again to continue", name)}
		}
		if errors.Is(err, migrate.ErrRowSecurity) {
			err = fmt.Errorf("%w; run as a role that bypasses it (BYPASSRLS, or the table owner without FORCE ROW LEVEL SECURITY), or once per tenant with --tenant", err)
		}
		return &exitError{code: exitFailure, err: redact(fmt.Errorf("pgcloak: %s: %w", name, err), cfg.Upstream.Password)}
	}
	var left []string
	if st.Raced > 0 {
		left = append(left, fmt.Sprintf("%d rows changed by the application during the run (run the command again)", st.Raced))
	}
	if st.Undecryptable > 0 {
		left = append(left, fmt.Sprintf("%d rows with %s", st.Undecryptable, undecryptable))
	}
	if st.Invalid > 0 {
		left = append(left, fmt.Sprintf("%d rows whose plaintext is not valid for the declared type", st.Invalid))
	}
	if st.NoTenant > 0 {
		left = append(left, fmt.Sprintf("%d rows whose tenant column is NULL", st.NoTenant))
	}
	if len(left) > 0 {
		return &exitError{code: exitFailure, err: fmt.Errorf("pgcloak: %s: left as they were: %s", name, strings.Join(left, "; "))}
	}
	return nil
}

// migration is what reencrypt and encrypt-existing run on: a pool of
// upstream.user sessions of their own, the key store and a key cache.
// close releases what openMigration opened, last first.
type migration struct {
	cfg    *config.Config
	pool   *pgxpool.Pool
	store  *keystore.Store
	pinner *keystore.Pinner
	cache  *crypto.KeyCache
	audit  *audit.Logger
	closers
}

// migrationMaxConns is one connection for a batch's transaction and one
// for key loads the batch waits for.
const migrationMaxConns = 2

// openMigration connects as upstream.user (application_name appName),
// opens the key store and the key provider, and builds a key cache as
// serve's (keyCacheOptions): key loads and rotations at the encryption
// limit go to the audit stream, and such rotations to the log (the log
// section, on stderr) too. Every audit event names actor. On error it
// closes what it opened.
func openMigration(ctx context.Context, cfg *config.Config, appName string, actor audit.Actor, stdout, stderr io.Writer) (_ *migration, err error) {
	m := &migration{cfg: cfg}
	defer func() {
		if err != nil {
			m.close()
		}
	}()
	log, err := newLogger(cfg.Log, stderr)
	if err != nil {
		return nil, err
	}
	auditLog, auditCloser, err := audit.Open(cfg.Audit.Output, stdout, stderr)
	if err != nil {
		return nil, err
	}
	auditLog = auditLog.WithActor(actor)
	m.audit = auditLog
	m.closers = append(m.closers, auditCloser.Close)

	provider, err := keyProvider(ctx, cfg.Keys)
	if err != nil {
		return nil, err
	}
	m.pool, err = upstreamPool(cfg.Upstream, appName, migrationMaxConns)
	if err != nil {
		return nil, err
	}
	m.closers = append(m.closers, func() error { m.pool.Close(); return nil })
	if m.store, err = openKeyStore(ctx, cfg.Upstream, m.pool); err != nil {
		return nil, err
	}
	if m.pinner, err = openPinner(ctx, cfg, m.pool); err != nil {
		return nil, err
	}
	m.closers = append(m.closers, func() error { m.pinner.Close(); return nil })
	m.cache = crypto.NewKeyCache(m.store, provider, keyCacheOptions(cfg.Keys, auditLog, log, nil))
	m.closers = append(m.closers, func() error { m.cache.Close(); return nil })
	return m, nil
}

func (m *migration) options(f batchFlags, p migrate.Progress) migrate.Options {
	return migrate.Options{
		Pool:          m.pool,
		Keys:          m.cache,
		TenantColumn:  f.tenantColumn,
		Tenant:        f.tenant,
		TenantSetting: m.cfg.Tenancy.Setting,
		Pinner:        m.pinner,
		BatchSize:     f.batchSize,
		Pause:         f.pause,
		Progress:      p,
	}
}

// progress shows a run's progress on w: a progress bar when w is a
// terminal, else a plain line at most every progressLineEvery and one at
// the end. It implements migrate.Progress.
type progress struct {
	w     io.Writer
	name  string
	bar   *progressbar.ProgressBar
	total int64
	done  int64
	last  time.Time
}

const progressLineEvery = 2 * time.Second

func newProgress(w io.Writer, name string) *progress {
	p := &progress{w: w, name: name}
	if isTerminal(w) {
		p.bar = progressbar.NewOptions64(0,
			progressbar.OptionSetWriter(w),
			progressbar.OptionSetDescription(name),
			progressbar.OptionShowCount(),
			progressbar.OptionShowIts(),
			progressbar.OptionSetItsString("rows"),
			progressbar.OptionSetPredictTime(true),
			progressbar.OptionThrottle(100*time.Millisecond),
			progressbar.OptionOnCompletion(func() { fmt.Fprintln(w) }),
		)
	}
	return p
}

func (p *progress) AddTotal(rows int64) {
	p.total += rows
	if p.bar != nil {
		p.bar.ChangeMax64(p.total)
	}
}

func (p *progress) Done(rows int64) {
	p.done += rows
	if p.bar != nil {
		p.bar.Add64(rows)
		return
	}
	if now := time.Now(); now.Sub(p.last) >= progressLineEvery {
		p.last = now
		p.line()
	}
}

func (p *progress) line() {
	pct := 100.0
	if p.total > 0 {
		pct = float64(p.done) * 100 / float64(p.total)
	}
	fmt.Fprintf(p.w, "%s: %d/%d rows (%.0f%%)\n", p.name, p.done, p.total, pct)
}

// finish ends the bar (full only if the work was done), or prints the
// last line. A run that failed (err) before it counted any work prints
// nothing: "0/0 rows (100%)" would claim a success.
func (p *progress) finish(err error) {
	if err != nil && p.total == 0 && p.done == 0 {
		if p.bar != nil {
			p.bar.Exit()
		}
		return
	}
	if p.bar != nil {
		if p.done >= p.total {
			p.bar.Finish()
		} else {
			p.bar.Exit()
			fmt.Fprintln(p.w)
		}
		return
	}
	p.line()
}
