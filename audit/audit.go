// Package audit writes pgcloak's audit stream: one JSON object per line, a
// fixed set of event kinds, and only identities in the fields — tenant,
// role, database, table, column, key version, key id. Values, keys, tokens,
// passwords and SQL text never appear; the types of the methods make that
// hard to get wrong, because none of them takes a value or a statement.
//
// The stream is separate from the operational log: operators ship it to
// their SIEM and auditors read it.
package audit

import (
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/rs/zerolog"
)

// Event is the kind of an audit record. The strings are persisted in audit
// logs: never change or reuse one.
type Event string

// Event kinds.
const (
	SessionStart        Event = "session_start"
	SessionEnd          Event = "session_end"
	AuthRefused         Event = "auth_refused"
	TenantChangeRefused Event = "tenant_change_refused"
	DecryptFailed       Event = "decrypt_failed"
	KeyCreated          Event = "key_created"
	KeyUnwrapped        Event = "key_unwrapped"
	KeyRotated          Event = "key_rotated"
	KeyRewrapped        Event = "key_rewrapped"
	TenantShredded      Event = "tenant_shredded"
	KeyPurgeReceived    Event = "key_purge_received"
	TenantTokenAccepted Event = "tenant_token_accepted"
	TenantTokenRefused  Event = "tenant_token_refused"
)

// Session identifies the session an event belongs to.
type Session struct {
	ID       uint64
	Role     string
	Database string
	Tenant   string // "" for unscoped sessions

	// Client is the client's address (host:port, as net.Conn's RemoteAddr
	// prints it), written as "client" when set.
	Client string
}

// Logger writes audit events. It is safe for concurrent use. A nil *Logger
// discards everything.
type Logger struct {
	z zerolog.Logger
}

// New returns a Logger writing JSON lines to w.
func New(w io.Writer) *Logger {
	return &Logger{z: zerolog.New(&lockedWriter{w: w}).With().Timestamp().Str("stream", "audit").Logger()}
}

// Actor is who ran a command that writes audit events (keys, reencrypt,
// encrypt-existing): the operating-system user of the process and,
// optionally, the name the operator gave (--actor or PGCLOAK_ACTOR), such
// as a person's account or a change ticket. The OS user alone is often a
// shared service account.
type Actor struct {
	OSUser string // "" when it could not be determined
	Name   string // "" when none was given
}

// WithActor returns a Logger whose every event carries a, as "actor" (an
// object with os_user and, when given, name). The events of a command
// line tool name who ran it; the proxy's sessions have their own
// identities instead.
func (l *Logger) WithActor(a Actor) *Logger {
	if l == nil {
		return nil
	}
	d := zerolog.Dict()
	if a.OSUser != "" {
		d = d.Str("os_user", a.OSUser)
	}
	if a.Name != "" {
		d = d.Str("name", a.Name)
	}
	return &Logger{z: l.z.With().Dict("actor", d).Logger()}
}

// Open opens audit.output: "stderr" (or "") and "stdout" write to the
// streams given, which a command passes as its own (so that tests running
// commands in-process see them); anything else is a file path, appended to
// and created 0600. The returned closer closes the file, if any.
func Open(output string, stdout, stderr io.Writer) (*Logger, io.Closer, error) {
	switch output {
	case "", "stderr":
		return New(stderr), io.NopCloser(nil), nil
	case "stdout":
		return New(stdout), io.NopCloser(nil), nil
	}
	f, err := os.OpenFile(output, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return nil, nil, fmt.Errorf("audit.output: %w", err)
	}
	return New(f), f, nil
}

type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func (l *Logger) event(ev Event, s *Session) *zerolog.Event {
	e := l.z.Log().Str("event", string(ev))
	if s != nil {
		e = e.Uint64("session", s.ID).Str("role", s.Role).Str("database", s.Database)
		if s.Client != "" {
			e = e.Str("client", s.Client)
		}
		if s.Tenant != "" {
			e = e.Str("tenant", s.Tenant)
		} else {
			e = e.Bool("unscoped", true)
		}
	}
	return e
}

// SessionStarted records a session that passed authentication and tenancy.
func (l *Logger) SessionStarted(s Session) {
	if l != nil {
		l.event(SessionStart, &s).Send()
	}
}

