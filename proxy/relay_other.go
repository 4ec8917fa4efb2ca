//go:build !linux

package proxy

// Without epoll every session is served by its own goroutines; see
// relay_linux.go.

type relayed struct{}

func (*relayed) shutdown() {}

func (*session) relayable() bool { return false }

func (*session) serveRelayed() (bool, error) { return false, nil }

func (*session) loopable() bool { return false }

func (*session) serveLooped() (bool, error) { return false, nil }
