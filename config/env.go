package config

import "strings"

// expandEnv replaces every ${NAME} in s with the value of the environment
// variable NAME, as reported by lookup. "$${" stands for a literal "${"; any
// other "$" is kept as written, so values such as passwords need no escaping
// unless they contain "${".
//
// It returns one message per reference it could not expand. The messages name
// a variable only when the reference is well formed and never include any part
// of s or of a variable's value: s may be a secret.
func expandEnv(s string, lookup func(string) (string, bool)) (string, []string) {
	if !strings.Contains(s, "$") {
		return s, nil
	}
	var (
		b    strings.Builder
		msgs []string
	)
	for {
		i := strings.IndexByte(s, '$')
		if i < 0 {
			b.WriteString(s)
			break
		}
		b.WriteString(s[:i])
		s = s[i:]
		switch {
		case strings.HasPrefix(s, "$${"):
			b.WriteString("${")
			s = s[3:]
		case strings.HasPrefix(s, "${"):
			end := strings.IndexByte(s, '}')
			if end < 0 {
				msgs = append(msgs, `"${" without a closing "}" (write "$${" for a literal "${")`)
				return b.String() + s, msgs
			}
			name := s[2:end]
			s = s[end+1:]
			if !isEnvName(name) {
				msgs = append(msgs, `malformed "${...}" reference: a variable name is letters, digits and underscores, not starting with a digit (write "$${" for a literal "${")`)
				continue
			}
			v, ok := lookup(name)
			if !ok {
				msgs = append(msgs, "environment variable "+name+" is not set")
				continue
			}
			b.WriteString(v)
		default:
			b.WriteByte('$')
			s = s[1:]
		}
	}
	return b.String(), msgs
}

func isEnvName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '_', 'A' <= c && c <= 'Z', 'a' <= c && c <= 'z':
		case '0' <= c && c <= '9' && i > 0:
		default:
			return false
		}
	}
	return true
}