// SessionEnded records the end of a session.
func (l *Logger) SessionEnded(s Session) {
	if l != nil {
		l.event(SessionEnd, &s).Send()
	}
}

// AuthRefused records a login pgcloak refused after PostgreSQL accepted it
// (for example a role mapped to no tenant), or a login PostgreSQL refused.
func (l *Logger) AuthRefused(s Session, sqlstate, reason string) {
	if l != nil {
		l.event(AuthRefused, &s).Str("sqlstate", sqlstate).Str("reason", reason).Send()
	}
}

// TenantTokenAccepted records a tenant token a session presented and the
// proxy verified: s.Tenant is the tenant it names; subject, ID and expiry
// are its claims. The token itself is never recorded.
func (l *Logger) TenantTokenAccepted(s Session, subject, id string, expires time.Time, local bool) {
	if l != nil {
		l.event(TenantTokenAccepted, &s).Str("sub", subject).Str("jti", id).
			Time("expires", expires).Bool("local", local).Send()
	}
}

// TenantTokenRefused records a tenant token the proxy refused, and why.
func (l *Logger) TenantTokenRefused(s Session, reason string) {
	if l != nil {
		l.event(TenantTokenRefused, &s).Str("reason", reason).Send()
	}
}

// TenantChangeRefused records a client's attempt to choose its tenant.
// construct says how (e.g. "SET app.tenant_id"), never with which value.
func (l *Logger) TenantChangeRefused(s Session, construct string) {
	if l != nil {
		l.event(TenantChangeRefused, &s).Str("construct", construct).Send()
	}
}

// DecryptFailed records a value that did not open for the session's tenant.
func (l *Logger) DecryptFailed(s Session, table, column string) {
	if l != nil {
		l.event(DecryptFailed, &s).Str("table", table).Str("column", column).Send()
	}
}

// KeyCreated records a new data key version.
func (l *Logger) KeyCreated(tenant, keyClass, purpose string, version int, kekID string) {
	if l != nil {
		l.event(KeyCreated, nil).Str("tenant", tenant).Str("key_class", keyClass).Str("purpose", purpose).Int("version", version).Str("kek_id", kekID).Send()
	}
}

// KeyUnwrapped records a data key unwrapped by the key provider.
func (l *Logger) KeyUnwrapped(tenant, keyClass, purpose string, version int, kekID string) {
	if l != nil {
		l.event(KeyUnwrapped, nil).Str("tenant", tenant).Str("key_class", keyClass).Str("purpose", purpose).Int("version", version).Str("kek_id", kekID).Send()
	}
}

// KeyRotated records a new active data key version made by rotation.
// reason is "" for an operator's rotation and "encryption limit" when
// pgcloak rotated a key that reached its encryption limit.
func (l *Logger) KeyRotated(tenant, keyClass, purpose string, version int, reason string) {
	if l != nil {
		e := l.event(KeyRotated, nil).Str("tenant", tenant).Str("key_class", keyClass).Str("purpose", purpose).Int("version", version)
		if reason != "" {
			e = e.Str("reason", reason)
		}
		e.Send()
	}
}

// KeyRewrapped records a data key version wrapped again under another (or
// the same) key-encryption key; the data key itself is unchanged.
func (l *Logger) KeyRewrapped(tenant, keyClass, purpose string, version int, oldKEKID, newKEKID string) {
	if l != nil {
		l.event(KeyRewrapped, nil).Str("tenant", tenant).Str("key_class", keyClass).Str("purpose", purpose).Int("version", version).Str("old_kek_id", oldKEKID).Str("kek_id", newKEKID).Send()
	}
}

// Shred describes a crypto-shredding for TenantShredded.
type Shred struct {
	Tenant   string
	KeyClass string // the class shredded when OneClass
	OneClass bool   // false: every class of the tenant
	Versions int    // key versions destroyed
	// KEKID is the tenant's own key-encryption key whose deletion was
	// scheduled, "" when there is none.
	KEKID             string
	DeletionScheduled bool
}

