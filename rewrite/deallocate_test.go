package rewrite

import (
	"slices"
	"testing"
)

func TestReadDeallocations(t *testing.T) {
	for _, tc := range []struct {
		sql   string
		names []string
		whole bool
		all   bool
	}{
		{`DEALLOCATE _pg3_0`, []string{"_pg3_0"}, true, false},
		{`deallocate prepare "Mixed Case"`, []string{"Mixed Case"}, true, false},
		{`DEALLOCATE stmt;`, []string{"stmt"}, true, false},
		{`DEALLOCATE ALL`, nil, false, true},
		{`deallocate prepare all`, nil, false, true},
		{`BEGIN; DISCARD ALL; COMMIT`, nil, false, true},
		{`DEALLOCATE a; DEALLOCATE b`, []string{"a", "b"}, false, false},
		{`DISCARD PLANS`, nil, false, false},
		{`SELECT 'DEALLOCATE ALL'`, nil, false, false},
		{`DEALLOCATE ALL garbage (`, nil, false, true}, // does not parse: the safe side
		{`DEALLOCATE`, nil, false, true},
		{`select * from patients where id = 1`, nil, false, false},
	} {
		d := ReadDeallocations(tc.sql)
		if !slices.Equal(d.Names, tc.names) || d.Whole != tc.whole || d.All != tc.all {
			t.Errorf("ReadDeallocations(%q) = %+v; want names %q, whole %v, all %v", tc.sql, d, tc.names, tc.whole, tc.all)
		}
	}
	if got := DeallocateSQL(`pgcloak:s1"x`); got != `DEALLOCATE "pgcloak:s1""x"` {
		t.Errorf("DeallocateSQL = %s", got)
	}
}
