package keystore

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcloak/pgcloak/crypto"
)

// Names in the database. They are persisted: never rename them.
const (
	SchemaName    = "pgcloak"
	TableName     = "pgcloak.data_keys"
	NotifyChannel = "pgcloak_key_events"
)

// schemaLockKey is the advisory lock EnsureSchema holds: the bytes
// "pgcloak\x01" as a bigint. The per-key locks of Rotate (keyLock) are
// hashes in the same 64-bit space; a collision only serialises two
// operations.
const schemaLockKey int64 = 0x7067636c6f616b01

// Schema is the DDL EnsureSchema runs, for DBAs who create the table
// themselves.
const Schema = `CREATE SCHEMA IF NOT EXISTS pgcloak;

CREATE TABLE IF NOT EXISTS pgcloak.data_keys (
    tenant     text        NOT NULL,
    key_class  text        NOT NULL DEFAULT '',
    purpose    text        NOT NULL CHECK (purpose IN ('data', 'index')),
    version    integer     NOT NULL CHECK (version >= 1),
    wrapped    bytea,
    kek_id     text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    state      text        NOT NULL DEFAULT 'active'
                           CHECK (state IN ('active', 'retired', 'shredded')),
    sealed_reserved bigint NOT NULL DEFAULT 0 CHECK (sealed_reserved >= 0),
    PRIMARY KEY (tenant, key_class, purpose, version),
    CHECK ((state = 'shredded') = (wrapped IS NULL))
);

COMMENT ON TABLE pgcloak.data_keys IS
    'pgcloak data keys, wrapped by a key-encryption key. Do not edit: deleting or changing a row makes that tenant''s values unreadable.';
`

// State is a data key version's state in pgcloak.data_keys.
type State string

// States. Persisted: never change them.
const (
	StateActive   State = "active"   // the newest version; new values use it
	StateRetired  State = "retired"  // an older version; still opens old values
	StateShredded State = "shredded" // destroyed; its values read as undecryptable
)

// addSealedReserved upgrades a table created before encryptions were
// counted. It needs ownership of the table, so it only runs when the
// column is missing.
const addSealedReserved = `ALTER TABLE pgcloak.data_keys
    ADD COLUMN IF NOT EXISTS sealed_reserved bigint NOT NULL DEFAULT 0 CHECK (sealed_reserved >= 0)`

// EnsureSchema creates the pgcloak schema and table unless the table is
// already there, and adds the sealed_reserved column to a table made by an
// older pgcloak. Any number of processes may call it at once: they
// serialise on a transaction-level advisory lock.
func EnsureSchema(ctx context.Context, pool *pgxpool.Pool) error {
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, schemaLockKey); err != nil {
			return err
		}
		var exists bool
		if err := tx.QueryRow(ctx, `SELECT to_regclass('pgcloak.data_keys') IS NOT NULL`).Scan(&exists); err != nil {
			return err
		}
		if !exists {
			_, err := tx.Exec(ctx, Schema)
			return err
		}
		var counted bool
		if err := tx.QueryRow(ctx, `
			SELECT EXISTS (SELECT FROM pg_attribute
			               WHERE attrelid = 'pgcloak.data_keys'::regclass
			                 AND attname = 'sealed_reserved' AND NOT attisdropped)`).Scan(&counted); err != nil {
			return err
		}
		if counted {
			return nil
		}
		if _, err := tx.Exec(ctx, addSealedReserved); err != nil {
			return fmt.Errorf("add column sealed_reserved (run as the table's owner: %s): %w", addSealedReserved, err)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("keystore: create %s: %w", TableName, err)
	}
	return nil
}

// Store keeps wrapped data keys in pgcloak.data_keys and implements
// crypto.KeySource. It is safe for concurrent use; every method runs on
// the pool and honours ctx.
type Store struct {
	pool *pgxpool.Pool
}

var _ crypto.KeySource = (*Store)(nil)

// New returns a Store over pool. The table must exist (EnsureSchema).
func New(pool *pgxpool.Pool) *Store { return &Store{pool: pool} }

// Open ensures the schema and returns a Store over pool.
func Open(ctx context.Context, pool *pgxpool.Pool) (*Store, error) {
	if err := EnsureSchema(ctx, pool); err != nil {
		return nil, err
	}
	return New(pool), nil
}

// Active implements crypto.KeySource: the highest version that is not
// shredded.
func (s *Store) Active(ctx context.Context, tenant, keyClass string, purpose crypto.Purpose) (crypto.WrappedKey, error) {
	return active(ctx, s.pool, tenant, keyClass, purpose)
}

