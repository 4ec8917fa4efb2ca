package proxy

import (
	"encoding/binary"
	"errors"
	"strconv"
	"strings"
)

// Values pgcloak must read exactly as PostgreSQL does, because it turns
// them into blind indexes or ciphertext that PostgreSQL then compares or
// stores: an array parameter of col = ANY($n) or an array literal of
// col = ANY('{...}'), and a numeric in binary form. pgtype's codecs are made
// for Go values, not for agreeing with array_in and numeric_recv to the
// byte (pgtype reads `{ a , b }` with its spaces, `{nUlL}` as a string,
// and a binary 0.0 as 0), and a value read otherwise than PostgreSQL reads
// it is a silently missed row or silently changed data.

// errMalformedArray is PostgreSQL's "malformed array literal" (22P02).
var errMalformedArray = errors.New("malformed array literal")

// errArrayBounds refuses an array literal with explicit bounds
// ("[1:2]={a,b}"), which pgcloak does not read.
var errArrayBounds = errors.New("array literals with explicit bounds are not supported")

// arrayElem is one element of an array: its text, or NULL.
type arrayElem struct {
	text string
	null bool
}

// arrayTextElements returns the elements of an array in PostgreSQL's text
// form, in order, flattened, as array_in (PostgreSQL 15's ReadArrayStr and
// ArrayCount) reads them: an element is quoted ("..." with backslash
// escapes, and whitespace around it) or unquoted (backslash escapes, no
// quotes or braces, leading and trailing unescaped whitespace dropped,
// NULL in any case and without escapes is NULL); sub-arrays must have
// matching dimensions. Anything else is errMalformedArray.
func arrayTextElements(s string) ([]arrayElem, error) {
	p := arrayParser{s: s}
	p.space()
	if p.i < len(s) && s[p.i] == '[' {
		return nil, errArrayBounds
	}
	if err := p.array(0); err != nil {
		return nil, err
	}
	p.space()
	if p.i != len(s) {
		return nil, errMalformedArray
	}
	return p.elems, nil
}

type arrayParser struct {
	s     string
	i     int
	elems []arrayElem
	// items[d] is how many items every sub-array at depth d has (-1: none
	// seen yet); leaf is the depth of scalar elements (-1: none yet).
	items []int
	leaf  int
	begun bool
}

// arraySpace is array_isspace.
func arraySpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'
}

func (p *arrayParser) space() {
	for p.i < len(p.s) && arraySpace(p.s[p.i]) {
		p.i++
	}
}

// array reads one {...} at depth d.
func (p *arrayParser) array(d int) error {
	if !p.begun {
		p.begun, p.leaf = true, -1
	}
	if d >= 6 || p.i >= len(p.s) || p.s[p.i] != '{' { // MAXDIM
		return errMalformedArray
	}
	p.i++
	for len(p.items) <= d {
		p.items = append(p.items, -1)
	}
	n := 0
	p.space()
	if p.i < len(p.s) && p.s[p.i] == '}' {
		p.i++
		if d > 0 {
			return errMalformedArray // {{},{}}: PostgreSQL refuses empty sub-arrays
		}
		return nil
	}
	for {
		p.space()
		if p.i >= len(p.s) {
			return errMalformedArray
		}
		if p.s[p.i] == '{' {
			if p.leaf >= 0 && p.leaf <= d {
				return errMalformedArray
			}
			if err := p.array(d + 1); err != nil {
				return err
			}
		} else {
			if p.leaf >= 0 && p.leaf != d {
				return errMalformedArray
			}
			p.leaf = d
			e, err := p.element()
			if err != nil {
				return err
			}
			p.elems = append(p.elems, e)
		}
		n++
		p.space()
		if p.i >= len(p.s) {
			return errMalformedArray
		}
		switch p.s[p.i] {
		case ',':
			p.i++
			continue
		case '}':
			p.i++
			if p.items[d] >= 0 && p.items[d] != n {
				return errMalformedArray // sub-arrays of different lengths
			}
			p.items[d] = n
			return nil
		}
		return errMalformedArray
	}
}

// element reads one element, after its leading whitespace.
func (p *arrayParser) element() (arrayElem, error) {
	var b strings.Builder
	s := p.s
	if s[p.i] == '"' {
		p.i++
		for {
			if p.i >= len(s) {
				return arrayElem{}, errMalformedArray
			}
			switch c := s[p.i]; c {
			case '"':
				p.i++
				return arrayElem{text: b.String()}, nil
			case '\\':
				if p.i+1 >= len(s) {
					return arrayElem{}, errMalformedArray
				}
				b.WriteByte(s[p.i+1])
				p.i += 2
			default:
				b.WriteByte(c)
				p.i++
			}
		}
	}
	end, escaped := 0, false // end: b's length up to its last significant byte
	for p.i < len(s) {
		switch c := s[p.i]; {
		case c == ',' || c == '}':
			if end == 0 && !escaped {
				return arrayElem{}, errMalformedArray // an empty unquoted element
			}
			text := b.String()[:end]
			if !escaped && strings.EqualFold(text, "NULL") {
				return arrayElem{null: true}, nil
			}
			return arrayElem{text: text}, nil
		case c == '"' || c == '{':
			return arrayElem{}, errMalformedArray
		case c == '\\':
			if p.i+1 >= len(s) {
				return arrayElem{}, errMalformedArray
			}
			b.WriteByte(s[p.i+1])
			p.i += 2
			end, escaped = b.Len(), true
		case arraySpace(c):
			b.WriteByte(c)
			p.i++
		default:
			b.WriteByte(c)
			p.i++
			end = b.Len()
		}
	}
	return arrayElem{}, errMalformedArray
}

