package crypto

import (
	"bytes"
	"container/list"
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/singleflight"
)

// Defaults of CacheOptions (keys.cache_ttl and keys.cache_max_entries).
const (
	DefaultCacheTTL        = 60 * time.Second
	DefaultCacheMaxEntries = 10000
	DefaultLoadTimeout     = 30 * time.Second
)

// Defaults of the encryption limit (CacheOptions.RotateAfterSeals and
// SealBlock).
const (
	// DefaultRotateAfterSeals is 2^30. AES-GCM with random 96-bit nonces
	// stays within NIST SP 800-38D's bound on nonce collisions for about
	// 2^32 encryptions under one key; 2^30 keeps a wide margin.
	DefaultRotateAfterSeals = 1 << 30
	// DefaultSealBlock is how many encryptions a replica reserves at once:
	// one keystore round trip per 4096 seals.
	DefaultSealBlock = 4096
)

// ReasonEncryptionLimit is the reason KeyCache gives SealCounter.RotateFrom
// when a data key reached its encryption limit. Persisted in key events and
// audit logs: never change it.
const ReasonEncryptionLimit = "encryption limit"

// SealCounter is implemented by a KeySource that counts encryptions per
// data key version for every replica together; package keystore's Store
// does. When the KeySource of a KeyCache is one, Keyring.Seal counts every
// seal and rotates a data key that reached CacheOptions.RotateAfterSeals.
type SealCounter interface {
	// ReserveSeals adds up to n to the encryptions reserved under data key
	// id, never beyond limit in total, and returns how many it added: 0
	// once the version has reached limit. Concurrent calls, from any
	// replica, never reserve more than limit between them. A shredded
	// version is ErrKeyShredded.
	ReserveSeals(ctx context.Context, id KeyID, n, limit uint64) (uint64, error)

	// RotateFrom makes a new active version of from's key, as an
	// operator's rotation does, but only while from is still the active
	// version; it returns the active version afterwards and whether this
	// call created it.
	RotateFrom(ctx context.Context, p Provider, from KeyID, reason string) (KeyID, bool, error)
}

// CacheOptions tunes a KeyCache. The zero value means the defaults.
type CacheOptions struct {
	// TTL is the longest a plaintext data key stays in the cache, counted
	// from when it was loaded. It also bounds how long a replica keeps
	// writing with an active version that another replica has rotated.
	TTL time.Duration

	// MaxEntries bounds the number of cached keys (and remembered missing
	// keys); the oldest entry is evicted to make room.
	MaxEntries int

	// LoadTimeout bounds one load (keystore query plus provider call). A
	// load is shared by every caller waiting for that key, so it does not
	// run under any one caller's context; each caller still stops waiting
	// when its own context ends.
	LoadTimeout time.Duration

	// Now is the clock; nil means time.Now. Tests inject one.
	Now func() time.Time

	// OnKeyLoad, when set, is called after every key the cache obtained
	// through the Provider, for the audit log ("key unwrap"). It must not
	// block for long.
	OnKeyLoad func(KeyEvent)

	// RotateAfterSeals is how many values one data key version may seal,
	// counted across replicas, before the cache rotates the key (only when
	// the KeySource is a SealCounter). Zero means DefaultRotateAfterSeals.
	// serve sets it from keys.rotate_after_encryptions.
	RotateAfterSeals uint64

	// SealBlock is how many encryptions the cache reserves in the
	// KeySource at a time; zero means DefaultSealBlock. Reserved
	// encryptions that a replica does not use (it stopped, or the key was
	// purged or evicted from its cache) are lost, which only makes the
	// count err on the safe side.
	SealBlock uint64

	// OnSealLimitRotate, when set, is called after this cache rotated a
	// data key because it reached RotateAfterSeals, with the version that
	// reached it and the new one. It must not block for long.
	OnSealLimitRotate func(from, to KeyID)
}

// KeyEvent describes a key the cache obtained through the Provider. It
// holds no key material.
type KeyEvent struct {
	ID      KeyID
	KEKID   string
	Created bool // generated as the tenant's first version, not unwrapped
}

