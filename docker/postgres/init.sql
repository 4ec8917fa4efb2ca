-- Runs once, as the superuser, when docker-compose.yml's postgres service
-- starts on an empty volume (/docker-entrypoint-initdb.d). It makes the
-- same schema as `pgcloak demo`: a patients table under row-level security
-- whose declared columns (see docker/pgcloak.yaml) and their blind-index
-- columns are bytea, two tenant roles, an unscoped DBA role and the proxy's
-- own login. The passwords are for a local try only.

create role pgcloak    login password 'pgcloak';  -- upstream.user: key store, catalog
create role acme_app   login password 'acme';     -- tenant acme
create role globex_app login password 'globex';   -- tenant globex
create role dba        login bypassrls password 'dba'; -- unscoped: sees every row, only ciphertext

create table public.patients (
	id         serial primary key,
	tenant_id  text not null default current_setting('app.tenant_id'),
	name       text,
	ssn        bytea,
	ssn_bidx   bytea,
	email      bytea,
	email_bidx bytea,
	diagnosis  bytea,
	birth_date bytea
);
alter table public.patients enable row level security;
alter table public.patients force row level security;
create policy tenant_isolation on public.patients
	using (tenant_id = current_setting('app.tenant_id', true))
	with check (tenant_id = current_setting('app.tenant_id', true));

grant select, insert, update, delete on public.patients to acme_app, globex_app;
grant usage on sequence public.patients_id_seq to acme_app, globex_app;
grant select on public.patients to dba;
grant connect on database app to pgcloak, acme_app, globex_app, dba;
-- The first replica to start creates the key store (schema pgcloak);
-- every replica shares it.
grant create on database app to pgcloak;
