package migrate

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcloak/pgcloak/config"
	"github.com/pgcloak/pgcloak/crypto"
	"github.com/pgcloak/pgcloak/keystore"
)

// Defaults of Options.
const (
	DefaultTenantColumn = "tenant_id"
	DefaultBatchSize    = 500
	DefaultMaxPasses    = 3
)

// Options are what both migrations share.
type Options struct {
	// Pool holds upstream.user sessions. Each batch takes one connection for
	// its transaction; the key cache may need another to load keys.
	Pool *pgxpool.Pool

	// Keys seals, opens and indexes values with each row's tenant's keys.
	Keys *crypto.KeyCache

	// TenantColumn names the column that holds each row's tenant
	// (default tenant_id).
	TenantColumn string

	// Tenant, when set, restricts the work to that tenant's rows and sets
	// TenantSetting to it in every transaction, as the proxy does, so that
	// row-level security lets upstream.user see them. When empty, every
	// row is visited with row_security off: a login subject to row-level
	// security then fails with ErrRowSecurity instead of seeing nothing.
	Tenant string

	// TenantSetting is tenancy.setting (default app.tenant_id).
	TenantSetting string

	// Pinner, when set, pins Tenant in every transaction as the proxy
	// does (pgcloak.pin), so that policies on pgcloak.current_tenant()
	// show upstream.user that tenant's rows; without it only the bare
	// setting is set.
	Pinner *keystore.Pinner

	// BatchSize is the most rows one batch visits (default 500).
	BatchSize int

	// Pause is the sleep between batches.
	Pause time.Duration

	// MaxPasses bounds the passes over a table: a further pass runs only
	// when rows raced with the application in the one before (default 3).
	MaxPasses int

	// Progress, when set, is told the amount of work and each batch done.
	Progress Progress

	// beforeWrite, when set (tests), runs in every batch after the SELECT
	// and before the UPDATEs.
	beforeWrite func(ctx context.Context, batch int)
}

// Progress receives a run's progress. Its methods are called from the
// goroutine that runs the migration, never concurrently.
type Progress interface {
	// AddTotal adds rows to the amount of work expected; it is called
	// before the work on each table (and tenant), and again when a further
	// pass revisits rows that raced.
	AddTotal(rows int64)
	// Done reports rows visited by a committed batch.
	Done(rows int64)
}

// Stats count what a run did. Rows a run leaves undone are counted by
// reason; a run is complete when Left is zero.
type Stats struct {
	Visited int64 // rows read by committed batches, over all passes
	Updated int64 // rows rewritten
	Batches int   // committed batches

	Raced         int64 // rows the application changed under the last pass; run again
	NoTenant      int64 // rows whose tenant column is NULL: left as they are
	Undecryptable int64 // reencrypt: values that do not open for their row's tenant
	Invalid       int64 // encrypt-existing: plaintext that is not valid for the declared type

	// ShreddedTenants are tenants whose data keys are all shredded; their
	// values are left alone (they can never be opened again).
	ShreddedTenants []string
}

// Left is how many rows the run could not finish, for whatever reason.
func (s Stats) Left() int64 { return s.Raced + s.NoTenant + s.Undecryptable + s.Invalid }

// ErrRowSecurity means that upstream.user is subject to row-level security
// on the table, so visiting every tenant's rows needs a role that bypasses
// it (BYPASSRLS, or the table owner without FORCE ROW LEVEL SECURITY), or
// one run per tenant with Options.Tenant.
var ErrRowSecurity = errors.New("upstream.user is subject to row-level security on this table")

func (o *Options) defaults() {
	if o.TenantColumn == "" {
		o.TenantColumn = DefaultTenantColumn
	}
	if o.TenantSetting == "" {
		o.TenantSetting = config.DefaultTenantSetting
	}
	if o.BatchSize <= 0 {
		o.BatchSize = DefaultBatchSize
	}
	if o.MaxPasses <= 0 {
		o.MaxPasses = DefaultMaxPasses
	}
}

// work is one walk over one table: which rows still need work and what to
// do with each.
type work struct {
	t      *tableInfo
	tenant string // rows of this tenant only; "" for every row

	// where is the SQL predicate of rows that still need work; it may
	// use $1..$len(args).
	where string
	args  []any

	// selects are the expressions read after the key and the tenant, and
	// dest makes a fresh set of Scan destinations for them.
	selects []string
	dest    func() []any

	// handle decides what to do with one row: an update, written only when
	// it assigns something (it may be nil), and the reason the row or a
	// value of it is left as it is (skipNone when none is).
	handle func(ctx context.Context, tenant *string, vals []any) (*update, skip, error)
}

