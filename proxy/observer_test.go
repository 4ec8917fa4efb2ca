package proxy

import (
	"sync"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/pgcloak/pgcloak/config"
	"github.com/pgcloak/pgcloak/testenv"
)

// countingObserver records what the proxy reports.
type countingObserver struct {
	mu             sync.Mutex
	started, ended map[string]int
	rewritten      int
	refused        map[string]int
	decryptFailed  map[string]int
}

func newCountingObserver() *countingObserver {
	return &countingObserver{started: map[string]int{}, ended: map[string]int{}, refused: map[string]int{}, decryptFailed: map[string]int{}}
}

func (o *countingObserver) SessionStarted(t string) { o.mu.Lock(); o.started[t]++; o.mu.Unlock() }
func (o *countingObserver) SessionEnded(t string)   { o.mu.Lock(); o.ended[t]++; o.mu.Unlock() }
func (o *countingObserver) StatementRewritten()     { o.mu.Lock(); o.rewritten++; o.mu.Unlock() }
func (o *countingObserver) StatementRefused(c string) {
	o.mu.Lock()
	o.refused[c]++
	o.mu.Unlock()
}
func (o *countingObserver) DecryptFailed(t, c string) {
	o.mu.Lock()
	o.decryptFailed[t+"."+c]++
	o.mu.Unlock()
}

// TestObserverCounts: sessions per tenant, rewritten and refused
// statements and decrypt failures reach the observer.
func TestObserverCounts(t *testing.T) {
	pg := testenv.Shared(t)
	ctx := ctxT(t)
	startEncrypted(t) // creates the roles
	db := testenv.NewDatabase(t, pg)
	pool, err := pgxpool.New(ctx, pg.SuperuserURL(db))
	fatalIf(t, err, "pool")
	defer pool.Close()
	pinner := installPin(t, pool)
	fatalIf(t, pg.Exec(ctx, db, patientsDDL+"alter table patients no force row level security; alter table patients disable row level security;"), "schema")
	obs := newCountingObserver()
	p := startProxyDeps(t, pg, Deps{Pool: pool, Keys: newTestKeys(t, pool), Pinner: pinner, Observer: obs}, nil, func(c *Config) {
		c.Tenancy = config.Tenancy{Setting: "app.tenant_id", Mode: config.ModeLogin,
			Login: config.LoginTenancy{Roles: map[string]string{acmeRole: "acme", globexRole: "globex"}}}
		c.Encrypt = patientsDecl()
	})
	acme := connect(t, p.url(acmeRole, rolePassword, db))
	mustExec(t, acme, `insert into patients (name, ssn) values ($1, $2)`, "a", "111")
	mustExec(t, acme, `insert into patients (name, ssn) values ('b', '222')`)
	_, err = acme.Exec(ctx, `select * from patients where ssn < '1'`)
	mustEqual(t, "refused", pgCode(err), "0A000")
	globex := connect(t, p.url(globexRole, rolePassword, db))
	_, err = globex.Exec(ctx, `select ssn from patients`)
	mustEqual(t, "decrypt failure", pgCode(err), "39000")
	acme.Close(ctx)

	obs.mu.Lock()
	defer obs.mu.Unlock()
	mustEqual(t, "acme sessions", obs.started["acme"], 1)
	mustEqual(t, "globex sessions", obs.started["globex"], 1)
	if obs.rewritten < 2 {
		t.Errorf("rewritten: got %d, want at least 2", obs.rewritten)
	}
	mustEqual(t, "refused 0A000", obs.refused["0A000"], 1)
	mustEqual(t, "decrypt failures", obs.decryptFailed["public.patients.ssn"], 1)
}
