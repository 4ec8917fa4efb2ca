package keystore

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// ProofSetting is the setting that carries a session's pin proof next to
// the tenant setting. It is in the pgcloak.* namespace, which the proxy
// reserves for itself.
const ProofSetting = "pgcloak.tenant_proof"

// pinKeySize is the HMAC-SHA256 key size: one SHA-256 block, so that the
// key is used as it is and the database can compute HMAC with sha256()
// over the stored inner and outer padded keys.
const pinKeySize = sha256.BlockSize

// pinVersion prefixes every proof and every MAC'd message.
const pinVersion = "v1"

// PinSchema is the DDL of the verified tenant pin for the tenant setting
// (tenancy.setting, e.g. app.tenant_id): the key table, the two sequences
// and the functions pgcloak.current_tenant(), pgcloak.pin_challenge(),
// pgcloak.pin() and pgcloak.unpin(), in schema pgcloak, which must exist
// and be usable by PUBLIC (tenant roles call the functions). Run it as
// upstream.user: the functions must be owned by the role that owns the
// key. See doc.go, "The verified tenant pin".
func PinSchema(setting string) string {
	return fmt.Sprintf(pinSchema, QuoteLiteral(setting), QuoteLiteral(ProofSetting), markerExpr("t", "p"), txStartExpr, markerExpr("s.t", "s.p"),
		sentByPgcloak(pinBound), sentByPgcloak(pinNextBound))
}

