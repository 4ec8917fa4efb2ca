// Package testenv starts throwaway PostgreSQL servers for pgcloak's integration
// tests and for `pgcloak demo`.
//
// # Layer
//
// testenv sits beside the product, not inside it: only tests and cmd/pgcloak
// (for demo) import it, and it imports no other pgcloak package. It knows how to
// find the PostgreSQL server binaries, run initdb, configure and start a
// server, and hand out connection strings; it knows nothing about the proxy,
// SQL rewriting or keys.
//
// # One server's life
//
// [Start] creates a temporary directory, runs initdb with a superuser password,
// writes postgresql.conf and pg_hba.conf, picks a free 127.0.0.1 port (trying
// another one if the server loses a race for it), starts the postgres binary
// as a direct child and waits until a superuser login succeeds. It then
// creates one login role per authentication method of pg_hba.conf:
//
//	trust_user     trust
//	md5_user       md5 (its stored password is an MD5 hash, so md5 is really used)
//	password_user  password (cleartext)
//	scram_user     scram-sha-256 (also the rule for every other role, postgres included)
//
// Unix-socket logins are trusted; the socket lives in [Postgres.Dir].
// [Postgres.Stop] asks for a fast shutdown (SIGINT), escalates to SIGQUIT and
// then SIGKILL of the server's process group, waits, and removes the directory.
//
// When the process runs as root, as it does in CI, initdb and the server run
// as the "postgres" OS user because initdb refuses to run as root.
//
// # Nothing left running
//
// The server is not daemonized by pg_ctl: it is our child, started with a
// parent-death signal (Linux PR_SET_PDEATHSIG, SIGQUIT), so the kernel stops
// it even when the test binary is killed with SIGKILL or exits through
// os.Exit. The kernel sends that signal when the OS thread that forked the
// child ends, not when the process does, so every child is started from a
// goroutine locked to its thread that lives until the child has exited.
// A directory left behind by a killed process is removed by the next Start
// once both its owner and its postmaster are gone.
//
// # In tests
//
// A test package calls [RunMain] from TestMain, uses [Shared] for one lazily
// started server per test binary and [NewDatabase] for a database of its own
// per test, dropped in t.Cleanup. A missing PostgreSQL installation fails the
// test with [ErrServerBinariesNotFound], which says what to install; testenv
// never skips.
//
// # AWS KMS
//
// AWS KMS cannot be reached from the machines pgcloak is tested on, so
// testenv also serves the KMS JSON 1.1 API itself ([KMS], [NewKMS],
// [StartKMS]): real AES-256-GCM under per-key material, the encryption
// context enforced on Decrypt as KMS does, disabled and deleted keys
// refused, call counting and injected faults and latency. The production
// provider (crypto/awskms) reaches it only through the AWS SDK with an
// endpoint override, exactly as it reaches KMS.
package testenv
