package migrate

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/pgcloak/pgcloak/config"
	"github.com/pgcloak/pgcloak/crypto"
	"github.com/pgcloak/pgcloak/keystore"
)

// ReencryptOptions configure Reencrypt.
type ReencryptOptions struct {
	Options

	// Tables are the declared tables to visit.
	Tables []config.Table

	// Store lists the tenants' key versions: the tenants to visit and the
	// active data-key version of each (tenant, key class).
	Store *keystore.Store

	// Reindex recomputes the blind index of every searchable value and
	// writes those that differ: run it after rotating a tenant's index key.
	Reindex bool
}

// Reencrypt rewrites every value sealed under an older data-key version
// than its tenant's active one, in the declared tables, under the active
// version; with Reindex it also recomputes blind indexes. See the package
// documentation for batching, concurrency and resumption. It returns what
// it did so far together with any error; an error ends the run, the
// committed batches stay done.
func Reencrypt(ctx context.Context, o ReencryptOptions) (Stats, error) {
	o.defaults()
	var st Stats
	if len(o.Tables) == 0 {
		return st, errors.New("no tables to re-encrypt")
	}
	versions, err := activeVersions(ctx, o.Store, o.Tenant)
	if err != nil {
		return st, err
	}
	tenants := slices.Sorted(maps.Keys(versions))
	for _, tenant := range tenants {
		if versions[tenant] == nil {
			st.ShreddedTenants = append(st.ShreddedTenants, tenant)
		}
	}
	r := &runner{o: o.Options, stats: &st}
	for i := range o.Tables {
		t, err := inspect(ctx, o.Pool, &o.Tables[i], o.TenantColumn)
		if err != nil {
			return st, err
		}
		for _, tenant := range tenants {
			active := versions[tenant]
			if active == nil {
				continue // shredded
			}
			w := reencryptWork(r, t, tenant, active, o.Reindex)
			if w == nil {
				continue
			}
			if err := r.run(ctx, w); err != nil {
				return st, err
			}
		}
	}
	return st, nil
}

// activeVersions returns, per tenant (only tenant, when set), the active
// data-key version of each key class: the highest version not shredded. A
// tenant whose data keys are all shredded maps to nil.
func activeVersions(ctx context.Context, store *keystore.Store, tenant string) (map[string]map[string]uint32, error) {
	infos, err := store.List(ctx, tenant)
	if err != nil {
		return nil, err
	}
	versions := make(map[string]map[string]uint32)
	for _, k := range infos {
		if k.ID.Purpose != crypto.PurposeData {
			continue
		}
		if _, ok := versions[k.ID.Tenant]; !ok {
			versions[k.ID.Tenant] = nil
		}
		if k.State == keystore.StateShredded {
			continue
		}
		if versions[k.ID.Tenant] == nil {
			versions[k.ID.Tenant] = make(map[string]uint32)
		}
		if k.ID.Version > versions[k.ID.Tenant][k.ID.KeyClass] {
			versions[k.ID.Tenant][k.ID.KeyClass] = k.ID.Version
		}
	}
	if tenant != "" && len(versions) == 0 {
		return nil, fmt.Errorf("tenant %q has no data keys", tenant)
	}
	return versions, nil
}

// reencryptWork is the walk over t's rows of tenant that hold a value
// under an old version (or, with reindex, any searchable value). It is nil
// when the tenant has no key of any declared column's class.
func reencryptWork(r *runner, t *tableInfo, tenant string, active map[string]uint32, reindex bool) *work {
	type target struct {
		decl    config.Column
		col     crypto.Column
		version uint32
		ident   string
		index   string // quoted index column, "" unless reindexing it
	}
	w := &work{t: t, tenant: tenant}
	var (
		targets []target
		preds   []string
	)
	for _, c := range t.decl.Columns {
		v, ok := active[c.KeyClass]
		if !ok {
			continue // no value of this class was ever sealed for the tenant
		}
		tg := target{
			decl:    c,
			col:     crypto.Column{Table: t.name, Name: c.Name, KeyClass: c.KeyClass},
			version: v,
			ident:   t.cols[c.Name].ident,
		}
		w.selects = append(w.selects, tg.ident)
		var pred string
		if reindex && c.IndexColumn != "" {
			tg.index = t.cols[c.IndexColumn].ident
			pred = "true"
			w.selects = append(w.selects, tg.index)
		} else {
			// Bytes 2 to 5 of a value are its key version, big-endian,
			// so they compare as bytea in version order.
			w.args = append(w.args, binary.BigEndian.AppendUint32(nil, v))
			pred = fmt.Sprintf("substring(%s from 2 for 4) < $%d", tg.ident, len(w.args))
		}
		preds = append(preds, fmt.Sprintf("(%s IS NOT NULL AND %s)", tg.ident, pred))
		targets = append(targets, tg)
	}
	if len(targets) == 0 {
		return nil
	}
	w.where = strings.Join(preds, " OR ")
	w.dest = func() []any {
		d := make([]any, 0, len(w.selects))
		for _, tg := range targets {
			d = append(d, new([]byte))
			if tg.index != "" {
				d = append(d, new([]byte))
			}
		}
		return d
	}
	keyring := r.o.Keys.Keyring(tenant)
	w.handle = func(ctx context.Context, _ *string, vals []any) (*update, skip, error) {
		up := &update{}
		why := skipNone
		i := 0
		for _, tg := range targets {
			value := *vals[i].(*[]byte)
			i++
			var stored []byte
			if tg.index != "" {
				stored = *vals[i].(*[]byte)
				i++
			}
			if value == nil {
				continue
			}
			version, err := crypto.KeyVersion(value)
			if err != nil {
				why = skipUndecryptable
				continue
			}
			reseal := version < tg.version
			if !reseal && tg.index == "" {
				continue
			}
			plaintext, err := keyring.Open(ctx, nil, value, tg.col)
			if errors.Is(err, crypto.ErrDecrypt) {
				why = skipUndecryptable
				continue
			}
			if err != nil {
				return nil, skipNone, err
			}
			changed := false
			if reseal {
				sealed, err := keyring.Seal(ctx, nil, plaintext, tg.col)
				if err != nil {
					clear(plaintext)
					return nil, skipNone, err
				}
				up.sets = append(up.sets, assign{col: tg.ident, val: sealed})
				changed = true
			}
			if tg.index != "" {
				idx, err := keyring.BlindIndex(ctx, nil, plaintext, tg.col, crypto.Normalization(tg.decl.Normalize))
				if err != nil {
					clear(plaintext)
					return nil, skipNone, err
				}
				if !bytes.Equal(idx, stored) {
					up.sets = append(up.sets, assign{col: tg.index, val: idx})
					changed = true
				}
			}
			clear(plaintext) // best effort, as everywhere
			if changed {
				up.guards = append(up.guards, guard{col: tg.ident, op: guardEqual, val: value})
			}
		}
		return up, why, nil
	}
	return w
}