// CacheStats are a KeyCache's counters since it was made, for metrics.
type CacheStats struct {
	Hits          uint64 // lookups answered from the cache
	Misses        uint64 // lookups that had to load (or wait for a load)
	ProviderCalls uint64 // Unwrap and GenerateDataKey calls
	Evictions     uint64 // entries removed because they expired or for room
	Purged        uint64 // keys removed by Purge and Close
	Entries       int    // entries now cached
}

// KeyCache holds plaintext data keys, loaded from a KeySource and unwrapped
// by a Provider, for every tenant the process serves. It is keyed by
// (tenant, key class, purpose, version), never by connection: all sessions
// of a tenant share its keys, and concurrent misses for one key share one
// load (singleflight) and so one provider call.
//
// Entries live at most TTL and are swept by a timer, so an idle cache drops
// its keys too. The oldest entry makes room when MaxEntries is reached. An
// evicted or purged key is destroyed (DataKey.Destroy: best effort). Keys
// that the KeySource says are missing or shredded are remembered for TTL as
// well, so that rows naming a version a tenant does not have cannot turn
// every decryption into a query.
//
// When the KeySource is a SealCounter, the cache also counts seals per
// data key version against RotateAfterSeals, reserving blocks of them in
// the KeySource, and rotates a version that reached the limit (see
// Keyring.Seal).
//
// A KeyCache is safe for concurrent use. Call Close when done with it.
type KeyCache struct {
	src         KeySource
	provider    Provider
	ttl         time.Duration
	max         int
	loadTimeout time.Duration
	now         func() time.Time
	onLoad      func(KeyEvent)

	sealer        SealCounter // nil: seals are not counted
	sealLimit     uint64
	sealBlock     uint64
	onLimitRotate func(from, to KeyID)

	mu      sync.Mutex
	entries map[KeyID]*list.Element // of *cacheEntry
	order   list.List               // oldest first; with a fixed TTL, also soonest to expire
	active  map[activeID]uint32     // active version, valid while its entry is cached
	epoch   uint64                  // incremented by Purge; loads begun before it do not cache
	seals   map[KeyID]*sealCounter  // of cached data keys, while counting
	timer   *time.Timer
	closed  bool

	group singleflight.Group

	hits, misses, providerCalls, evictions, purged atomic.Uint64

	// removals counts entries removed (expired, evicted, purged, closed),
	// for Opener: a key it remembers is still the cache's while removals
	// has not moved.
	removals atomic.Uint64
}

// cacheEntry is a loaded key, or (key nil) the KeySource's verdict that it
// is missing or shredded.
type cacheEntry struct {
	id      KeyID
	key     *DataKey
	err     error // ErrKeyNotFound or ErrKeyShredded when key is nil
	expires time.Time
}

// activeID names a key irrespective of version.
type activeID struct {
	tenant, class string
	purpose       Purpose
}

// activeShredded is the version under which the cache remembers that every
// version of a key is shredded; real versions start at 1.
const activeShredded = 0

var errCacheClosed = errors.New("crypto: key cache closed")

// NewKeyCache makes a cache that loads wrapped keys from src and unwraps
// them with p.
func NewKeyCache(src KeySource, p Provider, opts CacheOptions) *KeyCache {
	c := &KeyCache{
		src:         src,
		provider:    p,
		ttl:         opts.TTL,
		max:         opts.MaxEntries,
		loadTimeout: opts.LoadTimeout,
		now:         opts.Now,
		onLoad:      opts.OnKeyLoad,
		entries:     make(map[KeyID]*list.Element),
		active:      make(map[activeID]uint32),

		sealLimit:     opts.RotateAfterSeals,
		sealBlock:     opts.SealBlock,
		onLimitRotate: opts.OnSealLimitRotate,
		seals:         make(map[KeyID]*sealCounter),
	}
	c.sealer, _ = src.(SealCounter)
	if c.sealLimit == 0 {
		c.sealLimit = DefaultRotateAfterSeals
	}
	if c.sealBlock == 0 {
		c.sealBlock = DefaultSealBlock
	}
	if c.ttl <= 0 {
		c.ttl = DefaultCacheTTL
	}
	if c.max <= 0 {
		c.max = DefaultCacheMaxEntries
	}
	if c.loadTimeout <= 0 {
		c.loadTimeout = DefaultLoadTimeout
	}
	if c.now == nil {
		c.now = time.Now
	}
	return c
}

