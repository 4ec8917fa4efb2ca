//go:build !linux

package testenv

import "syscall"

// sysProcAttr runs a child in its own process group and as cred when it is
// set. Outside Linux there is no parent-death signal: a server whose test
// binary is killed keeps running until someone stops it.
func sysProcAttr(cred *syscall.Credential, _ syscall.Signal) *syscall.SysProcAttr {
	return &syscall.SysProcAttr{
		Setpgid:    true,
		Credential: cred,
	}
}

// processAlive reports whether pid names a process that still exists.
func processAlive(pid int) bool {
	if pid <= 0 {
		return false
	}
	err := syscall.Kill(pid, 0)
	return err == nil || err == syscall.EPERM
}
