package proxy

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// BenchmarkPgxRead10kRows reads 10,000 rows with three encrypted columns
// in one query with pgx (cache-statement mode) through pgcloak, and the
// same query on plaintext copies of the table directly against
// PostgreSQL, alternating all of them within every iteration so that they
// see the same machine:
//
//	go test ./proxy -run '^$' -bench PgxRead10kRows -benchtime 40x
//
// The target: pgcloak at most 2x the direct time. The baseline,
// patients_plain, is the encrypted table without the encryption: the same
// columns in plaintext under the same row-level security policy, read by
// the same role with app.tenant_id set as an application without pgcloak
// would set it. The benchmark also reports the ratio to patients_open, a
// copy with no policy at all, to show what RLS itself costs PostgreSQL.
func BenchmarkPgxRead10kRows(b *testing.B) {
	env := startBenchEncrypted(b)
	ctx := ctxT(b)
	direct := connect(b, env.pg.URL(acmeRole, rolePassword, env.db)+"&options=-c%20app.tenant_id%3Dacme")
	proxied := connect(b, env.proxy.url(acmeRole, rolePassword, env.db))

	read := func(conn *pgx.Conn, table string) time.Duration {
		start := time.Now()
		rows, err := conn.Query(ctx, "select ssn, email, diagnosis from "+table)
		if err != nil {
			b.Fatal(err)
		}
		n := 0
		var ssn, email, diagnosis string
		for rows.Next() {
			if err := rows.Scan(&ssn, &email, &diagnosis); err != nil {
				b.Fatal(err)
			}
			n++
		}
		if rows.Err() != nil || n != 10000 || !strings.HasPrefix(ssn, "ssn-") {
			b.Fatalf("%s: read %d rows, last ssn %q: %v", table, n, ssn, rows.Err())
		}
		return time.Since(start)
	}
	// Warm the statement caches.
	read(direct, "patients_plain")
	read(direct, "patients_open")
	read(proxied, "patients")
	read(proxied, "patients_plain")
	b.ReportAllocs()
	var d, open, p, relayed time.Duration
	var ratios []float64 // per iteration: pgcloak / direct
	for b.Loop() {
		di := read(direct, "patients_plain")
		pi := read(proxied, "patients")
		open += read(direct, "patients_open")
		relayed += read(proxied, "patients_plain")
		d, p = d+di, p+pi
		ratios = append(ratios, float64(pi)/float64(di))
	}
	b.ReportMetric(float64(d.Microseconds())/float64(b.N)/1000, "direct-ms/query")
	b.ReportMetric(float64(p.Microseconds())/float64(b.N)/1000, "pgcloak-ms/query")
	b.ReportMetric(float64(p)/float64(d), "pgcloak/direct")
	// The median of the iterations' ratios: one noisy iteration on a
	// shared machine moves the mean, not this.
	slices.Sort(ratios)
	b.ReportMetric(ratios[len(ratios)/2], "median-pgcloak/direct")
	b.ReportMetric(float64(p)/float64(open), "pgcloak/direct-no-rls")
	// The same plaintext read relayed by pgcloak: what the extra hop
	// alone costs.
	b.ReportMetric(float64(relayed)/float64(d), "relay-only/direct")
}

// startBenchEncrypted is the encrypted test environment with 10,000
// patients written through the proxy and two plaintext copies, one under
// the same RLS policy (patients_plain) and one with none (patients_open).
func startBenchEncrypted(b *testing.B) *encryptedEnv {
	b.Helper()
	env := startEncrypted(b)
	ctx := ctxT(b)
	conn := connect(b, env.proxy.url(acmeRole, rolePassword, env.db))
	rows := make([][]any, 10000)
	for i := range rows {
		rows[i] = []any{fmt.Sprintf("p%d", i), fmt.Sprintf("ssn-%05d", i), fmt.Sprintf("user%d@example.com", i), fmt.Sprintf("diagnosis %d", i%97)}
	}
	b.StopTimer()
	batch := &pgx.Batch{}
	for _, r := range rows {
		batch.Queue(`insert into patients (name, ssn, email, diagnosis) values ($1, $2, $3, $4)`, r...)
	}
	if err := conn.SendBatch(ctx, batch).Close(); err != nil {
		b.Fatal(err)
	}
	if err := env.pg.Exec(ctx, env.db, `
		create table patients_plain (id serial primary key, tenant_id text not null default 'acme', name text, ssn text, email text, diagnosis text);
		alter table patients_plain enable row level security;
		alter table patients_plain force row level security;
		create policy tenant_isolation on patients_plain using (tenant_id = current_setting('app.tenant_id', true));
		create table patients_open (like patients_plain including all);
		grant select on patients_plain, patients_open to acme_app`); err != nil {
		b.Fatal(err)
	}
	for _, table := range []string{"patients_plain", "patients_open"} {
		if _, err := env.pool.CopyFrom(ctx, pgx.Identifier{table}, []string{"name", "ssn", "email", "diagnosis"}, pgx.CopyFromRows(rows)); err != nil {
			b.Fatal(err)
		}
	}
	b.StartTimer()
	return env
}
