// Package config turns pgcloak's YAML file into a validated, immutable
// *Config, or into a *ValidationError that lists every problem in the file.
//
// This is the bottom layer: config imports nothing from pgcloak and knows
// nothing of sockets, SQL or keys. It does not open the files it names
// (certificates, the master key, a JWT public key), resolve hosts or connect
// to anything (a JWKS URL included); `pgcloak check` does that, and package
// tenanttoken loads the JWT keys for serve. What it does decide is whether the
// file means exactly one thing, because a configuration that is quietly
// misread is a configuration that quietly stops encrypting:
//
//   - Unknown keys are errors, with a suggestion when the key is a likely
//     typo, so that "serch: equality" cannot turn a searchable column into
//     an unsearchable one, nor "tsl:" turn TLS off.
//   - Every problem names the file, line and YAML path and says what was
//     expected, for example
//     pgcloak.yaml:14: encrypt.tables[0].columns[1].type: "txt" is not a supported type (text, varchar, ...).
//     All problems are reported at once.
//   - ${NAME} in a value is replaced by the environment variable NAME after
//     the YAML is parsed, so a variable's value can neither change the
//     document's structure nor shift a line number; "$${" is a literal "${".
//     An unset variable is an error that names the variable.
//   - Secrets (upstream.password, tenancy.jwt.hs256_secret,
//     tenancy.jwt.upstream_password) are Secret values, which print as
//     "[redacted]", and no problem message ever quotes them, not even when
//     they are invalid or refer to an unset variable.
//   - A role has one meaning: mapped to a tenant (tenancy.login.roles), a
//     token role that takes its tenant from a signed token
//     (tenancy.token_roles) or unscoped (tenancy.unscoped_roles). A name
//     listed in one and matched by another's pattern is a problem, and so
//     is a pattern listed in both token_roles and unscoped_roles; whether two
//     different globs share a role is not decidable here, and is left to the
//     proxy at login.
//   - Tenant tokens and mode jwt need exactly one verification key
//     (tenancy.jwt.hs256_secret, public_key_file or jwks_url), an alg
//     allow-list that fits it (HS256 only with the secret, never "none"),
//     and in mode jwt an upstream login (tenancy.jwt.upstream_user) that is
//     not upstream.user.
//
// The file is decoded through yaml.Node rather than struct tags: that is what
// gives every key its line, and what lets unknown keys be collected together
// with other problems instead of stopping at the first.
//
// A Config is immutable once Parse returns: nothing may write to it, its
// slices or its maps, so every goroutine may read it without locks. SIGHUP
// builds a new Config and swaps the pointer; hand each component the part
// it needs (Listen, Tenancy, Encrypt...) rather than the whole tree.
package config