// arrayBinaryElements returns the elements of an array in PostgreSQL's
// binary form (array_recv): header, dimensions, then each element's
// length (-1: NULL) and bytes, flattened. The element type must be elem.
func arrayBinaryElements(v []byte, elem uint32) ([][]byte, []bool, error) {
	bad := errors.New("incorrect binary data format in an array parameter")
	if len(v) < 12 {
		return nil, nil, bad
	}
	ndim := int32(binary.BigEndian.Uint32(v))
	flags := int32(binary.BigEndian.Uint32(v[4:]))
	if ndim < 0 || ndim > 6 || (flags != 0 && flags != 1) {
		return nil, nil, bad
	}
	if got := binary.BigEndian.Uint32(v[8:]); got != elem {
		return nil, nil, errors.New("binary array of element type " + strconv.FormatUint(uint64(got), 10) + " instead of " + strconv.FormatUint(uint64(elem), 10))
	}
	v = v[12:]
	if len(v) < 8*int(ndim) {
		return nil, nil, bad
	}
	total := int64(0)
	if ndim > 0 {
		total = 1
	}
	for d := 0; d < int(ndim); d++ {
		n := int32(binary.BigEndian.Uint32(v[8*d:]))
		if n < 0 {
			return nil, nil, bad
		}
		total *= int64(n)
		if total > int64(len(v)) { // every element takes at least 4 bytes
			return nil, nil, bad
		}
	}
	v = v[8*ndim:]
	vals := make([][]byte, 0, total)
	nulls := make([]bool, 0, total)
	for k := int64(0); k < total; k++ {
		if len(v) < 4 {
			return nil, nil, bad
		}
		n := int32(binary.BigEndian.Uint32(v))
		v = v[4:]
		if n == -1 {
			vals, nulls = append(vals, nil), append(nulls, true)
			continue
		}
		if n < 0 || int(n) > len(v) {
			return nil, nil, bad
		}
		vals, nulls = append(vals, v[:n]), append(nulls, false)
		v = v[n:]
	}
	if len(v) != 0 {
		return nil, nil, bad
	}
	return vals, nulls, nil
}

// numericBinaryText is numeric_recv then numeric_out: a numeric in binary
// form (ndigits, weight, sign, dscale, then base-10000 digits) as the text
// PostgreSQL would store and print for it: digits past dscale dropped
// (trunc_var), leading and trailing zero digits stripped (make_result),
// exactly dscale digits after the point, so 0.0 stays 0.0.
func numericBinaryText(v []byte) (string, error) {
	if len(v) < 8 {
		return "", errors.New("invalid numeric in binary form")
	}
	ndigits := int(binary.BigEndian.Uint16(v))
	weight := int(int16(binary.BigEndian.Uint16(v[2:])))
	sign := binary.BigEndian.Uint16(v[4:])
	dscale := int(binary.BigEndian.Uint16(v[6:]))
	if len(v) != 8+2*ndigits {
		return "", errors.New("invalid numeric in binary form")
	}
	switch sign {
	case 0x0000, 0x4000, 0xC000, 0xD000, 0xF000:
	default:
		return "", errors.New(`invalid sign in external "numeric" value`)
	}
	if dscale > 0x3FFF {
		return "", errors.New(`invalid scale in external "numeric" value`)
	}
	digits := make([]int, ndigits)
	for k := range digits {
		d := int(int16(binary.BigEndian.Uint16(v[8+2*k:])))
		if d < 0 || d >= 10000 {
			return "", errors.New(`invalid digit in external "numeric" value`)
		}
		digits[k] = d
	}
	switch sign {
	case 0xC000:
		return "NaN", nil
	case 0xD000:
		return "Infinity", nil
	case 0xF000:
		return "-Infinity", nil
	}
	// trunc_var: keep the digits down to 10^-dscale; the last kept group
	// loses its decimal digits below that.
	if keep := weight + 1 + (dscale+3)/4; keep <= len(digits) {
		if keep <= 0 {
			digits = nil
		} else {
			digits = digits[:keep]
			if r := dscale % 4; r != 0 {
				p := [...]int{1, 1000, 100, 10}[r]
				digits[keep-1] -= digits[keep-1] % p
			}
		}
	}
	// strip_var: no zero digits at either end; zero has weight 0.
	for len(digits) > 0 && digits[0] == 0 {
		digits = digits[1:]
		weight--
	}
	for len(digits) > 0 && digits[len(digits)-1] == 0 {
		digits = digits[:len(digits)-1]
	}
	if len(digits) == 0 {
		weight, sign = 0, 0
	}
	digit := func(k int) int { // the base-10000 digit of weight weight-k
		if k < 0 || k >= len(digits) {
			return 0
		}
		return digits[k]
	}
	var b strings.Builder
	if sign == 0x4000 {
		b.WriteByte('-')
	}
	if weight < 0 {
		b.WriteByte('0')
	} else {
		b.WriteString(strconv.Itoa(digit(0)))
		for k := 1; k <= weight; k++ {
			writeDigits(&b, digit(k), 4)
		}
	}
	if dscale > 0 {
		b.WriteByte('.')
		var frac strings.Builder
		for k := weight + 1; frac.Len() < dscale; k++ {
			writeDigits(&frac, digit(k), 4)
		}
		b.WriteString(frac.String()[:dscale])
	}
	return b.String(), nil
}

// writeDigits writes d zero-padded to width.
func writeDigits(b *strings.Builder, d, width int) {
	s := strconv.Itoa(d)
	for k := len(s); k < width; k++ {
		b.WriteByte('0')
	}
	b.WriteString(s)
}
