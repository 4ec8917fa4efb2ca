package keystore

import (
	"context"
	"errors"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// TestPinNext pins tenants in the middle of a session as a token does:
// once per MAC, in this session only, transaction-local pins ending with
// their transaction, and a session pin surviving a local one only when
// pinned again.
func TestPinNext(t *testing.T) {
	db := newPinDB(t)
	ctx := context.Background()
	conn := db.app(t, nil)
	var c int64
	if err := conn.QueryRow(ctx, ChallengeStatement).Scan(&c); err != nil {
		t.Fatal(err)
	}
	current := func(c *pgx.Conn) string {
		t.Helper()
		var got *string
		if err := c.QueryRow(ctx, `SELECT pgcloak.current_tenant()`).Scan(&got); err != nil {
			t.Fatal(err)
		}
		if got == nil {
			return "<null>"
		}
		return *got
	}
	pinArgs := func(tenant string, n int64, local bool) []any {
		proof, err := NewProof(0)
		if err != nil {
			t.Fatal(err)
		}
		return []any{tenant, proof, c, n, db.pinner.NextMAC(c, n, local, tenant, proof), testSetting, ProofSetting}
	}
	refused := func(err error) bool {
		var pe *pgconn.PgError
		return errors.As(err, &pe) && pe.Code == "42501"
	}
	if got := current(conn); got != "<null>" {
		t.Fatalf("before any pin: %s", got)
	}

	// A session pin.
	args := pinArgs("acme", 1, false)
	if _, err := conn.Exec(ctx, NextStatement(false, "x"), args...); err != nil {
		t.Fatalf("pin_next: %v", err)
	}
	if got := current(conn); got != "acme" {
		t.Fatalf("after a session pin: %s", got)
	}
	// Replaying the same call is refused (n not above the last).
	if _, err := conn.Exec(ctx, NextStatement(false, "x"), args...); !refused(err) {
		t.Fatalf("replayed pin_next: %v, want 42501", err)
	}
	// A forged MAC is refused.
	bad := pinArgs("globex", 5, false)
	bad[4] = db.pinner.NextMAC(c, 5, false, "acme", bad[1].(string))
	if _, err := conn.Exec(ctx, NextStatement(false, "x"), bad...); !refused(err) {
		t.Fatalf("forged pin_next: %v, want 42501", err)
	}
	// A MAC for the local form is refused in the session form.
	wrong := pinArgs("globex", 6, true)
	if _, err := conn.Exec(ctx, NextStatement(false, "x"), wrong...); !refused(err) {
		t.Fatalf("local MAC in the session form: %v, want 42501", err)
	}

	// A local pin lasts for its transaction; then the session pin is gone
	// (the marker moved) until pinned again.
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, NextStatement(true, "x"), pinArgs("globex", 7, true)...); err != nil {
		t.Fatalf("local pin_next: %v", err)
	}
	if got := current(conn); got != "globex" {
		t.Fatalf("in the local pin's transaction: %s", got)
	}
	var proof string
	if err := tx.QueryRow(ctx, `SELECT current_setting('pgcloak.tenant_proof')`).Scan(&proof); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if got := current(conn); got != "<null>" {
		t.Fatalf("after the local pin's transaction: %s, want NULL (the session pin must be renewed)", got)
	}
	// The local proof, copied into the next transaction, is worth nothing.
	tx, err = conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `SELECT set_config('app.tenant_id', 'globex', true), set_config('pgcloak.tenant_proof', $1, true)`, proof); err != nil {
		t.Fatal(err)
	}
	if got := current(conn); got != "<null>" {
		t.Fatalf("a local proof replayed in a later transaction: %s, want NULL", got)
	}
	tx.Rollback(ctx)

	// Another session's challenge is not this one's.
	other := db.app(t, nil)
	var c2 int64
	if err := other.QueryRow(ctx, ChallengeStatement).Scan(&c2); err != nil {
		t.Fatal(err)
	}
	if _, err := other.Exec(ctx, NextStatement(false, "x"), pinArgs("acme", 100, false)...); !refused(err) {
		t.Fatalf("pin_next with another session's challenge: %v, want 42501", err)
	}
	if got := current(other); got != "<null>" {
		t.Fatalf("other session: %s", got)
	}

	// Clearing leaves no tenant.
	if _, err := conn.Exec(ctx, NextStatement(false, "x"), pinArgs("acme", 101, false)...); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, ClearStatement("x"), testSetting, ProofSetting); err != nil {
		t.Fatal(err)
	}
	if got := current(conn); got != "<null>" {
		t.Fatalf("after clearing: %s", got)
	}
}

