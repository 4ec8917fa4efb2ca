package proxy

import (
	"github.com/pgcloak/pgcloak/audit"
	"github.com/pgcloak/pgcloak/config"
)

// auditor adds session identities to audit events.
type auditor struct{ l *audit.Logger }

func (s *session) auditIdentity() audit.Session {
	return audit.Session{ID: s.id, Role: s.user, Database: s.database, Tenant: s.tenant}
}

func (a auditor) tenantChangeRefused(s *session, construct string) {
	a.l.TenantChangeRefused(s.auditIdentity(), construct)
}

func (a auditor) decryptFailed(s *session, t *config.Table, c *config.Column) {
	a.l.DecryptFailed(s.auditIdentity(), t.QualifiedName(), c.Name)
}
