package testenv

import (
	"bytes"
	"fmt"
	"os"
	"syscall"
)

// sysProcAttr runs a child in its own process group (so a terminal's Ctrl-C
// reaches us, and we decide how the server shuts down), as cred when it is
// set, and with deathSig delivered by the kernel when the forking thread
// ends. Go calls prctl(PR_SET_PDEATHSIG) after the credential change, which
// would otherwise clear it.
func sysProcAttr(cred *syscall.Credential, deathSig syscall.Signal) *syscall.SysProcAttr {
	return &syscall.SysProcAttr{
		Setpgid:    true,
		Credential: cred,
		Pdeathsig:  deathSig,
	}
}

// processAlive reports whether pid names a process that has not exited. A
// zombie counts as gone: in a container whose init does not reap orphans, a
// dead postmaster may linger as one forever.
func processAlive(pid int) bool {
	if pid <= 0 {
		return false
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// Format: pid (comm) state ...; comm may itself contain ')'.
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 || i+2 >= len(stat) {
		return true
	}
	state := stat[i+2]
	return state != 'Z' && state != 'X'
}