const pinSchema = `CREATE TABLE IF NOT EXISTS pgcloak.pin_key (
    id   boolean PRIMARY KEY DEFAULT true CHECK (id),
    ikey bytea NOT NULL CHECK (length(ikey) = 64),
    okey bytea NOT NULL CHECK (length(okey) = 64),
    created_at timestamptz NOT NULL DEFAULT now()
);
REVOKE ALL ON pgcloak.pin_key FROM PUBLIC;

-- Never reset or cycled: a challenge value is handed out once.
CREATE SEQUENCE IF NOT EXISTS pgcloak.pin_challenge NO CYCLE;
-- Per session, currval() is the marker of the pin pgcloak.pin() verified.
CREATE UNLOGGED SEQUENCE IF NOT EXISTS pgcloak.pin_marker
    MINVALUE -9223372036854775808 MAXVALUE 9223372036854775807 NO CYCLE;
-- Per session, currval() is the number of the last pin_next() it accepted.
CREATE UNLOGGED SEQUENCE IF NOT EXISTS pgcloak.pin_counter
    MINVALUE 0 MAXVALUE 9223372036854775807 NO CYCLE;
REVOKE ALL ON SEQUENCE pgcloak.pin_challenge, pgcloak.pin_marker, pgcloak.pin_counter FROM PUBLIC;

CREATE OR REPLACE FUNCTION pgcloak.pin_challenge() RETURNS bigint
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $fn$ SELECT nextval('pgcloak.pin_challenge') $fn$;

CREATE OR REPLACE FUNCTION pgcloak.pin(tenant text, proof text, mac text) RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
  c bigint;
  k record;
  parts text[] := string_to_array(proof, ':');
BEGIN
  BEGIN
    c := currval('pgcloak.pin_challenge');
  EXCEPTION WHEN object_not_in_prerequisite_state THEN
    RAISE EXCEPTION 'pgcloak: tenant pin refused' USING ERRCODE = '42501';
  END;
  IF NOT %[6]s THEN
    RAISE EXCEPTION 'pgcloak: tenant pin refused' USING ERRCODE = '42501';
  END IF;
  SELECT ikey, okey INTO k FROM pgcloak.pin_key WHERE id;
  IF k.ikey IS NULL OR tenant IS NULL OR tenant = '' OR cardinality(parts) IS DISTINCT FROM 3
     OR parts[1] IS DISTINCT FROM 'v1' OR parts[2] !~ '^[0-9]{1,18}$'
     OR mac IS DISTINCT FROM encode(sha256(k.okey || sha256(k.ikey ||
          convert_to('v1|' || c || '|' || tenant || '|' || proof, 'UTF8'))), 'hex') THEN
    RAISE EXCEPTION 'pgcloak: tenant pin refused' USING ERRCODE = '42501';
  END IF;
  PERFORM nextval('pgcloak.pin_challenge'); -- one pin per challenge
  PERFORM setval('pgcloak.pin_marker', %[3]s) FROM (SELECT tenant AS t, proof AS p) s;
END
$fn$;

-- pin_next pins a tenant in the middle of a session, without a round trip
-- for a challenge: the MAC names the session's challenge c (its currval,
-- drawn once) and a number n above every number it accepted before, so a
-- pin is good once, in this session only. It returns the proof to set:
-- for a transaction-local pin, the proof names the transaction's start, and
-- current_tenant() accepts it in that transaction only.
CREATE OR REPLACE FUNCTION pgcloak.pin_next(tenant text, proof text, c bigint, n bigint, is_local boolean, mac text) RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
  cur bigint;
  last bigint := 0;
  k record;
  p text := proof;
  parts text[] := string_to_array(proof, ':');
BEGIN
  BEGIN
    cur := currval('pgcloak.pin_challenge');
  EXCEPTION WHEN object_not_in_prerequisite_state THEN
    RAISE EXCEPTION 'pgcloak: tenant pin refused' USING ERRCODE = '42501';
  END;
  BEGIN
    last := currval('pgcloak.pin_counter');
  EXCEPTION WHEN object_not_in_prerequisite_state THEN
    last := 0;
  END;
  IF NOT %[7]s THEN
    RAISE EXCEPTION 'pgcloak: tenant pin refused' USING ERRCODE = '42501';
  END IF;
  SELECT ikey, okey INTO k FROM pgcloak.pin_key WHERE id;
  IF k.ikey IS NULL OR c IS DISTINCT FROM cur OR n IS NULL OR n <= last OR is_local IS NULL
     OR tenant IS NULL OR tenant = '' OR cardinality(parts) IS DISTINCT FROM 3
     OR parts[1] IS DISTINCT FROM 'v1' OR parts[2] !~ '^[0-9]{1,18}$'
     OR mac IS DISTINCT FROM encode(sha256(k.okey || sha256(k.ikey ||
          convert_to('v1n|' || c || '|' || n || '|' || is_local::text || '|' || tenant || '|' || proof, 'UTF8'))), 'hex') THEN
    RAISE EXCEPTION 'pgcloak: tenant pin refused' USING ERRCODE = '42501';
  END IF;
  PERFORM setval('pgcloak.pin_counter', n);
  -- The proof gains the transaction's start (a local pin) and a nonce that
  -- no text shows: the setval below is not undone when the statement then
  -- fails (a cancel), and the marker it leaves must match no settings a
  -- client can make.
  p := proof || ':' || CASE WHEN is_local THEN %[4]s ELSE '' END || ':' || replace(gen_random_uuid()::text, '-', '');
  PERFORM setval('pgcloak.pin_marker', %[5]s) FROM (SELECT tenant AS t, p AS p) s;
  RETURN p;
END
$fn$;

-- unpin drops the session's pin: no tenant and proof hash to 0 (that would
-- take a preimage of SHA-256's first 64 bits). A sequence is not rolled
-- back, so neither is this: a ROLLBACK that restores the settings of an
-- earlier pin does not restore the pin. The challenge stays, so later
-- pin_next() calls still name it.
CREATE OR REPLACE FUNCTION pgcloak.unpin() RETURNS void
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $fn$ SELECT setval('pgcloak.pin_marker', 0) $fn$;

-- pin_burn spends every pin_next() number up to n in this session. The
-- proxy calls it after a pin it sent did not complete (an error before or
-- in it): that pin's MAC, in a literal pin's text that pg_stat_activity
-- shows, would otherwise stay good in this session until its next pin.
-- Spending numbers only ever makes MACs worthless, so anyone may call it.
CREATE OR REPLACE FUNCTION pgcloak.pin_burn(n bigint) RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
  last bigint := 0;
BEGIN
  BEGIN
    last := currval('pgcloak.pin_counter');
  EXCEPTION WHEN object_not_in_prerequisite_state THEN
    last := 0;
  END;
  IF n > last THEN
    PERFORM setval('pgcloak.pin_counter', n);
  END IF;
END
$fn$;

CREATE OR REPLACE FUNCTION pgcloak.current_tenant() RETURNS text
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
  t text := current_setting(%[1]s, true);
  p text := current_setting(%[2]s, true);
BEGIN
  IF t IS NULL OR t = '' OR p IS NULL OR p = '' THEN
    RETURN NULL;
  END IF;
  BEGIN
    IF currval('pgcloak.pin_marker') IS DISTINCT FROM %[3]s THEN
      RETURN NULL;
    END IF;
  EXCEPTION WHEN object_not_in_prerequisite_state THEN
    RETURN NULL; -- no pin in this session
  END;
  IF split_part(p, ':', 2) <> '0' AND split_part(p, ':', 2)::bigint <= extract(epoch FROM statement_timestamp()) THEN
    RETURN NULL; -- expired
  END IF;
  IF split_part(p, ':', 4) <> '' AND split_part(p, ':', 4) IS DISTINCT FROM %[4]s THEN
    RETURN NULL; -- a transaction-local pin of another transaction
  END IF;
  RETURN t;
END
$fn$;

REVOKE ALL ON FUNCTION pgcloak.pin_challenge(), pgcloak.pin(text, text, text), pgcloak.unpin(), pgcloak.pin_burn(bigint),
    pgcloak.pin_next(text, text, bigint, bigint, boolean, text), pgcloak.current_tenant() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pgcloak.pin_challenge(), pgcloak.pin(text, text, text), pgcloak.unpin(), pgcloak.pin_burn(bigint),
    pgcloak.pin_next(text, text, bigint, bigint, boolean, text), pgcloak.current_tenant() TO PUBLIC;
`

