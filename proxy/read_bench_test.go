package proxy

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// BenchmarkPgxRead10kRows reads 10,000 rows with three encrypted columns
// in one query with pgx (cache-statement mode) through pgcloak, and the
// same query on a plaintext copy of the table directly against
// PostgreSQL, alternating the two within every iteration so that both see
// the same machine. It reports each one's time per query and their ratio:
//
//	go test ./proxy -run '^$' -bench PgxRead10kRows -benchtime 50x
//
// The target: pgcloak at most 2x the direct time.
func BenchmarkPgxRead10kRows(b *testing.B) {
	env := startBenchEncrypted(b)
	ctx := ctxT(b)
	direct := connect(b, env.pg.URL(acmeRole, rolePassword, env.db))
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
			b.Fatalf("read %d rows, last ssn %q: %v", n, ssn, rows.Err())
		}
		return time.Since(start)
	}
	read(direct, "patients_plain") // warm the statement caches
	read(proxied, "patients")
	read(proxied, "patients_plain")
	b.ReportAllocs()
	var d, p, pp time.Duration
	for b.Loop() {
		d += read(direct, "patients_plain")
		p += read(proxied, "patients")
		pp += read(proxied, "patients_plain")
	}
	b.ReportMetric(float64(d.Microseconds())/float64(b.N)/1000, "direct-ms/query")
	b.ReportMetric(float64(p.Microseconds())/float64(b.N)/1000, "pgcloak-ms/query")
	b.ReportMetric(float64(p)/float64(d), "pgcloak/direct")
	// The same plaintext read relayed by pgcloak: what the extra hop
	// alone costs.
	b.ReportMetric(float64(pp)/float64(d), "relay-only/direct")
}

// startBenchEncrypted is the encrypted test environment with 10,000
// patients written through the proxy and a plaintext copy.
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
		grant select on patients_plain to acme_app`); err != nil {
		b.Fatal(err)
	}
	if _, err := env.pool.CopyFrom(ctx, pgx.Identifier{"patients_plain"}, []string{"name", "ssn", "email", "diagnosis"}, pgx.CopyFromRows(rows)); err != nil {
		b.Fatal(err)
	}
	b.StartTimer()
	return env
}
