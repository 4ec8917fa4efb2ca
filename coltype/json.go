package coltype

import (
	"bytes"
	"cmp"
	"slices"
	"time"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/jackc/pgerrcode"
)

// maxJSONDepth bounds nesting, standing in for PostgreSQL's stack depth
// check; deeper input is refused like PostgreSQL refuses it.
const maxJSONDepth = 10000

var (
	errJSONSyntax  = syntaxError("json") // PostgreSQL says "json" for jsonb as well
	errJSONNul     = newError(pgerrcode.UntranslatableCharacter, "unsupported Unicode escape sequence")
	errJSONTooDeep = newError(pgerrcode.StatementTooComplex, "stack depth limit exceeded")
)

// canonJSON validates json input as PostgreSQL 15's json_in does and keeps
// it verbatim, surrounding spaces included: json stores its input text.
func canonJSON(s string, _ *time.Location) (string, error) {
	p := jsonParser{s: s, jsonb: false}
	if _, err := p.document(); err != nil {
		return "", err
	}
	return s, nil
}

// canonJSONB parses jsonb input as PostgreSQL 15's jsonb_in does and prints
// it as jsonb_out does: object keys sorted by length and then bytewise,
// the last of duplicate keys kept, ", " and ": " as separators, numbers in
// numeric's canonical form, strings re-escaped (only ", \, and control
// characters; \u escapes of other characters decoded). The canonical form
// is PostgreSQL's own rather than, say, encoding/json's compact form with
// sorted keys, so that a decrypted value reads back exactly as an
// unencrypted jsonb column would.
func canonJSONB(s string, _ *time.Location) (string, error) {
	p := jsonParser{s: s, jsonb: true}
	v, err := p.document()
	if err != nil {
		return "", err
	}
	var b bytes.Buffer
	if err := v.write(&b); err != nil {
		return "", err
	}
	return b.String(), nil
}

// jsonValue is a parsed jsonb value.
type jsonValue struct {
	kind  byte   // 'n' null, 't' true, 'f' false, '0' number, '"' string, '[' array, '{' object
	text  string // a number's text as written, a string's decoded value
	elems []jsonValue
	keys  []string // object keys, parallel to elems
}

type jsonParser struct {
	s     string
	i     int
	jsonb bool // decode strings and build values; check \u escapes as jsonb does
	depth int
}

func (p *jsonParser) document() (jsonValue, error) {
	p.space()
	v, err := p.value()
	if err != nil {
		return v, err
	}
	p.space()
	if p.i != len(p.s) {
		return v, p.unexpected()
	}
	return v, nil
}

// unexpected is the error for a token the grammar does not allow where it
// stands. PostgreSQL's lexer reads that token before its parser rejects
// it, so a string token's own error (\u0000 in jsonb, a bad escape) is the
// one reported.
func (p *jsonParser) unexpected() error {
	if p.i < len(p.s) && p.s[p.i] == '"' {
		if _, err := p.str(); err != nil {
			return err
		}
	}
	return errJSONSyntax
}

func (p *jsonParser) space() {
	for p.i < len(p.s) {
		switch p.s[p.i] {
		case ' ', '\t', '\n', '\r':
			p.i++
		default:
			return
		}
	}
}

func (p *jsonParser) value() (jsonValue, error) {
	if p.i >= len(p.s) {
		return jsonValue{}, errJSONSyntax
	}
	switch c := p.s[p.i]; {
	case c == '{':
		return p.object()
	case c == '[':
		return p.array()
	case c == '"':
		str, err := p.str()
		return jsonValue{kind: '"', text: str}, err
	case c == '-' || isDigit(c):
		return p.number()
	default:
		for _, lit := range []string{"true", "false", "null"} {
			if len(p.s)-p.i >= len(lit) && p.s[p.i:p.i+len(lit)] == lit {
				p.i += len(lit)
				return jsonValue{kind: lit[0]}, nil
			}
		}
		return jsonValue{}, errJSONSyntax
	}
}