// pinSchemaCreate creates schema pgcloak when it is missing (CREATE SCHEMA
// IF NOT EXISTS would need CREATE on the database even when it exists) and,
// when upstream.user owns it, lets every role use it.
const pinSchemaCreate = `DO $$
BEGIN
  IF to_regnamespace('pgcloak') IS NULL THEN
    CREATE SCHEMA pgcloak;
  END IF;
  IF (SELECT nspowner = current_user::regrole FROM pg_namespace WHERE nspname = 'pgcloak') THEN
    GRANT USAGE ON SCHEMA pgcloak TO PUBLIC;
  END IF;
END $$`

// A pin's MAC is not secret once sent: a simple-protocol pin carries it
// as a literal, and pg_stat_activity shows the text to every session of
// the same role, for good when the pin did not run (an earlier statement
// of its query failed). So pin() and pin_next() accept a MAC only while
// the client's top-level text (current_query(), which dynamic SQL in a
// function does not change) is pgcloak's: it holds the MAC right after
// PinMarker, or it is one of pgcloak's parameterised pin statements
// (pinBound, pinNextBound). Every one of these contains PinWord, and the
// proxy refuses any client text, and any text it rewrites, that contains
// PinWord in any case: a replayed MAC has no text to ride in.
const (
	// PinWord is in every text that may carry a pin.
	PinWord = "pgcloak.pin"
	// PinMarker starts the comment that names a literal pin's MAC.
	PinMarker = "/*" + PinWord + ":"
	// pinBound and pinNextBound are in PinStatement's and NextStatement's
	// texts, whose MAC is a bound parameter.
	pinBound     = PinWord + "($1, $2, $3)"
	pinNextBound = PinWord + "_next($1::pg_catalog.text"
)

// sentByPgcloak is the SQL condition, in pin() and pin_next(), that the
// statement running is pgcloak's: with its MAC as a literal after
// PinMarker, or the parameterised statement whose text contains bound.
func sentByPgcloak(bound string) string {
	return fmt.Sprintf(`coalesce(pg_catalog.strpos(pg_catalog.current_query(), %s || mac || '*/') > 0 OR pg_catalog.strpos(pg_catalog.current_query(), %s) > 0, false)`,
		QuoteLiteral(PinMarker), QuoteLiteral(bound))
}

// LiteralPin returns sql, a pin statement with its values as literals,
// after the comment that names its MAC (PinMarker): pin_next() accepts
// the MAC only in a top-level text that holds that comment.
func LiteralPin(mac, sql string) string {
	return PinMarker + mac + "*/ " + sql
}

// markerExpr is the SQL of a pin's marker: the first 64 bits of
// SHA-256(tenant | proof) as a bigint.
func markerExpr(t, p string) string {
	// The tenant's length comes first, so that no tenant and proof hash as
	// another tenant with another proof ("a|b" + p is not "a" + "b|" + p).
	return fmt.Sprintf(`('x' || left(encode(sha256(convert_to(length(%[1]s) || ':' || %[1]s || '|' || %[2]s, 'UTF8')), 'hex'), 16))::bit(64)::bigint`, t, p)
}

// txStartExpr is the current transaction's start in microseconds since
// the epoch: what a transaction-local proof names.
const txStartExpr = `(extract(epoch FROM transaction_timestamp()) * 1000000)::bigint::text`

// QuoteLiteral quotes s as an SQL string literal (for a session whose
// standard_conforming_strings is on).
func QuoteLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// Pinner makes the MACs that pgcloak.pin() accepts. It holds the pin key,
// which only upstream.user can read from pgcloak.pin_key.
type Pinner struct {
	key []byte
}

