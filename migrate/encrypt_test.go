package migrate

import (
	"bytes"
	"errors"
	"fmt"
	"testing"

	"github.com/pgcloak/pgcloak/config"
	"github.com/pgcloak/pgcloak/crypto"
)

// legacy is a table half-way through step 1: plaintext columns renamed to
// *_plain, encrypted columns added.
var legacy = config.Table{
	Schema: "public",
	Name:   "legacy",
	Columns: []config.Column{
		{Name: "ssn", Type: "text", Search: config.SearchEquality, IndexColumn: "ssn_bidx", Normalize: config.NormalizeNone},
		{Name: "dob", Type: "date", Search: config.SearchNone, Normalize: config.NormalizeNone, KeyClass: "phi"},
		{Name: "age", Type: "int4", Search: config.SearchEquality, IndexColumn: "age_bidx", Normalize: config.NormalizeNone},
	},
}

var (
	legacySSN = crypto.Column{Table: "public.legacy", Name: "ssn"}
	legacyDOB = crypto.Column{Table: "public.legacy", Name: "dob", KeyClass: "phi"}
	legacyAge = crypto.Column{Table: "public.legacy", Name: "age"}
)

func (e *env) legacyTable(t *testing.T) {
	t.Helper()
	if err := e.pg.Exec(t.Context(), e.db, `
create table legacy (
	id int primary key,
	tenant_id text,
	ssn_plain text, dob_plain date, age_plain text,
	ssn bytea, ssn_bidx bytea, dob bytea, age bytea, age_bidx bytea
);
alter table legacy enable row level security;
alter table legacy force row level security;
create policy tenant_isolation on legacy
	using (tenant_id = pgcloak.current_tenant())
	with check (tenant_id = pgcloak.current_tenant());
insert into legacy (id, tenant_id, ssn_plain, dob_plain, age_plain) values
	(1, 'acme', '111-11-1111', '1980-02-03', '42'),
	(2, 'globex', '', null, ' 007'),
	(3, null, '333-33-3333', '1970-01-01', '33'),
	(4, 'acme', '444-44-4444', '1990-12-31', 'x');
insert into legacy (id, tenant_id, ssn_plain, dob_plain, age_plain)
	select i, case i % 3 when 0 then 'acme' when 1 then 'globex' else 'initech' end,
	       'ssn-' || i, date '2000-01-01' + i, (i % 90)::text
	from generate_series(10, 209) i;`); err != nil {
		t.Fatal(err)
	}
}