// TenantShredded records the destruction of a tenant's data keys (all its
// key classes, or one).
func (l *Logger) TenantShredded(s Shred) {
	if l != nil {
		e := l.event(TenantShredded, nil).Str("tenant", s.Tenant).Int("versions", s.Versions)
		if s.OneClass {
			e = e.Str("key_class", s.KeyClass)
		} else {
			e = e.Bool("all_key_classes", true)
		}
		if s.KEKID != "" {
			e = e.Str("kek_id", s.KEKID).Bool("kek_deletion_scheduled", s.DeletionScheduled)
		}
		e.Send()
	}
}

// KeyPurgeReceived records a replica purging cached keys on a key event
// from another process (kind "rotate" or "shred"), or all of them after
// its event connection was re-established (kind "reconnect", tenant "").
// keys is how many cached keys were destroyed.
func (l *Logger) KeyPurgeReceived(kind, tenant, keyClass string, keys int) {
	if l != nil {
		e := l.event(KeyPurgeReceived, nil).Str("kind", kind)
		if tenant != "" {
			e = e.Str("tenant", tenant).Str("key_class", keyClass)
		} else {
			e = e.Bool("all_tenants", true)
		}
		e.Int("keys", keys).Send()
	}
}

// Event kinds of `pgcloak reencrypt`. Persisted: never change them.
const (
	ReencryptStart  Event = "reencrypt_started"
	ReencryptFinish Event = "reencrypt_finished"
)

// Reencrypt describes a run of `pgcloak reencrypt` for ReencryptStarted
// and ReencryptFinished: what it covered and, when finished, what it did.
type Reencrypt struct {
	Tables  []string // schema.table
	Tenant  string   // "" for every tenant
	Reindex bool     // blind indexes recomputed too

	// Set by ReencryptFinished only.
	Updated int64  // rows rewritten
	Left    int64  // rows it could not finish (raced, undecryptable, no tenant)
	Outcome string // "complete", "incomplete", "interrupted" or "failed"
}

// ReencryptStarted records the start of a re-encryption run.
func (l *Logger) ReencryptStarted(r Reencrypt) {
	if l != nil {
		l.reencrypt(ReencryptStart, r).Send()
	}
}

// ReencryptFinished records the end of a re-encryption run.
func (l *Logger) ReencryptFinished(r Reencrypt) {
	if l != nil {
		l.reencrypt(ReencryptFinish, r).Int64("updated", r.Updated).Int64("left", r.Left).Str("outcome", r.Outcome).Send()
	}
}

func (l *Logger) reencrypt(ev Event, r Reencrypt) *zerolog.Event {
	e := l.event(ev, nil).Strs("tables", r.Tables).Bool("reindex", r.Reindex)
	if r.Tenant != "" {
		return e.Str("tenant", r.Tenant)
	}
	return e.Bool("all_tenants", true)
}

// Event kinds of `pgcloak encrypt-existing`. Persisted: never change them.
const (
	EncryptExistingStart  Event = "encrypt_existing_started"
	EncryptExistingFinish Event = "encrypt_existing_finished"
)

// EncryptExisting describes a run of `pgcloak encrypt-existing` for
// EncryptExistingStarted and EncryptExistingFinished.
type EncryptExisting struct {
	Table  string // schema.table
	Tenant string // "" for every tenant

	// Set by EncryptExistingFinished only.
	Updated int64  // rows encrypted
	Left    int64  // rows it could not finish (raced, invalid, no tenant)
	Outcome string // "complete", "incomplete", "interrupted" or "failed"
}

// EncryptExistingStarted records the start of an encryption of existing
// plaintext.
func (l *Logger) EncryptExistingStarted(r EncryptExisting) {
	if l != nil {
		l.encryptExisting(EncryptExistingStart, r).Send()
	}
}

// EncryptExistingFinished records its end.
func (l *Logger) EncryptExistingFinished(r EncryptExisting) {
	if l != nil {
		l.encryptExisting(EncryptExistingFinish, r).Int64("updated", r.Updated).Int64("left", r.Left).Str("outcome", r.Outcome).Send()
	}
}

func (l *Logger) encryptExisting(ev Event, r EncryptExisting) *zerolog.Event {
	e := l.event(ev, nil).Str("table", r.Table)
	if r.Tenant != "" {
		return e.Str("tenant", r.Tenant)
	}
	return e.Bool("all_tenants", true)
}
