package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/pgcloak/pgcloak/testenv"
)

// Shape of TestKMSCallsPerTTL's workload.
const (
	kmsCallsTenants  = 10
	kmsCallsSessions = 2 // per tenant
	kmsCallsTTL      = 3 * time.Second
	// kmsCallsRun spans three TTL periods and a bit, so that every key
	// expires and is reloaded at least twice.
	kmsCallsRun = 3*kmsCallsTTL + time.Second
	// kmsCallsPause paces each session, for a steady load rather than a
	// burst: a few hundred statements per tenant.
	kmsCallsPause = 15 * time.Millisecond
	// kmsCallsLatency is each KMS call's round trip, as from a real region:
	// it widens the window in which concurrent misses must share a call.
	kmsCallsLatency  = 20 * time.Millisecond
	kmsCallsRolePass = "cmd-kmscalls-tenant-pw"
)

// kmsCallsRole is the login role of tenant i (roles are cluster-wide).
func kmsCallsRole(i int) string { return fmt.Sprintf("cmd_kmscalls_t%02d", i) }

// kmsCallsTenant is the name of tenant i.
func kmsCallsTenant(i int) string { return fmt.Sprintf("t%02d", i) }

// TestKMSCallsPerTTL runs serve with keys.provider aws against the
// emulator, keys.cache_ttl 3s, and a steady workload of ten tenants with
// two sessions each (inserts, blind-index searches, reads) for a little
// over three TTL periods. Each tenant has a KMS key of its own, so that
// the emulator counts each tenant's calls apart.
//
// The data-key cache promises (SPEC §6) that a key lives at most cache_ttl
// and that concurrent misses share one KMS call. So every (tenant, key
// class, purpose, version) is obtained from KMS at most once per TTL
// period - the loads of one key are at least a TTL apart, which allows
// floor(elapsed/TTL)+1 of them in the run - and at least twice in all:
// created once and unwrapped again after expiring. The audit stream's
// key_created/key_unwrapped events say which key each load was, and the
// emulator's counts per KMS key check that no call went unaudited.
func TestKMSCallsPerTTL(t *testing.T) {
	pg := testenv.Shared(t)
	db := testenv.NewDatabase(t, pg)
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()

	roles := make([]string, kmsCallsTenants)
	for i := range roles {
		roles[i] = kmsCallsRole(i)
	}
	setup := tenantRolesSQL(kmsCallsRolePass, roles...) +
		rlsTableSQL("patients", `id serial primary key,
	tenant_id text not null default pgcloak.current_tenant(),
	name text, ssn bytea, ssn_bidx bytea`) +
		fmt.Sprintf(`create index on patients (ssn_bidx);
grant select, insert on patients to %[1]s;
grant usage on sequence patients_id_seq to %[1]s;
grant create on database %[2]s to %[3]s;`, strings.Join(roles, ", "), db, testenv.ScramUser)
	if err := pg.Exec(ctx, db, setup); err != nil {
		t.Fatal(err)
	}

	testenv.FakeAWSCredentials(t)
	emu := testenv.StartKMS(t)
	if err := emu.CreateAlias("alias/pgcloak", emu.CreateKey("pgcloak default").ID); err != nil {
		t.Fatal(err)
	}
	tenantKeys := make([]testenv.KMSKey, kmsCallsTenants)
	var keys, mapping strings.Builder
	keys.WriteString("  tenants:\n")
	for i := range kmsCallsTenants {
		tenantKeys[i] = emu.CreateKey(kmsCallsTenant(i) + "'s own")
		fmt.Fprintf(&keys, "    %s: { key_id: %s }\n", kmsCallsTenant(i), tenantKeys[i].ARN)
		fmt.Fprintf(&mapping, "      %s: %s\n", kmsCallsRole(i), kmsCallsTenant(i))
	}
	fmt.Fprintf(&keys, "  cache_ttl: %s\n", kmsCallsTTL)
	emu.SetLatency("", kmsCallsLatency)
	s := startServe(t, pg, db, schemaApplied(t, pg, db, func(cfg string) string {
		cfg = withKeys(t, cfg, awsKeysYAML(emu.URL, "alias/pgcloak", keys.String()))
		return cfg + "tenancy:\n  login:\n    roles:\n" + mapping.String() + patientsSSNDecl
	}))

	conns := make([][]*pgx.Conn, kmsCallsTenants)
	for i := range conns {
		for range kmsCallsSessions {
			conns[i] = append(conns[i], s.connectAs(t, kmsCallsRole(i), kmsCallsRolePass, db))
		}
	}
	// The key-event listener purges the whole cache once it listens; wait
	// for that, so that the purge cannot fall into the workload.
	direct, err := pgx.Connect(ctx, pg.SuperuserURL(db))
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close(context.Background())
	waitFor(t, "the key-event listener", func() bool {
		var n int
		err := direct.QueryRow(ctx, `select count(*) from pg_stat_activity
			where application_name = 'pgcloak key events' and datname = $1 and query ilike 'listen%'`, db).Scan(&n)
		return err == nil && n > 0
	})
	if n := emu.Calls("GenerateDataKey") + emu.Calls("Decrypt"); n != 0 {
		t.Fatalf("KMS data key calls before the workload: got %d, want 0", n)
	}

	statements := make([]int, kmsCallsTenants) // per tenant
	var (
		mu       sync.Mutex
		firstErr error
		wg       sync.WaitGroup
	)
	start := time.Now()
	deadline := start.Add(kmsCallsRun)
	for i := range conns {
		for j, c := range conns[i] {
			wg.Add(1)
			go func() {
				defer wg.Done()
				n, err := kmsCallsSession(ctx, c, i, j, deadline)
				mu.Lock()
				defer mu.Unlock()
				statements[i] += n
				if err != nil && firstErr == nil {
					firstErr = fmt.Errorf("tenant %s, session %d: %w", kmsCallsTenant(i), j, err)
				}
			}()
		}
	}
	wg.Wait()
	elapsed := time.Since(start)
	if firstErr != nil {
		t.Fatal(firstErr)
	}

	periods := int(elapsed / kmsCallsTTL)
	maxLoads := periods + 1 // loads of one key are at least a TTL apart
	loads := auditedLoads(t, s.stdout.String())
	total := 0
	for i := range kmsCallsTenants {
		tenant := kmsCallsTenant(i)
		total += statements[i]
		if statements[i] < 200 {
			t.Errorf("tenant %s ran %d statements in %v, want at least 200 for a steady load", tenant, statements[i], elapsed)
		}
		tenantLoads := 0
		for _, p := range []string{"data", "index"} {
			id := auditedKey{Tenant: tenant, Purpose: p, Version: 1}
			got := loads[id]
			tenantLoads += got.created + got.unwrapped
			if got.created != 1 {
				t.Errorf("%s: created %d times, want once", id, got.created)
			}
			if n := got.created + got.unwrapped; n > maxLoads {
				t.Errorf("%s: obtained from KMS %d times in %v, want at most %d (once per %v)", id, n, elapsed.Round(time.Millisecond), maxLoads, kmsCallsTTL)
			}
			if got.unwrapped < 1 {
				t.Errorf("%s: never unwrapped again in %v, want a reload after each %v", id, elapsed.Round(time.Millisecond), kmsCallsTTL)
			}
			delete(loads, id)
		}
		gdk := emu.KeyCalls("GenerateDataKey", tenantKeys[i].ID)
		dec := emu.KeyCalls("Decrypt", tenantKeys[i].ID)
		if gdk != 2 {
			t.Errorf("tenant %s: GenerateDataKey calls got %d, want 2 (a data and an index key)", tenant, gdk)
		}
		if gdk+dec != tenantLoads {
			t.Errorf("tenant %s: %d GenerateDataKey and %d Decrypt calls, but %d loads audited", tenant, gdk, dec, tenantLoads)
		}
		t.Logf("tenant %s: %d statements, KMS calls: GenerateDataKey %d, Decrypt %d", tenant, statements[i], gdk, dec)
	}
	for id, l := range loads {
		t.Errorf("unexpected key load %s: %+v", id, l)
	}
	calls := emu.Calls("GenerateDataKey") + emu.Calls("Decrypt")
	if limit := kmsCallsTenants * 2 * maxLoads; calls > limit {
		t.Errorf("KMS calls: got %d, want at most %d (%d tenants x 2 purposes x %d TTL periods)", calls, limit, kmsCallsTenants, maxLoads)
	}
	t.Logf("%d statements in %v (%d TTL periods of %v): %d KMS data key calls, %.2f per 1,000 statements",
		total, elapsed.Round(time.Millisecond), periods, kmsCallsTTL, calls, float64(calls)*1000/float64(total))

	for i := range conns {
		for _, c := range conns[i] {
			c.Close(ctx)
		}
	}
	if code := s.shutdown(t); code != 0 {
		t.Errorf("serve: exit code %d, want 0", code)
	}
}

