package testenv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// Roles every server has. The superuser logs in with SCRAM over TCP; each
// other role is matched by its own pg_hba.conf line, so connecting as it
// exercises that authentication method.
const (
	SuperuserName     = "postgres"
	SuperuserPassword = "testenv-superuser-secret"

	ScramUser     = "scram_user" // scram-sha-256
	ScramPassword = "scram-secret"

	MD5User     = "md5_user" // md5, with an MD5-hashed stored password
	MD5Password = "md5-secret"

	PasswordUser     = "password_user" // password (cleartext on the wire)
	PasswordPassword = "cleartext-secret"

	TrustUser = "trust_user" // trust: no password

	// CertUser logs in with a client certificate (hostssl, method cert),
	// which a server started with Options.TLS issues: Postgres.Clients.
	CertUser = "cert_user"
	// CertStranger is the common name of a second client certificate, for
	// which no role exists: it is valid, but logs in as nobody.
	CertStranger = "cert_stranger"
	// CertTwoNames names a third client certificate, whose subject holds two
	// common names: CertStranger, then CertUser. PostgreSQL reads the first.
	CertTwoNames = CertStranger + "," + CertUser
)

// Options tunes Start. The zero value is a plain server without TLS.
type Options struct {
	// TLS turns on ssl with a certificate from WriteTLSCerts; Postgres.CAFile
	// then names the CA that signed it. Plain connections keep working.
	TLS bool

	// ExtraConf holds postgresql.conf settings written after testenv's own,
	// so they win. Values are written quoted ('...'), which PostgreSQL
	// accepts for settings of every type.
	ExtraConf map[string]string

	// StartTimeout bounds the wait for the started server to accept a
	// superuser login. Zero means 30 seconds.
	StartTimeout time.Duration
}

// Postgres is a running throwaway server. Its methods may be called from
// several goroutines. Stop it with Stop; if the process dies first, the kernel
// stops the server (see the package documentation).
type Postgres struct {
	Host   string // "127.0.0.1"; the server listens on no other address
	Port   int
	Dir    string // temporary root: data directory, Unix socket, certificates, log
	BinDir string // where initdb and postgres were found; see Bin for other tools
	CAFile string // with Options.TLS: the CA that signed the server certificate (for verify-full)
	// CertFile and KeyFile are the server's certificate and key, with
	// Options.TLS (a proxy may present the same certificate).
	CertFile, KeyFile string
	// Clients are client certificates signed by CAFile, with Options.TLS,
	// for CertUser, CertStranger and CertTwoNames. The server verifies client
	// certificates against CAFile (ssl_ca_file).
	Clients map[string]ClientFiles

	DataDir string // Dir/data
	LogFile string // the server's stderr

	cred *syscall.Credential // run children as this user; nil: as ourselves

	mu      sync.Mutex
	current *child // the running initdb or postgres
	stopped bool

	stopOnce sync.Once
	stopErr  error
}

// defaultStartTimeout is Options.StartTimeout's zero value.
const defaultStartTimeout = 30 * time.Second

// portAttempts bounds how often Start picks another port after losing a race
// for the one it chose to another process.
const portAttempts = 5

// Start initializes and starts a new server. On error nothing is left running
// and the temporary directory is gone. ctx bounds the whole start; once Start
// has returned, cancelling ctx has no effect on the server.
func Start(ctx context.Context, opts Options) (*Postgres, error) {
	binDir, err := findBinDir()
	if err != nil {
		return nil, err
	}
	removeStaleDirs()
	cred, err := serverCredential()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp(tempBase(cred), tempDirPrefix)
	if err != nil {
		return nil, fmt.Errorf("testenv: %w", err)
	}
	p := &Postgres{
		Host:    "127.0.0.1",
		Dir:     dir,
		BinDir:  binDir,
		DataDir: filepath.Join(dir, "data"),
		LogFile: filepath.Join(dir, "postgres.log"),
		cred:    cred,
	}
	register(p)
	if err := p.start(ctx, opts); err != nil {
		_ = p.Stop() // the error that matters is err
		return nil, err
	}
	return p, nil
}