// Keyring returns tenant's view of the cache.
func (c *KeyCache) Keyring(tenant string) Keyring { return Keyring{cache: c, tenant: tenant} }

// Active returns the active version of the (tenant, keyClass, purpose) key,
// creating version 1 just in time when the tenant has none: the Provider
// generates it and the KeySource keeps whichever replica's key was stored
// first. A key whose versions are all shredded is ErrKeyShredded.
func (c *KeyCache) Active(ctx context.Context, tenant, keyClass string, purpose Purpose) (*DataKey, error) {
	if !purpose.Valid() {
		return nil, fmt.Errorf("crypto: unknown key purpose %q", string(purpose))
	}
	aid := activeID{tenant, keyClass, purpose}
	if k, err, ok := c.lookupActive(aid); ok {
		c.hits.Add(1)
		return k, err
	}
	c.misses.Add(1)
	return c.load(ctx, flightKey('a', tenant, keyClass, purpose, 0), func(ctx context.Context, epoch uint64) (*DataKey, error) {
		if k, err, ok := c.lookupActive(aid); ok {
			return k, err // loaded while we were queueing for the flight
		}
		return c.loadActive(ctx, aid, epoch)
	})
}

// Version returns one version of a key. A version the KeySource does not
// have is ErrKeyNotFound; a shredded one is ErrKeyShredded.
func (c *KeyCache) Version(ctx context.Context, id KeyID) (*DataKey, error) {
	if !id.Purpose.Valid() {
		return nil, fmt.Errorf("crypto: unknown key purpose %q", string(id.Purpose))
	}
	if id.Version == 0 {
		return nil, ErrKeyNotFound
	}
	if k, err, ok := c.lookup(id); ok {
		c.hits.Add(1)
		return k, err
	}
	c.misses.Add(1)
	return c.load(ctx, flightKey('v', id.Tenant, id.KeyClass, id.Purpose, id.Version), func(ctx context.Context, epoch uint64) (*DataKey, error) {
		if k, err, ok := c.lookup(id); ok {
			return k, err
		}
		return c.loadVersion(ctx, id, epoch)
	})
}

// Purge removes every key of tenant, destroying them, and makes loads of
// its keys that are under way not cache their result. Shredding calls it on
// every replica. It returns how many keys it removed.
func (c *KeyCache) Purge(tenant string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.purgeLocked(func(e *cacheEntry) bool { return e.id.Tenant == tenant })
}

// PurgeAll removes every key of every tenant, destroying them, as Purge
// does for one. A replica calls it when it may have missed key events (its
// listening connection was lost). It returns how many keys it removed.
func (c *KeyCache) PurgeAll() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.purgeLocked(func(*cacheEntry) bool { return true })
}

// Close destroys every cached key and stops the sweeper. Loads after Close
// fail.
func (c *KeyCache) Close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	if c.timer != nil {
		c.timer.Stop()
	}
	c.purgeLocked(func(*cacheEntry) bool { return true })
}

// purgeLocked removes the entries match selects, counting the keys among
// them as purged, and makes loads under way not cache their result.
func (c *KeyCache) purgeLocked(match func(*cacheEntry) bool) int {
	c.epoch++
	n := 0
	for el := c.order.Front(); el != nil; {
		next := el.Next()
		if e := el.Value.(*cacheEntry); match(e) {
			if e.key != nil {
				n++
			}
			c.removeLocked(el)
		}
		el = next
	}
	c.purged.Add(uint64(n))
	return n
}

// Stats returns the cache's counters.
func (c *KeyCache) Stats() CacheStats {
	c.mu.Lock()
	n := c.order.Len()
	c.mu.Unlock()
	return CacheStats{
		Hits:          c.hits.Load(),
		Misses:        c.misses.Load(),
		ProviderCalls: c.providerCalls.Load(),
		Evictions:     c.evictions.Load(),
		Purged:        c.purged.Load(),
		Entries:       n,
	}
}

// lookup returns a cached key or verdict; ok is false on a miss.
func (c *KeyCache) lookup(id KeyID) (*DataKey, error, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e := c.getLocked(id)
	if e == nil {
		return nil, nil, false
	}
	return e.key, e.err, true
}

