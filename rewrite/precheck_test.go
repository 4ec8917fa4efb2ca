package rewrite

import (
	"math/rand/v2"
	"strings"
	"testing"
)

func TestMightNeedAnalysis(t *testing.T) {
	s := testSchema(t)
	tests := []struct {
		sql  string
		want bool
	}{
		{"SELECT 1", false},
		{"SELECT * FROM visits WHERE id = $1", false},
		{"INSERT INTO visits (note, status) VALUES ('x', 'open')", false},
		{"UPDATE visits SET note = 'x' WHERE id = 7", false},
		{"BEGIN; SELECT now(); COMMIT", false},
		{"SELECT * FROM patients", true},
		{"select * from PATIENTS", true},
		{`SELECT * FROM "Patients"`, true},
		{"SELECT ssn_bidx FROM x", true},
		{"SELECT NUMBER_HMAC FROM x", true},
		{"SET app.tenant_id = 'x'", true},
		{`SET "app"."TENANT_ID" = 'x'`, true},
		{"SELECT set_config('a', 'b', false)", true},
		{"SELECT SeT_CoNfIg('a', 'b', false)", true},
		{"SET ROLE x", true},
		{"SET SESSION AUTHORIZATION x", true},
		{"RESET ALL", true},
		{"DISCARD ALL", true},
		{"UPDATE pg_settings SET setting = 'x'", true},
		{"SELECT query_to_xml('select 1', true, true, '')", true},
		{"SELECT ts_stat('select 1')", true},
		{`SELECT U&"d\0061t\+000061"`, true},
		{`SELECT E'\x41'`, true},
		{"SELECT 1\x00", true},
		{"select * from tokens", true},
		{"select * from cards", true},
	}
	for _, tt := range tests {
		if got := s.MightNeedAnalysis(tt.sql); got != tt.want {
			t.Errorf("MightNeedAnalysis(%q) = %v, want %v", tt.sql, got, tt.want)
		}
	}
}

// TestMightNeedAnalysisTokens checks that every token is found at the start,
// in the middle and at the end of a text, in either case.
func TestMightNeedAnalysisTokens(t *testing.T) {
	s := testSchema(t)
	for c := 0; c < 256; c++ {
		for _, tok := range s.byFirst[c] {
			for _, sql := range []string{tok, "x " + tok + " y", "x" + tok, asciiUpper(tok)} {
				if !s.MightNeedAnalysis(sql) {
					t.Errorf("MightNeedAnalysis(%q) = false, want true (token %q)", sql, tok)
				}
			}
			if len(tok) > 1 && s.MightNeedAnalysis(tok[:len(tok)-1]) && !hasOtherToken(s, tok[:len(tok)-1]) {
				t.Errorf("MightNeedAnalysis(%q) = true for a truncated token", tok[:len(tok)-1])
			}
		}
	}
}

func hasOtherToken(s *Schema, text string) bool {
	for c := 0; c < 256; c++ {
		for _, tok := range s.byFirst[c] {
			if ContainsFold(text, tok) {
				return true
			}
		}
	}
	return false
}

func asciiUpper(s string) string {
	b := []byte(s)
	for i, c := range b {
		if 'a' <= c && c <= 'z' {
			b[i] = c - 'a' + 'A'
		}
	}
	return string(b)
}

const passthroughQuery = `SELECT v.id, v.status, v.note, v.created_at FROM visits v JOIN doctors d ON d.id = v.doctor_id WHERE v.clinic_id = $1 AND v.created_at > $2 ORDER BY v.created_at DESC LIMIT 50`

// TestMightNeedAnalysisAllocs: the pre-check runs on every statement the
// proxy sees and must not allocate.
func TestMightNeedAnalysisAllocs(t *testing.T) {
	s := testSchema(t)
	for _, sql := range []string{passthroughQuery, "SELECT * FROM patients WHERE ssn = $1"} {
		if n := testing.AllocsPerRun(100, func() { s.MightNeedAnalysis(sql) }); n != 0 {
			t.Errorf("MightNeedAnalysis(%q) allocates %v times per run, want 0", sql, n)
		}
	}
}

// Numbers on the 2-vCPU dev container (go test -bench . -benchtime 3000x),
// first version:
//
//	BenchmarkMightNeedAnalysis   ~690 ns/op  255 MB/s   0 allocs/op  (passthroughQuery, 171 bytes)
//	BenchmarkAnalyze            ~230 µs/op  17.7 KB/op 454 allocs/op (two parses, one deparse, verification)
//	BenchmarkCached             ~150 ns/op   0 allocs/op
//
// Before the walkers looked oneofs up with WhichOneof, Analyze was ~530 µs/op
// (every Node walk tested ~250 oneof fields).
func BenchmarkMightNeedAnalysis(b *testing.B) {
	s := testSchema(b)
	b.ReportAllocs()
	b.SetBytes(int64(len(passthroughQuery)))
	for b.Loop() {
		if s.MightNeedAnalysis(passthroughQuery) {
			b.Fatal("passthrough query needs analysis")
		}
	}
}

func BenchmarkAnalyze(b *testing.B) {
	s := testSchema(b)
	const sql = "SELECT id, ssn FROM patients WHERE ssn = $1 AND id > $2"
	b.ReportAllocs()
	for b.Loop() {
		if _, err := s.Analyze(sql); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkCached(b *testing.B) {
	s := testSchema(b)
	c := NewCache(128)
	const sql = "SELECT id, ssn FROM patients WHERE ssn = $1 AND id > $2"
	b.ReportAllocs()
	for b.Loop() {
		if _, err := s.Cached(c, sql); err != nil {
			b.Fatal(err)
		}
	}
}

// TestContainsFold compares ContainsFold with lower-casing the ASCII letters
// of the text and searching it, on fixed and random texts.
func TestContainsFold(t *testing.T) {
	cases := []struct {
		text, tok string
		want      bool
	}{
		{"SELECT 1; COPY t FROM stdin", "copy", true},
		{"select * from CoPy_log", "copy", true},
		{"select 'cop'", "copy", false},
		{"cop", "copy", false},
		{"", "copy", false},
		{"x", "", true},
		{"SET pgcloak.TENANT_TOKEN = 'x'", "tenant_token", true},
		{"select '\u212Aey'", "key", false}, // the Kelvin sign is not k to PostgreSQL
		{"ccopy", "copy", true},
		{"COPCOPY", "copy", true},
	}
	for _, c := range cases {
		if got := ContainsFold(c.text, c.tok); got != c.want {
			t.Errorf("ContainsFold(%q, %q) = %v, want %v", c.text, c.tok, got, c.want)
		}
	}
	rng := rand.New(rand.NewPCG(1, 2))
	alphabet := "aAbBcC_ \u212a"
	for range 20000 {
		n := rng.IntN(12)
		var b strings.Builder
		for range n {
			b.WriteByte(alphabet[rng.IntN(len(alphabet))])
		}
		text := b.String()
		tok := []string{"ab", "abc", "cab", "a", "bb_c"}[rng.IntN(5)]
		if got, want := ContainsFold(text, tok), strings.Contains(asciiLower(text), tok); got != want {
			t.Fatalf("ContainsFold(%q, %q) = %v, want %v", text, tok, got, want)
		}
	}
}