// EnsurePin creates the verified tenant pin's objects for setting when any
// is missing or differs, creates the pin key when there is none, and
// returns a Pinner with that key. Replicas may call it at once: they
// serialise on the key store's advisory lock, and replace a function only
// when its text differs, so that they do not race on CREATE OR REPLACE.
func EnsurePin(ctx context.Context, pool *pgxpool.Pool, setting string) (*Pinner, error) {
	var key []byte
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, schemaLockKey); err != nil {
			return err
		}
		want := PinSchema(setting)
		current, err := pinCurrent(ctx, tx)
		if err != nil {
			return err
		}
		if current != pinFingerprint(want) {
			if _, err := tx.Exec(ctx, pinSchemaCreate); err != nil {
				return fmt.Errorf("create schema pgcloak: %w", err)
			}
			if _, err := tx.Exec(ctx, want); err != nil {
				return fmt.Errorf("create the verified tenant pin (run as upstream.user, or run the DDL of pgcloak schema --keystore as upstream.user): %w", err)
			}
			if _, err := tx.Exec(ctx, `COMMENT ON FUNCTION pgcloak.current_tenant() IS `+QuoteLiteral(pinFingerprint(want))); err != nil {
				return err
			}
		}
		ikey, okey, err := newPinPads()
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `INSERT INTO pgcloak.pin_key (ikey, okey) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING`, ikey, okey); err != nil {
			return err
		}
		clear(ikey)
		clear(okey)
		var stored []byte
		if err := tx.QueryRow(ctx, `SELECT ikey FROM pgcloak.pin_key WHERE id`).Scan(&stored); err != nil {
			return err
		}
		if len(stored) != pinKeySize {
			return errors.New("pgcloak.pin_key holds a key of the wrong size")
		}
		key = make([]byte, pinKeySize)
		for i, b := range stored {
			key[i] = b ^ 0x36 // undo HMAC's inner pad
		}
		clear(stored)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("keystore: verified tenant pin: %w", err)
	}
	return &Pinner{key: key}, nil
}

// pinFingerprint names one version of the pin DDL, kept as the comment of
// pgcloak.current_tenant() so that EnsurePin can tell whether to replace.
func pinFingerprint(ddl string) string {
	sum := sha256.Sum256([]byte(ddl))
	return "pgcloak verified tenant pin " + hex.EncodeToString(sum[:8])
}

// pinCurrent returns the fingerprint the installed pin carries, or "" when
// it is missing.
func pinCurrent(ctx context.Context, tx pgx.Tx) (string, error) {
	var comment *string
	err := tx.QueryRow(ctx, `
		SELECT obj_description(to_regprocedure('pgcloak.current_tenant()'), 'pg_proc')
		WHERE to_regclass('pgcloak.pin_key') IS NOT NULL
		  AND to_regclass('pgcloak.pin_marker') IS NOT NULL
		  AND to_regclass('pgcloak.pin_challenge') IS NOT NULL
		  AND to_regprocedure('pgcloak.pin(text, text, text)') IS NOT NULL
		  AND to_regclass('pgcloak.pin_counter') IS NOT NULL
		  AND to_regprocedure('pgcloak.pin_next(text, text, bigint, bigint, boolean, text)') IS NOT NULL
		  AND to_regprocedure('pgcloak.unpin()') IS NOT NULL
		  AND to_regprocedure('pgcloak.pin_burn(bigint)') IS NOT NULL
		  AND to_regprocedure('pgcloak.pin_challenge()') IS NOT NULL`).Scan(&comment)
	if errors.Is(err, pgx.ErrNoRows) || (err == nil && comment == nil) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	return *comment, nil
}

// newPinPads returns a fresh random key as HMAC's inner and outer padded
// keys (key XOR 0x36, key XOR 0x5c), the form sha256() in SQL needs.
func newPinPads() (ikey, okey []byte, _ error) {
	key := make([]byte, pinKeySize)
	defer clear(key)
	if _, err := rand.Read(key); err != nil {
		return nil, nil, err
	}
	ikey = make([]byte, pinKeySize)
	okey = make([]byte, pinKeySize)
	for i, b := range key {
		ikey[i] = b ^ 0x36
		okey[i] = b ^ 0x5c
	}
	return ikey, okey, nil
}

// NewProof returns the proof text for a pin that expires at expires (Unix
// seconds; 0: never): version, expiry and a random nonce, so that no two
// pins share a marker.
func NewProof(expires int64) (string, error) {
	var nonce [16]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		return "", err
	}
	return pinVersion + ":" + strconv.FormatInt(expires, 10) + ":" + hex.EncodeToString(nonce[:]), nil
}

