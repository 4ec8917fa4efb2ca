// Command transparencyenv starts the servers scripts/transparency.sh runs the
// pgx and lib/pq test suites against: for each -instance, a throwaway
// PostgreSQL (testenv) and a pgcloak proxy in front of it, both on 127.0.0.1.
//
// It prints shell assignments (NAME_PG_PORT=..., NAME_PROXY_PORT=..., ...)
// followed by READY=1 on stdout, then runs until its stdin is closed or it
// gets SIGINT/SIGTERM, and then stops every proxy and server it started.
//
//	transparencyenv -log-dir DIR -upstream-sslmode follow \
//	    -instance pgx:CERT:KEY:CA -instance pq:CERT:KEY \
//	    -client-cert pgx:USER:CERT:KEY \
//	    -instance regress -conf regress:max_prepared_transactions=2 \
//	    -unscoped 'regress:*' -upstream-user regress:pgcloak
//
// CERT and KEY (optional) are the certificate the proxy presents to clients
// that send SSLRequest; without them the proxy answers 'N'. CA (optional)
// is its listen.tls.client_ca_file. Each -client-cert adds an entry to the
// named instance's upstream.client_certs. Each -conf adds a postgresql.conf
// setting to the named instance's server. Each -unscoped adds a pattern to
// the instance's tenancy.unscoped_roles: the proxy then analyses every
// statement (an unscoped session), where with no tenancy at all it relays
// the session's messages unread; still a pure passthrough (no declared
// tables, no tenant roles). -upstream-user sets the instance's upstream.user,
// the proxy's own role, which no client may log in as.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"

	"github.com/pgcloak/pgcloak/config"
	"github.com/pgcloak/pgcloak/proxy"
	"github.com/pgcloak/pgcloak/testenv"
	"github.com/rs/zerolog"
)

type instanceFlag []string

func (f *instanceFlag) String() string     { return strings.Join(*f, ",") }
func (f *instanceFlag) Set(v string) error { *f = append(*f, v); return nil }

var nameRE = regexp.MustCompile(`^[a-z][a-z0-9_]*$`)

type instance struct {
	name        string
	pg          *testenv.Postgres
	srv         *proxy.Server
	served      chan error
	logFile     *os.File
	tls         *config.ListenTLS
	clientCerts []config.ClientCert
	conf        map[string]string
	unscoped    []string
	user        string
}

func usage(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "transparencyenv: "+format+"\n", args...)
	os.Exit(2)
}

func main() {
	var (
		instances   instanceFlag
		clientCerts instanceFlag
		confs       instanceFlag
		unscoped    instanceFlag
		users       instanceFlag
		logDir      = flag.String("log-dir", "", "directory for the proxy logs (default: discard)")
		logLevel    = flag.String("log-level", "info", "proxy log level")
		sslmode     = flag.String("upstream-sslmode", "disable", "proxy upstream.sslmode: disable, require or follow")
	)
	flag.Var(&instances, "instance", "NAME[:CERTFILE:KEYFILE[:CAFILE]], repeatable")
	flag.Var(&clientCerts, "client-cert", "NAME:USER:CERTFILE:KEYFILE, repeatable")
	flag.Var(&confs, "conf", "NAME:SETTING=VALUE, a postgresql.conf setting, repeatable")
	flag.Var(&unscoped, "unscoped", "NAME:PATTERN, a tenancy.unscoped_roles entry, repeatable")
	flag.Var(&users, "upstream-user", "NAME:USER, the instance's upstream.user")
	flag.Parse()
	if len(instances) == 0 {
		usage("at least one -instance is required")
	}
	if m := config.SSLMode(*sslmode); m != config.SSLDisable && m != config.SSLRequire && m != config.SSLFollow {
		usage("-upstream-sslmode %q: want disable, require or follow", *sslmode)
	}
	level, err := zerolog.ParseLevel(*logLevel)
	if err != nil {
		usage("%v", err)
	}

	var insts []*instance
	byName := make(map[string]*instance)
	for _, spec := range instances {
		parts := strings.Split(spec, ":")
		in := &instance{name: parts[0]}
		switch len(parts) {
		case 1:
		case 3, 4:
			in.tls = &config.ListenTLS{CertFile: parts[1], KeyFile: parts[2]}
			if len(parts) == 4 {
				in.tls.ClientCAFile = parts[3]
			}
		default:
			usage("bad -instance %q (want NAME, NAME:CERT:KEY or NAME:CERT:KEY:CA)", spec)
		}
		if !nameRE.MatchString(in.name) {
			usage("bad instance name %q", in.name)
		}
		insts = append(insts, in)
		byName[in.name] = in
	}
	for _, spec := range clientCerts {
		parts := strings.Split(spec, ":")
		if len(parts) != 4 || byName[parts[0]] == nil {
			usage("bad -client-cert %q (want NAME:USER:CERT:KEY for an -instance NAME)", spec)
		}
		in := byName[parts[0]]
		in.clientCerts = append(in.clientCerts, config.ClientCert{User: parts[1], CertFile: parts[2], KeyFile: parts[3]})
	}
	// instanceOf splits NAME:REST for an -instance NAME.
	instanceOf := func(flagName, spec string) (*instance, string) {
		name, rest, ok := strings.Cut(spec, ":")
		if !ok || byName[name] == nil || rest == "" {
			usage("bad -%s %q (want NAME:VALUE for an -instance NAME)", flagName, spec)
		}
		return byName[name], rest
	}
	for _, spec := range confs {
		in, kv := instanceOf("conf", spec)
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			usage("bad -conf %q (want NAME:SETTING=VALUE)", spec)
		}
		if in.conf == nil {
			in.conf = make(map[string]string)
		}
		in.conf[k] = v
	}
	for _, spec := range unscoped {
		in, pattern := instanceOf("unscoped", spec)
		in.unscoped = append(in.unscoped, pattern)
	}
	for _, spec := range users {
		in, user := instanceOf("upstream-user", spec)
		in.user = user
	}

	// Stop on SIGINT/SIGTERM or when stdin closes (the script holds its
	// write end; it closes when the script exits, however it exits).
	stopCtx, stop := context.WithCancelCause(context.Background())
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	go func() { stop(fmt.Errorf("%v", <-sigs)) }()
	go func() {
		io.Copy(io.Discard, os.Stdin)
		stop(errors.New("stdin closed"))
	}()

	err = start(stopCtx, insts, *logDir, level, config.SSLMode(*sslmode))
	if err == nil {
		fmt.Println("READY=1")
		<-stopCtx.Done()
		fmt.Fprintf(os.Stderr, "transparencyenv: %v: stopping\n", context.Cause(stopCtx))
	} else {
		fmt.Fprintln(os.Stderr, "transparencyenv:", err)
	}
	if serr := stopAll(insts, *logDir); serr != nil {
		fmt.Fprintln(os.Stderr, "transparencyenv:", serr)
		err = errors.Join(err, serr)
	}
	if err != nil {
		os.Exit(1)
	}
}

