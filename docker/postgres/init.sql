-- Runs once, as the superuser, when docker-compose.yml's postgres service
-- starts on an empty volume (/docker-entrypoint-initdb.d). It makes the
-- same schema as `pgcloak demo`, as the README's "Preparing your database"
-- describes: a patients table under row-level security on
-- pgcloak.current_tenant(), whose declared columns (see docker/pgcloak.yaml)
-- and their blind-index columns are bytea with pgcloak's format CHECKs, two
-- tenant roles, an unscoped DBA role and the proxy's own login. The
-- passwords are for a local try only.

create role pgcloak    login password 'pgcloak';  -- upstream.user: key store, pin, catalog
create role acme_app   login password 'acme';     -- tenant acme
create role globex_app login password 'globex';   -- tenant globex
create role dba        login bypassrls password 'dba'; -- unscoped: sees every row, only ciphertext

grant connect on database app to pgcloak, acme_app, globex_app, dba;
-- The first replica to start creates the key store in schema pgcloak, and
-- every replica shares it. The verified tenant pin must exist before the
-- policies that call it, so it is created here, as pgcloak, from
-- `pgcloak schema --keystore` (serve checks it and keeps it current).
create schema pgcloak authorization pgcloak;
grant usage on schema pgcloak to public; -- tenant roles call pgcloak.current_tenant()
set role pgcloak;
CREATE TABLE IF NOT EXISTS pgcloak.pin_key (
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
  IF NOT coalesce(pg_catalog.strpos(pg_catalog.current_query(), '/*pgcloak.pin:' || mac || '*/') > 0 OR pg_catalog.strpos(pg_catalog.current_query(), 'pgcloak.pin($1, $2, $3)') > 0, false) THEN
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
  PERFORM setval('pgcloak.pin_marker', ('x' || left(encode(sha256(convert_to(length(t) || ':' || t || '|' || p, 'UTF8')), 'hex'), 16))::bit(64)::bigint) FROM (SELECT tenant AS t, proof AS p) s;
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
  IF NOT coalesce(pg_catalog.strpos(pg_catalog.current_query(), '/*pgcloak.pin:' || mac || '*/') > 0 OR pg_catalog.strpos(pg_catalog.current_query(), 'pgcloak.pin_next($1::pg_catalog.text') > 0, false) THEN
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
  p := proof || ':' || CASE WHEN is_local THEN (extract(epoch FROM transaction_timestamp()) * 1000000)::bigint::text ELSE '' END || ':' || replace(gen_random_uuid()::text, '-', '');
  PERFORM setval('pgcloak.pin_marker', ('x' || left(encode(sha256(convert_to(length(s.t) || ':' || s.t || '|' || s.p, 'UTF8')), 'hex'), 16))::bit(64)::bigint) FROM (SELECT tenant AS t, p AS p) s;
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
  t text := current_setting('app.tenant_id', true);
  p text := current_setting('pgcloak.tenant_proof', true);
BEGIN
  IF t IS NULL OR t = '' OR p IS NULL OR p = '' THEN
    RETURN NULL;
  END IF;
  BEGIN
    IF currval('pgcloak.pin_marker') IS DISTINCT FROM ('x' || left(encode(sha256(convert_to(length(t) || ':' || t || '|' || p, 'UTF8')), 'hex'), 16))::bit(64)::bigint THEN
      RETURN NULL;
    END IF;
  EXCEPTION WHEN object_not_in_prerequisite_state THEN
    RETURN NULL; -- no pin in this session
  END;
  IF split_part(p, ':', 2) <> '0' AND split_part(p, ':', 2)::bigint <= extract(epoch FROM statement_timestamp()) THEN
    RETURN NULL; -- expired
  END IF;
  IF split_part(p, ':', 4) <> '' AND split_part(p, ':', 4) IS DISTINCT FROM (extract(epoch FROM transaction_timestamp()) * 1000000)::bigint::text THEN
    RETURN NULL; -- a transaction-local pin of another transaction
  END IF;
  RETURN t;
END
$fn$;

REVOKE ALL ON FUNCTION pgcloak.pin_challenge(), pgcloak.pin(text, text, text), pgcloak.unpin(), pgcloak.pin_burn(bigint),
    pgcloak.pin_next(text, text, bigint, bigint, boolean, text), pgcloak.current_tenant() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pgcloak.pin_challenge(), pgcloak.pin(text, text, text), pgcloak.unpin(), pgcloak.pin_burn(bigint),
    pgcloak.pin_next(text, text, bigint, bigint, boolean, text), pgcloak.current_tenant() TO PUBLIC;
reset role;

create table public.patients (
	id         serial primary key,
	tenant_id  text not null default pgcloak.current_tenant(),
	name       text
);
alter table public.patients enable row level security;
alter table public.patients force row level security;
create policy tenant_isolation on public.patients
	using (tenant_id = pgcloak.current_tenant())
	with check (tenant_id = pgcloak.current_tenant());

-- The declared columns, their CHECKs and indexes: `pgcloak schema -c docker/pgcloak.yaml`.

-- public.patients
ALTER TABLE "public"."patients" ADD COLUMN IF NOT EXISTS "ssn" bytea;
ALTER TABLE "public"."patients" ADD COLUMN IF NOT EXISTS "ssn_bidx" bytea;
ALTER TABLE "public"."patients" ADD COLUMN IF NOT EXISTS "email" bytea;
ALTER TABLE "public"."patients" ADD COLUMN IF NOT EXISTS "email_bidx" bytea;
ALTER TABLE "public"."patients" ADD COLUMN IF NOT EXISTS "diagnosis" bytea;
ALTER TABLE "public"."patients" ADD COLUMN IF NOT EXISTS "birth_date" bytea;
DO $pgcloak$
DECLARE
  want text;
  have text;
  valid boolean;
BEGIN
  ALTER TABLE "public"."patients" ADD CONSTRAINT "patients_ssn_pgcloak_next" CHECK ("ssn" IS NULL OR (length("ssn") >= 33 AND get_byte("ssn", 0) = 1 AND substr("ssn", 2, 4) >= '\x00000001'::bytea AND substr("ssn", 2, 4) <= '\x7fffffff'::bytea)) NOT VALID;
  SELECT pg_catalog.pg_get_constraintdef(oid) INTO want FROM pg_catalog.pg_constraint
   WHERE conrelid = '"public"."patients"'::regclass AND conname = 'patients_ssn_pgcloak_next';
  SELECT pg_catalog.pg_get_constraintdef(oid), convalidated INTO have, valid FROM pg_catalog.pg_constraint
   WHERE conrelid = '"public"."patients"'::regclass AND conname = 'patients_ssn_pgcloak_format';
  IF have IS NOT NULL AND pg_catalog.regexp_replace(have, ' NOT VALID$', '') || ' NOT VALID' = want THEN
    ALTER TABLE "public"."patients" DROP CONSTRAINT "patients_ssn_pgcloak_next";
    IF NOT valid THEN
      ALTER TABLE "public"."patients" VALIDATE CONSTRAINT "patients_ssn_pgcloak_format";
    END IF;
  ELSE
    IF have IS NOT NULL THEN
      ALTER TABLE "public"."patients" DROP CONSTRAINT "patients_ssn_pgcloak_format";
    END IF;
    ALTER TABLE "public"."patients" RENAME CONSTRAINT "patients_ssn_pgcloak_next" TO "patients_ssn_pgcloak_format";
    ALTER TABLE "public"."patients" VALIDATE CONSTRAINT "patients_ssn_pgcloak_format";
  END IF;
END $pgcloak$;
DO $pgcloak$
DECLARE
  want text;
  have text;
  valid boolean;
BEGIN
  ALTER TABLE "public"."patients" ADD CONSTRAINT "patients_ssn_bidx_pgcloak_next" CHECK ("ssn_bidx" IS NULL OR length("ssn_bidx") = 16) NOT VALID;
  SELECT pg_catalog.pg_get_constraintdef(oid) INTO want FROM pg_catalog.pg_constraint
   WHERE conrelid = '"public"."patients"'::regclass AND conname = 'patients_ssn_bidx_pgcloak_next';
  SELECT pg_catalog.pg_get_constraintdef(oid), convalidated INTO have, valid FROM pg_catalog.pg_constraint
   WHERE conrelid = '"public"."patients"'::regclass AND conname = 'patients_ssn_bidx_pgcloak_format';
  IF have IS NOT NULL AND pg_catalog.regexp_replace(have, ' NOT VALID$', '') || ' NOT VALID' = want THEN
    ALTER TABLE "public"."patients" DROP CONSTRAINT "patients_ssn_bidx_pgcloak_next";
    IF NOT valid THEN
      ALTER TABLE "public"."patients" VALIDATE CONSTRAINT "patients_ssn_bidx_pgcloak_format";
    END IF;
  ELSE
    IF have IS NOT NULL THEN
      ALTER TABLE "public"."patients" DROP CONSTRAINT "patients_ssn_bidx_pgcloak_format";
    END IF;
    ALTER TABLE "public"."patients" RENAME CONSTRAINT "patients_ssn_bidx_pgcloak_next" TO "patients_ssn_bidx_pgcloak_format";
    ALTER TABLE "public"."patients" VALIDATE CONSTRAINT "patients_ssn_bidx_pgcloak_format";
  END IF;
END $pgcloak$;
DO $pgcloak$
DECLARE
  want text;
  have text;
  valid boolean;
BEGIN
  ALTER TABLE "public"."patients" ADD CONSTRAINT "patients_email_pgcloak_next" CHECK ("email" IS NULL OR (length("email") >= 33 AND get_byte("email", 0) = 1 AND substr("email", 2, 4) >= '\x00000001'::bytea AND substr("email", 2, 4) <= '\x7fffffff'::bytea)) NOT VALID;
  SELECT pg_catalog.pg_get_constraintdef(oid) INTO want FROM pg_catalog.pg_constraint
   WHERE conrelid = '"public"."patients"'::regclass AND conname = 'patients_email_pgcloak_next';
  SELECT pg_catalog.pg_get_constraintdef(oid), convalidated INTO have, valid FROM pg_catalog.pg_constraint
   WHERE conrelid = '"public"."patients"'::regclass AND conname = 'patients_email_pgcloak_format';
  IF have IS NOT NULL AND pg_catalog.regexp_replace(have, ' NOT VALID$', '') || ' NOT VALID' = want THEN
    ALTER TABLE "public"."patients" DROP CONSTRAINT "patients_email_pgcloak_next";
    IF NOT valid THEN
      ALTER TABLE "public"."patients" VALIDATE CONSTRAINT "patients_email_pgcloak_format";
    END IF;
  ELSE
    IF have IS NOT NULL THEN
      ALTER TABLE "public"."patients" DROP CONSTRAINT "patients_email_pgcloak_format";
    END IF;
    ALTER TABLE "public"."patients" RENAME CONSTRAINT "patients_email_pgcloak_next" TO "patients_email_pgcloak_format";
    ALTER TABLE "public"."patients" VALIDATE CONSTRAINT "patients_email_pgcloak_format";
  END IF;
END $pgcloak$;
DO $pgcloak$
DECLARE
  want text;
  have text;
  valid boolean;
BEGIN
  ALTER TABLE "public"."patients" ADD CONSTRAINT "patients_email_bidx_pgcloak_next" CHECK ("email_bidx" IS NULL OR length("email_bidx") = 16) NOT VALID;
  SELECT pg_catalog.pg_get_constraintdef(oid) INTO want FROM pg_catalog.pg_constraint
   WHERE conrelid = '"public"."patients"'::regclass AND conname = 'patients_email_bidx_pgcloak_next';
  SELECT pg_catalog.pg_get_constraintdef(oid), convalidated INTO have, valid FROM pg_catalog.pg_constraint
   WHERE conrelid = '"public"."patients"'::regclass AND conname = 'patients_email_bidx_pgcloak_format';
  IF have IS NOT NULL AND pg_catalog.regexp_replace(have, ' NOT VALID$', '') || ' NOT VALID' = want THEN
    ALTER TABLE "public"."patients" DROP CONSTRAINT "patients_email_bidx_pgcloak_next";
    IF NOT valid THEN
      ALTER TABLE "public"."patients" VALIDATE CONSTRAINT "patients_email_bidx_pgcloak_format";
    END IF;
  ELSE
    IF have IS NOT NULL THEN
      ALTER TABLE "public"."patients" DROP CONSTRAINT "patients_email_bidx_pgcloak_format";
    END IF;
    ALTER TABLE "public"."patients" RENAME CONSTRAINT "patients_email_bidx_pgcloak_next" TO "patients_email_bidx_pgcloak_format";
    ALTER TABLE "public"."patients" VALIDATE CONSTRAINT "patients_email_bidx_pgcloak_format";
  END IF;
END $pgcloak$;
DO $pgcloak$
DECLARE
  want text;
  have text;
  valid boolean;
BEGIN
  ALTER TABLE "public"."patients" ADD CONSTRAINT "patients_diagnosis_pgcloak_next" CHECK ("diagnosis" IS NULL OR (length("diagnosis") >= 33 AND get_byte("diagnosis", 0) = 1 AND substr("diagnosis", 2, 4) >= '\x00000001'::bytea AND substr("diagnosis", 2, 4) <= '\x7fffffff'::bytea)) NOT VALID;
  SELECT pg_catalog.pg_get_constraintdef(oid) INTO want FROM pg_catalog.pg_constraint
   WHERE conrelid = '"public"."patients"'::regclass AND conname = 'patients_diagnosis_pgcloak_next';
  SELECT pg_catalog.pg_get_constraintdef(oid), convalidated INTO have, valid FROM pg_catalog.pg_constraint
   WHERE conrelid = '"public"."patients"'::regclass AND conname = 'patients_diagnosis_pgcloak_format';
  IF have IS NOT NULL AND pg_catalog.regexp_replace(have, ' NOT VALID$', '') || ' NOT VALID' = want THEN
    ALTER TABLE "public"."patients" DROP CONSTRAINT "patients_diagnosis_pgcloak_next";
    IF NOT valid THEN
      ALTER TABLE "public"."patients" VALIDATE CONSTRAINT "patients_diagnosis_pgcloak_format";
    END IF;
  ELSE
    IF have IS NOT NULL THEN
      ALTER TABLE "public"."patients" DROP CONSTRAINT "patients_diagnosis_pgcloak_format";
    END IF;
    ALTER TABLE "public"."patients" RENAME CONSTRAINT "patients_diagnosis_pgcloak_next" TO "patients_diagnosis_pgcloak_format";
    ALTER TABLE "public"."patients" VALIDATE CONSTRAINT "patients_diagnosis_pgcloak_format";
  END IF;
END $pgcloak$;
DO $pgcloak$
DECLARE
  want text;
  have text;
  valid boolean;
BEGIN
  ALTER TABLE "public"."patients" ADD CONSTRAINT "patients_birth_date_pgcloak_next" CHECK ("birth_date" IS NULL OR (length("birth_date") >= 33 AND get_byte("birth_date", 0) = 1 AND substr("birth_date", 2, 4) >= '\x00000001'::bytea AND substr("birth_date", 2, 4) <= '\x7fffffff'::bytea)) NOT VALID;
  SELECT pg_catalog.pg_get_constraintdef(oid) INTO want FROM pg_catalog.pg_constraint
   WHERE conrelid = '"public"."patients"'::regclass AND conname = 'patients_birth_date_pgcloak_next';
  SELECT pg_catalog.pg_get_constraintdef(oid), convalidated INTO have, valid FROM pg_catalog.pg_constraint
   WHERE conrelid = '"public"."patients"'::regclass AND conname = 'patients_birth_date_pgcloak_format';
  IF have IS NOT NULL AND pg_catalog.regexp_replace(have, ' NOT VALID$', '') || ' NOT VALID' = want THEN
    ALTER TABLE "public"."patients" DROP CONSTRAINT "patients_birth_date_pgcloak_next";
    IF NOT valid THEN
      ALTER TABLE "public"."patients" VALIDATE CONSTRAINT "patients_birth_date_pgcloak_format";
    END IF;
  ELSE
    IF have IS NOT NULL THEN
      ALTER TABLE "public"."patients" DROP CONSTRAINT "patients_birth_date_pgcloak_format";
    END IF;
    ALTER TABLE "public"."patients" RENAME CONSTRAINT "patients_birth_date_pgcloak_next" TO "patients_birth_date_pgcloak_format";
    ALTER TABLE "public"."patients" VALIDATE CONSTRAINT "patients_birth_date_pgcloak_format";
  END IF;
END $pgcloak$;
CREATE INDEX IF NOT EXISTS "patients_ssn_bidx_idx" ON "public"."patients" ("ssn_bidx");
CREATE INDEX IF NOT EXISTS "patients_email_bidx_idx" ON "public"."patients" ("email_bidx");


grant select, insert, update, delete on public.patients to acme_app, globex_app;
grant usage on sequence public.patients_id_seq to acme_app, globex_app;
grant select on public.patients to dba;
