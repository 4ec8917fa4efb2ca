package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"reflect"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/pgcloak/pgcloak/config"
	"github.com/pgcloak/pgcloak/proxy"
	"github.com/rs/zerolog"
	"github.com/spf13/cobra"
)

// defaultShutdownTimeout applies when the configuration leaves
// listen.shutdown_timeout unset.
const defaultShutdownTimeout = 30 * time.Second

func newServeCmd() *cobra.Command {
	var path string
	cmd := &cobra.Command{
		Use:   "serve -c FILE",
		Short: "Run the proxy",
		Long: `Run the proxy with the configuration in FILE.

When encrypt.tables declares tables, serve first loads the key provider
(keys.provider local: keys.local.master_key_file), connects upstream as
upstream.user to keep the tenants' wrapped data keys in the pgcloak schema
(created when missing) and reads the declared tables from the catalog.
Sessions are then mapped to tenants by tenancy.login.roles, writes to the
declared columns are encrypted and results decrypted. Audit events go to
audit.output.

Before serving, it verifies that every declared column and index column
carries the format CHECK that "pgcloak schema" prints, so that PostgreSQL
itself refuses plaintext written around the proxy. The constraint's
definition is compared, not its name. A missing CHECK stops serve (exit 1,
one log line per column and the command that adds them:
pgcloak schema -c FILE | psql ...) unless encrypt.require_format_checks is
false, which logs a warning per column instead. The looser CHECK of
earlier versions (no key version) and a NOT VALID one are accepted with a
warning; pgcloak schema replaces or validates them.

SIGTERM or SIGINT stops accepting connections and lets open sessions finish
for up to listen.shutdown_timeout, then closes the rest and exits 0.
SIGHUP reloads the configuration file's tenancy and encrypt sections: new
sessions use the new tenant roles and declared tables (whose column numbers
are read from pg_catalog again, after DDL on them); open sessions keep what
they started with. Changes to the other sections are logged and need a
restart. An invalid file is logged and changes nothing, as is a file that
declares a column without its format CHECK (unless
encrypt.require_format_checks is false): serve keeps the previous
declarations.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := config.Load(path)
			if err != nil {
				return &exitError{code: exitFailure, err: err}
			}
			log, err := newLogger(cfg.Log, cmd.ErrOrStderr())
			if err != nil {
				return &exitError{code: exitFailure, err: fmt.Errorf("%s: %w", cfg.File, err)}
			}
			if err := serve(cmd.Context(), cfg, log, cmd.OutOrStdout(), cmd.ErrOrStderr()); err != nil {
				log.Error().Err(err).Msg("pgcloak stopped")
				return failed()
			}
			return nil
		},
	}
	configFlag(cmd, &path)
	return cmd
}

// serve runs the proxy until a signal or ctx ends it. It returns nil after a
// clean shutdown, including one where sessions had to be closed at the
// deadline. stdout and stderr are where audit.output "stdout" and "stderr"
// go.
func serve(ctx context.Context, cfg *config.Config, log zerolog.Logger, stdout, stderr io.Writer) (err error) {
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)

	rt, err := newProxyRuntime(ctx, cfg, log, stdout, stderr)
	if err != nil {
		return err
	}
	defer func() {
		// After the server has stopped: sessions use the pool and keys.
		if cerr := rt.close(); cerr != nil {
			err = errors.Join(err, cerr)
		}
	}()
	if rt.pool != nil {
		if err := checkFormat(ctx, cfg, rt.pool, log, ""); err != nil {
			return err
		}
	}
	// admin.address: /healthz and /readyz (readiness dials upstream
	// itself). Stopped before the runtime closes.
	adm, err := startAdmin(ctx, cfg, log, adminDeps{Metrics: rt.metrics, Pool: rt.pool, Provider: rt.provider})
	if err != nil {
		return fmt.Errorf("admin.address: %w", err)
	}
	defer adm.Stop()
	srv := rt.srv
	ln, err := net.Listen("tcp", cfg.Listen.Address)
	if err != nil {
		return err
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()

	log.Info().
		Str("listen", ln.Addr().String()).
		Bool("listen_tls", cfg.Listen.TLS != nil).
		Str("upstream", cfg.Upstream.Address).
		Str("upstream_sslmode", string(cfg.Upstream.SSLMode)).
		Int("encrypted_tables", len(cfg.Encrypt.Tables)).
		Str("key_provider", keyProviderName(cfg)).
		Str("version", version).
		Msg("pgcloak serving")

	for {
		select {
		case err := <-served:
			// Serve only returns on its own when the listener fails.
			srv.Close()
			return fmt.Errorf("listener %s: %w", ln.Addr(), err)
		case sig := <-sigs:
			if sig == syscall.SIGHUP {
				reload(srv, rt.pool, cfg, log)
				continue
			}
			log.Info().Str("signal", sig.String()).Msg("shutting down")
		case <-ctx.Done():
			log.Info().Msg("shutting down")
		}
		adm.Drain() // /readyz answers 503 while sessions drain
		return shutdown(srv, served, cfg.Listen.ShutdownTimeout, log)
	}
}

// shutdown drains srv for at most timeout and waits for Serve to return.
func shutdown(srv *proxy.Server, served <-chan error, timeout time.Duration, log zerolog.Logger) error {
	if timeout <= 0 {
		timeout = defaultShutdownTimeout
	}
	log.Info().Int("sessions", srv.ActiveSessions()).Dur("timeout", timeout).Msg("draining sessions")
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := srv.Shutdown(ctx); errors.Is(err, context.DeadlineExceeded) {
		log.Warn().Dur("timeout", timeout).Msg("shutdown deadline reached; remaining sessions closed")
	} else if err != nil {
		return err
	}
	if err := <-served; err != nil && !errors.Is(err, proxy.ErrServerClosed) {
		return err
	}
	log.Info().Msg("pgcloak stopped")
	return nil
}

// keyProviderName is what the serving log line says about keys.
func keyProviderName(cfg *config.Config) string {
	if len(cfg.Encrypt.Tables) == 0 {
		return "none (no tables declared)"
	}
	return string(cfg.Keys.Provider)
}

// reload applies a SIGHUP: it re-reads cfg.File and hands its tenancy and
// encrypt sections to the server. The other sections need a restart; an
// invalid file changes nothing, and neither does one that declares a
// column without its format CHECK (unless encrypt.require_format_checks is
// false). pool is the runtime's upstream pool, nil when serve started
// without declared tables.
func reload(srv *proxy.Server, pool *pgxpool.Pool, cfg *config.Config, log zerolog.Logger) {
	next, err := config.Load(cfg.File)
	if err != nil {
		log.Error().Err(err).Msg("SIGHUP: configuration not reloaded")
		return
	}
	for _, sec := range []struct {
		name      string
		old, next any
	}{
		{"listen", cfg.Listen, next.Listen},
		{"upstream", cfg.Upstream, next.Upstream},
		{"keys", cfg.Keys, next.Keys},
		{"admin", cfg.Admin, next.Admin},
		{"audit", cfg.Audit, next.Audit},
		{"log", cfg.Log, next.Log},
	} {
		if !reflect.DeepEqual(sec.old, sec.next) {
			log.Warn().Str("section", sec.name).Msg("SIGHUP: this section changed; it takes effect after a restart")
		}
	}
	if len(cfg.Encrypt.Tables) == 0 && len(next.Encrypt.Tables) > 0 {
		log.Error().Msg("SIGHUP: configuration not reloaded: declaring the first encrypted table needs a restart (the key store and provider start with it)")
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if pool != nil {
		if err := checkFormat(ctx, next, pool, log, "SIGHUP: "); err != nil {
			log.Error().Err(err).Msg("SIGHUP: configuration not reloaded; serving the previous declarations")
			return
		}
	}
	if err := srv.Reload(ctx, next.Tenancy, next.Encrypt); err != nil {
		log.Error().Err(err).Msg("SIGHUP: configuration not reloaded")
		return
	}
	log.Info().
		Int("encrypted_tables", len(next.Encrypt.Tables)).
		Int("tenant_roles", len(next.Tenancy.Login.Roles)).
		Msg("SIGHUP: configuration reloaded; new sessions use it, open sessions keep what they started with")
}

// checkFormat verifies that every column cfg declares carries pgcloak's
// format CHECK (SPEC §4), logging one line per column that lacks it or has
// a weaker one. A missing CHECK is an error naming each column and the
// command that adds them, unless encrypt.require_format_checks is false,
// which makes it a warning. A CHECK of the earlier definition (no key
// version) or one marked NOT VALID is a warning: both refuse plaintext
// written from now on. prefix starts each log message ("SIGHUP: ").
func checkFormat(ctx context.Context, cfg *config.Config, pool *pgxpool.Pool, log zerolog.Logger, prefix string) error {
	required := cfg.Encrypt.RequireFormatChecks
	cctx, cancel := context.WithTimeout(ctx, connectTimeout(cfg.Upstream))
	defer cancel()
	verdicts, err := verifyFormatChecks(cctx, pool, cfg.Encrypt.Tables)
	if err != nil {
		err = redact(err, cfg.Upstream.Password)
		if required {
			return fmt.Errorf("could not verify the format CHECKs of the declared columns: %w", err)
		}
		log.Warn().Err(err).Msg(prefix + "could not verify the format CHECKs of the declared columns (encrypt.require_format_checks is false)")
		return nil
	}
	var missing []string
	for _, v := range verdicts {
		f := v.check
		ev := func(e *zerolog.Event) *zerolog.Event {
			return e.Str("table", f.table.QualifiedName()).Str("column", f.column).Str("constraint", f.name())
		}
		switch v.state {
		case formatMissing:
			if required {
				ev(log.Error()).Str("reason", v.why).Msg(prefix + "format CHECK missing: PostgreSQL would accept plaintext in this column")
				missing = append(missing, fmt.Sprintf("%s (constraint %s: %s)", f.where(), f.name(), v.why))
			} else {
				ev(log.Warn()).Str("reason", v.why).Msg(prefix + "format CHECK missing: PostgreSQL accepts plaintext in this column (encrypt.require_format_checks is false); add it with: " + schemaCommand(cfg))
			}
		case formatLegacy:
			ev(log.Warn()).Str("found", v.constraint).Msg(prefix + "format CHECK has the earlier definition, which does not check the key version; tighten it with: " + schemaCommand(cfg))
		case formatNotValid:
			ev(log.Warn()).Str("found", v.constraint).Msg(prefix + "format CHECK is NOT VALID: new writes are checked, rows already stored were not (" + schemaCommand(cfg) + " validates it)")
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("pgcloak: format CHECK missing on %d declared column(s): %s; add them as the tables' owner with: %s (or set encrypt.require_format_checks: false to serve without them)",
			len(missing), strings.Join(missing, "; "), schemaCommand(cfg))
	}
	return nil
}
