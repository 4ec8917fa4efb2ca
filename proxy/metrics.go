package proxy

import (
	"sync/atomic"

	"github.com/pgcloak/pgcloak/audit"
	"github.com/pgcloak/pgcloak/config"
)

// metrics counts what the proxy did. The Prometheus endpoint reads them.
type metrics struct {
	refusedStatements atomic.Uint64
	rewritten         atomic.Uint64
	decryptFailures   atomic.Uint64
}

func (m *metrics) refused() { m.refusedStatements.Add(1) }

// auditor adds session identities to audit events.
type auditor struct{ l *audit.Logger }

func (s *session) auditIdentity() audit.Session {
	return audit.Session{ID: s.id, Role: s.user, Database: s.database, Tenant: s.tenant}
}

func (a auditor) tenantChangeRefused(s *session, construct string) {
	a.l.TenantChangeRefused(s.auditIdentity(), construct)
}

func (a auditor) decryptFailed(s *session, t *config.Table, c *config.Column) {
	s.srv.metrics.decryptFailures.Add(1)
	a.l.DecryptFailed(s.auditIdentity(), t.QualifiedName(), c.Name)
}
