package config

import (
	"fmt"
	"strings"
)

// Problem is one thing wrong with a configuration file: where it is and what
// was expected. Msg never contains a secret's value.
type Problem struct {
	File string
	Line int    // 1-based; 0 when the problem has no single place (a missing section)
	Path string // YAML path such as encrypt.tables[0].columns[1].type; "" for the whole file
	Msg  string
}

// String formats the problem as "file:line: path: msg", leaving out the parts
// that are unknown.
func (p Problem) String() string {
	var b strings.Builder
	b.WriteString(p.File)
	if p.Line > 0 {
		fmt.Fprintf(&b, ":%d", p.Line)
	}
	b.WriteString(": ")
	if p.Path != "" {
		b.WriteString(p.Path)
		b.WriteString(": ")
	}
	b.WriteString(p.Msg)
	return b.String()
}

// ValidationError is every problem found in one configuration file. Parse and
// Load return it (use errors.As) whenever the file was read but is not a
// valid configuration.
type ValidationError struct {
	Problems []Problem // in file order; never empty
}

// Error returns one problem per line.
func (e *ValidationError) Error() string {
	lines := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		lines[i] = p.String()
	}
	return strings.Join(lines, "\n")
}