// skip is why a row was left as it was.
type skip int

const (
	skipNone skip = iota
	skipNoTenant
	skipUndecryptable
	skipInvalid
)

// update is a compare-and-set UPDATE of one row: the assignments and the
// conditions that must still hold.
type update struct {
	key    []string // set by the runner
	sets   []assign
	guards []guard
}

type assign struct {
	col string // quoted
	val any    // nil: NULL
}

type guardOp int

const (
	guardIsNull guardOp = iota // col IS NULL
	guardEqual                 // col = val
	guardText                  // col::text = val
)

type guard struct {
	col string // quoted
	op  guardOp
	val any
}

// tenantFilter returns the predicate restricting w to its tenant, using
// parameter $n, and the parameter.
func (w *work) tenantFilter(n int) (string, []any) {
	if w.tenant == "" {
		return "", nil
	}
	return fmt.Sprintf(" AND %s = $%d::text::%s", w.t.tenant.ident, n, w.t.tenant.typ), []any{w.tenant}
}

// runner runs works with the options' batching and reporting.
type runner struct {
	o     Options
	stats *Stats
	batch int // batches begun, for beforeWrite
}

// count returns how many rows of w need work.
func (r *runner) count(ctx context.Context, w *work) (int64, error) {
	filter, fargs := w.tenantFilter(len(w.args) + 1)
	q := fmt.Sprintf("SELECT count(*) FROM %s WHERE (%s)%s", w.t.ident, w.where, filter)
	var n int64
	err := r.inTx(ctx, w, func(tx pgx.Tx) error {
		return tx.QueryRow(ctx, q, append(append([]any{}, w.args...), fargs...)...).Scan(&n)
	})
	return n, err
}

// run walks w in passes until a pass has no races or MaxPasses is reached.
func (r *runner) run(ctx context.Context, w *work) error {
	total, err := r.count(ctx, w)
	if err != nil {
		return err
	}
	if r.o.Progress != nil {
		r.o.Progress.AddTotal(total)
	}
	if total == 0 {
		return nil
	}
	for pass := 1; ; pass++ {
		raced, err := r.pass(ctx, w, pass == 1)
		if err != nil {
			return err
		}
		if raced == 0 || pass >= r.o.MaxPasses {
			r.stats.Raced += raced
			return nil
		}
		// Revisit: the rows that raced still need work (unless the
		// application's write did it), and so may others written since.
		more, err := r.count(ctx, w)
		if err != nil {
			return err
		}
		if r.o.Progress != nil {
			r.o.Progress.AddTotal(more)
		}
	}
}

// pass walks w once in key order and returns how many rows raced. Skipped
// rows are counted only on the first pass, so that a row left alone is
// counted once.
func (r *runner) pass(ctx context.Context, w *work, first bool) (raced int64, err error) {
	var after []string
	for {
		n, last, batchRaced, err := r.runBatch(ctx, w, after, first)
		if err != nil {
			return raced, err
		}
		raced += batchRaced
		if n < r.o.BatchSize {
			return raced, nil
		}
		after = last
		if r.o.Pause > 0 {
			select {
			case <-ctx.Done():
				return raced, ctx.Err()
			case <-time.After(r.o.Pause):
			}
		}
	}
}