// MAC returns what pgcloak.pin(tenant, proof, mac) accepts in the session
// whose pgcloak.pin_challenge() returned challenge.
func (p *Pinner) MAC(challenge int64, tenant, proof string) string {
	m := hmac.New(sha256.New, p.key)
	m.Write([]byte(pinVersion + "|" + strconv.FormatInt(challenge, 10) + "|" + tenant + "|" + proof))
	return hex.EncodeToString(m.Sum(nil))
}

// PinTx pins tenant for the rest of tx as the proxy pins a session, for
// upstream.user's own work under row-level security (reencrypt,
// encrypt-existing, keys list --count): pgcloak.current_tenant() returns
// tenant until tx ends. tx must not be read-only (pin() draws from a
// sequence). setting is tenancy.setting, set transaction-locally too.
func (p *Pinner) PinTx(ctx context.Context, tx pgx.Tx, setting, tenant string) error {
	var challenge int64
	if err := tx.QueryRow(ctx, ChallengeStatement).Scan(&challenge); err != nil {
		return fmt.Errorf("pin tenant: %w", err)
	}
	proof, err := NewProof(0)
	if err != nil {
		return err
	}
	_, err = tx.Exec(ctx, PinStatement(true), tenant, proof, p.MAC(challenge, tenant, proof), setting, ProofSetting)
	if err != nil {
		return fmt.Errorf("pin tenant: %w", err)
	}
	return nil
}

// ChallengeStatement draws the challenge a session's MAC must name.
const ChallengeStatement = "SELECT pgcloak.pin_challenge()"

// BurnStatement spends every pin_next() number up to its parameter in the
// session (pgcloak.pin_burn()).
const BurnStatement = "SELECT pgcloak.pin_burn($1::pg_catalog.int8)"

// PinStatement pins a session (local: until its transaction ends): with
// parameters tenant, proof, MAC, tenancy.setting and ProofSetting,
// pgcloak.pin() checks the MAC and sets the marker, and both settings are
// set to the values the marker was made of.
func PinStatement(local bool) string {
	return fmt.Sprintf("SELECT pgcloak.pin($1, $2, $3), pg_catalog.set_config($4, $1, %[1]t), pg_catalog.set_config($5, $2, %[1]t)", local)
}

// NextMAC returns what pgcloak.pin_next(tenant, proof, challenge, n,
// local, mac) accepts in the session whose current challenge is challenge,
// when n is above every number it accepted before.
func (p *Pinner) NextMAC(challenge, n int64, local bool, tenant, proof string) string {
	m := hmac.New(sha256.New, p.key)
	m.Write([]byte("v1n|" + strconv.FormatInt(challenge, 10) + "|" + strconv.FormatInt(n, 10) + "|" + strconv.FormatBool(local) + "|" + tenant + "|" + proof))
	return hex.EncodeToString(m.Sum(nil))
}

// The statements pgcloak runs in a client's session name every type,
// function and operator with its schema: PostgreSQL looks up type names in
// the session's temporary schema first, so a client's
// CREATE DOMAIN pg_temp.text could otherwise see (and keep) the arguments
// of a pin it then makes fail.

// NextStatement pins tenant in the middle of a session (local: until its
// transaction ends), with parameters tenant, proof, challenge, n, MAC,
// tenancy.setting and ProofSetting: pgcloak.pin_next() checks the MAC and
// sets the marker, and both settings are set to what the marker was made
// of. Its one column is named alias.
func NextStatement(local bool, alias string) string {
	return fmt.Sprintf(`SELECT pg_catalog.textcat(pg_catalog.set_config($6::pg_catalog.text, $1::pg_catalog.text, %[1]t), pg_catalog.set_config($7::pg_catalog.text, pgcloak.pin_next($1::pg_catalog.text, $2::pg_catalog.text, $3::pg_catalog.int8, $4::pg_catalog.int8, %[1]t, $5::pg_catalog.text), %[1]t)) AS %[2]s`, local, alias)
}

// ClearStatement leaves a session without a tenant (RESET of a tenant
// token), with parameters tenancy.setting and ProofSetting: it empties both
// settings and drops the pin (pgcloak.unpin()), which a ROLLBACK does not
// undo, so that a ROLLBACK that restores the settings leaves the session
// without a tenant, as pgcloak then takes it to be. Its one column, named
// alias, is empty.
func ClearStatement(alias string) string {
	return fmt.Sprintf(`SELECT pg_catalog.textcat(pg_catalog.textcat(pg_catalog.set_config($1::pg_catalog.text, '', false), pg_catalog.set_config($2::pg_catalog.text, '', false)), pgcloak.unpin()::pg_catalog.text) AS %s`, alias)
}

// Close zeroes the key.
func (p *Pinner) Close() { clear(p.key) }