// start fills p.Dir: initdb, configuration, server, roles.
func (p *Postgres) start(ctx context.Context, opts Options) error {
	if err := os.WriteFile(filepath.Join(p.Dir, ownerFile), []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
		return fmt.Errorf("testenv: %w", err)
	}
	if err := p.chown(p.Dir); err != nil {
		return err
	}
	if err := p.initdb(ctx); err != nil {
		return err
	}
	var tlsConf map[string]string
	if opts.TLS {
		var err error
		if tlsConf, err = p.writeCerts(); err != nil {
			return err
		}
	}
	if err := writeFileMode(filepath.Join(p.DataDir, "pg_hba.conf"), []byte(hbaConf), 0o600); err != nil {
		return err
	}
	baseConf, err := os.ReadFile(filepath.Join(p.DataDir, "postgresql.conf"))
	if err != nil {
		return fmt.Errorf("testenv: %w", err)
	}

	timeout := opts.StartTimeout
	if timeout == 0 {
		timeout = defaultStartTimeout
	}
	for attempt := 1; ; attempt++ {
		if p.Port, err = freePort(); err != nil {
			return fmt.Errorf("testenv: pick a port: %w", err)
		}
		conf := p.conf(baseConf, tlsConf, opts.ExtraConf)
		if err := writeFileMode(filepath.Join(p.DataDir, "postgresql.conf"), conf, 0o600); err != nil {
			return err
		}
		err = p.launch(ctx, timeout)
		if errors.Is(err, errPortInUse) && attempt < portAttempts {
			continue
		}
		if err != nil {
			return err
		}
		break
	}

	if err := p.Exec(ctx, "postgres", rolesSQL); err != nil {
		return fmt.Errorf("testenv: create roles: %w", err)
	}
	return nil
}

// hbaConf is the whole pg_hba.conf; the first matching line decides. "host"
// lines match connections with and without TLS.
const hbaConf = `# Written by pgcloak testenv.
# TYPE  DATABASE  USER           ADDRESS        METHOD
local   all       all                           trust
host    all       ` + TrustUser + `     127.0.0.1/32   trust
host    all       ` + MD5User + `       127.0.0.1/32   md5
host    all       ` + PasswordUser + `  127.0.0.1/32   password
hostssl all       ` + CertUser + `      127.0.0.1/32   cert
host    all       all            127.0.0.1/32   scram-sha-256
`

// rolesSQL creates the per-method login roles. md5 in pg_hba.conf falls back
// to SCRAM when the stored password is a SCRAM secret, so md5_user's password
// is stored as an MD5 hash.
const rolesSQL = `
CREATE ROLE ` + ScramUser + ` LOGIN PASSWORD '` + ScramPassword + `';
SET password_encryption = 'md5';
CREATE ROLE ` + MD5User + ` LOGIN PASSWORD '` + MD5Password + `';
RESET password_encryption;
CREATE ROLE ` + PasswordUser + ` LOGIN PASSWORD '` + PasswordPassword + `';
CREATE ROLE ` + TrustUser + ` LOGIN;
CREATE ROLE ` + CertUser + ` LOGIN;
GRANT CREATE ON DATABASE postgres TO ` + ScramUser + `, ` + MD5User + `, ` + PasswordUser + `, ` + TrustUser + `, ` + CertUser + `;
`

// initdb creates the data directory with the superuser and its password.
func (p *Postgres) initdb(ctx context.Context) error {
	pwfile := filepath.Join(p.Dir, "pwfile")
	if err := writeFileMode(pwfile, []byte(SuperuserPassword+"\n"), 0o600); err != nil {
		return err
	}
	defer os.Remove(pwfile)
	if err := p.chown(pwfile); err != nil {
		return err
	}

	var out bytes.Buffer
	cmd := exec.Command(filepath.Join(p.BinDir, "initdb"),
		"-D", p.DataDir,
		"-U", SuperuserName,
		"--pwfile="+pwfile,
		"--auth-local=trust",
		"--auth-host=scram-sha-256",
		"-E", "UTF8",
		"--locale=C",
		"--no-sync", // the cluster is thrown away; fsync is off too
	)
	cmd.Dir = p.Dir
	cmd.Env = childEnv()
	cmd.Stdout = &out
	cmd.Stderr = &out
	cmd.SysProcAttr = sysProcAttr(p.cred, syscall.SIGKILL)
	c, err := p.startChild(cmd)
	if err != nil {
		return fmt.Errorf("testenv: start initdb: %w", err)
	}
	select {
	case <-c.done:
	case <-ctx.Done():
		_ = c.stop()
		return fmt.Errorf("testenv: initdb: %w", ctx.Err())
	}
	if c.err != nil {
		return fmt.Errorf("testenv: initdb: %w\n%s", c.err, out.Bytes())
	}
	return nil
}

// writeCerts writes the TLS files into Dir, owned by the server's user, and
// returns the settings that turn ssl on.
func (p *Postgres) writeCerts() (map[string]string, error) {
	f, err := WriteTLSFiles(p.Dir, CertUser, CertStranger, CertTwoNames)
	if err != nil {
		return nil, err
	}
	// The client keys stay ours: clients read them, the server does not.
	for _, name := range []string{f.CAFile, f.CertFile, f.KeyFile} {
		if err := p.chown(name); err != nil {
			return nil, err
		}
	}
	p.CAFile, p.CertFile, p.KeyFile, p.Clients = f.CAFile, f.CertFile, f.KeyFile, f.Clients
	return map[string]string{
		"ssl":           "on",
		"ssl_cert_file": f.CertFile,
		"ssl_key_file":  f.KeyFile,
		"ssl_ca_file":   f.CAFile,
	}, nil
}

