package proxy

import (
	"context"
	"sync"
	"time"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcloak/pgcloak/config"
	"github.com/pgcloak/pgcloak/rewrite"
)

// catalogViews builds, on a tenant session's first catalog read, the
// derived tables through which tenant sessions read the catalog (see
// rewrite.CatalogViews): they repeat the column lists of the server's own
// catalog relations, which pgcloak reads once.
type catalogViews struct {
	pool *pgxpool.Pool
	enc  config.Encrypt

	mu    sync.Mutex
	views *rewrite.CatalogViews
}

func newCatalogViews(pool *pgxpool.Pool, enc config.Encrypt) *catalogViews {
	return &catalogViews{pool: pool, enc: enc}
}

// get returns the views, reading the column lists the first time (and
// again after a failure).
func (c *catalogViews) get() (*rewrite.CatalogViews, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.views != nil {
		return c.views, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	rows, err := c.pool.Query(ctx, rewrite.CatalogColumnsQuery)
	if err != nil {
		return nil, err
	}
	var cols rewrite.CatalogColumns
	for rows.Next() {
		var rel, col string
		if err := rows.Scan(&rel, &col); err != nil {
			rows.Close()
			return nil, err
		}
		cols.Add(rel, col)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	v, err := rewrite.NewCatalogViews(c.enc, cols)
	if err != nil {
		return nil, err
	}
	c.views = v
	return v, nil
}

// catalogView returns sql with its catalog reads replaced by pgcloak's
// views in a session with a tenant, where an application, its ORM or psql
// must see the declared columns as declared; other sessions keep the real
// catalog.
func (s *session) catalogView(sql string) (string, error) {
	if !s.scoped || s.decl.views == nil || !rewrite.MentionsCatalog(sql) {
		return sql, nil
	}
	v, err := s.decl.views.get()
	if err != nil {
		s.log.Warn().Err(err).Msg("cannot read the catalog's column lists for the declared-schema views")
		return "", &clientError{code: pgerrcode.SystemError, msg: "cannot prepare the catalog as the application declared it; try again"}
	}
	out, _, err := v.Rewrite(sql)
	if err != nil {
		return "", &clientError{code: pgerrcode.FeatureNotSupported, msg: "cannot show this catalog query the declared schema: " + err.Error()}
	}
	return out, nil
}
