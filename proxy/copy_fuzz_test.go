package proxy

import (
	"testing"

	"github.com/pgcloak/pgcloak/rewrite"
)

// FuzzCopyParsers feeds arbitrary bytes to the COPY row parsers of every
// format: they must never panic, and a row they find must lie inside the
// input.
func FuzzCopyParsers(f *testing.F) {
	for _, seed := range []string{
		"1\ta\\tb\t\\N\n2\tx\n", "a,\"b,\"\"c\"\"\n d\",\n", "\\.\n", "\\", "\"", "\\x4",
		"PGCOPY\n\xff\r\n\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x00\x00\x01a\xff\xff\xff\xff\xff\xff",
	} {
		f.Add([]byte(seed))
	}
	plans := []*rewrite.CopyPlan{
		{Format: rewrite.CopyText, Delimiter: '\t', Null: `\N`},
		{Format: rewrite.CopyCSV, Delimiter: ',', Quote: '"', Escape: '"'},
		{Format: rewrite.CopyCSV, Delimiter: ';', Quote: '\'', Escape: '\\', Null: "NULL"},
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, p := range plans {
			rest := data
			for len(rest) > 0 {
				n, eol, ok, _, err := nextRow(p, rest, rowScan{})
				// Read in two pieces, as two CopyData messages bring it,
				// the first row is found where it is in one piece.
				for k := 0; k <= len(rest); k += 1 + len(rest)/7 {
					n1, eol1, ok1, next, err1 := nextRow(p, rest[:k], rowScan{})
					if err1 == nil && !ok1 {
						n1, eol1, ok1, _, err1 = nextRow(p, rest, next)
					}
					if (err1 == nil) != (err == nil) || (err == nil && (n1 != n || eol1 != eol || ok1 != ok)) {
						t.Fatalf("%q split at %d: row %d+%d %v %v, in one piece %d+%d %v %v", rest, k, n1, eol1, ok1, err1, n, eol, ok, err)
					}
				}
				if err != nil {
					break
				}
				if !ok {
					n, eol = len(rest), 0
				}
				if n+eol > len(rest) || n < 0 {
					t.Fatalf("row %d+%d beyond %d bytes", n, eol, len(rest))
				}
				for _, fl := range splitFields(p, rest[:n]) {
					decodeField(p, fl)
				}
				if n+eol == 0 {
					break
				}
				rest = rest[n+eol:]
			}
		}
		rest := data
		for {
			tuple, n, ok := nextTuple(rest)
			if !ok || tuple == nil {
				break
			}
			if n <= 0 || n > len(rest) {
				t.Fatalf("tuple of %d bytes in %d", n, len(rest))
			}
			rest = rest[n:]
		}
	})
}
