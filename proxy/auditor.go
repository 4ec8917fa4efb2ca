package proxy

import (
	"github.com/pgcloak/pgcloak/audit"
	"github.com/pgcloak/pgcloak/config"
)

// auditor adds session identities to audit events, and passes the events
// operations count to the observer.
type auditor struct {
	l   *audit.Logger
	obs Observer
}

func observerOr(o Observer) Observer {
	if o == nil {
		return nopObserver{}
	}
	return o
}

func (s *session) auditIdentity() audit.Session {
	return audit.Session{ID: s.id, Role: s.user, Database: s.database, Tenant: s.tenant, Client: s.clientAddr}
}

func (a auditor) tenantChangeRefused(s *session, construct string) {
	a.l.TenantChangeRefused(s.auditIdentity(), construct)
}

func (a auditor) decryptFailed(s *session, t *config.Table, c *config.Column) {
	// The upstream goroutine's tenant: a token may have switched it.
	id := audit.Session{ID: s.id, Role: s.user, Database: s.database, Tenant: s.results.tenant, Client: s.clientAddr}
	a.l.DecryptFailed(id, t.QualifiedName(), c.Name)
	a.obs.DecryptFailed(t.QualifiedName(), c.Name)
}
