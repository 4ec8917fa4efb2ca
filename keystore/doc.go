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
//
// # The verified tenant pin
//
// The tenant setting (tenancy.setting) is a custom setting: any SQL can
// change it, from a DO block, a function, a role default. Row-level
// security must therefore not trust it. EnsurePin installs, owned by
// upstream.user, what policies trust instead:
//
//	pgcloak.pin_key        a random 64-byte HMAC-SHA256 key, as its inner and
//	                       outer padded forms; readable only by its owner
//	pgcloak.pin_challenge  a sequence; pin_challenge() hands out its values
//	pgcloak.pin_marker     an unlogged sequence; its currval() in a session
//	                       is the marker of the pin verified there
//	pgcloak.pin_counter    an unlogged sequence; its currval() in a session
//	                       is the number of the last pin_next() accepted
//	pgcloak.pin(tenant, proof, mac)   SECURITY DEFINER
//	pgcloak.pin_next(tenant, proof, c, n, local, mac)
//	                                  SECURITY DEFINER; a pin without a
//	                                  round trip for a challenge (tokens)
//	pgcloak.current_tenant()          SECURITY DEFINER, STABLE
//	pgcloak.unpin()                   SECURITY DEFINER; sets the marker to 0,
//	                                  which no tenant and proof hash to, and
//	                                  which no ROLLBACK undoes
//
// all functions with search_path fixed to pg_catalog, pg_temp. The proxy
// pins a session in two round trips before the client's first
// ReadyForQuery: it starts the upstream session with the tenant setting
// and ProofSetting as startup parameters (proof: "v1:<expiry>:<random
// nonce>"), asks pgcloak.pin_challenge() for a challenge c, and calls
// pgcloak.pin(tenant, proof, HMAC(key, "v1|c|tenant|proof")). pin() checks
// the MAC against currval('pgcloak.pin_challenge') (the challenge this
// session drew), draws another value so that a challenge pins once, and
// sets the session's marker to the first 64 bits of
// SHA-256(len(tenant):tenant|proof) with setval() (the length makes the
// pair unambiguous: tenant "a|b" never hashes as tenant "a" with a proof
// starting "b|"). current_tenant() returns the tenant setting only when
// the same hash of the two settings matches the session's marker and the
// proof has not expired, and NULL otherwise. It costs one plpgsql call
// with two current_setting()s, one SHA-256 and one currval() (about 4 µs
// here), no table read.
//
// Why SQL cannot get around it:
//   - A client that sets the tenant setting, by any means, changes the
//     text the marker is computed over: current_tenant() returns NULL. It
//     cannot move the marker: only the owner may call setval() on
//     pin_marker, and pin() moves it only for a MAC made with the key.
//   - A client that reads its own proof (current_setting shows it) and
//     replays it on another backend finds no marker there (currval() is
//     per session) or another one. Replaying pin()'s arguments fails: the
//     MAC names the challenge that session drew, and sequence values are
//     never handed out twice (pin_challenge is logged and never cycles, so
//     not even a crash resets it). Drawing new challenges only invalidates
//     the client's own MAC.
//   - A client cannot read the key (no privilege on pin_key), replace the
//     functions (it does not own them or the schema), or shadow what they
//     call (fixed search_path with pg_temp last; its own pg_temp objects are
//     never searched first).
//   - A role default or a startup parameter naming the setting does no more
//     than SET: without pin() there is no marker.
//   - A MAC is not secret once sent: a literal pin's text shows in
//     pg_stat_activity, for good when the pin did not run (an earlier
//     statement of its query failed). pin() and pin_next() accept a MAC
//     only while current_query(), the top-level text the connection sent,
//     is pgcloak's: the MAC right after PinMarker (LiteralPin), or
//     PinStatement's or NextStatement's text with the MAC bound. Dynamic
//     SQL does not change current_query(), so a text assembled at run
//     time (in a function a DBA made, an aggregate's state function)
//     cannot present a MAC, and the proxy refuses every client text that
//     contains PinWord. (A session that reaches PostgreSQL directly, not
//     through the proxy, may write the marker, but a MAC names another
//     backend's challenge.)
//   - pin_next() moves the marker with setval(), which no error, ROLLBACK
//     or ROLLBACK TO undoes, so a pin statement cancelled after it (a
//     pg_cancel_backend() from another session, timed to land there)
//     leaves the marker moved while its settings roll back, and the
//     literal pin's text in pg_stat_activity shows its tenant and proof.
//     The proof pin_next() hashes into the marker and returns (to be set)
//     therefore ends in a random nonce (gen_random_uuid()) that no text
//     shows: no settings a client can make match a marker whose statement
//     failed.
//
// RESET ALL restores both settings to their startup values, which are the
// pinned ones, so the pin survives it. DISCARD ALL and DISCARD SEQUENCES
// forget currval(), so after them current_tenant() is NULL until the proxy
// pins again. A superuser, or a role that owns the functions, can do
// anything; no tenant session may run as upstream.user.
package keystore
