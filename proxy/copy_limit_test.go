package proxy

import (
	"bytes"
	"testing"

	"github.com/pgcloak/pgcloak/rewrite"
)

// TestCopyRowBound: the proxy holds at most maxCopyRow bytes of a row it
// has not seen the end of, then refuses the COPY (54000); below that a row
// arrives in any number of pieces.
func TestCopyRowBound(t *testing.T) {
	for _, p := range []*rewrite.CopyPlan{
		{Format: rewrite.CopyText, Delimiter: '\t', Null: `\N`},
		{Format: rewrite.CopyCSV, Delimiter: ',', Quote: '"', Escape: '"'},
		{Format: rewrite.CopyBinary, Columns: []rewrite.ColumnRef{{}}}, // one plain column
	} {
		ci := &copyIn{plan: p, header: true}
		chunk := bytes.Repeat([]byte("a"), 1<<20)
		if p.Format == rewrite.CopyBinary {
			chunk[0], chunk[1], chunk[2], chunk[3], chunk[4], chunk[5] = 0, 1, 0x7f, 0xff, 0xff, 0xff // one field of 2 GiB
		}
		var err error
		for i := 0; i <= maxCopyRow>>20 && err == nil; i++ {
			_, err = ci.feed(nil, chunk, false)
			if p.Format == rewrite.CopyBinary {
				chunk = bytes.Repeat([]byte("a"), 1<<20)
			}
		}
		if err != errCopyRowTooLong {
			t.Errorf("format %v: after %d MiB without a row's end: %v, want %v", p.Format, maxCopyRow>>20+1, err, errCopyRowTooLong)
		}
		if len(ci.buf) > maxCopyRow+1<<20 {
			t.Errorf("format %v: holds %d bytes", p.Format, len(ci.buf))
		}
	}
}
