package proxy

import (
	"bytes"
	"encoding/binary"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// patientRow is what an application maps `select *` on patients to: the
// columns it declared, and no index columns. pgx.RowToStructByName fails
// on a result column the struct lacks, as sqlx and most mappers do.
type patientRow struct {
	ID        int        `db:"id"`
	TenantID  string     `db:"tenant_id"`
	Name      string     `db:"name"`
	SSN       *string    `db:"ssn"`
	Email     *string    `db:"email"`
	Diagnosis *string    `db:"diagnosis"`
	BirthDate *time.Time `db:"birth_date"`
}

var patientColumns = []string{"id", "tenant_id", "name", "ssn", "email", "diagnosis", "birth_date"}

// TestIndexColumnsHidden: a tenant session never sees the index columns
// (ssn_bidx, email_bidx) of a declared table, whether they come through
// `select *`, `t.*`, RETURNING * or COPY TO, in every pgx query mode and
// with every result format.
func TestIndexColumnsHidden(t *testing.T) {
	env := startEncrypted(t)
	ctx := ctxT(t)
	insertPatient(t, env.tenantConn(t, acmeRole), "alice", "123-45-6789", "Alice@Example.com", "influenza", "1980-01-02")

	for _, mode := range execModes {
		t.Run(mode.String(), func(t *testing.T) {
			conn := connect(t, env.proxy.url(acmeRole, rolePassword, env.db, "default_query_exec_mode="+queryExecModeParam(mode)))
			for _, q := range []string{
				`select * from patients where ssn = $1`,
				`select p.* from patients p where p.ssn = $1`,
				`select *, 1 as one from patients where ssn = $1`,
			} {
				for i := range 2 { // the second run uses cached statements
					rows, err := conn.Query(ctx, q, "123-45-6789")
					fatalIf(t, err, "%s (run %d)", q, i)
					var names []string
					for _, fd := range rows.FieldDescriptions() {
						names = append(names, fd.Name)
					}
					want := patientColumns
					if strings.Contains(q, "one") {
						want = append(slices.Clone(patientColumns), "one")
					}
					mustEqual(t, q+": columns", strings.Join(names, ","), strings.Join(want, ","))
					rows.Close()
				}
			}
			rows, err := conn.Query(ctx, `select * from patients where ssn = $1`, "123-45-6789")
			fatalIf(t, err, "query")
			p, err := pgx.CollectOneRow(rows, pgx.RowToStructByName[patientRow])
			fatalIf(t, err, "scan select * into a struct")
			if p.SSN == nil || *p.SSN != "123-45-6789" || p.Email == nil || *p.Email != "Alice@Example.com" || p.Name != "alice" ||
				p.BirthDate == nil || p.BirthDate.Format(time.DateOnly) != "1980-01-02" {
				t.Fatalf("select * read %+v", p)
			}

			rows, err = conn.Query(ctx, `insert into patients (name, ssn, email) values ($1, $2, $3) returning *`, "bob-"+mode.String(), "987-65-4321", "bob@example.com")
			fatalIf(t, err, "insert returning *")
			p, err = pgx.CollectOneRow(rows, pgx.RowToStructByName[patientRow])
			fatalIf(t, err, "scan returning * into a struct")
			if p.SSN == nil || *p.SSN != "987-65-4321" || p.Email == nil || *p.Email != "bob@example.com" {
				t.Fatalf("returning * read %+v", p)
			}
		})
	}

	t.Run("COPY TO", func(t *testing.T) {
		conn := connect(t, env.proxy.url(acmeRole, rolePassword, env.db))
		copyOut := func(sql string) string {
			var buf bytes.Buffer
			_, err := conn.PgConn().CopyTo(ctx, &buf, sql)
			fatalIf(t, err, "%s", sql)
			return buf.String()
		}
		text := copyOut(`copy (select * from patients where name = 'alice') to stdout`)
		fields := strings.Split(strings.TrimSuffix(text, "\n"), "\t")
		mustEqual(t, "text COPY fields", len(fields), len(patientColumns))
		mustEqual(t, "text COPY ssn", fields[3], "123-45-6789")

		csv := copyOut(`copy (select * from patients where name = 'alice') to stdout with (format csv, header)`)
		lines := strings.Split(strings.TrimSuffix(csv, "\n"), "\n")
		mustEqual(t, "CSV header", lines[0], strings.Join(patientColumns, ","))
		mustEqual(t, "CSV row fields", len(strings.Split(lines[1], ",")), len(patientColumns))

		bin := []byte(copyOut(`copy (select * from patients where name = 'alice') to stdout with (format binary)`))
		// Header: 11-byte signature, flags, extension length; then the
		// tuple's field count.
		hlen := 11 + 8 + int(binary.BigEndian.Uint32(bin[15:19]))
		mustEqual(t, "binary COPY field count", int(binary.BigEndian.Uint16(bin[hlen:])), len(patientColumns))
		if !bytes.Contains(bin, []byte("123-45-6789")) {
			t.Errorf("binary COPY TO lacks the plaintext ssn")
		}
	})

	t.Run("unscoped sessions see the stored columns", func(t *testing.T) {
		conn := connect(t, env.proxy.url(migratorRole, rolePassword, env.db))
		rows, err := conn.Query(ctx, `select * from patients limit 1`)
		fatalIf(t, err, "query")
		defer rows.Close()
		var names []string
		for _, fd := range rows.FieldDescriptions() {
			names = append(names, fd.Name)
		}
		if !slices.Contains(names, "ssn_bidx") {
			t.Errorf("unscoped columns %v lack ssn_bidx", names)
		}
	})
}
