package proxy

import (
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// Seventh review of 2026-12-08, kept as tests: each fails when pgcloak holds
// a session to have no tenant while PostgreSQL's current_tenant() names one.

// A session token set in a transaction that is rolled back: pgcloak asks
// current_tenant() (NULL: the ROLLBACK restored the settings) and holds no
// tenant; it did not unpin, so the marker still named acme's pin. The
// settings set again through a DBA's run() (values read from
// pg_stat_activity) made PostgreSQL's current_tenant() acme again while
// pgcloak held the session to have no tenant. pgcloak now unpins when it
// finds no tenant.
func TestDesyncReview7RolledBackSessionPinRestored(t *testing.T) {
	env := startTokenEnv(t)
	atkSeed(t, env)
	drRun(t, env)
	conn := atkRaw(t, env)
	spy := atkRaw(t, env)
	_, err := atkExec(t, conn, `BEGIN; SET pgcloak.tenant_token = '`+mintToken(t, "acme", time.Hour)+`'`)
	fatalIf(t, err, "begin + session token")
	pin := rvSpyPin(t, spy, conn)
	_, err = atkExec(t, conn, `ROLLBACK`)
	fatalIf(t, err, "rollback")
	ct, names := rvSees(t, conn)
	t.Logf("after ROLLBACK: current_tenant %s names %v", ct, names)
	d7SetAgain(t, conn, pin)
	rvSeesNothing(t, conn, "set a rolled-back session pin's settings again through run()")
}

// Same without a DBA function's help is not possible (set_config of the
// setting is refused); but a plain session token then RESET inside a
// rolled-back transaction: pgcloak unpins, the ROLLBACK restores settings.
// Kept as a check that the RESET path fails closed.
func TestDesyncReview7ResetRolledBackRestored(t *testing.T) {
	env := startTokenEnv(t)
	atkSeed(t, env)
	drRun(t, env)
	conn := atkRaw(t, env)
	spy := atkRaw(t, env)
	_, err := atkExec(t, conn, `SET pgcloak.tenant_token = '`+mintToken(t, "acme", time.Hour)+`'`)
	fatalIf(t, err, "session token")
	pin := rvSpyPin(t, spy, conn)
	_, err = atkExec(t, conn, `BEGIN; SET pgcloak.tenant_token = '`+mintToken(t, "acme", time.Hour)+`'`)
	fatalIf(t, err, "second token")
	_, err = atkExec(t, conn, `ROLLBACK`)
	fatalIf(t, err, "rollback")
	ct, names := rvSees(t, conn)
	t.Logf("after ROLLBACK: current_tenant %s names %v", ct, names)
	d7SetAgain(t, conn, pin)
	ct2, names2 := rvSees(t, conn)
	t.Logf("after run: current_tenant %s names %v", ct2, names2)
	// pgcloak's tenant: does it decrypt ssn?
	res, err := atkExec(t, conn, `select ssn from patients`)
	t.Logf("ssn: %v %v", err, res)
	if ct2 != "<null>" && err != nil {
		t.Errorf("PostgreSQL holds %s while pgcloak holds no tenant (ssn refused: %v)", ct2, err)
	}
}

// d7SetAgain sets the tenant setting and the proof of pin (read from
// pg_stat_activity) again at session level, through the DBA's run().
func d7SetAgain(t *testing.T, conn *pgconn.PgConn, pin []string) {
	t.Helper()
	set := `select pg_catalog.set_config('app.tenant_id', '` + pin[0] + `', false), pg_catalog.set_config('pgcloak.tenant_proof', '` +
		pin[1] + `', false)`
	_, err := atkExec(t, conn, `SELECT public.run(`+rvQuoteChunks(set)+`)`)
	t.Logf("run: %v", err)
}
