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
	"syscall"
	"time"

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

SIGTERM or SIGINT stops accepting connections and lets open sessions finish
for up to listen.shutdown_timeout, then closes the rest and exits 0.
SIGHUP reloads the configuration file's tenancy and encrypt sections: new
sessions use the new tenant roles and declared tables (whose column numbers
are read from pg_catalog again, after DDL on them); open sessions keep what
they started with. Changes to the other sections are logged and need a
restart. An invalid file is logged and changes nothing.`,
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
				reload(srv, cfg, log)
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
// invalid file changes nothing.
func reload(srv *proxy.Server, cfg *config.Config, log zerolog.Logger) {
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
	if err := srv.Reload(ctx, next.Tenancy, next.Encrypt); err != nil {
		log.Error().Err(err).Msg("SIGHUP: configuration not reloaded")
		return
	}
	log.Info().
		Int("encrypted_tables", len(next.Encrypt.Tables)).
		Int("tenant_roles", len(next.Tenancy.Login.Roles)).
		Msg("SIGHUP: configuration reloaded; new sessions use it, open sessions keep what they started with")
}
