package testenv

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// child is a process started by startPinned.
type child struct {
	cmd  *exec.Cmd
	done chan struct{} // closed once the process has exited and been reaped
	err  error         // cmd.Wait's result; read only after done is closed
}

// startPinned starts cmd from a goroutine locked to its OS thread, and that
// goroutine lives (blocked in cmd.Wait) until the process has exited. The
// kernel sends the parent-death signal set in cmd.SysProcAttr when the thread
// that forked the child ends (prctl(2), PR_SET_PDEATHSIG), not when the
// process does; without the lock, the Go runtime could retire that thread
// while the child runs and the child would be killed for no reason. The
// goroutine never unlocks, so the runtime retires the thread only after the
// child is gone.
//
// If our whole process dies, every thread dies with it and the child gets its
// signal: that is the point.
func startPinned(cmd *exec.Cmd) (*child, error) {
	c := &child{cmd: cmd, done: make(chan struct{})}
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		c.err = cmd.Wait()
		close(c.done)
	}()
	if err := <-started; err != nil {
		return nil, err
	}
	return c, nil
}

func (c *child) pid() int { return c.cmd.Process.Pid }

func (c *child) exited() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// Shutdown budget: PostgreSQL's fast shutdown (SIGINT) rolls back open
// transactions, disconnects clients and writes a checkpoint; immediate
// shutdown (SIGQUIT) skips the checkpoint. See "Shutting Down the Server" in
// the PostgreSQL documentation (server-shutdown.html).
const (
	fastShutdownWait      = 30 * time.Second
	immediateShutdownWait = 10 * time.Second
)

// stop ends the child: SIGINT, then SIGQUIT, then SIGKILL to its whole
// process group (backends included), waiting after each. It returns once the
// child has been reaped; the error says whether it needed more than SIGINT.
func (c *child) stop() error {
	if c.exited() {
		return nil
	}
	_ = c.cmd.Process.Signal(syscall.SIGINT) // fails only if it has just exited
	select {
	case <-c.done:
		return nil
	case <-time.After(fastShutdownWait):
	}
	_ = c.cmd.Process.Signal(syscall.SIGQUIT)
	select {
	case <-c.done:
		return fmt.Errorf("testenv: %s (pid %d) ignored SIGINT for %v; stopped with SIGQUIT", filepath.Base(c.cmd.Path), c.pid(), fastShutdownWait)
	case <-time.After(immediateShutdownWait):
	}
	_ = syscall.Kill(-c.pid(), syscall.SIGKILL) // Setpgid made the child its group's leader
	<-c.done
	return fmt.Errorf("testenv: %s (pid %d) ignored SIGINT and SIGQUIT; killed", filepath.Base(c.cmd.Path), c.pid())
}

// serverOSUser is the account initdb and postgres run as when we are root.
const serverOSUser = "postgres"

// serverCredential returns nil when we may run the server as ourselves, and
// the credential of the postgres OS user when we are root: initdb refuses to
// run as root ("cannot be run as root").
func serverCredential() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup(serverOSUser)
	if err != nil {
		return nil, fmt.Errorf("testenv: running as root, and initdb refuses to run as root, but there is no %q OS user to run it as (apt-get install -y postgresql creates one): %w", serverOSUser, err)
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("testenv: OS user %q: uid %q: %w", serverOSUser, u.Uid, err)
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("testenv: OS user %q: gid %q: %w", serverOSUser, u.Gid, err)
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

// childEnv is our environment without the variables that would steer
// PostgreSQL programs elsewhere (PGDATA, PGPORT, PGHOST, ...) or translate
// their messages (we read the server log for "Address already in use").
func childEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(name, "PG") || strings.HasPrefix(name, "LC_") || name == "LANG" || name == "LANGUAGE" {
			continue
		}
		env = append(env, kv)
	}
	return append(env, "LC_ALL=C", "LANG=C")
}

// Temporary directories are named tempDirPrefix* and carry ownerFile, which
// holds the pid of the process that created them.
const (
	tempDirPrefix = "pgcloak-testenv-"
	ownerFile     = "owner.pid"
)

// tempBase is the directory to create server directories in. When the server
// runs as another user, every directory above its own must be searchable by
// that user; a TMPDIR under root's 0700 home is not, so fall back to /tmp.
func tempBase(cred *syscall.Credential) string {
	base := os.TempDir()
	if cred == nil {
		return base
	}
	for d := base; ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil || fi.Mode().Perm()&0o001 == 0 {
			return "/tmp"
		}
		if d == filepath.Dir(d) {
			return base
		}
	}
}

// removeStaleDirs deletes server directories left behind by test binaries
// that were killed: those whose owner process and postmaster are both gone.
// Directories without a readable owner file (perhaps being created right now)
// are left alone. Best effort: errors are ignored.
func removeStaleDirs() {
	bases := []string{os.TempDir()}
	if bases[0] != "/tmp" {
		bases = append(bases, "/tmp")
	}
	for _, base := range bases {
		dirs, _ := filepath.Glob(filepath.Join(base, tempDirPrefix+"*"))
		for _, dir := range dirs {
			owner, ok := readPID(filepath.Join(dir, ownerFile))
			if !ok || processAlive(owner) {
				continue
			}
			if postmaster, ok := readPID(filepath.Join(dir, "data", "postmaster.pid")); ok && processAlive(postmaster) {
				continue
			}
			_ = os.RemoveAll(dir)
		}
	}
}

// readPID reads the decimal pid on the first line of path (our owner file,
// or PostgreSQL's postmaster.pid).
func readPID(path string) (int, bool) {
	f, err := os.Open(path)
	if err != nil {
		return 0, false
	}
	defer f.Close()
	line, err := bufio.NewReader(f).ReadString('\n')
	if err != nil && line == "" {
		return 0, false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil || pid <= 0 {
		return 0, false
	}
	return pid, true
}

// tailFile returns at most the last n bytes of path, for error messages.
func tailFile(path string, n int64) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return ""
	}
	off := max(fi.Size()-n, 0)
	buf := make([]byte, fi.Size()-off)
	if _, err := f.ReadAt(buf, off); err != nil {
		return ""
	}
	return string(buf)
}

// errStopped is returned by Start when Stop was called while it ran.
var errStopped = errors.New("testenv: server was stopped while starting")