// kmsCallsSession runs statements on c, for tenant i's session j, until
// deadline: an insert, a blind-index search for the value just inserted,
// and a read of the session's latest rows, in turn, with a pause between
// statements. It returns how many statements it ran.
func kmsCallsSession(ctx context.Context, c *pgx.Conn, i, j int, deadline time.Time) (int, error) {
	n := 0
	for k := 0; time.Now().Before(deadline); k++ {
		ssn := fmt.Sprintf("%02d%d-%06d", i, j, k/3)
		var err error
		switch k % 3 {
		case 0:
			_, err = c.Exec(ctx, "insert into patients (name, ssn) values ($1, $2)", fmt.Sprintf("s%d-%d", j, k/3), ssn)
		case 1:
			var name string
			err = c.QueryRow(ctx, "select name from patients where ssn = $1", ssn).Scan(&name)
			if err == nil && name != fmt.Sprintf("s%d-%d", j, k/3) {
				err = fmt.Errorf("search: got %q", name)
			}
		case 2:
			var rows pgx.Rows
			rows, err = c.Query(ctx, "select ssn from patients where name like $1 order by id desc limit 5", fmt.Sprintf("s%d-%%", j))
			if err == nil {
				var got []string
				got, err = pgx.CollectRows(rows, pgx.RowTo[string])
				if err == nil && (len(got) == 0 || got[0] != ssn) {
					err = fmt.Errorf("read: got %d values, want the latest first", len(got))
				}
			}
		}
		if err != nil {
			return n, err
		}
		n++
		time.Sleep(kmsCallsPause)
	}
	return n, nil
}

