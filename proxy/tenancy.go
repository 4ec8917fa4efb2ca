package proxy

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/pgcloak/pgcloak/config"
	"github.com/pgcloak/pgcloak/keystore"
	"github.com/pgcloak/pgcloak/rewrite"
)

// tenantRefusal is a client's attempt to choose or change its tenant. It is
// audited; its message says what was refused, never the value tried.
func tenantRefusal(construct string) *clientError {
	return &clientError{
		code: pgerrcode.InsufficientPrivilege,
		msg:  fmt.Sprintf("the tenant of a session cannot be changed by the client (%s)", construct),
	}
}

// checkStartupParameters refuses a StartupMessage that tries to set the
// tenant setting itself, directly or through the options parameter.
func checkStartupParameters(t config.Tenancy, params map[string]string) error {
	setting := strings.ToLower(t.Setting)
	for k, v := range params {
		k, v = strings.ToLower(k), strings.ToLower(v)
		switch {
		case k == setting:
			return fatal(tenantRefusal("startup parameter " + t.Setting))
		case strings.HasPrefix(k, "pgcloak."):
			// pgcloak's own settings (the tenant token, the pin's proof)
			// are never the client's to set, and a token must never
			// reach PostgreSQL.
			return fatal(tenantRefusal("startup parameter in the pgcloak.* namespace"))
		case k == "options" && strings.Contains(v, setting):
			return fatal(tenantRefusal("startup options naming " + t.Setting))
		case k == "options" && strings.Contains(v, "pgcloak."):
			return fatal(tenantRefusal("startup options naming a pgcloak.* setting"))
		case k == "search_path" && strings.Contains(v, "pg_temp"):
			return fatal(tempSearchPath())
		case k == "search_path" && !rewrite.SearchPathCatalogFirst(v):
			return fatal(catalogSearchPath())
		case k == "options":
			// Read as PostgreSQL reads them: a dash in a name is an
			// underscore, and a backslash escapes the next byte, so the
			// text need not contain the name.
			for _, kv := range optionSettings(v) {
				name := strings.ToLower(kv[0])
				if name == setting {
					return fatal(tenantRefusal("startup options naming " + t.Setting))
				}
				if strings.HasPrefix(name, "pgcloak.") {
					return fatal(tenantRefusal("startup options naming a pgcloak.* setting"))
				}
				if name == "search_path" && strings.Contains(strings.ToLower(kv[1]), "pg_temp") {
					return fatal(tempSearchPath())
				}
				if name == "search_path" && !rewrite.SearchPathCatalogFirst(kv[1]) {
					return fatal(catalogSearchPath())
				}
			}
		}
	}
	return nil
}

// catalogSearchPath refuses a startup search_path that names pg_catalog
// after another schema: pgcloak reads an unqualified type name in a cast
// as pg_catalog's, and a type of that name in the other schema would then
// change what PostgreSQL stores or searches (found by review on
// 2026-12-08).
func catalogSearchPath() *clientError {
	return &clientError{code: pgerrcode.InsufficientPrivilege, msg: "a startup search_path that names pg_catalog after another schema is not allowed in a session with a tenant"}
}

// tempSearchPath refuses a startup search_path that names the temporary
// schema: CREATE TABLE and CREATE AGGREGATE without a schema would make
// temporary objects that outlive a tenant token's transaction, and type
// names would be looked up there first.
func tempSearchPath() *clientError {
	return &clientError{code: pgerrcode.InsufficientPrivilege, msg: "a startup search_path that names pg_temp is not allowed in a session with a tenant"}
}

func fatal(e *clientError) *clientError {
	e.fatal = true
	return e
}

// resolveTenant maps a login role to its tenant. scoped is false for roles
// in unscoped_roles. A role that is neither is refused with 28000.
func resolveTenant(t config.Tenancy, role string) (tenant string, scoped bool, err error) {
	if tenant, ok := t.TenantForRole(role); ok {
		return tenant, true, nil
	}
	if t.IsTokenRole(role) {
		return "", true, nil // a token role: scoped, its tenant from tokens
	}
	if t.IsUnscoped(role) {
		return "", false, nil
	}
	return "", false, &clientError{
		code:  pgerrcode.InvalidAuthorizationSpecification,
		msg:   fmt.Sprintf("role %q is not mapped to a tenant", role),
		fatal: true,
	}
}

// pinParams adds the tenant setting and, with a Pinner, the pin's proof
// to the upstream startup parameters. As startup parameters they are what
// RESET ALL restores, so no client statement can leave the session without
// them; the proof is useless without the marker pinTenant sets.
func (s *session) pinParams(params map[string]string) error {
	params[s.decl.tenancyCfg.Setting] = s.tenant
	if s.srv.pinner == nil {
		return nil
	}
	proof, err := keystore.NewProof(0)
	if err != nil {
		return err
	}
	s.proof = proof
	params[keystore.ProofSetting] = proof
	return nil
}

