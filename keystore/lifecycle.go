package keystore

import (
	"context"
	"fmt"
	"math"

	"github.com/jackc/pgx/v5"

	"github.com/pgcloak/pgcloak/crypto"
)

var _ crypto.SealCounter = (*Store)(nil)

// ReserveSeals implements crypto.SealCounter: it adds up to n to
// sealed_reserved of data key id, never beyond limit, and returns how many
// it added, 0 once the version has reached limit. One UPDATE does it, so
// replicas reserving at once never get more than limit between them. A
// shredded or missing version is ErrKeyShredded or ErrKeyNotFound.
func (s *Store) ReserveSeals(ctx context.Context, id crypto.KeyID, n, limit uint64) (uint64, error) {
	if id.Version == 0 || id.Version > math.MaxInt32 {
		return 0, crypto.ErrKeyNotFound
	}
	n, limit = min(n, math.MaxInt64), min(limit, math.MaxInt64)
	var (
		granted int64
		state   State
	)
	// The CTE locks the row and reads its newest committed count; the
	// UPDATE computes from that, so concurrent reservations serialise on
	// the row lock and each sees the others' increments.
	err := s.pool.QueryRow(ctx, `
		WITH cur AS (
			SELECT sealed_reserved, state FROM pgcloak.data_keys
			WHERE tenant = $1 AND key_class = $2 AND purpose = $3 AND version = $4
			FOR UPDATE
		)
		UPDATE pgcloak.data_keys d
		SET sealed_reserved = CASE WHEN cur.state = 'shredded' THEN d.sealed_reserved
		                           ELSE greatest(least(cur.sealed_reserved + $5, $6), cur.sealed_reserved) END
		FROM cur
		WHERE d.tenant = $1 AND d.key_class = $2 AND d.purpose = $3 AND d.version = $4
		RETURNING d.sealed_reserved - cur.sealed_reserved, cur.state`,
		id.Tenant, id.KeyClass, string(id.Purpose), int32(id.Version), int64(n), int64(limit)).Scan(&granted, &state)
	if err := keyRowErr(err, state, "reserve encryptions under", id); err != nil {
		return 0, err
	}
	return uint64(granted), nil
}

// RotateFrom implements crypto.SealCounter: it rotates from's key as Rotate
// does, with reason in the event, but only while from is still its active
// version, so that replicas reaching a limit together rotate once. It
// returns the active version afterwards and whether this call made it.
func (s *Store) RotateFrom(ctx context.Context, p crypto.Provider, from crypto.KeyID, reason string) (crypto.KeyID, bool, error) {
	if from.Version == 0 {
		return crypto.KeyID{}, false, fmt.Errorf("keystore: rotate %s: no version to rotate from", from)
	}
	return s.rotate(ctx, p, from, reason)
}

// Rewrapped is one key version Rewrap wrapped again.
type Rewrapped struct {
	ID             crypto.KeyID
	OldKEK, NewKEK string
}

// Rewrap unwraps every version of tenant's keys that is not shredded with
// p and wraps it again with p.Wrap, under the KEK p now uses for the
// tenant, replacing wrapped and kek_id. The data keys themselves, and so
// every stored value, stay as they are. It runs in one transaction that
// locks the tenant's rows, so a concurrent Shred waits for it and then
// wins; a failure leaves every version as it was. The plaintext keys are
// cleared after use (best effort: see crypto.DataKey.Destroy).
func (s *Store) Rewrap(ctx context.Context, p crypto.Provider, tenant string) ([]Rewrapped, error) {
	var done []Rewrapped
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		done = done[:0]
		rows, err := tx.Query(ctx, `
			SELECT key_class, purpose, version, wrapped, kek_id
			FROM pgcloak.data_keys
			WHERE tenant = $1 AND state <> 'shredded'
			ORDER BY key_class, purpose, version
			FOR UPDATE`, tenant)
		if err != nil {
			return err
		}
		keys, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (crypto.WrappedKey, error) {
			var (
				w       crypto.WrappedKey
				purpose string
				version int32
			)
			err := row.Scan(&w.ID.KeyClass, &purpose, &version, &w.Wrapped, &w.KEKID)
			w.ID.Tenant, w.ID.Purpose, w.ID.Version = tenant, crypto.Purpose(purpose), uint32(version)
			return w, err
		})
		if err != nil {
			return err
		}
		for _, w := range keys {
			wrapped, kekID, err := rewrapOne(ctx, p, w)
			if err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, `
				UPDATE pgcloak.data_keys SET wrapped = $5, kek_id = $6
				WHERE tenant = $1 AND key_class = $2 AND purpose = $3 AND version = $4`,
				tenant, w.ID.KeyClass, string(w.ID.Purpose), int32(w.ID.Version), wrapped, kekID); err != nil {
				return err
			}
			done = append(done, Rewrapped{ID: w.ID, OldKEK: w.KEKID, NewKEK: kekID})
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("keystore: rewrap tenant %q: %w", tenant, err)
	}
	return done, nil
}

func rewrapOne(ctx context.Context, p crypto.Provider, w crypto.WrappedKey) ([]byte, string, error) {
	plaintext, err := p.Unwrap(ctx, w.ID.Context(), w.Wrapped)
	if err != nil {
		return nil, "", fmt.Errorf("unwrap %s (kek %s): %w", w.ID, w.KEKID, err)
	}
	defer clear(plaintext)
	wrapped, kekID, err := p.Wrap(ctx, w.ID.Context(), plaintext)
	if err != nil {
		return nil, "", fmt.Errorf("wrap %s: %w", w.ID, err)
	}
	return wrapped, kekID, nil
}