func TestEncryptExisting(t *testing.T) {
	e := newEnv(t)
	e.legacyTable(t)
	ctx := t.Context()
	// Row 5: the application wrote ssn through the proxy after step 1
	// (without the trigger that would have cleared ssn_plain).
	app, err := e.cache(t).Keyring("acme").Seal(ctx, nil, []byte("app-555"), legacySSN)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.pool.Exec(ctx, `insert into legacy (id, tenant_id, ssn_plain, dob_plain, ssn) values (5, 'acme', '555-55-5555', '1985-05-05', $1)`, app); err != nil {
		t.Fatal(err)
	}

	var p countingProgress
	o := EncryptOptions{Options: Options{Pool: e.pool, Keys: e.cache(t), Pinner: e.pinner, BatchSize: 16, Progress: &p}, Table: &legacy}
	st, err := EncryptExisting(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	// 205 rows: row 3 has no tenant; row 4's age is not an int4 (its ssn
	// and dob are encrypted all the same).
	if st.Visited != 205 || st.Updated != 204 || st.NoTenant != 1 || st.Invalid != 1 || st.Raced != 0 {
		t.Errorf("stats: got %+v, want 205 visited, 204 updated, 1 without tenant, 1 invalid", st)
	}
	if p.total != 205 || p.done != 205 {
		t.Errorf("progress: got %d of %d, want 205 of 205", p.done, p.total)
	}

	c := e.cache(t)
	open := func(tenant string, v []byte, col crypto.Column) string {
		t.Helper()
		if v == nil {
			return "NULL"
		}
		pt, err := c.Keyring(tenant).Open(ctx, nil, v, col)
		if err != nil {
			t.Errorf("%s: %v", col.Name, err)
		}
		return string(pt)
	}
	index := func(tenant, canonical string, col crypto.Column) []byte {
		t.Helper()
		idx, err := c.Keyring(tenant).BlindIndex(ctx, nil, []byte(canonical), col, crypto.NormalizeNone)
		if err != nil {
			t.Fatal(err)
		}
		return idx
	}
	type row struct {
		tenant                        *string
		ssnPlain, dobPlain, agePlain  *string
		ssn, ssnIdx, dob, age, ageIdx []byte
	}
	read := func(id int) row {
		var r row
		err := e.pool.QueryRow(ctx, `select tenant_id, ssn_plain, dob_plain::text, age_plain, ssn, ssn_bidx, dob, age, age_bidx from legacy where id = $1`, id).
			Scan(&r.tenant, &r.ssnPlain, &r.dobPlain, &r.agePlain, &r.ssn, &r.ssnIdx, &r.dob, &r.age, &r.ageIdx)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	for _, tc := range []struct {
		id            int
		tenant        string
		ssn, dob, age string // canonical; "NULL" for none
		agePlainLeft  bool
		untouched     bool
	}{
		{id: 1, tenant: "acme", ssn: "111-11-1111", dob: "1980-02-03", age: "42"},
		{id: 2, tenant: "globex", ssn: "", dob: "NULL", age: "7"},
		{id: 4, tenant: "acme", ssn: "444-44-4444", dob: "1990-12-31", age: "NULL", agePlainLeft: true},
		{id: 5, tenant: "acme", ssn: "app-555", dob: "1985-05-05", age: "NULL"},
		{id: 100, tenant: "globex", ssn: "ssn-100", dob: "2000-04-10", age: "10"},
		{id: 3, untouched: true},
	} {
		t.Run(fmt.Sprintf("row %d", tc.id), func(t *testing.T) {
			r := read(tc.id)
			if tc.untouched {
				if r.ssnPlain == nil || r.ssn != nil || r.dob != nil || r.age != nil {
					t.Errorf("row without tenant: got plaintext %v and ciphertext %v; want plaintext kept, nothing encrypted", r.ssnPlain != nil, r.ssn != nil)
				}
				return
			}
			if r.ssnPlain != nil || r.dobPlain != nil || (r.agePlain != nil) != tc.agePlainLeft {
				t.Errorf("plaintext left: ssn %v dob %v age %v; want only age %v", r.ssnPlain != nil, r.dobPlain != nil, r.agePlain != nil, tc.agePlainLeft)
			}
			if got := open(tc.tenant, r.ssn, legacySSN); got != tc.ssn {
				t.Errorf("ssn: got %q, want %q", got, tc.ssn)
			}
			if got := open(tc.tenant, r.dob, legacyDOB); got != tc.dob {
				t.Errorf("dob: got %q, want %q", got, tc.dob)
			}
			if got := open(tc.tenant, r.age, legacyAge); got != tc.age {
				t.Errorf("age: got %q, want %q", got, tc.age)
			}
			if !bytes.Equal(r.ssnIdx, index(tc.tenant, tc.ssn, legacySSN)) && tc.id != 5 {
				t.Errorf("ssn_bidx does not match the blind index of the value")
			}
			if tc.age != "NULL" && !bytes.Equal(r.ageIdx, index(tc.tenant, tc.age, legacyAge)) {
				t.Errorf("age_bidx does not match the blind index of the canonical value")
			}
		})
	}

	t.Run("second run", func(t *testing.T) {
		o.Keys = e.cache(t)
		st, err := EncryptExisting(ctx, o)
		if err != nil || st.Visited != 2 || st.Updated != 0 || st.NoTenant != 1 || st.Invalid != 1 {
			t.Errorf("got %+v, %v; want the 2 rows left visited and left again", st, err)
		}
	})
}

// TestEncryptExistingRowSecurity: a login subject to row-level security
// is refused for every tenant at once, and works with one tenant.
func TestEncryptExistingRowSecurity(t *testing.T) {
	e := newEnv(t)
	e.legacyTable(t)
	pool := e.rlsRole(t, "legacy")
	o := EncryptOptions{Options: Options{Pool: pool, Keys: e.cache(t), Pinner: e.pinner, BatchSize: 50}, Table: &legacy}
	if _, err := EncryptExisting(t.Context(), o); !errors.Is(err, ErrRowSecurity) {
		t.Errorf("every tenant: got %v, want ErrRowSecurity", err)
	}
	o.Tenant = "initech"
	st, err := EncryptExisting(t.Context(), o)
	if err != nil || st.Updated != 67 {
		t.Errorf("initech: got %+v, %v; want its 67 rows", st, err)
	}
	var left int
	if err := e.pool.QueryRow(t.Context(), "select count(*) from legacy where ssn_plain is not null and tenant_id = 'initech'").Scan(&left); err != nil || left != 0 {
		t.Errorf("initech's plaintext left: %d, %v", left, err)
	}
}

// TestEncryptExistingRefusals: nothing to encrypt, and a plaintext column
// of the wrong kind.
func TestEncryptExistingRefusals(t *testing.T) {
	e := newEnv(t)
	o := EncryptOptions{Options: Options{Pool: e.pool, Keys: e.cache(t), Pinner: e.pinner}, Table: &patients}
	_, err := EncryptExisting(t.Context(), o)
	var se *SchemaError
	if !errors.As(err, &se) || se.Table != "public.patients" {
		t.Errorf("no plaintext columns: got %v, want a SchemaError", err)
	}
	if err := e.pg.Exec(t.Context(), e.db, `alter table patients add column ssn_plain bytea`); err != nil {
		t.Fatal(err)
	}
	if _, err := EncryptExisting(t.Context(), o); !errors.As(err, &se) || se.Column != "ssn_plain" {
		t.Errorf("bytea plaintext column: got %v, want a SchemaError naming ssn_plain", err)
	}
}