// pinTenant pins the session's tenant upstream before the client sees its
// first ReadyForQuery. It runs pg_catalog.set_config(setting, tenant,
// false); with a Pinner it first draws a challenge and has
// pgcloak.pin() verify a MAC over it, so that pgcloak.current_tenant()
// returns the tenant in this session and in no other (keystore's doc.go,
// "The verified tenant pin"). Every statement is schema-qualified so that
// no function a client created can shadow it, and values are bound
// parameters, never quoted. Any failure ends the session: it must never
// run without its tenant.
func (s *session) pinTenant(ctx context.Context) error {
	if s.srv.pinner == nil {
		_, err := s.internalQuery("SELECT pg_catalog.set_config($1, $2, false)", []byte(s.decl.tenancyCfg.Setting), []byte(s.tenant))
		return err
	}
	challenge, err := s.internalQuery(keystore.ChallengeStatement)
	if err != nil {
		return err
	}
	c, err := strconv.ParseInt(string(challenge), 10, 64)
	if err != nil {
		return fmt.Errorf("pinning the tenant: pgcloak.pin_challenge() returned %q", challenge)
	}
	mac := s.srv.pinner.MAC(c, s.tenant, s.proof)
	_, err = s.internalQuery(pinSQL, s.pinArgs(mac)...)
	return err
}

// pinSQL pins the session for its lifetime, to the startup values of both
// settings (again after DISCARD, see repin.go).
var pinSQL = keystore.PinStatement(false)

// pinArgs are pinSQL's parameters for mac.
func (s *session) pinArgs(mac string) [][]byte {
	return [][]byte{[]byte(s.tenant), []byte(s.proof), []byte(mac), []byte(s.decl.tenancyCfg.Setting), []byte(keystore.ProofSetting)}
}

// internalStatement is the upstream name of the proxy's own statements.
// Never the unnamed statement: when the Execute fails (a read-only
// transaction, a timeout), PostgreSQL skips the Close after it, and a
// client's Bind of "" could then run a pin statement with values of its
// own choosing (pin_next() accepts any MAC while its text is pgcloak's).
// Clients cannot name a reserved statement.
const internalStatement = reservedPrefix + "i"

// sendInternal sends one statement of the proxy's own upstream, under
// internalStatement (closed before and after), and flushes it.
func (s *session) sendInternal(sql string, params [][]byte) error {
	s.upstreamOut.send(&pgproto3.Close{ObjectType: 'S', Name: internalStatement})
	s.upstreamOut.send(&pgproto3.Parse{Name: internalStatement, Query: sql})
	s.upstreamOut.send(&pgproto3.Bind{PreparedStatement: internalStatement, Parameters: params})
	s.upstreamOut.send(&pgproto3.Execute{})
	// The unnamed portal goes too: in a transaction block it would stay
	// for the client's next Execute of "".
	s.upstreamOut.send(&pgproto3.Close{ObjectType: 'P', Name: ""})
	s.upstreamOut.send(&pgproto3.Close{ObjectType: 'S', Name: internalStatement})
	s.upstreamOut.send(&pgproto3.Sync{})
	return s.upstreamOut.flush()
}

// internalQuery runs one statement of the proxy's own on the upstream
// session, outside any client exchange, and returns the first column of
// its first row. ParameterStatus and notices go to the client; an error
// ends the session (its SQLSTATE is logged, never its values).
func (s *session) internalQuery(sql string, params ...[]byte) ([]byte, error) {
	if err := s.sendInternal(sql, params); err != nil {
		return nil, upstreamUnavailable(err)
	}
	var (
		first  []byte
		failed string // SQLSTATE of an error, if one came
	)
	for {
		msg, err := s.upstreamIn.Receive()
		if err != nil {
			return nil, upstreamUnavailable(fmt.Errorf("pinning the tenant: %w", err))
		}
		s.upstreamConsumed += wireLen(msg)
		switch m := msg.(type) {
		case *pgproto3.DataRow:
			if first == nil && len(m.Values) > 0 && m.Values[0] != nil {
				first = append([]byte{}, m.Values[0]...)
			}
		case *pgproto3.ErrorResponse:
			failed = m.Code
		case *pgproto3.ReadyForQuery:
			if failed != "" {
				return nil, fmt.Errorf("pinning the tenant failed upstream with SQLSTATE %s (is the verified tenant pin installed? serve installs it as upstream.user; see pgcloak schema --keystore)", failed)
			}
			return first, nil
		case *pgproto3.ParameterStatus:
			s.noteParameterStatus(m)
			if err := s.sendClient(m); err != nil {
				return nil, err
			}
		case *pgproto3.NoticeResponse:
			if err := s.sendClient(m); err != nil {
				return nil, err
			}
		}
	}
}
