package main

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/pgcloak/pgcloak/crypto"
	"github.com/pgcloak/pgcloak/keystore"
	"github.com/pgcloak/pgcloak/testenv"
)

// TestReencryptCommand writes rows for two tenants under version 1,
// rotates both tenants' data keys, and runs "pgcloak reencrypt" as
// upstream.user, a login subject to row-level security.
func TestReencryptCommand(t *testing.T) {
	pg := testenv.Shared(t)
	db := testenv.NewDatabase(t, pg)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	if err := pg.Exec(ctx, db, rlsTableSQL("patients", "id int primary key, tenant_id text, ssn bytea, ssn_bidx bytea")+fmt.Sprintf(`
grant select, update on patients to %[1]s;
grant create on database %[2]s to %[1]s;
create table read_only (id int primary key, tenant_id text, ssn bytea, ssn_bidx bytea);
grant select on read_only to %[1]s;
create table no_grant (id int primary key, tenant_id text, ssn bytea, ssn_bidx bytea);
insert into no_grant values (1, 'acme', null, null);`, testenv.ScramUser, db)); err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(t.TempDir(), "master.key")
	if err := crypto.WriteLocalMasterKey(keyFile); err != nil {
		t.Fatal(err)
	}
	provider, err := crypto.LoadLocalProvider(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	pool, err := pgxpool.New(ctx, pg.SuperuserURL(db))
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	// The key store belongs to upstream.user, as it would when the proxy
	// created it.
	storePool, err := pgxpool.New(ctx, pg.URL(testenv.ScramUser, testenv.ScramPassword, db))
	if err != nil {
		t.Fatal(err)
	}
	defer storePool.Close()
	store, err := keystore.Open(ctx, storePool)
	if err != nil {
		t.Fatal(err)
	}
	cache := crypto.NewKeyCache(store, provider, crypto.CacheOptions{})
	defer cache.Close()
	col := crypto.Column{Table: "public.patients", Name: "ssn"}
	ssn := func(i int) string { return fmt.Sprintf("900-00-%04d", i) }
	for i := 1; i <= 10; i++ {
		tenant := []string{"acme", "globex"}[i%2]
		kr := cache.Keyring(tenant)
		v, err := kr.Seal(ctx, nil, []byte(ssn(i)), col)
		if err != nil {
			t.Fatal(err)
		}
		idx, err := kr.BlindIndex(ctx, nil, []byte(ssn(i)), col, crypto.NormalizeNone)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := pool.Exec(ctx, "insert into patients values ($1, $2, $3, $4)", i, tenant, v, idx); err != nil {
			t.Fatal(err)
		}
	}
	for _, tenant := range []string{"acme", "globex"} {
		if _, err := store.Rotate(ctx, provider, tenant, "", crypto.PurposeData); err != nil {
			t.Fatal(err)
		}
	}

	base := checkConfig(pg.Addr(), "disable", "", testenv.ScramUser, testenv.ScramPassword, db)
	base = useKeyFile(base, keyFile)
	cfg := writeFile(t, "pgcloak.yaml", base+patientsSSNDecl)

	t.Run("privileges", func(t *testing.T) {
		for _, tc := range []struct {
			table, want string
		}{
			{"read_only", "pgcloak: reencrypt: upstream.user " + testenv.ScramUser + " lacks UPDATE on public.read_only, which reencrypt needs (to write each row's sealed values); as the table's owner run: GRANT UPDATE ON public.read_only TO " + testenv.ScramUser},
			{"no_grant", "pgcloak: reencrypt: upstream.user " + testenv.ScramUser + " lacks SELECT and UPDATE on public.no_grant, which reencrypt needs (to read the rows still to do); as the table's owner run: GRANT SELECT, UPDATE ON public.no_grant TO " + testenv.ScramUser},
		} {
			t.Run(tc.table, func(t *testing.T) {
				decl := strings.Replace(patientsSSNDecl, "- name: patients", "- name: "+tc.table, 1)
				r := pgcloak(t, "reencrypt", "-c", writeFile(t, "pgcloak.yaml", base+decl))
				if r.code != 1 {
					t.Errorf("exit code: got %d, want 1", r.code)
				}
				containsAll(t, "stderr", r.stderr, tc.want)
				containsNone(t, "output", r.output(), "rows (100%)", "42501", "reencrypt_started")
			})
		}
	})

	t.Run("refusals", func(t *testing.T) {
		noTables := writeFile(t, "none.yaml", base)
		for _, tc := range []struct {
			name string
			args []string
			code int
			want string
		}{
			{"no tables declared", []string{"-c", noTables}, 1, "declares no encrypted tables"},
			{"table not declared", []string{"-c", cfg, "--table", "visits"}, 2, `table "visits" is not declared`},
			{"tenant column missing", []string{"-c", cfg, "--tenant-column", "org_id"}, 1, "public.patients.org_id: no such column"},
			{"bad batch size", []string{"-c", cfg, "--batch-size", "0"}, 2, "--batch-size must be positive"},
			{"unknown tenant", []string{"-c", cfg, "--tenant", "initech"}, 1, `tenant "initech" has no data keys`},
		} {
			t.Run(tc.name, func(t *testing.T) {
				r := pgcloak(t, append([]string{"reencrypt"}, tc.args...)...)
				if r.code != tc.code || !strings.Contains(r.stderr, tc.want) {
					t.Errorf("got exit %d, stderr %q; want exit %d and %q", r.code, r.stderr, tc.code, tc.want)
				}
			})
		}
	})

	t.Run("interrupted before the first batch", func(t *testing.T) {
		for _, command := range []string{"reencrypt", "encrypt-existing"} {
			interrupted, interrupt := context.WithCancel(ctx)
			interrupt()
			r := pgcloakContext(t, interrupted, command, "-c", cfg, "--table", "public.patients")
			if r.code != 1 {
				t.Errorf("%s: exit code: got %d, want 1", command, r.code)
			}
			containsAll(t, command+" stderr", r.stderr, "pgcloak: "+command+": interrupted before the first batch; no row was changed")
			containsNone(t, command+" output", r.output(), "context canceled", "_started")
		}
	})

	r := pgcloak(t, "reencrypt", "-c", cfg, "--table", "public.patients", "--batch-size", "3", "--pause", "1ms", "--actor", "ops")
	if r.code != 0 {
		t.Fatalf("reencrypt: exit %d, want 0", r.code)
	}
	wantActor(t, r.stdout, "reencrypt_started", "ops")
	wantActor(t, r.stdout, "reencrypt_finished", "ops")
	containsAll(t, "stdout", r.stdout, "reencrypt: re-encrypted 10 rows in 4 batches", `"event":"reencrypt_started"`, `"event":"reencrypt_finished"`, `"outcome":"complete"`, `"updated":10`)
	if !strings.Contains(r.stderr, "reencrypt: 10/10 rows (100%)") {
		t.Errorf("stderr: want a final progress line")
	}
	var old int
	if err := pool.QueryRow(ctx, `select count(*) from patients where substring(ssn from 2 for 4) <> '\x00000002'::bytea`).Scan(&old); err != nil || old != 0 {
		t.Errorf("values not at version 2: %d, %v", old, err)
	}
	fresh := crypto.NewKeyCache(store, provider, crypto.CacheOptions{})
	defer fresh.Close()
	rows, err := pool.Query(ctx, "select id, tenant_id, ssn from patients")
	if err != nil {
		t.Fatal(err)
	}
	var (
		id     int
		tenant string
		value  []byte
	)
	if _, err := pgx.ForEachRow(rows, []any{&id, &tenant, &value}, func() error {
		pt, err := fresh.Keyring(tenant).Open(ctx, nil, value, col)
		if err != nil || string(pt) != ssn(id) {
			t.Errorf("row %d: opens %v, same plaintext %v", id, err, string(pt) == ssn(id))
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(r.output(), "900-00-") {
		t.Errorf("output contains plaintext")
	}

	t.Setenv("PGCLOAK_ACTOR", "from-env")
	r = pgcloak(t, "reencrypt", "-c", cfg)
	if r.code != 0 || !strings.Contains(r.stdout, "re-encrypted 0 rows") {
		t.Errorf("second run: exit %d; want 0 and nothing to do", r.code)
	}
	wantActor(t, r.stdout, "reencrypt_finished", "from-env")
}