// lookupActive returns the cached active key, or the verdict that all its
// versions are shredded; ok is false on a miss.
func (c *KeyCache) lookupActive(aid activeID) (*DataKey, error, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if v, ok := c.active[aid]; ok {
		if e := c.getLocked(KeyID{aid.tenant, aid.class, aid.purpose, v}); e != nil && e.key != nil {
			return e.key, nil, true
		}
	}
	if e := c.getLocked(KeyID{aid.tenant, aid.class, aid.purpose, activeShredded}); e != nil {
		return nil, e.err, true
	}
	return nil, nil, false
}

// getLocked returns the unexpired entry for id, removing an expired one.
func (c *KeyCache) getLocked(id KeyID) *cacheEntry {
	el, ok := c.entries[id]
	if !ok {
		return nil
	}
	e := el.Value.(*cacheEntry)
	if !c.now().Before(e.expires) {
		c.evictions.Add(1)
		c.removeLocked(el)
		return nil
	}
	return e
}

// load runs fn once for all concurrent callers with the same flight key,
// under a context of its own bounded by LoadTimeout, and waits for it as
// long as ctx allows.
func (c *KeyCache) load(ctx context.Context, key string, fn func(ctx context.Context, epoch uint64) (*DataKey, error)) (*DataKey, error) {
	if !MayWait(ctx) {
		return nil, ErrWouldWait
	}
	ch := c.group.DoChan(key, func() (any, error) {
		c.mu.Lock()
		epoch, closed := c.epoch, c.closed
		c.mu.Unlock()
		if closed {
			return nil, errCacheClosed
		}
		lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.loadTimeout)
		defer cancel()
		return fn(lctx, epoch)
	})
	select {
	case r := <-ch:
		if r.Err != nil {
			return nil, r.Err
		}
		return r.Val.(*DataKey), nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// loadVersion fetches and unwraps one version.
func (c *KeyCache) loadVersion(ctx context.Context, id KeyID, epoch uint64) (*DataKey, error) {
	w, err := c.src.Version(ctx, id)
	if isVerdict(err) {
		c.remember(id, err, epoch)
		return nil, err
	}
	if err != nil {
		return nil, fmt.Errorf("crypto: load key %s: %w", id, err)
	}
	if w.ID != id {
		return nil, fmt.Errorf("crypto: load key %s: key source returned key %s", id, w.ID)
	}
	return c.unwrapInsert(ctx, w, epoch)
}

// unwrapInsert unwraps w and caches the key, or remembers the verdict
// that it is shredded.
func (c *KeyCache) unwrapInsert(ctx context.Context, w WrappedKey, epoch uint64) (*DataKey, error) {
	k, err := c.unwrap(ctx, w)
	if isVerdict(err) {
		c.remember(w.ID, err, epoch)
		return nil, err
	}
	if err != nil {
		return nil, err
	}
	return c.insert(k, epoch, false), nil
}

// loadActive finds the active version, creating version 1 if there is
// none, and caches it together with the active pointer.
func (c *KeyCache) loadActive(ctx context.Context, aid activeID, epoch uint64) (*DataKey, error) {
	shredded := KeyID{aid.tenant, aid.class, aid.purpose, activeShredded}
	w, err := c.src.Active(ctx, aid.tenant, aid.class, aid.purpose)
	var k *DataKey
	if errors.Is(err, ErrKeyNotFound) {
		k, w, err = c.create(ctx, aid)
	}
	if errors.Is(err, ErrKeyShredded) {
		c.remember(shredded, ErrKeyShredded, epoch)
		return nil, ErrKeyShredded
	}
	if err != nil {
		return nil, fmt.Errorf("crypto: load active key %s: %w", KeyID{aid.tenant, aid.class, aid.purpose, 0}, err)
	}
	if w.ID.Tenant != aid.tenant || w.ID.KeyClass != aid.class || w.ID.Purpose != aid.purpose || w.ID.Version == 0 {
		return nil, fmt.Errorf("crypto: load active key %s: key source returned key %s", KeyID{aid.tenant, aid.class, aid.purpose, 0}, w.ID)
	}
	if k == nil {
		if cached, _, ok := c.lookup(w.ID); ok && cached != nil {
			k = cached
		} else if k, err = c.unwrapShared(ctx, w); err != nil {
			if errors.Is(err, ErrKeyShredded) {
				c.remember(shredded, ErrKeyShredded, epoch)
			}
			return nil, err
		}
	}
	return c.insert(k, epoch, true), nil
}

// create makes version 1 of a key that has no version yet. If another
// caller stored its version 1 first, ours is discarded and k is nil: the
// caller unwraps the winner w.
func (c *KeyCache) create(ctx context.Context, aid activeID) (k *DataKey, w WrappedKey, err error) {
	id := KeyID{aid.tenant, aid.class, aid.purpose, 1}
	c.providerCalls.Add(1)
	plaintext, wrapped, kekID, err := c.provider.GenerateDataKey(ctx, id.Context())
	if err != nil {
		return nil, WrappedKey{}, fmt.Errorf("crypto: generate key %s: %w", id, err)
	}
	defer clear(plaintext)
	w, err = c.src.CreateIfMissing(ctx, WrappedKey{ID: id, Wrapped: wrapped, KEKID: kekID})
	if err != nil {
		return nil, WrappedKey{}, err
	}
	if w.ID != id || !bytes.Equal(w.Wrapped, wrapped) {
		return nil, w, nil // another replica won
	}
	if k, err = NewDataKey(id, kekID, plaintext); err != nil {
		return nil, WrappedKey{}, err
	}
	if c.onLoad != nil {
		c.onLoad(KeyEvent{ID: id, KEKID: kekID, Created: true})
	}
	return k, w, nil
}

// unwrap turns a wrapped key into a DataKey through the Provider.
func (c *KeyCache) unwrap(ctx context.Context, w WrappedKey) (*DataKey, error) {
	c.providerCalls.Add(1)
	plaintext, err := c.provider.Unwrap(ctx, w.ID.Context(), w.Wrapped)
	if err != nil {
		if errors.Is(err, ErrKeyShredded) {
			return nil, ErrKeyShredded
		}
		return nil, fmt.Errorf("crypto: unwrap key %s (kek %s): %w", w.ID, w.KEKID, err)
	}
	defer clear(plaintext)
	k, err := NewDataKey(w.ID, w.KEKID, plaintext)
	if err != nil {
		return nil, err
	}
	if c.onLoad != nil {
		c.onLoad(KeyEvent{ID: w.ID, KEKID: w.KEKID})
	}
	return k, nil
}

// insert caches k unless a purge happened since the load began (epoch) and
// returns the key to use: k, or an equal key cached in the meantime (then k
// is destroyed). With setActive it also records k as the active version.
func (c *KeyCache) insert(k *DataKey, epoch uint64, setActive bool) *DataKey {
	c.mu.Lock()
	defer c.mu.Unlock()
	if epoch != c.epoch {
		return k // purged meanwhile: serve this one request, keep nothing
	}
	id := k.ID()
	if e := c.getLocked(id); e != nil && e.key != nil {
		if e.key != k {
			k.Destroy()
			k = e.key
		}
	} else {
		if e != nil {
			c.removeLocked(c.entries[id]) // a stale negative verdict
		}
		c.pushLocked(&cacheEntry{id: id, key: k})
	}
	if setActive {
		c.active[activeID{id.Tenant, id.KeyClass, id.Purpose}] = id.Version
	}
	return k
}

// remember caches a KeySource verdict (missing or shredded) for id.
func (c *KeyCache) remember(id KeyID, verdict error, epoch uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if epoch != c.epoch || c.getLocked(id) != nil {
		return
	}
	c.pushLocked(&cacheEntry{id: id, err: verdict})
}

// pushLocked appends e as the newest entry, first expiring what is due and
// evicting the oldest entries to stay within MaxEntries.
func (c *KeyCache) pushLocked(e *cacheEntry) {
	now := c.now()
	c.expireLocked(now)
	for c.order.Len() >= c.max {
		c.evictions.Add(1)
		c.removeLocked(c.order.Front())
	}
	e.expires = now.Add(c.ttl)
	c.entries[e.id] = c.order.PushBack(e)
	if c.order.Len() == 1 {
		c.scheduleLocked()
	}
}

// removeLocked drops an entry, destroys its key and forgets an active
// pointer to it.
func (c *KeyCache) removeLocked(el *list.Element) {
	c.removals.Add(1)
	e := c.order.Remove(el).(*cacheEntry)
	delete(c.entries, e.id)
	delete(c.seals, e.id)
	c.forgetActiveLocked(e.id)
	if e.key != nil {
		e.key.Destroy()
	}
}

// forgetActiveLocked drops the active pointer of id's key if it names id's
// version.
func (c *KeyCache) forgetActiveLocked(id KeyID) {
	aid := activeID{id.Tenant, id.KeyClass, id.Purpose}
	if v, ok := c.active[aid]; ok && v == id.Version {
		delete(c.active, aid)
	}
}

// expireLocked removes the entries that expired by now. They are in
// insertion order, which with one TTL is expiry order.
func (c *KeyCache) expireLocked(now time.Time) {
	for el := c.order.Front(); el != nil; el = c.order.Front() {
		if now.Before(el.Value.(*cacheEntry).expires) {
			return
		}
		c.evictions.Add(1)
		c.removeLocked(el)
	}
}

// scheduleLocked arms the sweeper for the oldest entry's expiry. While the
// cache holds entries a sweep is always pending no later than that.
func (c *KeyCache) scheduleLocked() {
	front := c.order.Front()
	if front == nil || c.closed {
		return
	}
	d := max(front.Value.(*cacheEntry).expires.Sub(c.now()), 0)
	if c.timer == nil {
		c.timer = time.AfterFunc(d, c.sweep)
	} else {
		c.timer.Reset(d)
	}
}

// sweep is the timer's function: expire, then re-arm.
func (c *KeyCache) sweep() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.expireLocked(c.now())
	c.scheduleLocked()
}