// conf returns initdb's postgresql.conf followed by our settings; for a
// setting given twice, the last one wins.
func (p *Postgres) conf(base []byte, tlsConf, extra map[string]string) []byte {
	var b bytes.Buffer
	b.Write(base)
	b.WriteString("\n# Added by pgcloak testenv.\n")
	set := func(name, value string) {
		fmt.Fprintf(&b, "%s = '%s'\n", name, strings.ReplaceAll(value, "'", "''"))
	}
	set("listen_addresses", p.Host)
	set("port", strconv.Itoa(p.Port))
	set("unix_socket_directories", p.Dir)
	// Durability buys nothing for a throwaway cluster.
	set("fsync", "off")
	set("synchronous_commit", "off")
	set("full_page_writes", "off")
	set("max_connections", "200")
	set("shared_buffers", "128MB")
	set("logging_collector", "off") // the log is the server's stderr: LogFile
	set("log_destination", "stderr")
	for _, settings := range []map[string]string{tlsConf, extra} {
		names := make([]string, 0, len(settings))
		for name := range settings {
			names = append(names, name)
		}
		sort.Strings(names)
		for _, name := range names {
			set(name, settings[name])
		}
	}
	return b.Bytes()
}

// errPortInUse means the server could not bind its port: another process
// took it between freePort and the server's bind.
var errPortInUse = errors.New("testenv: port already in use")

// launch starts the postgres server on p.Port and waits until the superuser
// can log in. If the server exits first, launch returns its log; when the
// log says the port was taken, the error is errPortInUse.
func (p *Postgres) launch(ctx context.Context, timeout time.Duration) error {
	logFile, err := os.OpenFile(p.LogFile, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return fmt.Errorf("testenv: %w", err)
	}
	cmd := exec.Command(filepath.Join(p.BinDir, "postgres"), "-D", p.DataDir)
	cmd.Dir = p.Dir
	cmd.Env = childEnv()
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.SysProcAttr = sysProcAttr(p.cred, syscall.SIGQUIT)
	c, err := p.startChild(cmd)
	logFile.Close() // the server holds its own descriptor
	if err != nil {
		return fmt.Errorf("testenv: start postgres: %w", err)
	}

	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	var lastErr error
	for {
		select {
		case <-c.done:
			log := tailFile(p.LogFile, 4096)
			if strings.Contains(log, "Address already in use") {
				return fmt.Errorf("%w: %d", errPortInUse, p.Port)
			}
			return fmt.Errorf("testenv: postgres exited during startup (%v); log %s:\n%s", c.err, p.LogFile, log)
		case <-ctx.Done():
			return fmt.Errorf("testenv: postgres on port %d not accepting logins after %v (last error: %v); log %s:\n%s",
				p.Port, timeout, lastErr, p.LogFile, tailFile(p.LogFile, 4096))
		case <-tick.C:
		}
		if lastErr = p.ping(ctx); lastErr == nil {
			return nil
		}
	}
}

// ping logs in as the superuser and checks that the server answering is ours,
// not another one that won the race for the port.
func (p *Postgres) ping(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	conn, err := p.connect(ctx, "postgres")
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	var dataDir string
	if err := conn.QueryRow(ctx, "SELECT current_setting('data_directory')").Scan(&dataDir); err != nil {
		return err
	}
	if want, _ := filepath.EvalSymlinks(p.DataDir); dataDir != p.DataDir && dataDir != want {
		return fmt.Errorf("testenv: port %d is served by another PostgreSQL (data directory %s)", p.Port, dataDir)
	}
	return nil
}

// startChild starts cmd as p's current child unless p has been stopped.
func (p *Postgres) startChild(cmd *exec.Cmd) (*child, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stopped {
		return nil, errStopped
	}
	c, err := startPinned(cmd)
	if err != nil {
		return nil, err
	}
	p.current = c
	return c, nil
}

func (p *Postgres) chown(path string) error {
	if p.cred == nil {
		return nil
	}
	if err := os.Lchown(path, int(p.cred.Uid), int(p.cred.Gid)); err != nil {
		return fmt.Errorf("testenv: %w", err)
	}
	return nil
}

// serverPID returns the running postmaster's pid, or 0.
func (p *Postgres) serverPID() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.current == nil || p.current.exited() {
		return 0
	}
	return p.current.pid()
}