// querier is what active needs from a pool or a transaction.
type querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

func active(ctx context.Context, q querier, tenant, keyClass string, purpose crypto.Purpose) (crypto.WrappedKey, error) {
	var (
		version int32
		wrapped []byte
		kekID   string
		state   State
	)
	// The first row is the active version if there is one, else a shredded
	// one, which tells "all shredded" from "none yet".
	err := q.QueryRow(ctx, `
		SELECT version, wrapped, kek_id, state
		FROM pgcloak.data_keys
		WHERE tenant = $1 AND key_class = $2 AND purpose = $3
		ORDER BY state <> 'shredded' DESC, version DESC
		LIMIT 1`, tenant, keyClass, string(purpose)).Scan(&version, &wrapped, &kekID, &state)
	id := crypto.KeyID{Tenant: tenant, KeyClass: keyClass, Purpose: purpose}
	if err := keyRowErr(err, state, "active key", id); err != nil {
		return crypto.WrappedKey{}, err
	}
	id.Version = uint32(version)
	return crypto.WrappedKey{ID: id, Wrapped: wrapped, KEKID: kekID}, nil
}

// Version implements crypto.KeySource.
func (s *Store) Version(ctx context.Context, id crypto.KeyID) (crypto.WrappedKey, error) {
	if id.Version == 0 || id.Version > math.MaxInt32 {
		return crypto.WrappedKey{}, crypto.ErrKeyNotFound
	}
	var (
		wrapped []byte
		kekID   string
		state   State
	)
	err := s.pool.QueryRow(ctx, `
		SELECT wrapped, kek_id, state
		FROM pgcloak.data_keys
		WHERE tenant = $1 AND key_class = $2 AND purpose = $3 AND version = $4`,
		id.Tenant, id.KeyClass, string(id.Purpose), int32(id.Version)).Scan(&wrapped, &kekID, &state)
	if err := keyRowErr(err, state, "key", id); err != nil {
		return crypto.WrappedKey{}, err
	}
	return crypto.WrappedKey{ID: id, Wrapped: wrapped, KEKID: kekID}, nil
}

// keyRowErr classifies the result of reading one key version's row and
// state: no row is crypto.ErrKeyNotFound, a failed query is wrapped as
// "keystore: <what> <id>: ...", a shredded version is
// crypto.ErrKeyShredded, anything else nil.
func keyRowErr(err error, state State, what string, id crypto.KeyID) error {
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return crypto.ErrKeyNotFound
	case err != nil:
		return fmt.Errorf("keystore: %s %s: %w", what, id, err)
	case state == StateShredded:
		return crypto.ErrKeyShredded
	}
	return nil
}

// CreateIfMissing implements crypto.KeySource. The INSERT does nothing when
// any version exists (version 1 always does then, as versions are never
// deleted) or when a concurrent caller's insert wins; the read that follows
// runs in a new snapshot and so sees the winner.
func (s *Store) CreateIfMissing(ctx context.Context, w crypto.WrappedKey) (crypto.WrappedKey, error) {
	if w.ID.Version != 1 {
		return crypto.WrappedKey{}, fmt.Errorf("keystore: create key %s: only version 1 is created just in time", w.ID)
	}
	if !w.ID.Purpose.Valid() || len(w.Wrapped) == 0 {
		return crypto.WrappedKey{}, fmt.Errorf("keystore: create key %s: invalid key", w.ID)
	}
	_, err := s.pool.Exec(ctx, `
		INSERT INTO pgcloak.data_keys (tenant, key_class, purpose, version, wrapped, kek_id)
		VALUES ($1, $2, $3, 1, $4, $5)
		ON CONFLICT DO NOTHING`,
		w.ID.Tenant, w.ID.KeyClass, string(w.ID.Purpose), w.Wrapped, w.KEKID)
	if err != nil {
		return crypto.WrappedKey{}, fmt.Errorf("keystore: create key %s: %w", w.ID, err)
	}
	return active(ctx, s.pool, w.ID.Tenant, w.ID.KeyClass, w.ID.Purpose)
}

