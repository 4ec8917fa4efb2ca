package coltype

import (
	"math"
	"math/big"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgerrcode"
)

// canonInt follows PostgreSQL 15's pg_strtoint16/32/64: optional spaces,
// an optional sign, decimal digits (leading zeros allowed), optional
// spaces. Overflow is reported as soon as the digits exceed the range, as
// PostgreSQL does, even if junk follows. (PostgreSQL 16's 0x/0o/0b prefixes
// and digit underscores are not accepted.)
func canonInt(bits uint, pgName string) func(string, *time.Location) (string, error) {
	limit := uint64(1) << (bits - 1) // magnitude of the minimum
	return func(s string, _ *time.Location) (string, error) {
		i := 0
		for i < len(s) && isSpace(s[i]) {
			i++
		}
		neg := false
		if i < len(s) && (s[i] == '-' || s[i] == '+') {
			neg = s[i] == '-'
			i++
		}
		if i >= len(s) || !isDigit(s[i]) {
			return "", syntaxError(pgName)
		}
		var mag uint64
		for ; i < len(s) && isDigit(s[i]); i++ {
			d := uint64(s[i] - '0')
			if mag > (limit-d)/10 {
				return "", outOfRange(pgName)
			}
			mag = mag*10 + d
		}
		for i < len(s) && isSpace(s[i]) {
			i++
		}
		if i != len(s) {
			return "", syntaxError(pgName)
		}
		if !neg && mag == limit {
			return "", outOfRange(pgName)
		}
		if neg {
			if mag == limit {
				return strconv.FormatInt(math.MinInt64>>(64-bits), 10), nil
			}
			return strconv.FormatInt(-int64(mag), 10), nil
		}
		return strconv.FormatUint(mag, 10), nil
	}
}

func outOfRange(pgName string) *Error {
	return newError(pgerrcode.NumericValueOutOfRange, "value is out of range for type "+pgName)
}

// Limits of numeric's storage format (PostgreSQL src/backend/utils/adt/
// numeric.c): a base-10000 weight that fits an int16 allows 131072 decimal
// digits before the point; the display scale is 14 bits.
const (
	numericMaxIntDigits = 131072
	numericMaxDscale    = 0x3FFF
	numericMaxExponent  = math.MaxInt32 / 2
)

var errNumericOverflow = newError(pgerrcode.NumericValueOutOfRange, "value overflows numeric format")

// canonNumeric follows PostgreSQL 15's numeric_in and set_var_from_str. The
// output keeps the input's display scale ("1.50" stays "1.50", "1.5e2" is
// "150", "1.50e1" is "15.0"), drops leading zeros and the sign of zero.
func canonNumeric(s string, _ *time.Location) (string, error) {
	s = trimLeftSpace(s)
	if out, rest, ok := numericSpecial(s); ok {
		if trimLeftSpace(rest) != "" {
			return "", syntaxError("numeric")
		}
		return out, nil
	}
	n, rest, err := parseDecimal(s)
	if err != nil {
		return "", err
	}
	if trimLeftSpace(rest) != "" {
		return "", syntaxError("numeric")
	}
	return n.String()
}

func trimLeftSpace(s string) string {
	for len(s) > 0 && isSpace(s[0]) {
		s = s[1:]
	}
	return s
}

// numericSpecial recognises NaN and the infinities at the start of s, in
// numeric_in's order, and returns the output and what follows.
func numericSpecial(s string) (out, rest string, ok bool) {
	for _, sp := range []struct{ in, out string }{
		{"nan", "NaN"},
		{"infinity", "Infinity"},
		{"+infinity", "Infinity"},
		{"-infinity", "-Infinity"},
		{"inf", "Infinity"},
		{"+inf", "Infinity"},
		{"-inf", "-Infinity"},
	} {
		if len(s) >= len(sp.in) && strings.EqualFold(s[:len(sp.in)], sp.in) {
			return sp.out, s[len(sp.in):], true
		}
	}
	return "", s, false
}

// decimal is a parsed finite numeric: digits with the decimal point after
// point of them (point may be negative or beyond len(digits)).
type decimal struct {
	neg    bool
	digits string // decimal digits, as written, without the point
	point  int
	dscale int
}

