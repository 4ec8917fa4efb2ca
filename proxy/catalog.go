package proxy

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/pgcloak/pgcloak/config"
	"github.com/pgcloak/pgcloak/crypto"
)

// columnOrigin is a field's origin as RowDescription reports it.
type columnOrigin struct {
	table  uint32 // pg_class oid
	attnum uint16
}

// declaredField is what a result field whose origin is a declared table
// means to the proxy.
type declaredField struct {
	table  *config.Table
	column *config.Column // the declared column, also set for its index column
	index  bool           // the field is the column's index column
	ref    ValueRef       // the column for the key layer, built once
}

// catalog maps RowDescription origins (table OID, attribute number) to
// declared columns. It learns declared tables' OIDs from pg_catalog at start
// and whenever a result names a table OID it has not seen, so a table
// created or recreated after start is found without a restart. Lookups are
// safe for concurrent use; a miss costs one catalog query per distinct OID.
type catalog struct {
	pool    *pgxpool.Pool
	tables  map[string]*config.Table // "schema.name" -> declaration
	timeout time.Duration

	mu       sync.RWMutex
	fields   map[columnOrigin]declaredField
	declared map[uint32]bool // table oid -> is a declared table (false: known not declared)
}

// maxKnownOIDs bounds the negative cache of undeclared table OIDs.
const maxKnownOIDs = 100_000

func newCatalog(pool *pgxpool.Pool, enc config.Encrypt) *catalog {
	c := &catalog{
		pool:     pool,
		tables:   make(map[string]*config.Table, len(enc.Tables)),
		timeout:  5 * time.Second,
		fields:   make(map[columnOrigin]declaredField),
		declared: make(map[uint32]bool),
	}
	for i := range enc.Tables {
		t := &enc.Tables[i]
		c.tables[t.QualifiedName()] = t
	}
	return c
}

// load reads every declared table that exists now.
func (c *catalog) load(ctx context.Context) error {
	if len(c.tables) == 0 {
		return nil
	}
	names := make([]string, 0, len(c.tables))
	for n := range c.tables {
		names = append(names, n)
	}
	rows, err := c.pool.Query(ctx, `
		SELECT c.oid, n.nspname || '.' || c.relname
		FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname || '.' || c.relname = ANY($1) AND c.relkind IN ('r', 'p')`, names)
	if err != nil {
		return fmt.Errorf("catalog: %w", err)
	}
	var oids []uint32
	var quals []string
	for rows.Next() {
		var oid uint32
		var qual string
		if err := rows.Scan(&oid, &qual); err != nil {
			return fmt.Errorf("catalog: %w", err)
		}
		oids = append(oids, oid)
		quals = append(quals, qual)
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("catalog: %w", err)
	}
	for i, oid := range oids {
		if err := c.learn(ctx, oid, quals[i]); err != nil {
			return err
		}
	}
	return nil
}

// learn records the attribute numbers of declared table qual with oid.
func (c *catalog) learn(ctx context.Context, oid uint32, qual string) error {
	t := c.tables[qual]
	if t == nil {
		c.mu.Lock()
		if len(c.declared) < maxKnownOIDs {
			c.declared[oid] = false
		}
		c.mu.Unlock()
		return nil
	}
	rows, err := c.pool.Query(ctx, `
		SELECT attnum, attname FROM pg_catalog.pg_attribute
		WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped`, oid)
	if err != nil {
		return fmt.Errorf("catalog: attributes of %s: %w", qual, err)
	}
	found := make(map[columnOrigin]declaredField)
	for rows.Next() {
		var attnum int16
		var name string
		if err := rows.Scan(&attnum, &name); err != nil {
			return fmt.Errorf("catalog: %w", err)
		}
		for i := range t.Columns {
			col := &t.Columns[i]
			switch name {
			case col.Name:
				found[columnOrigin{oid, uint16(attnum)}] = declaredField{table: t, column: col, ref: valueRef(t, col)}
			case col.IndexColumn:
				if col.IndexColumn != "" {
					found[columnOrigin{oid, uint16(attnum)}] = declaredField{table: t, column: col, index: true, ref: valueRef(t, col)}
				}
			}
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("catalog: %w", err)
	}
	c.mu.Lock()
	c.declared[oid] = true
	for k, v := range found {
		c.fields[k] = v
	}
	c.mu.Unlock()
	return nil
}

// lookup returns the declared meaning of a result field, resolving a table
// OID it has not seen before from pg_catalog. ok is false for fields of
// undeclared tables and for computed fields (table OID 0).
func (c *catalog) lookup(ctx context.Context, o columnOrigin) (declaredField, bool, error) {
	if o.table == 0 || len(c.tables) == 0 {
		return declaredField{}, false, nil
	}
	c.mu.RLock()
	known, seen := c.declared[o.table]
	f, ok := c.fields[o]
	c.mu.RUnlock()
	if seen {
		return f, known && ok, nil
	}
	if !crypto.MayWait(ctx) {
		return declaredField{}, false, errLoopWouldWait // the relay loop's thread
	}
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	var qual string
	err := c.pool.QueryRow(ctx, `
		SELECT n.nspname || '.' || c.relname
		FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
		WHERE c.oid = $1`, o.table).Scan(&qual)
	if errors.Is(err, pgx.ErrNoRows) {
		// A table the session made in a transaction not yet committed
		// (a temporary table, say): invisible to the catalog's own
		// connection, and not a declared table, which exists. Not
		// remembered: the OID may name another table later.
		return declaredField{}, false, nil
	}
	if err != nil {
		return declaredField{}, false, fmt.Errorf("catalog: table oid %d: %w", o.table, err)
	}
	if err := c.learn(ctx, o.table, qual); err != nil {
		return declaredField{}, false, err
	}
	c.mu.RLock()
	f, ok = c.fields[o]
	c.mu.RUnlock()
	return f, ok, nil
}

// peek says, without asking pg_catalog, whether a result field is a
// declared column (or a declared column's index column), and whether the
// catalog knows its table at all (known false: lookup would ask).
func (c *catalog) peek(o columnOrigin) (declared, known bool) {
	if o.table == 0 || len(c.tables) == 0 {
		return false, true
	}
	c.mu.RLock()
	defer c.mu.RUnlock()
	isDeclared, seen := c.declared[o.table]
	_, ok := c.fields[o]
	return seen && isDeclared && ok, seen
}

// reset forgets everything learned, so the next lookups read pg_catalog
// again: after SIGHUP, or DDL that renumbered a declared table's columns.
func (c *catalog) reset() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.fields = make(map[columnOrigin]declaredField)
	c.declared = make(map[uint32]bool)
}
