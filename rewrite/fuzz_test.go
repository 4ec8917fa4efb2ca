package rewrite

import (
	"errors"
	"testing"

	"github.com/jackc/pgerrcode"
)

// FuzzRewrite feeds arbitrary SQL to Analyze, seeded from the golden files:
// no panic; a refusal is a complete *Refusal; every accepted plan keeps the
// checkPlan invariants (its output parses, no slot value left in Segments,
// no constant reaching a declared column); and a text MightNeedAnalysis
// waves through is one Analyze would have passed through unchanged (or,
// for MightNeedTenantAnalysis, one whose only finding is Plan.Opaque).
func FuzzRewrite(f *testing.F) {
	s := testSchema(f)
	for _, file := range goldenFiles(f) {
		for _, c := range loadCases(f, file) {
			f.Add(c.SQL)
		}
	}
	f.Fuzz(func(t *testing.T, sql string) {
		plan, err := s.Analyze(sql)
		if err != nil {
			var r *Refusal
			if !errors.As(err, &r) {
				t.Fatalf("Analyze error %T is not a *Refusal: %v", err, err)
			}
			if r.Code == "" || r.Message == "" || r.Construct == "" || r.kind == nil {
				t.Fatalf("incomplete refusal %+v", r)
			}
			if r.Position < 0 {
				t.Fatalf("negative position %d", r.Position)
			}
			// Texts PostgreSQL rejects by itself may skip analysis.
			harmless := r.Code == pgerrcode.SyntaxError || r.Code == pgerrcode.UndefinedParameter
			if !harmless && !s.MightNeedAnalysis(sql) {
				t.Fatalf("MightNeedAnalysis = false for a text Analyze refuses: %v", r)
			}
			return
		}
		checkPlan(t, s, sql, plan)
		if !plan.Passthrough && !s.MightNeedTenantAnalysis(sql) {
			t.Fatalf("MightNeedTenantAnalysis = false for a text that needs a plan")
		}
		if !plan.Passthrough && !opaqueOnly(sql, plan, nil) && !s.MightNeedAnalysis(sql) {
			t.Fatalf("MightNeedAnalysis = false for a text that needs a plan in every session")
		}
	})
}