// parseDecimal parses set_var_from_str's grammar at the start of s and
// returns the rest.
func parseDecimal(s string) (decimal, string, error) {
	var d decimal
	i := 0
	if i < len(s) && (s[i] == '+' || s[i] == '-') {
		d.neg = s[i] == '-'
		i++
	}
	haveDP := false
	if i < len(s) && s[i] == '.' {
		haveDP = true
		i++
	}
	if i >= len(s) || !isDigit(s[i]) {
		return d, "", syntaxError("numeric")
	}
	var b strings.Builder
	point := -1
	if haveDP {
		point = 0
	}
	for ; i < len(s); i++ {
		c := s[i]
		if isDigit(c) {
			b.WriteByte(c)
			if haveDP {
				d.dscale++
			}
			continue
		}
		if c == '.' {
			if haveDP {
				return d, "", syntaxError("numeric")
			}
			haveDP = true
			point = b.Len()
			continue
		}
		break
	}
	d.digits = b.String()
	if point < 0 {
		point = len(d.digits)
	}
	d.point = point
	if i < len(s) && (s[i] == 'e' || s[i] == 'E') {
		// strtol: optional spaces, optional sign, digits.
		j := i + 1
		for j < len(s) && isSpace(s[j]) {
			j++
		}
		eneg := false
		if j < len(s) && (s[j] == '+' || s[j] == '-') {
			eneg = s[j] == '-'
			j++
		}
		if j >= len(s) || !isDigit(s[j]) {
			return d, "", syntaxError("numeric")
		}
		exp := 0
		for ; j < len(s) && isDigit(s[j]); j++ {
			if exp < numericMaxExponent { // saturate, like strtol's LONG_MAX
				exp = exp*10 + int(s[j]-'0')
			}
		}
		if exp >= numericMaxExponent {
			return d, "", errNumericOverflow
		}
		if eneg {
			exp = -exp
		}
		d.point += exp
		d.dscale = max(d.dscale-exp, 0)
		i = j
	}
	return d, s[i:], nil
}

// String formats d as numeric_out does, or fails when it does not fit
// numeric's storage format.
func (d decimal) String() (string, error) {
	if d.dscale > numericMaxDscale {
		return "", errNumericOverflow
	}
	digits, point := d.digits, d.point
	for len(digits) > 0 && digits[0] == '0' {
		digits = digits[1:]
		point--
	}
	zero := strings.Trim(digits, "0") == ""
	if !zero && point > numericMaxIntDigits {
		return "", errNumericOverflow
	}
	var b strings.Builder
	if d.neg && !zero {
		b.WriteByte('-')
	}
	// Integer part.
	switch {
	case zero || point <= 0:
		b.WriteByte('0')
	case point >= len(digits):
		b.WriteString(digits)
		b.WriteString(strings.Repeat("0", point-len(digits)))
	default:
		b.WriteString(digits[:point])
	}
	// Fraction: exactly dscale digits.
	if d.dscale > 0 {
		b.WriteByte('.')
		var frac string
		switch {
		case zero:
		case point <= 0:
			frac = strings.Repeat("0", -point) + digits
		case point < len(digits):
			frac = digits[point:]
		}
		if len(frac) >= d.dscale {
			frac = frac[:d.dscale] // only zeros are cut: dscale covers every written digit
		}
		b.WriteString(frac)
		b.WriteString(strings.Repeat("0", d.dscale-len(frac)))
	}
	return b.String(), nil
}

// canonFloat follows PostgreSQL 15's float4in/float8in (strtof/strtod plus
// its own NaN and Infinity spellings) and prints like float4out/float8out
// with extra_float_digits 1: the shortest text that reads back exactly,
// in fixed notation for decimal exponents from -4 up to 5 (real) or 14
// (double precision), else as 1.5e+20.
func canonFloat(bits int, pgName string) func(string, *time.Location) (string, error) {
	return func(s string, _ *time.Location) (string, error) {
		s = trimSpace(s)
		if s == "" {
			return "", syntaxError(pgName)
		}
		if out, rest, ok := numericSpecial(s); ok && rest == "" {
			return out, nil
		}
		// strtod reads the longest number it can; overflow or underflow of
		// that prefix is out of range even when junk follows. Hexadecimal
		// input is only taken whole, with a p exponent (strconv's rule).
		num := s
		if h := strings.TrimLeft(s, "+-"); len(s)-len(h) <= 1 && (strings.HasPrefix(h, "0x") || strings.HasPrefix(h, "0X")) {
			if strings.ContainsRune(s, '_') {
				return "", syntaxError(pgName)
			}
		} else {
			num = s[:floatPrefix(s)]
			if num == "" {
				return "", syntaxError(pgName)
			}
		}
		v, err := strconv.ParseFloat(num, bits)
		if err != nil {
			if ne, ok := err.(*strconv.NumError); ok && ne.Err == strconv.ErrRange {
				return "", outOfRange(pgName)
			}
			return "", syntaxError(pgName)
		}
		if v == 0 && hasNonzeroMantissa(num) {
			return "", outOfRange(pgName) // underflow, which strtod reports as ERANGE
		}
		if len(num) != len(s) {
			return "", syntaxError(pgName)
		}
		return formatFloat(v, bits), nil
	}
}