// Stop shuts the server down (fast shutdown, escalating if it hangs) and
// removes Dir. It may be called more than once and concurrently; every call
// returns the first call's result. Stop during Start makes Start fail.
func (p *Postgres) Stop() error {
	p.stopOnce.Do(func() {
		p.mu.Lock()
		p.stopped = true
		c := p.current
		p.mu.Unlock()

		var errs []error
		if c != nil {
			errs = append(errs, c.stop())
		}
		if err := os.RemoveAll(p.Dir); err != nil {
			errs = append(errs, fmt.Errorf("testenv: %w", err))
		}
		unregister(p)
		p.stopErr = errors.Join(errs...)
	})
	return p.stopErr
}

// Addr returns "127.0.0.1:PORT".
func (p *Postgres) Addr() string {
	return net.JoinHostPort(p.Host, strconv.Itoa(p.Port))
}

// URL returns a postgres:// connection string over TCP without TLS
// (sslmode=disable). An empty password is left out, as for TrustUser.
func (p *Postgres) URL(user, password, database string) string {
	return p.url(user, password, database, url.Values{"sslmode": {"disable"}})
}

// TLSURL is URL with sslmode=verify-full against CAFile. It only works for a
// server started with Options.TLS.
func (p *Postgres) TLSURL(user, password, database string) string {
	return p.url(user, password, database, url.Values{"sslmode": {"verify-full"}, "sslrootcert": {p.CAFile}})
}

// SuperuserURL is URL for the superuser.
func (p *Postgres) SuperuserURL(database string) string {
	return p.URL(SuperuserName, SuperuserPassword, database)
}

func (p *Postgres) url(user, password, database string, query url.Values) string {
	u := url.URL{
		Scheme:   "postgres",
		User:     url.UserPassword(user, password),
		Host:     p.Addr(),
		Path:     "/" + database,
		RawQuery: query.Encode(),
	}
	if password == "" {
		u.User = url.User(user)
	}
	return u.String()
}

// Bin returns the path of a PostgreSQL program (psql, pgbench, pg_dump, ...):
// the one in BinDir when it is there, else the one on PATH, else name itself
// (so that running it fails with exec's "not found" error).
func (p *Postgres) Bin(name string) string {
	if path := filepath.Join(p.BinDir, name); isExecutable(path) {
		return path
	}
	if path, err := exec.LookPath(name); err == nil {
		return path
	}
	return name
}

// Exec runs sql as the superuser in database ("" means postgres) over the
// simple query protocol, so sql may hold several statements; they run in one
// implicit transaction unless sql itself says otherwise.
func (p *Postgres) Exec(ctx context.Context, database, sql string) error {
	if database == "" {
		database = "postgres"
	}
	conn, err := p.connect(ctx, database)
	if err != nil {
		return fmt.Errorf("testenv: connect to database %q: %w", database, err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, sql); err != nil {
		return fmt.Errorf("testenv: exec in database %q: %w", database, err)
	}
	return nil
}

// CreateDatabase creates database name, owned by the superuser.
func (p *Postgres) CreateDatabase(ctx context.Context, name string) error {
	return p.Exec(ctx, "postgres", "CREATE DATABASE "+pgx.Identifier{name}.Sanitize())
}

// DropDatabase drops database name if it exists, terminating its sessions
// first (WITH (FORCE)).
func (p *Postgres) DropDatabase(ctx context.Context, name string) error {
	return p.Exec(ctx, "postgres", "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)")
}

// connect logs in as the superuser over TCP.
func (p *Postgres) connect(ctx context.Context, database string) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(p.SuperuserURL(database))
	if err != nil {
		return nil, err
	}
	cfg.DefaultQueryExecMode = pgx.QueryExecModeSimpleProtocol
	return pgx.ConnectConfig(ctx, cfg)
}

// freePort asks the kernel for a free port on 127.0.0.1. Someone else may
// take it before the server binds it; Start then tries again. A variable so
// that tests can hand out a taken port.
var freePort = func() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// live holds every server started and not yet stopped, for RunMain.
var live struct {
	sync.Mutex
	servers map[*Postgres]struct{}
}

func register(p *Postgres) {
	live.Lock()
	defer live.Unlock()
	if live.servers == nil {
		live.servers = make(map[*Postgres]struct{})
	}
	live.servers[p] = struct{}{}
}

func unregister(p *Postgres) {
	live.Lock()
	defer live.Unlock()
	delete(live.servers, p)
}

// stopAll stops every server this process started and has not stopped.
func stopAll() error {
	live.Lock()
	servers := make([]*Postgres, 0, len(live.servers))
	for p := range live.servers {
		servers = append(servers, p)
	}
	live.Unlock()

	errs := make([]error, len(servers))
	var wg sync.WaitGroup
	for i, p := range servers {
		wg.Go(func() { errs[i] = p.Stop() })
	}
	wg.Wait()
	return errors.Join(errs...)
}
