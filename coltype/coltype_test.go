package coltype

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/pgcloak/pgcloak/config"
)

func caseName(c canonCase) string {
	in := c.in
	if len(in) > 40 {
		in = in[:40] + "..."
	}
	return fmt.Sprintf("%s/%q", c.typ, in)
}

func TestCanonical(t *testing.T) {
	for _, c := range canonCases {
		t.Run(caseName(c), func(t *testing.T) {
			got, err := Canonical(c.typ, c.in)
			if c.code == "" {
				if err != nil || got != c.want {
					t.Fatalf("got %q, %v, want %q, nil", got, err, c.want)
				}
				return
			}
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("got %q, %v, want an *Error with SQLSTATE %s", got, err, c.code)
			}
			if e.Code != c.code || e.SQLState() != c.code {
				t.Errorf("SQLSTATE: got %s (%s), want %s", e.Code, e.Message, c.code)
			}
			if got != "" {
				t.Errorf("value with an error: got %q, want \"\"", got)
			}
		})
	}
}

// TestCanonicalIsIdempotent: the canonical text is itself valid input
// whose canonical text it is, so values sealed today canonicalise the same
// when re-read and re-written.
func TestCanonicalIsIdempotent(t *testing.T) {
	for _, c := range canonCases {
		if c.code != "" {
			continue
		}
		again, err := Canonical(c.typ, c.want)
		if err != nil || again != c.want {
			t.Errorf("%s: Canonical(%q) = %q, %v; want it unchanged", caseName(c), c.want, again, err)
		}
	}
}

// TestErrorsDoNotQuoteValues: values are plaintext; no error may carry one.
func TestErrorsDoNotQuoteValues(t *testing.T) {
	secret := "SECRET-4111-1111"
	inputs := map[string]string{
		"int4": secret, "int8": "9" + secret, "numeric": secret, "float8": secret,
		"bool": secret, "date": secret, "timestamp": "2024-01-01 " + secret,
		"timestamptz": "2024-01-01 10:00 " + secret, "uuid": secret, "json": secret,
		"jsonb": `{"` + secret + `":}`, "bytea": `\x` + secret, "text": secret + "\xff",
	}
	for typ, in := range inputs {
		_, err := Canonical(typ, in)
		if err == nil {
			t.Errorf("%s: got nil error for %q", typ, in)
			continue
		}
		if strings.Contains(err.Error(), "SECRET") || strings.Contains(err.Error(), "4111") {
			t.Errorf("%s: error %q quotes the value", typ, err)
		}
	}
}

func TestCanonicalInZone(t *testing.T) {
	berlin, err := time.LoadLocation("Europe/Berlin")
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct{ in, want string }{
		{"2024-02-29 13:14:15", "2024-02-29 12:14:15+00"},     // CET
		{"2024-07-01 13:14:15", "2024-07-01 11:14:15+00"},     // CEST
		{"2024-07-01 13:14:15+00", "2024-07-01 13:14:15+00"},  // an explicit zone wins
		{"2024-07-01 13:14:15 UTC", "2024-07-01 13:14:15+00"}, // so does a named one
		{"2024-07-01", "2024-06-30 22:00:00+00"},              // midnight in the session zone
		{"infinity", "infinity"},                              // unaffected
		{"2024-07-01 13:14:15 America/New_York", "2024-07-01 17:14:15+00"},
	}
	for _, c := range cases {
		got, err := CanonicalInZone("timestamptz", c.in, berlin)
		if err != nil || got != c.want {
			t.Errorf("%q in Europe/Berlin: got %q, %v, want %q", c.in, got, err, c.want)
		}
	}
	// Other types ignore the session zone.
	if got, _ := CanonicalInZone("timestamp", "2024-07-01 13:14:15", berlin); got != "2024-07-01 13:14:15" {
		t.Errorf("timestamp in Europe/Berlin: got %q, want it unchanged", got)
	}
	if got, _ := CanonicalInZone("timestamptz", "2024-07-01 13:14:15", nil); got != "2024-07-01 13:14:15+00" {
		t.Errorf("nil zone: got %q, want UTC", got)
	}
}

func TestOID(t *testing.T) {
	want := map[string]uint32{
		"text": pgtype.TextOID, "varchar": pgtype.VarcharOID, "bpchar": pgtype.BPCharOID,
		"int2": 21, "int4": 23, "int8": 20, "numeric": 1700, "float4": 700, "float8": 701,
		"bool": 16, "date": 1082, "timestamp": 1114, "timestamptz": 1184, "uuid": 2950,
		"json": 114, "jsonb": 3802, "bytea": 17,
	}
	for typ, oid := range want {
		if got := OID(typ); got != oid {
			t.Errorf("OID(%q): got %d, want %d", typ, got, oid)
		}
	}
	if got := OID("money"); got != 0 {
		t.Errorf("OID(money): got %d, want 0", got)
	}
	if _, err := Canonical("money", "1"); err == nil {
		t.Error("Canonical(money): got nil error, want one")
	}
}

// TestTypesMatchConfig keeps the declared types in step with config.
func TestTypesMatchConfig(t *testing.T) {
	if !slices.Equal(Types(), config.SupportedTypes) {
		t.Errorf("Types(): got %v, want config.SupportedTypes %v", Types(), config.SupportedTypes)
	}
	for _, typ := range Types() {
		if !Supported(typ) || OID(typ) == 0 {
			t.Errorf("%s: Supported %v, OID %d", typ, Supported(typ), OID(typ))
		}
	}
	if len(types) != len(Types()) {
		t.Errorf("types table has %d entries, Types() %d", len(types), len(Types()))
	}
}

func TestJSONDepth(t *testing.T) {
	deep := strings.Repeat("[", maxJSONDepth) + strings.Repeat("]", maxJSONDepth)
	for _, typ := range []string{"json", "jsonb"} {
		if _, err := Canonical(typ, deep); err != nil {
			t.Errorf("%s nested %d deep: got %v, want nil", typ, maxJSONDepth, err)
		}
		var e *Error
		if _, err := Canonical(typ, "["+deep+"]"); !errors.As(err, &e) || e.Code != "54001" {
			t.Errorf("%s nested %d deep: got %v, want SQLSTATE 54001", typ, maxJSONDepth+1, err)
		}
	}
}

// FuzzCanonical: no input panics, every error is an *Error, and every
// canonical text is a fixed point.
func FuzzCanonical(f *testing.F) {
	for _, c := range canonCases {
		f.Add(c.typ, c.in)
	}
	f.Fuzz(func(t *testing.T, typ, in string) {
		if !Supported(typ) {
			typ = Types()[len(typ)%len(Types())]
		}
		out, err := Canonical(typ, in)
		if err != nil {
			var e *Error
			if !errors.As(err, &e) || e.Code == "" || e.Message == "" {
				t.Fatalf("Canonical(%s, %q): got %v, want an *Error", typ, in, err)
			}
			return
		}
		again, err := Canonical(typ, out)
		if err != nil || again != out {
			t.Fatalf("Canonical(%s, %q) = %q, which canonicalises to %q, %v", typ, in, out, again, err)
		}
	})
}
