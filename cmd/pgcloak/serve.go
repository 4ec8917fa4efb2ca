package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
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
SIGHUP re-reads the declared tables' column numbers from pg_catalog (after
DDL on them); reloading the configuration itself is not implemented yet.`,
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
				// Declarations and tenants are not reloaded yet; the
				// catalog of declared tables is.
				rctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				err := srv.RefreshCatalog(rctx)
				cancel()
				if err != nil {
					log.Warn().Err(err).Msg("SIGHUP: catalog refresh failed; lookups refill it on demand")
				} else {
					log.Info().Msg("SIGHUP: catalog of declared tables refreshed; configuration reload is not supported yet")
				}
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