func (p *jsonParser) enter() error {
	p.depth++
	if p.depth > maxJSONDepth {
		return errJSONTooDeep
	}
	return nil
}

func (p *jsonParser) object() (jsonValue, error) {
	v := jsonValue{kind: '{'}
	err := p.list('}', func() error {
		if p.i >= len(p.s) || p.s[p.i] != '"' {
			return errJSONSyntax
		}
		key, err := p.str()
		if err != nil {
			return err
		}
		p.space()
		if p.i >= len(p.s) || p.s[p.i] != ':' {
			return p.unexpected()
		}
		p.i++
		p.space()
		elem, err := p.value()
		if err != nil {
			return err
		}
		if p.jsonb {
			v.keys = append(v.keys, key)
			v.elems = append(v.elems, elem)
		}
		return nil
	})
	return v, err
}

func (p *jsonParser) array() (jsonValue, error) {
	v := jsonValue{kind: '['}
	err := p.list(']', func() error {
		elem, err := p.value()
		if err != nil {
			return err
		}
		if p.jsonb {
			v.elems = append(v.elems, elem)
		}
		return nil
	})
	return v, err
}

// list reads an object or array from its opening bracket to end, the
// closing one: member reads each member, list the commas between them.
func (p *jsonParser) list(end byte, member func() error) error {
	if err := p.enter(); err != nil {
		return err
	}
	defer func() { p.depth-- }()
	p.i++ // { or [
	p.space()
	if p.i < len(p.s) && p.s[p.i] == end {
		p.i++
		return nil
	}
	for {
		if err := member(); err != nil {
			return err
		}
		p.space()
		if p.i >= len(p.s) {
			return errJSONSyntax
		}
		switch p.s[p.i] {
		case ',':
			p.i++
			p.space()
		case end:
			p.i++
			return nil
		default:
			return p.unexpected()
		}
	}
}

// number reads -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?.
func (p *jsonParser) number() (jsonValue, error) {
	start := p.i
	if p.s[p.i] == '-' {
		p.i++
	}
	digits := func() int {
		n := 0
		for p.i < len(p.s) && isDigit(p.s[p.i]) {
			p.i++
			n++
		}
		return n
	}
	if p.i < len(p.s) && p.s[p.i] == '0' {
		p.i++
	} else if digits() == 0 {
		return jsonValue{}, errJSONSyntax
	}
	if p.i < len(p.s) && p.s[p.i] == '.' {
		p.i++
		if digits() == 0 {
			return jsonValue{}, errJSONSyntax
		}
	}
	if p.i < len(p.s) && (p.s[p.i] == 'e' || p.s[p.i] == 'E') {
		p.i++
		if p.i < len(p.s) && (p.s[p.i] == '+' || p.s[p.i] == '-') {
			p.i++
		}
		if digits() == 0 {
			return jsonValue{}, errJSONSyntax
		}
	}
	// PostgreSQL's lexer takes a number to run until a delimiter; "1x" or
	// "01" is one bad token, which the caller's next step also refuses.
	return jsonValue{kind: '0', text: p.s[start:p.i]}, nil
}

