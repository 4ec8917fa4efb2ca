package config

import (
	"path"
	"strings"
)

// IsUnscoped reports whether role is an unscoped role: one listed in
// tenancy.unscoped_roles by name or matched by one of its path.Match glob
// patterns. An unscoped session has no tenant; it sees ciphertext, never
// plaintext.
func (t Tenancy) IsUnscoped(role string) bool { return matchRole(t.UnscopedRoles, role) }

// IsTokenRole reports whether role is a token role: one listed in
// tenancy.token_roles by name or matched by one of its path.Match glob
// patterns. A token role's session starts with no tenant and takes one
// only from a signed tenant token.
func (t Tenancy) IsTokenRole(role string) bool { return matchRole(t.TokenRoles, role) }

// matchRole reports whether role is one of patterns or matches one of them
// as a path.Match glob.
func matchRole(patterns []string, role string) bool {
	for _, pattern := range patterns {
		if pattern == role {
			return true
		}
		// Patterns were checked when the config was loaded; a pattern that
		// is malformed anyway matches nothing.
		if ok, err := path.Match(pattern, role); err == nil && ok {
			return true
		}
	}
	return false
}

// isPattern reports whether a role entry is a glob rather than a name.
func isPattern(entry string) bool { return strings.ContainsAny(entry, `*?[\`) }

// TenantForRole returns the tenant tenancy.login.roles maps role to. Role
// names are compared exactly, as PostgreSQL reports them after
// authentication.
func (t Tenancy) TenantForRole(role string) (tenant string, ok bool) {
	tenant, ok = t.Login.Roles[role]
	return tenant, ok
}

// Table returns the declared table schema.name. Names are compared exactly
// and are stored folded to lower case, as PostgreSQL folds unquoted
// identifiers; resolving an unqualified name against search_path is the
// caller's job. The result points into e and must not be modified.
func (e Encrypt) Table(schema, name string) (*Table, bool) {
	for i := range e.Tables {
		if t := &e.Tables[i]; t.Schema == schema && t.Name == name {
			return t, true
		}
	}
	return nil, false
}

// Column returns the declared column name of t, compared exactly (declared
// names are folded to lower case). The result points into t and must not be
// modified.
func (t *Table) Column(name string) (*Column, bool) {
	for i := range t.Columns {
		if c := &t.Columns[i]; c.Name == name {
			return c, true
		}
	}
	return nil, false
}
