package migrate

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/pgcloak/pgcloak/coltype"
	"github.com/pgcloak/pgcloak/config"
	"github.com/pgcloak/pgcloak/crypto"
)

// DefaultPlaintextSuffix names the column that holds a declared column's
// plaintext while a table is migrated: ssn's plaintext is in ssn_plain.
const DefaultPlaintextSuffix = "_plain"

// EncryptOptions configure EncryptExisting.
type EncryptOptions struct {
	Options

	// Table is the declared table to encrypt.
	Table *config.Table

	// PlaintextSuffix names each declared column's plaintext column: the
	// column's name plus the suffix (default _plain).
	PlaintextSuffix string
}

// PlaintextColumn is the name of the plaintext column of a declared column
// during a migration: the column's name plus suffix (PlaintextSuffix).
func PlaintextColumn(column, suffix string) string {
	return column + suffix
}

// EncryptExisting moves the plaintext of o.Table's declared columns into
// pgcloak's layout: for every row, each plaintext column's value is
// validated and canonicalised as its declared type, sealed under the row's
// tenant's active data key into the declared (bytea) column, indexed into
// the index column when the column is searchable, and the plaintext column
// is set to NULL - all in one compare-and-set UPDATE, so a row is either
// still plaintext or fully moved. A declared column that the application
// already wrote through the proxy keeps that newer value; its stale
// plaintext is cleared.
//
// Declared columns without a plaintext column (already migrated, or new)
// are left out; it is an error if no declared column has one. Rows whose
// plaintext is invalid for the declared type, or whose tenant is NULL, are
// counted and left as they are.
func EncryptExisting(ctx context.Context, o EncryptOptions) (Stats, error) {
	o.defaults()
	if o.PlaintextSuffix == "" {
		o.PlaintextSuffix = DefaultPlaintextSuffix
	}
	var st Stats
	if o.Table == nil {
		return st, errors.New("no table to encrypt")
	}
	t, err := inspect(ctx, o.Pool, o.Table, o.TenantColumn)
	if err != nil {
		return st, err
	}
	w, err := encryptWork(o, t)
	if err != nil {
		return st, err
	}
	r := &runner{o: o.Options, stats: &st}
	return st, r.run(ctx, w)
}

// encryptTargets returns the declared columns of t that have a plaintext
// column.
func encryptTargets(o EncryptOptions, t *tableInfo) ([]encTarget, error) {
	var targets []encTarget
	for _, c := range t.decl.Columns {
		pc, ok := t.cols[PlaintextColumn(c.Name, o.PlaintextSuffix)]
		if !ok {
			continue
		}
		if pc.typ == "bytea" && c.Type != "bytea" {
			return nil, &SchemaError{Table: t.name, Column: pc.name, Problem: fmt.Sprintf("is bytea, but %s is declared %s: the plaintext column must keep the application's original type", c.Name, c.Type)}
		}
		tg := encTarget{
			decl:  c,
			col:   crypto.Column{Table: t.name, Name: c.Name, KeyClass: c.KeyClass},
			ident: t.cols[c.Name].ident,
			plain: pc,
		}
		if c.IndexColumn != "" {
			tg.index = t.cols[c.IndexColumn].ident
		}
		targets = append(targets, tg)
	}
	if len(targets) == 0 {
		return nil, &SchemaError{Table: t.name, Problem: fmt.Sprintf("no declared column has a plaintext column (<column>%s): nothing to encrypt", o.PlaintextSuffix)}
	}
	return targets, nil
}

type encTarget struct {
	decl  config.Column
	col   crypto.Column
	ident string // the declared column, quoted
	index string // its index column, quoted; "" when not searchable
	plain column
}

// encryptWork is the walk over t's rows that still have plaintext.
func encryptWork(o EncryptOptions, t *tableInfo) (*work, error) {
	targets, err := encryptTargets(o, t)
	if err != nil {
		return nil, err
	}
	w := &work{t: t, tenant: o.Tenant}
	var preds []string
	for _, tg := range targets {
		preds = append(preds, tg.plain.ident+" IS NOT NULL")
		w.selects = append(w.selects, tg.plain.ident+"::text", tg.ident)
	}
	w.where = strings.Join(preds, " OR ")
	w.dest = func() []any {
		d := make([]any, 0, 2*len(targets))
		for range targets {
			d = append(d, new(*string), new([]byte))
		}
		return d
	}
	w.handle = func(ctx context.Context, tenant *string, vals []any) (*update, skip, error) {
		if tenant == nil {
			return nil, skipNoTenant, nil
		}
		keyring := o.Keys.Keyring(*tenant)
		up := &update{}
		why := skipNone
		for i, tg := range targets {
			plain := *vals[2*i].(**string)
			if plain == nil {
				continue
			}
			if enc := *vals[2*i+1].(*[]byte); enc != nil {
				// Written through the proxy since the table was
				// prepared: that value is newer than the plaintext.
				up.sets = append(up.sets, assign{col: tg.plain.ident})
				up.guards = append(up.guards, guard{col: tg.ident, op: guardEqual, val: enc})
				continue
			}
			canonical, err := coltype.Canonical(tg.decl.Type, *plain)
			if err != nil {
				why = skipInvalid
				continue
			}
			sealed, err := keyring.Seal(ctx, nil, []byte(canonical), tg.col)
			if err != nil {
				return nil, skipNone, err
			}
			up.sets = append(up.sets, assign{col: tg.ident, val: sealed}, assign{col: tg.plain.ident})
			if tg.index != "" {
				idx, err := keyring.BlindIndex(ctx, nil, []byte(canonical), tg.col, crypto.Normalization(tg.decl.Normalize))
				if err != nil {
					return nil, skipNone, err
				}
				up.sets = append(up.sets, assign{col: tg.index, val: idx})
			}
			up.guards = append(up.guards,
				guard{col: tg.ident, op: guardIsNull},
				guard{col: tg.plain.ident, op: guardText, val: *plain})
		}
		return up, why, nil
	}
	return w, nil
}
