package coltype

import (
	"encoding/hex"
	"strings"
	"time"

	"github.com/jackc/pgerrcode"
)

// canonUUID follows PostgreSQL's string_to_uuid: optional braces, 32 hex
// digits in pairs with an optional hyphen after any group of four, no
// spaces; printed lower case as 8-4-4-4-12.
func canonUUID(s string, _ *time.Location) (string, error) {
	bad := syntaxError("uuid")
	var u [16]byte
	i := 0
	braces := strings.HasPrefix(s, "{")
	if braces {
		i++
	}
	for k := range u {
		if i+2 > len(s) || !isHex(s[i]) || !isHex(s[i+1]) {
			return "", bad
		}
		u[k] = unhex(s[i])<<4 | unhex(s[i+1])
		i += 2
		if i < len(s) && s[i] == '-' && k%2 == 1 && k < len(u)-1 {
			i++
		}
	}
	if braces {
		if i >= len(s) || s[i] != '}' {
			return "", bad
		}
		i++
	}
	if i != len(s) {
		return "", bad
	}
	var b [36]byte
	hex.Encode(b[0:8], u[0:4])
	b[8] = '-'
	hex.Encode(b[9:13], u[4:6])
	b[13] = '-'
	hex.Encode(b[14:18], u[6:8])
	b[18] = '-'
	hex.Encode(b[19:23], u[8:10])
	b[23] = '-'
	hex.Encode(b[24:], u[10:])
	return string(b[:]), nil
}

func isHex(c byte) bool { return isDigit(c) || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F' }

func unhex(c byte) byte {
	switch {
	case isDigit(c):
		return c - '0'
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10
	default:
		return c - 'A' + 10
	}
}

// canonBytea follows PostgreSQL's byteain: "\x" then hex digit pairs,
// spaces allowed between pairs (hex format), or else the escape format
// (\\ for a backslash, \ooo for an octal byte, anything else literal).
// Output is the hex format, lower case.
func canonBytea(s string, _ *time.Location) (string, error) {
	raw := make([]byte, 0, len(s)/2)
	if strings.HasPrefix(s, `\x`) {
		for i := 2; i < len(s); {
			c := s[i]
			if c == ' ' || c == '\n' || c == '\t' || c == '\r' {
				i++
				continue
			}
			if !isHex(c) {
				return "", newError(pgerrcode.InvalidParameterValue, "invalid hexadecimal digit")
			}
			if i+1 >= len(s) {
				return "", newError(pgerrcode.InvalidParameterValue, "invalid hexadecimal data: odd number of digits")
			}
			if !isHex(s[i+1]) {
				return "", newError(pgerrcode.InvalidParameterValue, "invalid hexadecimal digit")
			}
			raw = append(raw, unhex(c)<<4|unhex(s[i+1]))
			i += 2
		}
	} else {
		for i := 0; i < len(s); {
			switch {
			case s[i] != '\\':
				raw = append(raw, s[i])
				i++
			case i+3 < len(s) && s[i+1] >= '0' && s[i+1] <= '3' && isOctal(s[i+2]) && isOctal(s[i+3]):
				raw = append(raw, (s[i+1]-'0')<<6|(s[i+2]-'0')<<3|(s[i+3]-'0'))
				i += 4
			case i+1 < len(s) && s[i+1] == '\\':
				raw = append(raw, '\\')
				i += 2
			default:
				return "", syntaxError("bytea")
			}
		}
	}
	out := make([]byte, 2+2*len(raw))
	out[0], out[1] = '\\', 'x'
	hex.Encode(out[2:], raw)
	return string(out), nil
}

func isOctal(c byte) bool { return '0' <= c && c <= '7' }