func start(ctx context.Context, insts []*instance, logDir string, level zerolog.Level, sslmode config.SSLMode) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	for _, in := range insts {
		pg, err := testenv.Start(ctx, testenv.Options{ExtraConf: in.conf})
		if err != nil {
			return fmt.Errorf("%s: start PostgreSQL: %w", in.name, err)
		}
		in.pg = pg

		log := zerolog.Nop()
		if logDir != "" {
			f, err := os.Create(filepath.Join(logDir, in.name+"-proxy.log"))
			if err != nil {
				return err
			}
			in.logFile = f
			log = zerolog.New(f).Level(level).With().Timestamp().Logger()
		}
		cfg := proxy.Config{
			Listen: config.Listen{Address: "127.0.0.1:0", TLS: in.tls},
			Upstream: config.Upstream{
				Address:     pg.Addr(),
				SSLMode:     sslmode,
				ClientCerts: in.clientCerts,
				User:        in.user,
			},
			Tenancy: config.Tenancy{UnscopedRoles: in.unscoped},
		}
		// Pure passthrough: no declared tables and no tenant roles, so no
		// Deps (no pool, no keys).
		srv, err := proxy.NewServer(cfg, log, proxy.Deps{})
		if err != nil {
			return fmt.Errorf("%s: proxy: %w", in.name, err)
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return fmt.Errorf("%s: proxy listen: %w", in.name, err)
		}
		in.srv = srv
		in.served = make(chan error, 1)
		go func() { in.served <- srv.Serve(ln) }()

		n := strings.ToUpper(in.name)
		fmt.Printf("%s_PG_PORT=%d\n", n, pg.Port)
		fmt.Printf("%s_PG_DIR=%s\n", n, shellQuote(pg.Dir)) // Unix socket directory too
		fmt.Printf("%s_PG_DATA=%s\n", n, shellQuote(pg.DataDir))
		fmt.Printf("%s_PROXY_PORT=%d\n", n, ln.Addr().(*net.TCPAddr).Port)
	}
	return nil
}

func stopAll(insts []*instance, logDir string) error {
	var errs []error
	for _, in := range insts {
		if in.srv != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			in.srv.Shutdown(ctx) // closes what is left when ctx expires
			cancel()
			if err := <-in.served; !errors.Is(err, proxy.ErrServerClosed) {
				errs = append(errs, fmt.Errorf("%s: proxy Serve: %w", in.name, err))
			}
		}
		if in.pg != nil {
			if logDir != "" {
				// Stop removes the server's directory, log included.
				if b, err := os.ReadFile(in.pg.LogFile); err == nil {
					os.WriteFile(filepath.Join(logDir, in.name+"-postgres.log"), b, 0o644)
				}
			}
			if err := in.pg.Stop(); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", in.name, err))
			}
		}
		if in.logFile != nil {
			in.logFile.Close()
		}
	}
	return errors.Join(errs...)
}

func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