// floatPrefix returns the length of the longest prefix of s that is a
// decimal floating-point number as strtod reads it:
// [+-] (digits [. [digits]] | . digits) [(e|E) [+-] digits].
func floatPrefix(s string) int {
	i := 0
	if i < len(s) && (s[i] == '+' || s[i] == '-') {
		i++
	}
	n := 0
	for i < len(s) && isDigit(s[i]) {
		i++
		n++
	}
	if i < len(s) && s[i] == '.' {
		i++
		for i < len(s) && isDigit(s[i]) {
			i++
			n++
		}
	}
	if n == 0 {
		return 0
	}
	if i < len(s) && (s[i] == 'e' || s[i] == 'E') {
		j := i + 1
		if j < len(s) && (s[j] == '+' || s[j] == '-') {
			j++
		}
		if j < len(s) && isDigit(s[j]) {
			for j < len(s) && isDigit(s[j]) {
				j++
			}
			i = j
		}
	}
	return i
}

// hasNonzeroMantissa reports whether the mantissa of a float literal that
// strconv accepted has a digit other than zero.
func hasNonzeroMantissa(s string) bool {
	s = strings.TrimLeft(s, "+-")
	hex := len(s) > 1 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X')
	if hex {
		s = s[2:]
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case !hex && (c == 'e' || c == 'E'), hex && (c == 'p' || c == 'P'):
			return false
		case c >= '1' && c <= '9', hex && (c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'):
			return true
		}
	}
	return false
}

// formatFloat prints v like float8out (bits 64) or float4out (bits 32) with
// extra_float_digits 1: PostgreSQL's copy of Ryu finds the shortest
// decimal that lies strictly between v's rounding boundaries (it does not
// rely on the reader rounding ties to even, so 1e23 prints as
// 9.999999999999999e+22), in fixed notation for decimal exponents from -4
// up to 5 (real) or 14 (double precision), else as 1.5e+20.
func formatFloat(v float64, bits int) string {
	switch {
	case math.IsNaN(v):
		return "NaN"
	case math.IsInf(v, 1):
		return "Infinity"
	case math.IsInf(v, -1):
		return "-Infinity"
	case v == 0:
		if math.Signbit(v) {
			return "-0"
		}
		return "0"
	}
	digits, exp := shortestDecimal(v, bits)
	hi := 15 // DBL_DIG
	if bits == 32 {
		hi = 6 // FLT_DIG
	}
	var b strings.Builder
	if v < 0 {
		b.WriteByte('-')
	}
	switch {
	case exp >= -4 && exp < hi && exp >= len(digits)-1: // an integer
		b.WriteString(digits)
		b.WriteString(strings.Repeat("0", exp-len(digits)+1))
	case exp >= -4 && exp < hi && exp >= 0:
		b.WriteString(digits[:exp+1])
		b.WriteByte('.')
		b.WriteString(digits[exp+1:])
	case exp >= -4 && exp < hi:
		b.WriteString("0.")
		b.WriteString(strings.Repeat("0", -exp-1))
		b.WriteString(digits)
	default:
		b.WriteString(digits[:1])
		if len(digits) > 1 {
			b.WriteByte('.')
			b.WriteString(digits[1:])
		}
		b.WriteByte('e')
		if exp < 0 {
			b.WriteByte('-')
			exp = -exp
		} else {
			b.WriteByte('+')
		}
		if exp < 10 {
			b.WriteByte('0')
		}
		b.WriteString(strconv.Itoa(exp))
	}
	return b.String()
}

// shortestDecimal returns the significant digits (no trailing zeros) and
// the decimal exponent of the first digit of the shortest decimal strictly
// inside the rounding interval of |v|, the one nearest |v| if there are
// several (ties to an even last digit). v is finite and not zero.
func shortestDecimal(v float64, bits int) (string, int) {
	v = math.Abs(v)
	// The shortest round-trip text (inclusive bounds) is nearly always the
	// answer; it is not only when it sits exactly on a boundary.
	sci := strconv.FormatFloat(v, 'e', -1, bits)
	mant, expText, _ := strings.Cut(sci, "e")
	exp, _ := strconv.Atoi(expText)
	digits := strings.TrimRight(strings.Replace(mant, ".", "", 1), "0")
	lo, hi := roundingInterval(v, bits)
	if d := decimalRat(digits, exp); d.Cmp(lo) > 0 && d.Cmp(hi) < 0 {
		return digits, exp
	}
	// Search: for each length p, the integers k with lo < k*10^(exp-p+1) < hi.
	exact := new(big.Rat).SetFloat64(v)
	for p := 1; p <= 17; p++ {
		unit := pow10Rat(exp - p + 1)
		kmin := ratFloor(new(big.Rat).Quo(lo, unit))
		kmin.Add(kmin, big.NewInt(1))
		kmax := ratCeil(new(big.Rat).Quo(hi, unit))
		kmax.Sub(kmax, big.NewInt(1))
		if kmin.Cmp(kmax) > 0 {
			continue
		}
		k := ratRoundHalfEven(new(big.Rat).Quo(exact, unit))
		if k.Cmp(kmin) < 0 {
			k = kmin
		} else if k.Cmp(kmax) > 0 {
			k = kmax
		}
		ks := k.String()
		e := exp - p + len(ks) // the exponent of k's first digit
		return strings.TrimRight(ks, "0"), e
	}
	return digits, exp // unreachable: 17 digits always fit inside
}

