package coltype

import (
	"math"
	"math/rand/v2"
	"strconv"
	"strings"
)

// genInput returns a random, often malformed, input for typ: near misses
// of the accepted grammar rather than uniform noise, so that the
// differential test explores the edges.
func genInput(r *rand.Rand, typ string) string {
	switch typ {
	case "int2", "int4", "int8":
		if r.IntN(2) == 0 {
			return pick(r, "", " ", "+", "-") + randDigits(r, 0, 21) + pick(r, "", " ", "x", "\t")
		}
		return randString(r, " +-0123456789x_.", 0, 22)
	case "numeric":
		if r.IntN(2) == 0 {
			return pick(r, "", " ", "+", "-") + randDigits(r, 0, 5) + pick(r, "", ".") + randDigits(r, 0, 5) +
				pick(r, "", "e", "E", "e-", "e+", "e ") + randDigits(r, 0, 3) + pick(r, "", " ", "x")
		}
		return randString(r, " +-.0123456789eEnaNIif", 0, 12)
	case "float4", "float8":
		switch r.IntN(3) {
		case 0:
			return pick(r, "", " ", "+", "-") + randDigits(r, 0, 20) + pick(r, "", ".") + randDigits(r, 0, 12) +
				pick(r, "", "e", "E", "e-", "e+") + randDigits(r, 0, 3) + pick(r, "", " ", "x")
		case 1:
			bits := 64
			f := math.Float64frombits(r.Uint64())
			if typ == "float4" {
				bits, f = 32, float64(math.Float32frombits(r.Uint32()))
			}
			return strconv.FormatFloat(f, pick(r, "e", "g")[0], r.IntN(18)-1, bits)
		default:
			return randString(r, " +-.0123456789eEnaNIifxp", 0, 12)
		}
	case "bool":
		return randString(r, "tTrRuUeEfFaAlLsSyYnNoO01 ", 0, 6)
	case "date", "timestamp", "timestamptz":
		s := pick(r, "", " ") + pick(r, randDigits(r, 1, 8), "2024", "1999", "0044", "4714", "294276", "5874897") +
			pick(r, "-", "-", "/", "") + randDigits(r, 1, 3) + pick(r, "-", "-", "") + randDigits(r, 1, 3)
		if r.IntN(3) > 0 {
			s += pick(r, " ", "T", "  ", "t") + randDigits(r, 1, 2) + pick(r, ":", ":", ".") + randDigits(r, 1, 3)
			if r.IntN(3) > 0 {
				s += ":" + randDigits(r, 1, 2)
				if r.IntN(2) > 0 {
					s += "." + randDigits(r, 0, 9)
				}
			}
		}
		if r.IntN(2) > 0 {
			s += pick(r, "", " ") + pick(r, "Z", "UTC", "+", "-", "+05", "-0800", "+05:30", "+15:59:59", "+16",
				"+5", "+530", "Europe/Berlin", "gmt", "z", "+"+randDigits(r, 1, 7), "-"+randDigits(r, 1, 2)+":"+randDigits(r, 1, 3))
		}
		if r.IntN(4) == 0 {
			s += pick(r, " BC", " AD", "BC", " bc")
		}
		return s + pick(r, "", " ")
	case "uuid":
		return pick(r, "", "{") + randString(r, "0123456789abcdefABCDEF-g", 28, 40) + pick(r, "", "}", " ")
	case "json", "jsonb":
		return genJSON(r, 0)
	case "bytea":
		if r.IntN(2) == 0 {
			return `\x` + randString(r, "0123456789abcdefABg \n", 0, 9)
		}
		return randString(r, `ab\\01237X`, 0, 9)
	default: // the text types take anything valid
		return randString(r, "aé😀 \t\\'\"", 0, 8)
	}
}

func genJSON(r *rand.Rand, depth int) string {
	ws := func() string { return pick(r, "", "", " ", "\n", "\t", "  ") }
	if r.IntN(20) == 0 {
		return randString(r, `{}[]":,1-0.eE tfnul\`, 0, 8)
	}
	k := r.IntN(8)
	if depth > 3 {
		k = r.IntN(4)
	}
	switch k {
	case 0:
		return ws() + pick(r, "-", "") + pick(r, "0", randDigits(r, 1, 4), "01") + pick(r, "", "."+randDigits(r, 0, 3)) +
			pick(r, "", "e"+pick(r, "", "+", "-")+randDigits(r, 0, 2), "E5") + ws()
	case 1:
		return ws() + pick(r, "true", "false", "null", "nul", "True") + ws()
	case 2, 3:
		return ws() + `"` + pick(r, "", "a", "é", "😀", `\u00e9`, `\u0000`, `\ud83d\ude00`, `\ud83d`, `\ude00`, `\n`,
			`\/`, `\q`, "\t", `\u001f`, `\"`) + pick(r, "", "b", `\\`) + `"` + ws()
	case 4, 5:
		parts := make([]string, r.IntN(4))
		for i := range parts {
			parts[i] = genJSON(r, depth+1)
		}
		return ws() + "[" + strings.Join(parts, pick(r, ",", ",", ", ", ",,")) + pick(r, "]", "]", ",]") + ws()
	default:
		parts := make([]string, r.IntN(4))
		for i := range parts {
			parts[i] = ws() + `"` + pick(r, "a", "b", "aa", "é", "", "ab", "ba") + `"` + ws() + pick(r, ":", ":", "") + genJSON(r, depth+1)
		}
		return ws() + "{" + strings.Join(parts, ",") + "}" + ws()
	}
}

func pick(r *rand.Rand, xs ...string) string { return xs[r.IntN(len(xs))] }

func randDigits(r *rand.Rand, lo, hi int) string { return randString(r, "0123456789", lo, hi) }

func randString(r *rand.Rand, alphabet string, lo, hi int) string {
	runes := []rune(alphabet)
	var b strings.Builder
	for range lo + r.IntN(hi-lo+1) {
		b.WriteRune(runes[r.IntN(len(runes))])
	}
	return b.String()
}
