package proxy

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/pgcloak/pgcloak/config"
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
		if strings.ToLower(k) == setting {
			return fatal(tenantRefusal("startup parameter " + t.Setting))
		}
		if k == "options" && strings.Contains(strings.ToLower(v), setting) {
			return fatal(tenantRefusal("startup options naming " + t.Setting))
		}
	}
	return nil
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
	if t.IsUnscoped(role) {
		return "", false, nil
	}
	return "", false, &clientError{
		code:  pgerrcode.InvalidAuthorizationSpecification,
		msg:   fmt.Sprintf("role %q is not mapped to a tenant", role),
		fatal: true,
	}
}

// pinTenant runs pg_catalog.set_config(setting, tenant, false) on the
// upstream session before the client sees its first ReadyForQuery. The
// statement is schema-qualified so that no function a client created can
// shadow it, and it uses bound parameters so no value is ever quoted. Any
// failure ends the session: it must never run without its tenant.
func (s *session) pinTenant(ctx context.Context) error {
	s.upstreamOut.send(&pgproto3.Parse{Query: "SELECT pg_catalog.set_config($1, $2, false)"})
	s.upstreamOut.send(&pgproto3.Bind{Parameters: [][]byte{[]byte(s.decl.tenancyCfg.Setting), []byte(s.tenant)}})
	s.upstreamOut.send(&pgproto3.Execute{})
	s.upstreamOut.send(&pgproto3.Close{ObjectType: 'S'})
	s.upstreamOut.send(&pgproto3.Sync{})
	if err := s.upstreamOut.flush(); err != nil {
		return upstreamUnavailable(err)
	}
	failed := "" // SQLSTATE of an error, if one came
	for {
		msg, err := s.upstreamIn.Receive()
		if err != nil {
			return upstreamUnavailable(fmt.Errorf("pinning the tenant: %w", err))
		}
		switch m := msg.(type) {
		case *pgproto3.ErrorResponse:
			failed = m.Code
		case *pgproto3.ReadyForQuery:
			if failed != "" {
				return fmt.Errorf("pinning the tenant failed upstream with SQLSTATE %s", failed)
			}
			return nil
		case *pgproto3.ParameterStatus, *pgproto3.NoticeResponse:
			if err := s.sendClient(m); err != nil {
				return err
			}
		}
	}
}