// auditedKey names a data key in the audit stream.
type auditedKey struct {
	Tenant   string `json:"tenant"`
	KeyClass string `json:"key_class"`
	Purpose  string `json:"purpose"`
	Version  int    `json:"version"`
}

func (k auditedKey) String() string {
	return fmt.Sprintf("key (%s, class %q, %s, version %d)", k.Tenant, k.KeyClass, k.Purpose, k.Version)
}

// auditedLoad counts a key's loads through the provider.
type auditedLoad struct{ created, unwrapped int }

// auditedLoads counts the key_created and key_unwrapped events of an audit
// stream per key.
func auditedLoads(t *testing.T, audit string) map[auditedKey]auditedLoad {
	t.Helper()
	loads := make(map[auditedKey]auditedLoad)
	for _, line := range strings.Split(audit, "\n") {
		if !strings.Contains(line, `"event":"key_created"`) && !strings.Contains(line, `"event":"key_unwrapped"`) {
			continue
		}
		var ev struct {
			Event string `json:"event"`
			auditedKey
		}
		if err := json.Unmarshal([]byte(line), &ev); err != nil {
			t.Fatalf("audit line %q: %v", line, err)
		}
		l := loads[ev.auditedKey]
		if ev.Event == "key_created" {
			l.created++
		} else {
			l.unwrapped++
		}
		loads[ev.auditedKey] = l
	}
	return loads
}