// isVerdict reports whether err is the KeySource's answer about a key
// rather than a failure to get one.
func isVerdict(err error) bool {
	return errors.Is(err, ErrKeyNotFound) || errors.Is(err, ErrKeyShredded)
}

// NoWait returns a context under which the KeyCache answers only from what
// it holds: where it would ask the KeySource or the Provider (a key not
// cached, a block of seals to reserve, a rotation at the limit) it returns
// ErrWouldWait at once, having loaded and counted nothing. The proxy's relay
// loop, which serves many sessions on one thread, seals and opens under it.
func NoWait(ctx context.Context) context.Context { return context.WithValue(ctx, noWaitKey{}, true) }

type noWaitKey struct{}

// MayWait reports whether calls under ctx may wait for the KeySource or
// the Provider (false under NoWait).
func MayWait(ctx context.Context) bool { return ctx.Value(noWaitKey{}) == nil }

// flightKey names a load for singleflight; every part is length-prefixed.
func flightKey(kind byte, tenant, class string, purpose Purpose, version uint32) string {
	b := make([]byte, 0, 32+len(tenant)+len(class))
	b = append(b, kind)
	b = appendString(b, tenant)
	b = appendString(b, class)
	b = appendString(b, string(purpose))
	b = strconv.AppendUint(b, uint64(version), 10)
	return string(b)
}

