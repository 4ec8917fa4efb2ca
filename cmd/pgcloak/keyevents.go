package main

import (
	"context"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/pgcloak/pgcloak/audit"
	"github.com/pgcloak/pgcloak/config"
	"github.com/pgcloak/pgcloak/crypto"
	"github.com/pgcloak/pgcloak/keystore"
	"github.com/rs/zerolog"
)

// Reconnect backoff of the key-event listener: it starts at
// keyEventsMinBackoff and doubles up to keyEventsMaxBackoff; a connection
// that listened for keyEventsStable resets it.
const (
	keyEventsMinBackoff = 100 * time.Millisecond
	keyEventsMaxBackoff = 30 * time.Second
	keyEventsStable     = time.Minute
)

// keyEvents keeps one replica's key cache in step with the key events of
// every other process (keys rotate, keys shred, a replica rotating a key at
// its encryption limit): on a dedicated upstream connection it LISTENs on
// keystore.NotifyChannel and purges the event's tenant from the cache, so
// that the next seal loads the new active version and a shredded tenant's
// values stop opening at once rather than after keys.cache_ttl.
//
// Notifications sent while the connection is down are lost, so after
// every (re)connection, once LISTEN is in place, it purges the whole cache.
// While it is disconnected the cache TTL is the only bound on how long a
// replica serves a shredded key.
type keyEvents struct {
	cc    *pgx.ConnConfig
	cache *crypto.KeyCache
	audit *audit.Logger
	log   zerolog.Logger

	cancel    context.CancelFunc
	done      chan struct{}
	listening chan struct{} // closed once the first LISTEN and purge are done
	once      sync.Once
}

// startKeyEvents starts the listener on its own connection as
// upstream.user and waits, up to the upstream connect timeout, until it
// listens: the purge after its first LISTEN would otherwise land among the
// first sessions' seals and drop the encryptions they reserved (a whole
// version's worth under a small keys.rotate_after_encryptions). If it does
// not listen in time, serve starts anyway and the listener keeps trying.
// Its stop function ends it and waits for it; call it before closing the
// cache.
func startKeyEvents(u config.Upstream, cache *crypto.KeyCache, auditLog *audit.Logger, log zerolog.Logger) (stop func() error, err error) {
	timeout := connectTimeout(u)
	cc, err := upstreamConnConfig(u, timeout, "pgcloak key events")
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	ke := &keyEvents{
		cc:        cc,
		cache:     cache,
		audit:     auditLog,
		log:       log.With().Str("component", "key_events").Logger(),
		cancel:    cancel,
		done:      make(chan struct{}),
		listening: make(chan struct{}),
	}
	go ke.run(ctx)
	select {
	case <-ke.listening:
	case <-time.After(timeout):
		ke.log.Warn().Dur("waited", timeout).Msg("key events: not listening yet; serving anyway, cached keys will be purged once it listens")
	}
	var once sync.Once
	return func() error {
		once.Do(func() {
			ke.cancel()
			<-ke.done
		})
		return nil
	}, nil
}

// run connects, listens and reconnects with backoff until ctx ends.
func (ke *keyEvents) run(ctx context.Context) {
	defer close(ke.done)
	backoff := keyEventsMinBackoff
	for ctx.Err() == nil {
		started := time.Now()
		err := ke.listenOnce(ctx)
		if ctx.Err() != nil {
			return
		}
		if time.Since(started) >= keyEventsStable {
			backoff = keyEventsMinBackoff
		}
		ke.log.Warn().Err(err).Dur("retry_in", backoff).Msg("key events: connection lost; cached keys will be purged after reconnecting")
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
			return
		}
		backoff = min(2*backoff, keyEventsMaxBackoff)
	}
}

// listenOnce runs one connection: LISTEN, purge everything that may have
// been missed, then deliver events until the connection or ctx ends.
func (ke *keyEvents) listenOnce(ctx context.Context) error {
	conn, err := pgx.ConnectConfig(ctx, ke.cc)
	if err != nil {
		return redact(err, config.Secret(ke.cc.Password))
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		conn.Close(cctx)
	}()
	// LISTEN before purging, so that no event falls between the two;
	// keystore.Listen repeats it, which PostgreSQL ignores.
	if _, err := conn.Exec(ctx, "LISTEN "+keystore.NotifyChannel); err != nil {
		return err
	}
	if n := ke.cache.PurgeAll(); n > 0 {
		ke.audit.KeyPurgeReceived("reconnect", "", "", n)
		ke.log.Info().Int("keys", n).Msg("key events: (re)connected; purged every cached key")
	}
	ke.once.Do(func() { close(ke.listening) })
	ke.log.Debug().Msg("key events: listening")
	return keystore.Listen(ctx, conn, ke.handle)
}

// handle purges an event's tenant. A rotation of one class purges the
// tenant's other classes too: they reload on their next use, which costs
// one unwrap each.
func (ke *keyEvents) handle(ev keystore.Event) {
	switch ev.Kind {
	case keystore.EventRotate, keystore.EventShred:
	default:
		ke.log.Debug().Str("kind", string(ev.Kind)).Msg("key events: unknown event kind; purging its tenant anyway")
	}
	if ev.Tenant == "" {
		return
	}
	n := ke.cache.Purge(ev.Tenant)
	ke.audit.KeyPurgeReceived(string(ev.Kind), ev.Tenant, ev.KeyClass, n)
	ke.log.Info().Str("kind", string(ev.Kind)).Str("tenant", ev.Tenant).Str("key_class", ev.KeyClass).Int("keys", n).Msg("key events: purged tenant's cached keys")
}

// sealLimitAudit is the crypto.CacheOptions.OnSealLimitRotate of serve and
// the migrations (see keyCacheOptions): the audit event and log line of a
// rotation at the encryption limit.
func sealLimitAudit(auditLog *audit.Logger, log zerolog.Logger) func(from, to crypto.KeyID) {
	return func(from, to crypto.KeyID) {
		auditLog.KeyRotated(to.Tenant, to.KeyClass, string(to.Purpose), int(to.Version), crypto.ReasonEncryptionLimit)
		log.Info().Str("tenant", to.Tenant).Str("key_class", to.KeyClass).Uint32("from_version", from.Version).Uint32("version", to.Version).
			Msg("data key reached its encryption limit; rotated")
	}
}
