// Package proxy is pgcloak's wire layer: it accepts PostgreSQL clients,
// negotiates TLS, relays authentication to the upstream server, and then
// runs one message loop per session.
//
// # Session lifecycle
//
// A connection starts with at most one SSLRequest and one GSSENCRequest
// (GSS encryption is always declined), then exactly one StartupMessage, or a
// CancelRequest that is forwarded to the upstream backend it names and ends
// the connection. Bytes that arrive with an SSLRequest or GSSENCRequest,
// before the client could have read the answer, are refused with 08P01 as
// PostgreSQL refuses them ("received unencrypted data after SSL request"),
// whether the answer was 'N' or would have been 'S' (then no 'S' is sent):
// they may have been injected and are never acted on. The proxy dials
// upstream (as soon as the client asks for SSL or GSS encryption, so
// PostgreSQL's fork overlaps the client's round trips as it would
// directly), speaks protocol 3.0 there, and relays the authentication
// exchange message by message: PostgreSQL, not pgcloak, decides whether the
// password is right, and its errors reach the client unchanged.
// BackendKeyData is rewritten so the client sees the upstream backend's real
// process id with a secret of the proxy's own; the real secret never leaves
// the proxy.
//
// Under tenancy (roles mapped or tables declared) some logins are refused
// only once PostgreSQL has authenticated them, so a refusal tells a
// stranger nothing: a role mapped to no tenant, a login as upstream.user
// (28000: the proxy's own role owns the key store and the tenant proof; the
// role name is compared exactly, as PostgreSQL resolves it), and startup
// parameters the lexer guard refuses (below).
//
// After the first ReadyForQuery a session can be served in two ways. Its
// own two goroutines run everything: one reads the client and forwards to
// upstream, one reads upstream and forwards to the client. Each flushes the
// other direction's buffered output just before it blocks on its own
// socket, so a pipelined batch costs one write per read and nothing waits
// in a buffer while its sender waits for an answer. When either goroutine
// ends, both connections are closed and the other ends too.
//
// The relay loop (relay_linux.go) is one thread waiting in epoll_wait for
// the sockets of many sessions, which reads a socket only once it is
// readable, as pgbouncer does; Go's netpoller would first try every read
// and park on EAGAIN, and wake a goroutine per message. A pure passthrough
// session over plain TCP is handed to it for good: the loop frames each
// client message and decodes it with pgproto3 before forwarding the
// client's own bytes (the goroutine relay forwards pgproto3's re-encoding,
// which drops bytes a message carries beyond its fields; PostgreSQL refuses
// those), and forwards what PostgreSQL sends unchanged.
//
// A session under tenancy over plain TCP (without tenant tokens) moves
// between the two (tenantloop_linux.go). The loop decodes each message and
// hands it to the same handlers the goroutines run, on its own thread,
// unless a cheap test says the handler would wait for upstream (a token
// statement in the extended protocol, COPY, the catalog as declared, a
// statement that may redefine prepared statements, a renewed pin); a
// simple Query's token statement runs there when its token verifies
// without a JWKS fetch. Encrypted statements run there too,
// from the shape and plan caches and the key cache: where a handler would
// wait (a text to parse, a key to load, seals to reserve, a table the
// catalog has not placed) it gives up before it changes anything
// (errLoopWouldWait, crypto.NoWait), and the loop gives the session back
// to its goroutines at that message; they continue there and hand the
// session to the loop again after a few rounds with nothing outstanding.
// The decoders of such a session read whole messages through frames
// (frames.go), so every byte not yet decoded is in the session's own
// buffer and the hand-over can happen between any two messages. What is
// refused, rewritten or decrypted does not depend on which side runs the
// handler: both run the same code on the same state, and the tests of
// tenantloop_test.go check that no call into the key layer on the loop's
// thread can wait, with keys purged under the loop.
//
// # Relay loops and cores
//
// A relay loop is one goroutine that blocks in epoll_wait, so one OS
// thread, and it does per message what pgbouncer's single thread does: a
// read and a write per direction, about 30 µs of CPU per pgbench -S
// transaction on this project's 2-core VM for both (bench/passthrough.sh
// prints it). One loop therefore saturates where pgbouncer does, at about
// one core. The process runs max(1, GOMAXPROCS/4) loops
// (PGCLOAK_RELAY_LOOPS overrides it) and spreads sessions over them by id;
// each loop has its own epoll set and its own sessions, and shares nothing
// with the others on the hot path (the map of its sockets is its own).
// Accepting, startup and authentication run on the session's goroutines,
// which Go's scheduler spreads over every core, so no SO_REUSEPORT
// listener per loop is needed: only the relaying is pinned to a loop. On 16
// cores that is 4 loops, each with a core's worth of relaying, leaving the
// other cores to the goroutines' work (startup, authentication, what the
// loop hands back: parsing a new statement, loading keys, COPY, tokens).
//
// On 2 cores a second loop does not help: measured alternated against one
// loop (bench/passthrough.sh TENANT=1 LOOPS_AB=2, 3 rounds, 2026-12-07),
// two loops gave 0.91, 1.06 and 0.86 of one loop's throughput (simple,
// extended, prepared) and cost about 30 % more CPU per transaction: with
// PostgreSQL and pgbench on the same two cores, each loop wakes for fewer
// events per epoll_wait.
//
// # The lexer guard
//
// pgcloak analyses SQL as pg_query lexes it: UTF8 text with
// standard_conforming_strings on. PostgreSQL converts a statement from the
// client encoding before it lexes it (in SJIS, BIG5, GBK, GB18030 and UHC a
// character's second byte can be a backslash or a quote), and with
// standard_conforming_strings off a backslash escapes a quote; either way
// PostgreSQL could cut a text into other statements than the ones pgcloak
// analysed. In sessions with a tenant, and in every session once tables are
// declared (lexguard.go):
//
//   - a startup parameter or options entry (read as PostgreSQL reads
//     options: backslash escapes, -c NAME=VALUE, --NAME=VALUE, grouped
//     flags, dashes for underscores) that sets client_encoding to anything
//     but UTF8 or SQL_ASCII (which PostgreSQL does not convert), in any
//     spelling PostgreSQL accepts, or standard_conforming_strings to
//     anything but on, ends the login with 0A000;
//   - the ParameterStatus messages PostgreSQL sends at startup and after
//     statements are watched: once either setting is reported at another
//     value (a role or database default, a function that sets it), every
//     later Query, Parse, Bind, Execute and FunctionCall of the session is
//     refused with 0A000 saying why, before any byte of it reaches
//     PostgreSQL, until the session ends. Nothing is let through, not even
//     a statement that would set the value back: it is SQL lexed the way
//     pgcloak cannot follow. A statement the client pipelined behind the
//     one that changed the setting, before PostgreSQL reported it, is not
//     held back; SQL that changes them by name is refused by package
//     rewrite.
//
// # Refusals raised through PostgreSQL
//
// A refused statement is replaced by one that raises the refusal upstream,
// so PostgreSQL applies its own transaction semantics to it (errors.go).
// PostgreSQL logs that statement and its error, so they carry only a fixed
// message, "pgcloak: statement refused", the refusal's SQLSTATE and a
// number; the proxy puts the client's message back into the ErrorResponse
// it relays, with the SCHEMA, TABLE and COLUMN fields of the declared
// column involved and the POSITION of the refused construct. A refusal's
// message may quote the client's text (a syntax error's "at or near"); that
// text never reaches PostgreSQL or its log.
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
