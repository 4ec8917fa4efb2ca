package rewrite

import "testing"

func TestDeallocation(t *testing.T) {
	for _, tc := range []struct {
		sql  string
		name string
		ok   bool
	}{
		{`DEALLOCATE _pg3_0`, "_pg3_0", true},
		{`deallocate prepare "Mixed Case"`, "Mixed Case", true},
		{`DEALLOCATE stmt;`, "stmt", true},
		{`DEALLOCATE ALL`, "", false},
		{`DEALLOCATE a; DEALLOCATE b`, "", false},
		{`SELECT 'DEALLOCATE a'`, "", false},
		{`DEALLOCATE`, "", false},
	} {
		name, ok := Deallocation(tc.sql)
		if name != tc.name || ok != tc.ok {
			t.Errorf("Deallocation(%q) = %q, %v; want %q, %v", tc.sql, name, ok, tc.name, tc.ok)
		}
	}
	if got := DeallocateSQL(`pgcloak:s1"x`); got != `DEALLOCATE "pgcloak:s1""x"` {
		t.Errorf("DeallocateSQL = %s", got)
	}
}

func TestDropsAllStatements(t *testing.T) {
	for sql, want := range map[string]bool{
		`DEALLOCATE ALL`:                      true,
		`deallocate prepare all`:              true,
		`BEGIN; DISCARD ALL; COMMIT`:          true,
		`DEALLOCATE _pg3_0`:                   false,
		`DISCARD PLANS`:                       false,
		`SELECT 'DEALLOCATE ALL'`:             false,
		`DEALLOCATE ALL garbage (`:            true, // does not parse: the safe side
		`select * from patients where id = 1`: false,
	} {
		if got := DropsAllStatements(sql); got != want {
			t.Errorf("DropsAllStatements(%q) = %v, want %v", sql, got, want)
		}
	}
}
