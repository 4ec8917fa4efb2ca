package main

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/pgcloak/pgcloak/config"
	"github.com/pgcloak/pgcloak/testenv"
)

// applySchema runs the DDL "pgcloak schema" prints for the configuration
// text cfg (checkConfig's output, edited) in database db as the superuser:
// the declared tables' bytea columns, indexes and format CHECKs, which
// serve requires. Tests create their tables first.
func applySchema(t *testing.T, pg *testenv.Postgres, db, cfg string) {
	t.Helper()
	r := pgcloak(t, "schema", "-c", writeFile(t, "schema.yaml", cfg))
	if r.code != 0 {
		t.Fatalf("pgcloak schema: exit %d", r.code)
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	if err := pg.Exec(ctx, db, r.stdout); err != nil {
		t.Fatalf("applying pgcloak schema's DDL: %v", err)
	}
}

// schemaApplied applies pgcloak schema's DDL for the configuration that
// edit makes of checkConfig's (as startServe will) and returns edit.
func schemaApplied(t *testing.T, pg *testenv.Postgres, db string, edit func(string) string) func(string) string {
	t.Helper()
	applySchema(t, pg, db, edit(checkConfig(pg.Addr(), "disable", "", testenv.ScramUser, testenv.ScramPassword, db)))
	return edit
}

// formatTable declares public.fc with ssn (searchable, so ssn_bidx) and
// notes.
var formatTable = config.Table{Schema: "public", Name: "fc", Columns: []config.Column{
	{Name: "ssn", IndexColumn: "ssn_bidx"},
	{Name: "notes"},
}}

// TestVerifyFormatChecks creates CHECKs of every kind on a table and reads
// verifyFormatChecks' verdict on each column.
func TestVerifyFormatChecks(t *testing.T) {
	pg := testenv.Shared(t)
	db := testenv.NewDatabase(t, pg)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, pg.SuperuserURL(db))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())

	checks := formatChecks(formatTable)
	ssn, bidx, notes := checks[0], checks[1], checks[2]
	for _, tt := range []struct {
		name  string
		ddl   string // after creating table fc (ssn, ssn_bidx, notes)
		want  [3]formatState
		found [3]string // constraint names found
	}{{
		name: "none",
		want: [3]formatState{formatMissing, formatMissing, formatMissing},
	}, {
		name:  "pgcloak schema's",
		ddl:   schemaDDL(t, formatTable),
		want:  [3]formatState{formatOK, formatOK, formatOK},
		found: [3]string{"fc_ssn_pgcloak_format", "fc_ssn_bidx_pgcloak_format", "fc_notes_pgcloak_format"},
	}, {
		name: "named right, checking nothing",
		ddl: `alter table fc add constraint fc_ssn_pgcloak_format check (ssn is null or true);
			alter table fc add constraint fc_ssn_bidx_pgcloak_format check (length(ssn_bidx) >= 16);
			alter table fc add constraint fc_notes_pgcloak_format check (true);`,
		want: [3]formatState{formatMissing, formatMissing, formatMissing},
	}, {
		name: "another column's definition",
		ddl: fmt.Sprintf(`alter table fc add column other bytea;
			alter table fc add constraint fc_ssn_pgcloak_format check (%s);`, strings.ReplaceAll(ssn.expr(), `"ssn"`, "other")),
		want: [3]formatState{formatMissing, formatMissing, formatMissing},
	}, {
		name: "right definitions under other names, one NOT VALID",
		ddl: fmt.Sprintf(`alter table fc add constraint a check (%s);
			alter table fc add constraint b check (%s) not valid;
			alter table fc add constraint c check (%s);`, ssn.expr(), bidx.expr(), notes.expr()),
		want:  [3]formatState{formatOK, formatNotValid, formatOK},
		found: [3]string{"a", "b", "c"},
	}, {
		name: "the earlier definition",
		ddl: fmt.Sprintf(`alter table fc add constraint fc_ssn_pgcloak_format check (%s);
			alter table fc add constraint fc_notes_pgcloak_format check (%s);`, ssn.legacyExpr(), notes.legacyExpr()),
		want:  [3]formatState{formatLegacy, formatMissing, formatLegacy},
		found: [3]string{"fc_ssn_pgcloak_format", "", "fc_notes_pgcloak_format"},
	}, {
		name: "the earlier definition and the new one",
		ddl: fmt.Sprintf(`alter table fc add constraint old check (%s);
			alter table fc add constraint new check (%s);`, ssn.legacyExpr(), ssn.expr()),
		want:  [3]formatState{formatOK, formatMissing, formatMissing},
		found: [3]string{"new", "", ""},
	}, {
		name: "written by hand, spelled differently",
		ddl: `alter table fc add constraint x check ((ssn_bidx is null) or (length(ssn_bidx) = 16));
			alter table fc add constraint y check (notes IS NULL OR (length(notes) >= 33 AND get_byte(notes, 0) = 1
				AND substr(notes, 2, 4) >= E'\\x00000001'::bytea AND substr(notes, 2, 4) <= '\x7fffffff'::bytea));`,
		want:  [3]formatState{formatMissing, formatOK, formatOK},
		found: [3]string{"", "x", "y"},
	}} {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := conn.Exec(ctx, "drop table if exists fc; create table fc (id int, ssn bytea, ssn_bidx bytea, notes bytea)"); err != nil {
				t.Fatal(err)
			}
			if tt.ddl != "" {
				if _, err := conn.Exec(ctx, tt.ddl); err != nil {
					t.Fatal(err)
				}
			}
			got, err := verifyFormatChecks(ctx, conn, []config.Table{formatTable})
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != 3 {
				t.Fatalf("got %d verdicts, want 3", len(got))
			}
			for i, f := range []formatCheck{ssn, bidx, notes} {
				if got[i].check.column != f.column || got[i].state != tt.want[i] || got[i].constraint != tt.found[i] {
					t.Errorf("%s: got state %d, constraint %q; want %d, %q", f.where(), got[i].state, got[i].constraint, tt.want[i], tt.found[i])
				}
			}
		})
	}

	t.Run("table or column missing", func(t *testing.T) {
		if _, err := conn.Exec(ctx, "drop table if exists fc; create table fc (id int, ssn bytea)"); err != nil {
			t.Fatal(err)
		}
		gone := config.Table{Schema: "public", Name: "no_such_table", Columns: []config.Column{{Name: "ssn"}}}
		got, err := verifyFormatChecks(ctx, conn, []config.Table{formatTable, gone})
		if err != nil {
			t.Fatal(err)
		}
		want := []string{"no CHECK with pgcloak's format definition", "column ssn_bidx does not exist", "column notes does not exist", "table public.no_such_table does not exist"}
		for i, w := range want {
			if got[i].state != formatMissing || got[i].why != w {
				t.Errorf("%s: got %d %q, want missing, %q", got[i].check.where(), got[i].state, got[i].why, w)
			}
		}
	})
}

// schemaDDL is what "pgcloak schema" prints for table.
func schemaDDL(t *testing.T, table config.Table) string {
	t.Helper()
	var b strings.Builder
	writeSchema(&b, &config.Config{File: "pgcloak.yaml", Encrypt: config.Encrypt{Tables: []config.Table{table}}}, false)
	return b.String()
}