// Rotate makes a new active version of the (tenant, keyClass, purpose) key:
// p generates it, it is stored as the highest version plus one, and the
// previous versions that are not shredded become 'retired' (still
// readable). Rotating a tenant whose keys were all shredded starts it
// afresh. Replicas learn of it through NotifyChannel, or when their cached
// active version expires.
//
// Rotating the index purpose makes existing blind indexes unmatchable
// until they are recomputed; see crypto.Keyring.BlindIndex.
func (s *Store) Rotate(ctx context.Context, p crypto.Provider, tenant, keyClass string, purpose crypto.Purpose) (crypto.KeyID, error) {
	id, _, err := s.rotate(ctx, p, crypto.KeyID{Tenant: tenant, KeyClass: keyClass, Purpose: purpose}, "")
	return id, err
}

// rotate is Rotate of from's key. With from.Version set it only rotates
// when from is still the active version, and otherwise reports
// rotated false and the active version; reason goes into the event.
func (s *Store) rotate(ctx context.Context, p crypto.Provider, from crypto.KeyID, reason string) (_ crypto.KeyID, rotated bool, _ error) {
	tenant, keyClass, purpose := from.Tenant, from.KeyClass, from.Purpose
	if !purpose.Valid() {
		return crypto.KeyID{}, false, fmt.Errorf("keystore: rotate: unknown purpose %q", string(purpose))
	}
	id := crypto.KeyID{Tenant: tenant, KeyClass: keyClass, Purpose: purpose}
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, keyLock(id)); err != nil {
			return err
		}
		if from.Version != 0 {
			w, err := active(ctx, tx, tenant, keyClass, purpose)
			if err != nil {
				return err
			}
			if w.ID.Version != from.Version {
				id = w.ID // another replica rotated first
				return nil
			}
		}
		var latest int32
		if err := tx.QueryRow(ctx, `
			SELECT coalesce(max(version), 0) FROM pgcloak.data_keys
			WHERE tenant = $1 AND key_class = $2 AND purpose = $3`,
			tenant, keyClass, string(purpose)).Scan(&latest); err != nil {
			return err
		}
		if latest == math.MaxInt32 {
			return errors.New("no versions left")
		}
		id.Version = uint32(latest) + 1
		plaintext, wrapped, kekID, err := p.GenerateDataKey(ctx, id.Context())
		if err != nil {
			return err
		}
		clear(plaintext)
		if _, err := tx.Exec(ctx, `
			UPDATE pgcloak.data_keys SET state = 'retired'
			WHERE tenant = $1 AND key_class = $2 AND purpose = $3 AND state = 'active'`,
			tenant, keyClass, string(purpose)); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `
			INSERT INTO pgcloak.data_keys (tenant, key_class, purpose, version, wrapped, kek_id)
			VALUES ($1, $2, $3, $4, $5, $6)`,
			tenant, keyClass, string(purpose), int32(id.Version), wrapped, kekID); err != nil {
			return err
		}
		rotated = true
		return notify(ctx, tx, Event{Kind: EventRotate, Tenant: tenant, KeyClass: keyClass, Purpose: purpose, Version: id.Version, Reason: reason})
	})
	if err != nil {
		return crypto.KeyID{}, false, fmt.Errorf("keystore: rotate %s: %w", id, err)
	}
	return id, rotated, nil
}

// Shred destroys every key version of tenant: their wrapped bytes become
// NULL and their state 'shredded'. It returns how many versions it
// shredded. Replicas learn of it through NotifyChannel and purge their
// caches; see the package documentation for what shredding is worth.
func (s *Store) Shred(ctx context.Context, tenant string) (int, error) {
	return s.shred(ctx, tenant, "", true)
}

// ShredKeyClass is Shred for one key class of tenant: the versions of both
// purposes of (tenant, keyClass) are destroyed, the tenant's other classes
// stay as they are.
func (s *Store) ShredKeyClass(ctx context.Context, tenant, keyClass string) (int, error) {
	return s.shred(ctx, tenant, keyClass, false)
}

func (s *Store) shred(ctx context.Context, tenant, keyClass string, allClasses bool) (int, error) {
	var n int64
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `
			UPDATE pgcloak.data_keys SET state = 'shredded', wrapped = NULL
			WHERE tenant = $1 AND ($2 OR key_class = $3) AND state <> 'shredded'`, tenant, allClasses, keyClass)
		if err != nil {
			return err
		}
		n = tag.RowsAffected()
		ev := Event{Kind: EventShred, Tenant: tenant}
		if !allClasses {
			ev.KeyClass, ev.OneClass = keyClass, true
		}
		return notify(ctx, tx, ev)
	})
	if err != nil {
		return 0, fmt.Errorf("keystore: shred tenant %q: %w", tenant, err)
	}
	return int(n), nil
}

