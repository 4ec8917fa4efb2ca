// Package keystore is the SQL side of pgcloak's keys: it keeps the wrapped
// data keys in the upstream database, in pgcloak.data_keys, so that every
// proxy replica shares them, and it implements crypto.KeySource over a
// pgxpool.Pool.
//
// # Layer
//
// keystore uses pgx and package crypto, and nothing above them: not proxy,
// not rewrite, not config. It stores and returns wrapped keys; it never
// sees a plaintext data key except inside Rotate, which asks the Provider
// for a new one and clears it at once. It runs on the proxy's own upstream
// login (upstream.user), never on a tenant's session.
//
// # The table
//
// EnsureSchema creates the pgcloak schema and
//
//	pgcloak.data_keys (tenant, key_class, purpose, version) primary key
//	    wrapped bytea      the data key wrapped by the KEK; NULL once shredded
//	    kek_id text        which KEK wrapped it
//	    created_at timestamptz
//	    state text         'active' (the newest) | 'retired' | 'shredded'
//	    sealed_reserved bigint  encryptions replicas reserved under it
//
// under a transaction-level advisory lock, so replicas that start together
// do not race on CREATE SCHEMA, and not at all when the table is already
// there, so that a DBA may create it beforehand (see Schema) and grant the
// proxy's login no more than SELECT, INSERT and UPDATE on it.
//
// Versions of one (tenant, key_class, purpose) count from 1 and are never
// deleted; the active version is the highest one that is not shredded.
// Version 1 is created just in time by CreateIfMissing with INSERT ... ON
// CONFLICT DO NOTHING followed by a fresh read, so replicas racing for a
// new tenant agree on the one row that won. Rotate adds version max+1 under
// an advisory lock on the key. Shred sets every version of a tenant to
// 'shredded' and its wrapped bytes to NULL; ShredKeyClass does that for
// one key class. Rewrap unwraps a tenant's versions and wraps them again
// under the KEK the provider now uses for it, in one transaction, without
// changing a data key.
//
// # Counting encryptions
//
// AES-GCM with random nonces is safe for about 2^32 encryptions per key, so
// Store implements crypto.SealCounter: replicas reserve blocks of
// encryptions per data key version with one UPDATE of sealed_reserved that
// never goes past the limit, and the crypto.KeyCache rotates the key
// (RotateFrom, which rotates only while that version is still active, so
// replicas reaching the limit together rotate once) when no more can be
// reserved. EnsureSchema adds the column to a table made by an older
// pgcloak (ALTER TABLE, which needs the table's owner).
//
// # Events
//
// Rotate, RotateFrom, Shred and ShredKeyClass notify NotifyChannel in the
// same transaction; Listen
// delivers those notifications so that each replica can purge its
// crypto.KeyCache at once instead of waiting for the cache TTL.
//
// # What shredding is worth
//
// Shred removes the wrapped keys from the live table. Old row versions
// stay in the table's heap until vacuum, and in WAL and in backups for as
// long as those are kept. Those copies are only useless when their KEK is
// gone too: a tenant with its own KMS key must have that key scheduled for
// deletion; with the local provider or a KEK shared between tenants, a
// backup of pgcloak.data_keys plus the KEK still opens the tenant's data.
package keystore