// sealCounter counts one data key version's seals in this process against
// the encryptions it reserved in the SealCounter. The hot path is one
// atomic decrement; the keystore is asked for more once per block.
type sealCounter struct {
	left  atomic.Int64 // reserved and unused; negative while a reservation is due
	mu    sync.Mutex   // serialises reservations
	spent bool         // under mu: the version reached the limit
}

// sealKey returns the tenant's active data key of keyClass for one seal,
// counting the seal when the KeySource is a SealCounter and rotating the
// key first when its version has reached the limit.
func (c *KeyCache) sealKey(ctx context.Context, tenant, keyClass string) (*DataKey, error) {
	var (
		spent KeyID // the last version found at its limit
		stuck int   // how often in a row rotating it did not help
	)
	for {
		key, err := c.Active(ctx, tenant, keyClass, PurposeData)
		if err != nil || c.sealer == nil {
			return key, err
		}
		id := key.ID()
		ok, err := c.takeSeal(ctx, c.sealCounterFor(id), id)
		if err != nil {
			return nil, err
		}
		if ok {
			return key, nil
		}
		// Under heavy load other callers may use up several versions
		// while this one waits; only the same version coming back means
		// that rotation does not work.
		if id == spent {
			stuck++
		} else {
			spent, stuck = id, 0
		}
		if stuck == 3 {
			return nil, fmt.Errorf("crypto: key %s reached its encryption limit and rotating it did not take effect", id)
		}
		if err := c.rotateSpent(ctx, id); err != nil {
			return nil, err
		}
	}
}