// KeyInfo describes one stored key version, without its wrapped bytes.
type KeyInfo struct {
	ID        crypto.KeyID
	KEKID     string
	CreatedAt time.Time
	State     State
	// SealsReserved is how many encryptions replicas have reserved under
	// this version (data keys; see ReserveSeals): an upper bound on the
	// encryptions done with it.
	SealsReserved uint64
}

// List returns the key versions of tenant, or of every tenant when tenant
// is "", ordered by tenant, class, purpose and version.
func (s *Store) List(ctx context.Context, tenant string) ([]KeyInfo, error) {
	rows, err := s.pool.Query(ctx, `
		SELECT tenant, key_class, purpose, version, kek_id, created_at, state, sealed_reserved
		FROM pgcloak.data_keys
		WHERE $1 = '' OR tenant = $1
		ORDER BY tenant, key_class, purpose, version`, tenant)
	if err != nil {
		return nil, fmt.Errorf("keystore: list keys: %w", err)
	}
	infos, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (KeyInfo, error) {
		var (
			k       KeyInfo
			purpose string
			version int32
			sealed  int64
		)
		err := row.Scan(&k.ID.Tenant, &k.ID.KeyClass, &purpose, &version, &k.KEKID, &k.CreatedAt, &k.State, &sealed)
		k.ID.Purpose, k.ID.Version, k.SealsReserved = crypto.Purpose(purpose), uint32(version), uint64(sealed)
		return k, err
	})
	if err != nil {
		return nil, fmt.Errorf("keystore: list keys: %w", err)
	}
	return infos, nil
}

// keyLock is the advisory-lock key of one (tenant, class, purpose): the
// first 8 bytes of SHA-256 over the length-prefixed parts, so distinct keys
// get distinct locks but for chance collisions, which only serialise two
// rotations.
func keyLock(id crypto.KeyID) int64 {
	b := []byte("pgcloak key lock\x00")
	for _, s := range []string{id.Tenant, id.KeyClass, string(id.Purpose)} {
		b = binary.BigEndian.AppendUint32(b, uint32(len(s)))
		b = append(b, s...)
	}
	sum := sha256.Sum256(b)
	return int64(binary.BigEndian.Uint64(sum[:8]))
}

// EventKind says what happened to a tenant's keys.
type EventKind string

// Event kinds, as sent on NotifyChannel. Persisted in the protocol between
// replicas of different versions: never change them.
const (
	EventRotate EventKind = "rotate"
	EventShred  EventKind = "shred"
)

// Event is a key event on NotifyChannel. Its JSON form is the notification
// payload, e.g. {"event":"rotate","tenant":"acme","key_class":"","purpose":"data","version":2}.
type Event struct {
	Kind     EventKind      `json:"event"`
	Tenant   string         `json:"tenant"`
	KeyClass string         `json:"key_class,omitempty"`
	Purpose  crypto.Purpose `json:"purpose,omitempty"`
	Version  uint32         `json:"version,omitempty"`
	// OneClass says that a shred event concerns KeyClass only; without it
	// a shred covers every class of the tenant.
	OneClass bool `json:"one_class,omitempty"`
	// Reason says why a rotation happened when pgcloak did it by itself
	// (crypto.ReasonEncryptionLimit); empty for an operator's rotation.
	Reason string `json:"reason,omitempty"`
}

func notify(ctx context.Context, tx pgx.Tx, ev Event) error {
	payload, err := json.Marshal(ev)
	if err != nil {
		return err
	}
	_, err = tx.Exec(ctx, `SELECT pg_notify($1, $2)`, NotifyChannel, string(payload))
	return err
}

// Listen subscribes conn to NotifyChannel and calls fn for every key event
// until ctx ends or the connection fails; it returns that error. conn must
// be dedicated to it (take one from the pool with Acquire and Hijack, or
// connect one), and the caller reconnects and calls Listen again after a
// failure - then purging whole caches, since events may have been missed.
// Payloads that are not events are skipped.
func Listen(ctx context.Context, conn *pgx.Conn, fn func(Event)) error {
	if _, err := conn.Exec(ctx, "LISTEN "+NotifyChannel); err != nil {
		return fmt.Errorf("keystore: listen: %w", err)
	}
	for {
		n, err := conn.WaitForNotification(ctx)
		if err != nil {
			return fmt.Errorf("keystore: listen: %w", err)
		}
		if n.Channel != NotifyChannel {
			continue
		}
		var ev Event
		if err := json.Unmarshal([]byte(n.Payload), &ev); err != nil || ev.Kind == "" {
			continue
		}
		fn(ev)
	}
}
