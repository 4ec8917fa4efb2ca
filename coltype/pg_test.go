package coltype

import (
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/pgcloak/pgcloak/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.RunMain(m)) }

// pgTypeName is how the cast in TestAgainstPostgres names each type.
var pgTypeName = map[string]string{
	"text": "text", "varchar": "varchar", "bpchar": "bpchar", "int2": "int2",
	"int4": "int4", "int8": "int8", "numeric": "numeric", "float4": "float4",
	"float8": "float8", "bool": "bool", "date": "date", "timestamp": "timestamp",
	"timestamptz": "timestamptz", "uuid": "uuid", "json": "json", "jsonb": "jsonb",
	"bytea": "bytea",
}

// TestAgainstPostgres runs every case through PostgreSQL's own input and
// output functions (a text parameter cast to the type, printed in text
// format, in a UTF8 database with TimeZone UTC, DateStyle ISO,
// extra_float_digits 1 and bytea_output hex) and checks that Canonical
// agrees: the same text, or the same SQLSTATE.
func TestAgainstPostgres(t *testing.T) {
	pg := testenv.Shared(t)
	db := testenv.NewDatabase(t, pg)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	conn := connectCanonical(ctx, t, pg.SuperuserURL(db))

	for _, c := range canonCases {
		t.Run(caseName(c), func(t *testing.T) {
			res := pgInput(ctx, conn, c.typ, c.in)
			var pgErr *pgconn.PgError
			switch {
			case res.Err != nil && !errors.As(res.Err, &pgErr):
				t.Fatalf("PostgreSQL: %v", res.Err)
			case c.limitation:
				if res.Err != nil {
					t.Errorf("marked as a limitation, but PostgreSQL refuses it too: %v (SQLSTATE %s)", pgErr.Message, pgErr.Code)
				}
			case c.code != "":
				want := c.code
				if c.pgCode != "" {
					want = c.pgCode
				}
				if res.Err == nil {
					t.Errorf("PostgreSQL accepts it as %q; Canonical refuses it with %s", res.Rows[0][0], c.code)
				} else if pgErr.Code != want {
					t.Errorf("SQLSTATE: PostgreSQL %s (%s), Canonical %s", pgErr.Code, pgErr.Message, want)
				}
			default:
				if res.Err != nil {
					t.Fatalf("PostgreSQL refuses it: %s (SQLSTATE %s); Canonical gives %q", pgErr.Message, pgErr.Code, c.want)
				}
				if got := string(res.Rows[0][0]); got != c.want {
					t.Errorf("PostgreSQL prints %q, Canonical %q", got, c.want)
				}
			}
		})
	}
}

// TestAgainstPostgresRandom feeds generated near-miss inputs (fixed seed)
// to PostgreSQL and Canonical. Whatever Canonical accepts, PostgreSQL must
// accept and print the same way; refusing more than PostgreSQL is allowed
// (see the package documentation), as are different SQLSTATEs when both
// refuse.
func TestAgainstPostgresRandom(t *testing.T) {
	pg := testenv.Shared(t)
	db := testenv.NewDatabase(t, pg)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	conn := connectCanonical(ctx, t, pg.SuperuserURL(db))
	const perType = 400
	r := rand.New(rand.NewPCG(4, 2))
	for _, typ := range Types() {
		t.Run(typ, func(t *testing.T) {
			for range perType {
				in := genInput(r, typ)
				got, err := Canonical(typ, in)
				if err != nil {
					continue
				}
				res := pgInput(ctx, conn, typ, in)
				var pgErr *pgconn.PgError
				switch {
				case errors.As(res.Err, &pgErr):
					t.Errorf("%q: PostgreSQL refuses it (%s, SQLSTATE %s); Canonical gives %q", in, pgErr.Message, pgErr.Code, got)
				case res.Err != nil:
					t.Fatalf("PostgreSQL: %v", res.Err)
				case string(res.Rows[0][0]) != got:
					t.Errorf("%q: PostgreSQL prints %q, Canonical %q", in, res.Rows[0][0], got)
				}
			}
		})
	}
}

// connectCanonical connects with the settings Canonical's output assumes.
func connectCanonical(ctx context.Context, t *testing.T, url string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	for _, set := range []string{
		"SET TimeZone = 'UTC'", "SET DateStyle = 'ISO, MDY'",
		"SET extra_float_digits = 1", "SET bytea_output = 'hex'",
	} {
		if _, err := conn.Exec(ctx, set); err != nil {
			t.Fatal(err)
		}
	}
	var encoding string
	if err := conn.QueryRow(ctx, "SHOW server_encoding").Scan(&encoding); err != nil {
		t.Fatal(err)
	}
	if encoding != "UTF8" {
		t.Fatalf("server_encoding: got %s, want UTF8", encoding)
	}
	return conn
}

// pgInput has PostgreSQL read in as typ (its input function, through a
// cast from a text parameter) and print it in text format.
func pgInput(ctx context.Context, conn *pgx.Conn, typ, in string) *pgconn.Result {
	return conn.PgConn().ExecParams(ctx, "SELECT CAST($1::text AS "+pgTypeName[typ]+")",
		[][]byte{[]byte(in)}, []uint32{pgtype.TextOID}, []int16{pgtype.TextFormatCode}, []int16{pgtype.TextFormatCode}).Read()
}
