package rewrite

import (
	"errors"
	"testing"

	"github.com/pgcloak/pgcloak/config"
)

// TestSplitFailsClosed: when the deparsed text does not carry every slot
// marker exactly once, the statement is refused rather than sent.
func TestSplitFailsClosed(t *testing.T) {
	col := &config.Column{Name: "ssn", Search: config.SearchEquality, IndexColumn: "ssn_bidx"}
	ref := ColumnRef{Schema: "public", Table: "patients", Column: col}
	newAnalyzer := func() *analyzer {
		a := &analyzer{s: &Schema{}, sql: "irrelevant", plan: &Plan{}, prefix: "pgcloak_test_"}
		a.slot(SlotData, ref, "secret")
		a.slot(SlotIndex, ref, "secret")
		return a
	}
	tests := []struct {
		name, text string
		ok         bool
	}{
		{"both markers", "INSERT INTO t (a, b) VALUES ('pgcloak_test_0', 'pgcloak_test_1')", true},
		{"missing marker", "INSERT INTO t (a) VALUES ('pgcloak_test_0')", false},
		{"duplicated marker", "VALUES ('pgcloak_test_0', 'pgcloak_test_1', 'pgcloak_test_1')", false},
		{"unknown marker", "VALUES ('pgcloak_test_0', 'pgcloak_test_1', 'pgcloak_test_2')", false},
		{"malformed marker", "VALUES ('pgcloak_test_0', 'pgcloak_test_1x')", false},
		{"marker in another form", "VALUES ('pgcloak_test_0', 'pgcloak_test_1', E'pgcloak_test_\\\\')", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := newAnalyzer()
			err := a.split(tt.text)
			if tt.ok {
				if err != nil {
					t.Fatalf("split: %v", err)
				}
				if got := len(a.plan.Segments); got != 3 {
					t.Fatalf("got %d segments, want 3", got)
				}
				return
			}
			var r *Refusal
			if !errors.As(err, &r) || r.kind != kindRewriteFailed {
				t.Fatalf("split = %v, want a %s refusal", err, kindRewriteFailed.id)
			}
		})
	}
}
