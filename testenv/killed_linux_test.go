package testenv

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// prSetChildSubreaper is PR_SET_CHILD_SUBREAPER from <linux/prctl.h>.
const prSetChildSubreaper = 36

// becomeSubreaper makes orphaned descendants of this process (the killed
// helper's postmaster) its children instead of init's, so the test can reap
// them: a container's init may never do it, leaving zombies behind.
func becomeSubreaper(t *testing.T) {
	t.Helper()
	if _, _, errno := syscall.RawSyscall(syscall.SYS_PRCTL, prSetChildSubreaper, 1, 0); errno != 0 {
		t.Fatalf("prctl(PR_SET_CHILD_SUBREAPER): %v", errno)
	}
	t.Cleanup(func() { syscall.RawSyscall(syscall.SYS_PRCTL, prSetChildSubreaper, 0, 0) })
}

// reapWithin waits up to d for pid, one of our (adopted) children, to exit
// and reaps it. It reports whether pid is gone.
func reapWithin(pid int, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for {
		var ws syscall.WaitStatus
		got, err := syscall.Wait4(pid, &ws, syscall.WNOHANG, nil)
		if got == pid || err == syscall.ECHILD {
			return !processAlive(pid)
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestKilledOwner kills (SIGKILL) a test binary that has a server running
// and checks that the server goes away with it and that the next Start's
// sweep removes the directory it left.
func TestKilledOwner(t *testing.T) {
	becomeSubreaper(t)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	stderrPath := filepath.Join(t.TempDir(), "helper.stderr")
	stderr, err := os.Create(stderrPath)
	if err != nil {
		t.Fatal(err)
	}
	defer stderr.Close()
	helperStderr := func() string { return tailFile(stderrPath, 4096) }
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), orphanHelperEnv+"=1")
	cmd.Stdout = w
	cmd.Stderr = stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	helper, err := startPinned(cmd)
	w.Close()
	if err != nil {
		t.Fatalf("start helper: %v", err)
	}
	t.Cleanup(func() {
		_ = helper.cmd.Process.Kill()
		<-helper.done
	})

	lines := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(r).ReadString('\n')
		lines <- line
	}()
	var line string
	select {
	case line = <-lines:
	case <-time.After(2 * time.Minute):
		t.Fatalf("helper: no server after 2m; stderr:\n%s", helperStderr())
	}
	var (
		pid, port int
		dir       string
	)
	if _, err := fmt.Sscanf(line, "%d %d %s", &pid, &port, &dir); err != nil {
		t.Fatalf("helper output %q: %v; stderr:\n%s", line, err, helperStderr())
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if !processAlive(pid) {
		t.Fatalf("postmaster %d before the kill: got gone, want alive", pid)
	}

	if err := helper.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-helper.done

	if !reapWithin(pid, 30*time.Second) {
		t.Fatalf("postmaster %d 30s after its owner was killed: got alive, want gone", pid)
	}
	addr := net.JoinHostPort("127.0.0.1", fmt.Sprint(port))
	if conn, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		conn.Close()
		t.Errorf("dial %s: got a connection, want the port closed", addr)
	}

	if _, err := os.Stat(dir); err != nil {
		t.Fatalf("directory of the killed owner: got %v, want it still there before the sweep", err)
	}
	removeStaleDirs()
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("directory after the sweep: got %v, want it removed", err)
	}
}
