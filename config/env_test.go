package config

import (
	"reflect"
	"testing"
)

func TestExpandEnv(t *testing.T) {
	env := envOf(map[string]string{"A": "alpha", "EMPTY": "", "B_2": "${A}"})
	tests := []struct {
		name string
		in   string
		want string
		msgs []string
	}{
		{name: "no reference", in: "plain", want: "plain"},
		{name: "whole value", in: "${A}", want: "alpha"},
		{name: "inside a value", in: "x-${A}-${A}-y", want: "x-alpha-alpha-y"},
		{name: "empty variable", in: "[${EMPTY}]", want: "[]"},
		{name: "not expanded twice", in: "${B_2}", want: "${A}"},
		{name: "lone dollars kept", in: "pa$$w$rd$", want: "pa$$w$rd$"},
		{name: "escaped reference", in: "$${A}", want: "${A}"},
		{name: "dollar before an escape", in: "$$${A}", want: "$${A}"},
		{name: "unset", in: "${NOPE}", want: "", msgs: []string{"environment variable NOPE is not set"}},
		{name: "two unset", in: "${X}${Y}", want: "", msgs: []string{"environment variable X is not set", "environment variable Y is not set"}},
		{
			name: "unterminated", in: "a${A", want: "a${A",
			msgs: []string{`"${" without a closing "}" (write "$${" for a literal "${")`},
		},
		{
			name: "empty name", in: "${}", want: "",
			msgs: []string{`malformed "${...}" reference: a variable name is letters, digits and underscores, not starting with a digit (write "$${" for a literal "${")`},
		},
		{
			name: "leading digit", in: "${1A}", want: "",
			msgs: []string{`malformed "${...}" reference: a variable name is letters, digits and underscores, not starting with a digit (write "$${" for a literal "${")`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, msgs := expandEnv(tt.in, env)
			if len(tt.msgs) == 0 && got != tt.want {
				t.Errorf("expandEnv(%q): got %q, want %q", tt.in, got, tt.want)
			}
			if !reflect.DeepEqual(msgs, tt.msgs) {
				t.Errorf("expandEnv(%q): got messages %q, want %q", tt.in, msgs, tt.msgs)
			}
		})
	}
}

func TestParseSize(t *testing.T) {
	tests := []struct {
		in   string
		want int
		ok   bool
	}{
		{"0", 0, true},
		{"1024", 1024, true},
		{"64MB", 64 << 20, true},
		{"64 MiB", 64 << 20, true},
		{"512kB", 512 << 10, true},
		{"512KB", 512 << 10, true},
		{"1GiB", 1 << 30, true},
		{"1gb", 1 << 30, true},
		{"10B", 10, true},
		{"", 0, false},
		{"MB", 0, false},
		{"1.5MB", 0, false},
		{"-1", 0, false},
		{"64 M", 0, false},
		{"64TB", 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, ok := parseSize(tt.in)
			if got != tt.want || ok != tt.ok {
				t.Errorf("parseSize(%q): got %d, %v, want %d, %v", tt.in, got, ok, tt.want, tt.ok)
			}
		})
	}
}