// roundingInterval returns the open interval of reals that round to v (v
// positive, finite): halfway to each neighbour at bits precision. Above
// the largest finite value the neighbour is taken at the same distance as
// the one below.
func roundingInterval(v float64, bits int) (lo, hi *big.Rat) {
	var below, above float64
	if bits == 32 {
		below = float64(math.Nextafter32(float32(v), 0))
		above = float64(math.Nextafter32(float32(v), float32(math.Inf(1))))
	} else {
		below = math.Nextafter(v, 0)
		above = math.Nextafter(v, math.Inf(1))
	}
	x := new(big.Rat).SetFloat64(v)
	gapBelow := new(big.Rat).Sub(x, new(big.Rat).SetFloat64(below))
	gapAbove := gapBelow
	if !math.IsInf(above, 1) {
		gapAbove = new(big.Rat).Sub(new(big.Rat).SetFloat64(above), x)
	}
	half := big.NewRat(1, 2)
	lo = new(big.Rat).Sub(x, new(big.Rat).Mul(gapBelow, half))
	hi = new(big.Rat).Add(x, new(big.Rat).Mul(gapAbove, half))
	return lo, hi
}

func decimalRat(digits string, exp int) *big.Rat {
	k, _ := new(big.Int).SetString(digits, 10)
	r := new(big.Rat).SetInt(k)
	return r.Mul(r, pow10Rat(exp-len(digits)+1))
}

func pow10Rat(e int) *big.Rat {
	p := new(big.Int).Exp(big.NewInt(10), big.NewInt(int64(abs(e))), nil)
	if e >= 0 {
		return new(big.Rat).SetInt(p)
	}
	return new(big.Rat).SetFrac(big.NewInt(1), p)
}

func abs(x int) int {
	if x < 0 {
		return -x
	}
	return x
}

// ratFloor is floor(r): big.Int.Div is Euclidean, and a Rat's
// denominator is positive.
func ratFloor(r *big.Rat) *big.Int { return new(big.Int).Div(r.Num(), r.Denom()) }

func ratCeil(r *big.Rat) *big.Int {
	q, m := new(big.Int).DivMod(r.Num(), r.Denom(), new(big.Int))
	if m.Sign() != 0 {
		q.Add(q, big.NewInt(1))
	}
	return q
}

func ratRoundHalfEven(r *big.Rat) *big.Int {
	q := ratFloor(r)
	frac := new(big.Rat).Sub(r, new(big.Rat).SetInt(q))
	switch frac.Cmp(big.NewRat(1, 2)) {
	case 1:
		q.Add(q, big.NewInt(1))
	case 0:
		if q.Bit(0) == 1 {
			q.Add(q, big.NewInt(1))
		}
	}
	return q
}

// canonBool follows PostgreSQL's boolin: spaces trimmed, then any prefix
// of true, false, yes, no, "on", "of(f)", "1" or "0", in any case.
func canonBool(s string, _ *time.Location) (string, error) {
	s = trimSpace(s)
	prefixOf := func(word string) bool {
		return len(s) >= 1 && len(s) <= len(word) && strings.EqualFold(s, word[:len(s)])
	}
	if s != "" {
		switch s[0] {
		case 't', 'T':
			if prefixOf("true") {
				return "t", nil
			}
		case 'f', 'F':
			if prefixOf("false") {
				return "f", nil
			}
		case 'y', 'Y':
			if prefixOf("yes") {
				return "t", nil
			}
		case 'n', 'N':
			if prefixOf("no") {
				return "f", nil
			}
		case 'o', 'O':
			if strings.EqualFold(s, "on") {
				return "t", nil
			}
			if strings.EqualFold(s, "of") || strings.EqualFold(s, "off") {
				return "f", nil
			}
		case '1':
			if s == "1" {
				return "t", nil
			}
		case '0':
			if s == "0" {
				return "f", nil
			}
		}
	}
	return "", syntaxError("boolean")
}