// sealCounterFor returns the counter of a cached data key. A key that is
// no longer cached (purged while in use) gets a counter of its own that
// is not kept: its seal still reserves, only a whole block for one seal.
func (c *KeyCache) sealCounterFor(id KeyID) *sealCounter {
	c.mu.Lock()
	defer c.mu.Unlock()
	if sc, ok := c.seals[id]; ok {
		return sc
	}
	sc := new(sealCounter)
	if _, cached := c.entries[id]; cached {
		c.seals[id] = sc
	}
	return sc
}

// takeSeal counts one seal under id; ok is false when id has reached the
// limit and must be rotated.
func (c *KeyCache) takeSeal(ctx context.Context, sc *sealCounter, id KeyID) (ok bool, err error) {
	for {
		if sc.left.Add(-1) >= 0 {
			return true, nil
		}
		if !MayWait(ctx) {
			// Not even for sc.mu, which a reservation under way holds
			// for its round trip. left stays negative: the next caller
			// that may wait reserves.
			return false, ErrWouldWait
		}
		sc.mu.Lock()
		if sc.left.Load() > 0 {
			sc.mu.Unlock() // another caller reserved meanwhile
			continue
		}
		if sc.spent {
			sc.mu.Unlock()
			return false, nil
		}
		lctx, cancel := context.WithTimeout(ctx, c.loadTimeout)
		n, err := c.sealer.ReserveSeals(lctx, id, c.sealBlock, c.sealLimit)
		cancel()
		switch {
		case errors.Is(err, ErrKeyShredded):
			sc.mu.Unlock()
			return false, ErrKeyShredded
		case err != nil:
			sc.mu.Unlock()
			return false, fmt.Errorf("crypto: count encryptions under %s: %w", id, err)
		case n == 0:
			sc.spent = true
		default:
			sc.left.Store(int64(min(n, 1<<62)))
		}
		sc.mu.Unlock()
	}
}

// rotateSpent rotates id's key, which reached the limit, unless another
// caller or replica already has, and makes the next Active load the new
// version. Concurrent callers share one rotation.
func (c *KeyCache) rotateSpent(ctx context.Context, id KeyID) error {
	if !MayWait(ctx) {
		return ErrWouldWait
	}
	ch := c.group.DoChan(flightKey('r', id.Tenant, id.KeyClass, id.Purpose, id.Version), func() (any, error) {
		lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.loadTimeout)
		defer cancel()
		to, rotated, err := c.sealer.RotateFrom(lctx, c.provider, id, ReasonEncryptionLimit)
		if err != nil {
			return nil, err
		}
		c.mu.Lock()
		c.epoch++ // loads under way may still name id as active
		c.forgetActiveLocked(id)
		c.mu.Unlock()
		if rotated && c.onLimitRotate != nil {
			c.onLimitRotate(id, to)
		}
		return nil, nil
	})
	select {
	case r := <-ch:
		if errors.Is(r.Err, ErrKeyShredded) {
			return ErrKeyShredded
		}
		if r.Err != nil {
			return fmt.Errorf("crypto: rotate %s at its encryption limit: %w", id, r.Err)
		}
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// unwrapShared unwraps w in the flight of its version, so that a Version
// miss for the same key while the active one loads waits for this one
// provider call instead of making its own.
func (c *KeyCache) unwrapShared(ctx context.Context, w WrappedKey) (*DataKey, error) {
	id := w.ID
	return c.load(ctx, flightKey('v', id.Tenant, id.KeyClass, id.Purpose, id.Version), func(ctx context.Context, epoch uint64) (*DataKey, error) {
		if k, err, ok := c.lookup(id); ok {
			return k, err
		}
		return c.unwrapInsert(ctx, w, epoch)
	})
}
