// Package proxy is pgcloak's wire layer: it accepts PostgreSQL clients,
// negotiates TLS, relays authentication to the upstream server, and then
// runs one message loop per session.
//
// # Session lifecycle
//
// A connection starts with at most one SSLRequest and one GSSENCRequest
// (GSS encryption is always declined), then exactly one StartupMessage, or a
// CancelRequest that is forwarded to the upstream backend it names and ends
// the connection. The proxy dials upstream, speaks protocol 3.0 there, and
// relays the authentication exchange message by message: PostgreSQL, not
// pgcloak, decides whether the password is right, and its errors reach the
// client unchanged. BackendKeyData is rewritten so the client sees the
// upstream backend's real process id with a secret of the proxy's own; the
// real secret never leaves the proxy.
//
// After the first ReadyForQuery a session under tenancy, or over TLS, is two
// goroutines: one reads the client and forwards to upstream, one reads
// upstream and forwards to the client. Each flushes the other direction's
// buffered output just before it blocks on its own socket, so a pipelined
// batch costs one write per read and nothing waits in a buffer while its
// sender waits for an answer. When either goroutine ends, both connections
// are closed and the other ends too.
//
// A pure passthrough session over plain TCP is handed to the relay loop
// instead (relay_linux.go): one thread waiting in epoll_wait for all such
// sockets, which reads a socket only once it is readable, as pgbouncer does;
// Go's netpoller would first try every read and park on EAGAIN. The loop
// accepts exactly the client messages the goroutine relay accepts: it frames
// each one and decodes it with pgproto3 before forwarding the client's own
// bytes (the goroutine relay forwards pgproto3's re-encoding, which drops
// bytes a message carries beyond its fields; PostgreSQL refuses those).
// What PostgreSQL sends is forwarded unchanged.
//
// # What it refuses to know
//
// proxy does not parse SQL (that is package rewrite) and does not hold key
// material (that is package crypto). Every protocol message is decoded and
// encoded by pgproto3 (save the ParameterDescription of a statement with more
// than 65535 parameters, which pgproto3 cannot encode; see
// wideParameterDescription); proxy decides only what to forward, refuse or
// answer.
//
// # Failure
//
// Anything a client or server sends is untrusted: message bodies are capped
// before allocation (the relay loop decodes no server message at all; it
// forwards PostgreSQL's bytes as they came), a malformed message ends only
// its own session with SQLSTATE 08P01, and a panic in one session is
// recovered, logged with its stack, and closes that session alone.
package proxy