// TestPinNextFailedAfterMarker fails a pin_next() statement after the
// marker moved (as a cancel timed to land there does; found by review on
// 2026-12-08): its settings roll back, the marker stays, and the tenant
// and proof shown in its text, set again by the client, must not verify.
func TestPinNextFailedAfterMarker(t *testing.T) {
	db := newPinDB(t)
	ctx := context.Background()
	conn := db.app(t, nil)
	var c int64
	if err := conn.QueryRow(ctx, ChallengeStatement).Scan(&c); err != nil {
		t.Fatal(err)
	}
	for i, local := range []bool{true, false} {
		proof, err := NewProof(0)
		if err != nil {
			t.Fatal(err)
		}
		n := int64(i + 1)
		tx, err := conn.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(ctx, `SAVEPOINT s`); err != nil {
			t.Fatal(err)
		}
		// The division is volatile, so it runs after pin_next(), not at plan time.
		failing := NextStatement(local, "x") + `, 1 / (0 * random()) AS y`
		_, err = tx.Exec(ctx, failing, "globex", proof, c, n, db.pinner.NextMAC(c, n, local, "globex", proof), testSetting, ProofSetting)
		var pe *pgconn.PgError
		if !errors.As(err, &pe) || pe.Code != "22012" {
			t.Fatalf("local %v: the failing pin: %v, want 22012", local, err)
		}
		if _, err := tx.Exec(ctx, `ROLLBACK TO s`); err != nil {
			t.Fatal(err)
		}
		var start string
		if err := tx.QueryRow(ctx, `SELECT `+txStartExpr).Scan(&start); err != nil {
			t.Fatal(err)
		}
		for _, p := range []string{proof, proof + ":" + start, proof + ":", proof + "::", proof + ":" + start + ":"} {
			var got *string
			err := tx.QueryRow(ctx, `SELECT set_config($1, 'globex', true), set_config('pgcloak.tenant_proof', $2, true), pgcloak.current_tenant()`,
				testSetting, p).Scan(new(string), new(string), &got)
			if err != nil {
				t.Fatal(err)
			}
			if got != nil {
				t.Errorf("local %v: the failed pin's tenant and proof %q, set by the client, verify as %q", local, p, *got)
			}
		}
		tx.Rollback(ctx)
	}
}

// TestPinBurn spends pin_next() numbers: a MAC for a spent number is
// refused, the next number still pins, and burning below the last number
// changes nothing.
func TestPinBurn(t *testing.T) {
	db := newPinDB(t)
	ctx := context.Background()
	conn := db.app(t, nil)
	var c int64
	if err := conn.QueryRow(ctx, ChallengeStatement).Scan(&c); err != nil {
		t.Fatal(err)
	}
	pin := func(n int64) error {
		proof, err := NewProof(0)
		if err != nil {
			t.Fatal(err)
		}
		_, err = conn.Exec(ctx, NextStatement(false, "x"), "acme", proof, c, n, db.pinner.NextMAC(c, n, false, "acme", proof), testSetting, ProofSetting)
		return err
	}
	for _, n := range []int64{3, 1} { // the second is below the first: no change
		if _, err := conn.Exec(ctx, BurnStatement, n); err != nil {
			t.Fatalf("pin_burn(%d): %v", n, err)
		}
	}
	for _, n := range []int64{1, 3} {
		var pe *pgconn.PgError
		if err := pin(n); !errors.As(err, &pe) || pe.Code != "42501" {
			t.Errorf("pin_next with the spent number %d: %v, want 42501", n, err)
		}
	}
	if err := pin(4); err != nil {
		t.Errorf("pin_next with the number after the spent ones: %v", err)
	}
}