// runBatch runs one batch in one transaction: the rows after the key
// after (nil: from the start), their updates, commit. It returns how many
// rows it read, the last key read, and how many updates matched no row.
func (r *runner) runBatch(ctx context.Context, w *work, after []string, first bool) (n int, last []string, raced int64, err error) {
	t := w.t
	args := append([]any{}, w.args...)
	filter, fargs := w.tenantFilter(len(args) + 1)
	args = append(args, fargs...)
	keyset := ""
	if after != nil {
		keyset = fmt.Sprintf(" AND (%s) > (%s)", t.keyList(), t.keyParams(len(args)+1))
		for _, k := range after {
			args = append(args, k)
		}
	}
	q := fmt.Sprintf("SELECT %s, %s::text AS pgcloak_tenant, %s FROM %s WHERE (%s)%s%s ORDER BY %s LIMIT %d",
		t.keyText(), t.tenant.ident, strings.Join(w.selects, ", "), t.ident, w.where, filter, keyset, t.keyList(), r.o.BatchSize)

	var (
		updated int64
		skipped [4]int64
	)
	r.batch++
	batchNo := r.batch
	err = r.inTx(ctx, w, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, q, args...)
		if err != nil {
			return err
		}
		var ups []*update
		for rows.Next() {
			key := make([]string, len(t.key))
			var tenant *string
			vals := w.dest()
			dst := make([]any, 0, len(key)+1+len(vals))
			for i := range key {
				dst = append(dst, &key[i])
			}
			dst = append(dst, &tenant)
			dst = append(dst, vals...)
			if err := rows.Scan(dst...); err != nil {
				rows.Close()
				return err
			}
			n++
			last = key
			up, why, err := w.handle(ctx, tenant, vals)
			if err != nil {
				rows.Close()
				return err
			}
			skipped[why]++
			if up != nil && len(up.sets) > 0 {
				up.key = key
				ups = append(ups, up)
			}
		}
		if err := rows.Err(); err != nil {
			return err
		}
		if r.o.beforeWrite != nil {
			r.o.beforeWrite(ctx, batchNo)
		}
		if len(ups) == 0 {
			return nil
		}
		b := &pgx.Batch{}
		for _, up := range ups {
			sql, uargs := t.updateSQL(up)
			b.Queue(sql, uargs...)
		}
		res := tx.SendBatch(ctx, b)
		for range ups {
			tag, err := res.Exec()
			if err != nil {
				res.Close()
				return err
			}
			if tag.RowsAffected() == 1 {
				updated++
			} else {
				raced++
			}
		}
		return res.Close()
	})
	if err != nil {
		return 0, nil, 0, err
	}
	if n > 0 {
		r.stats.Batches++
	}
	r.stats.Visited += int64(n)
	r.stats.Updated += updated
	if first {
		r.stats.NoTenant += skipped[skipNoTenant]
		r.stats.Undecryptable += skipped[skipUndecryptable]
		r.stats.Invalid += skipped[skipInvalid]
	}
	if r.o.Progress != nil {
		r.o.Progress.Done(int64(n))
	}
	return n, last, raced, nil
}

// inTx runs fn in a transaction with the session settings every batch
// needs: the text formats coltype's canonical forms assume, and either the
// tenant (row-level security applies) or row_security off (it must not).
func (r *runner) inTx(ctx context.Context, w *work, fn func(pgx.Tx) error) error {
	err := pgx.BeginFunc(ctx, r.o.Pool, func(tx pgx.Tx) error {
		q := `SELECT set_config('TimeZone', 'UTC', true), set_config('DateStyle', 'ISO, MDY', true),
			set_config('extra_float_digits', '1', true), set_config('bytea_output', 'hex', true)`
		args := []any{}
		if w.tenant == "" {
			q += `, set_config('row_security', 'off', true)`
		} else {
			q += `, set_config($1, $2, true)`
			args = append(args, r.o.TenantSetting, w.tenant)
		}
		if _, err := tx.Exec(ctx, q, args...); err != nil {
			return err
		}
		if w.tenant != "" && r.o.Pinner != nil {
			if err := r.o.Pinner.PinTx(ctx, tx, r.o.TenantSetting, w.tenant); err != nil {
				return err
			}
		}
		return fn(tx)
	})
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == pgerrcode.InsufficientPrivilege && strings.Contains(pgErr.Message, "row-level security") {
		// PostgreSQL raises this only with row_security off; the
		// message is its own and names no value.
		return fmt.Errorf("%s: %w", w.t.name, ErrRowSecurity)
	}
	if err != nil {
		return fmt.Errorf("%s: %w", w.t.name, err)
	}
	return nil
}

// updateSQL builds the compare-and-set UPDATE of up, with the key as its
// first parameters.
func (t *tableInfo) updateSQL(up *update) (string, []any) {
	var b strings.Builder
	args := make([]any, 0, len(t.key)+len(up.sets)+len(up.guards))
	b.WriteString("UPDATE ")
	b.WriteString(t.ident)
	b.WriteString(" SET ")
	for i, s := range up.sets {
		if i > 0 {
			b.WriteString(", ")
		}
		if s.val == nil {
			fmt.Fprintf(&b, "%s = NULL", s.col)
			continue
		}
		args = append(args, s.val)
		fmt.Fprintf(&b, "%s = $%d", s.col, len(args))
	}
	fmt.Fprintf(&b, " WHERE (%s) = (%s)", t.keyList(), t.keyParams(len(args)+1))
	for _, k := range up.key {
		args = append(args, k)
	}
	for _, g := range up.guards {
		switch g.op {
		case guardIsNull:
			fmt.Fprintf(&b, " AND %s IS NULL", g.col)
		case guardEqual:
			args = append(args, g.val)
			fmt.Fprintf(&b, " AND %s = $%d", g.col, len(args))
		case guardText:
			args = append(args, g.val)
			fmt.Fprintf(&b, " AND %s::text = $%d", g.col, len(args))
		}
	}
	return b.String(), args
}