// str reads a string; with jsonb it returns the decoded value.
func (p *jsonParser) str() (string, error) {
	p.i++ // "
	var b []byte
	for {
		if p.i >= len(p.s) {
			return "", errJSONSyntax
		}
		c := p.s[p.i]
		switch {
		case c == '"':
			p.i++
			return string(b), nil
		case c < 0x20:
			return "", errJSONSyntax
		case c != '\\':
			if p.jsonb {
				b = append(b, c)
			}
			p.i++
			continue
		}
		// An escape.
		if p.i+1 >= len(p.s) {
			return "", errJSONSyntax
		}
		e := p.s[p.i+1]
		p.i += 2
		var r byte
		switch e {
		case '"', '\\', '/':
			r = e
		case 'b':
			r = '\b'
		case 'f':
			r = '\f'
		case 'n':
			r = '\n'
		case 'r':
			r = '\r'
		case 't':
			r = '\t'
		case 'u':
			cp, ok := p.hex4()
			if !ok {
				return "", errJSONSyntax
			}
			if !p.jsonb {
				continue // json checks only the form of \u escapes
			}
			switch {
			case cp == 0:
				return "", errJSONNul
			case utf16.IsSurrogate(rune(cp)):
				if cp >= 0xDC00 { // a low surrogate first
					return "", errJSONSyntax
				}
				if p.i+1 >= len(p.s) || p.s[p.i] != '\\' || p.s[p.i+1] != 'u' {
					return "", errJSONSyntax
				}
				p.i += 2
				lo, ok := p.hex4()
				if !ok || lo < 0xDC00 || lo > 0xDFFF {
					return "", errJSONSyntax
				}
				b = utf8.AppendRune(b, utf16.DecodeRune(rune(cp), rune(lo)))
			default:
				b = utf8.AppendRune(b, rune(cp))
			}
			continue
		default:
			return "", errJSONSyntax
		}
		if p.jsonb {
			b = append(b, r)
		}
	}
}

func (p *jsonParser) hex4() (int, bool) {
	if p.i+4 > len(p.s) {
		return 0, false
	}
	v := 0
	for k := range 4 {
		c := p.s[p.i+k]
		if !isHex(c) {
			return 0, false
		}
		v = v<<4 | int(unhex(c))
	}
	p.i += 4
	return v, true
}

// write prints v as jsonb_out does.
func (v jsonValue) write(b *bytes.Buffer) error {
	switch v.kind {
	case 'n':
		b.WriteString("null")
	case 't':
		b.WriteString("true")
	case 'f':
		b.WriteString("false")
	case '0':
		d, rest, err := parseDecimal(v.text)
		if err != nil {
			return err // an exponent numeric cannot hold: out of range, as in jsonb_in
		}
		if rest != "" {
			return errJSONSyntax
		}
		s, err := d.String()
		if err != nil {
			return err
		}
		b.WriteString(s)
	case '"':
		writeJSONString(b, v.text)
	case '[':
		b.WriteByte('[')
		for i, e := range v.elems {
			if i > 0 {
				b.WriteString(", ")
			}
			if err := e.write(b); err != nil {
				return err
			}
		}
		b.WriteByte(']')
	case '{':
		// The last of duplicate keys wins; keys sort by length, then bytes
		// (lengthCompareJsonbString).
		last := make(map[string]int, len(v.keys))
		for i, k := range v.keys {
			last[k] = i
		}
		order := make([]int, 0, len(last))
		for i, k := range v.keys {
			if last[k] == i {
				order = append(order, i)
			}
		}
		slices.SortFunc(order, func(x, y int) int {
			kx, ky := v.keys[x], v.keys[y]
			if c := cmp.Compare(len(kx), len(ky)); c != 0 {
				return c
			}
			return cmp.Compare(kx, ky)
		})
		b.WriteByte('{')
		for n, i := range order {
			if n > 0 {
				b.WriteString(", ")
			}
			writeJSONString(b, v.keys[i])
			b.WriteString(": ")
			if err := v.elems[i].write(b); err != nil {
				return err
			}
		}
		b.WriteByte('}')
	}
	return nil
}

// writeJSONString quotes s as PostgreSQL's escape_json does.
func writeJSONString(b *bytes.Buffer, s string) {
	const hexDigits = "0123456789abcdef"
	b.WriteByte('"')
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '\b':
			b.WriteString(`\b`)
		case '\f':
			b.WriteString(`\f`)
		case '\n':
			b.WriteString(`\n`)
		case '\r':
			b.WriteString(`\r`)
		case '\t':
			b.WriteString(`\t`)
		case '"':
			b.WriteString(`\"`)
		case '\\':
			b.WriteString(`\\`)
		default:
			if c < ' ' {
				b.WriteString(`\u00`)
				b.WriteByte(hexDigits[c>>4])
				b.WriteByte(hexDigits[c&0xF])
			} else {
				b.WriteByte(c)
			}
		}
	}
	b.WriteByte('"')
}
