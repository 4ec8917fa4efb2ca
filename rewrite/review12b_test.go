package rewrite

import (
	"errors"
	"strings"
	"testing"
)

// Review 12B: quick reproductions at the analysis level (fixed in review 12;
// see review12_test.go).

// A numeric constant bound for the text column ssn is sealed or indexed as
// written ("1e3", "007.50", ".5", "-0.0"); PostgreSQL would convert it to
// numeric's output text first ("1000", "7.50", "0.5", "0.0").
func TestReview12BNumberConstantText(t *testing.T) {
	s := testSchema(t)
	for _, c := range []struct{ sql, pg string }{
		{`INSERT INTO patients (ssn) VALUES (1e3::text)`, "1000"},
		{`INSERT INTO patients (ssn) VALUES (1.5e1::varchar)`, "15"},
		{`INSERT INTO patients (ssn) VALUES (.5::text)`, "0.5"},
		{`INSERT INTO patients (ssn) VALUES (007.50)`, "7.50"},
		{`INSERT INTO patients (ssn) VALUES (-0.0)`, "0.0"},
		{`INSERT INTO patients (ssn) VALUES (0012345678901)`, "12345678901"},
		{`SELECT 1 FROM patients WHERE ssn = 1e3::text`, "1000"},
	} {
		plan, err := s.Analyze(c.sql)
		var r *Refusal
		if errors.As(err, &r) {
			continue
		}
		if err != nil {
			t.Fatalf("%s: %v", c.sql, err)
		}
		for _, sl := range plan.Slots {
			if sl.Value != nil && *sl.Value != c.pg {
				t.Errorf("%s: pgcloak seals/indexes %q; PostgreSQL's value is %q", c.sql, *sl.Value, c.pg)
				break
			}
		}
	}
}

// A qualifier that names no relation in scope is forwarded unrewritten,
// with its plaintext (PostgreSQL then refuses it, after logging it).
func TestReview12BUnresolvedQualifierPassthrough(t *testing.T) {
	s := testSchema(t)
	const secret = "S3CRET-12B"
	for _, sql := range []string{
		`SELECT id FROM patients AS "P" WHERE p.ssn = '` + secret + `'`,
		`SELECT id FROM patients AS pt WHERE patients.ssn = '` + secret + `'`,
		`SELECT 1 FROM patients p JOIN patients q USING (id) AS j WHERE j.ssn = '` + secret + `'`,
	} {
		plan, err := s.Analyze(sql)
		if err != nil {
			continue
		}
		if strings.Contains(strings.Join(plan.Segments, ""), secret) {
			t.Errorf("%s: forwarded with the plaintext (passthrough=%v)", sql, plan.Passthrough)
		}
	}
}
