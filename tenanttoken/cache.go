package tenanttoken

import (
	"crypto/sha256"
	"sync"
	"time"
)

// DefaultCacheSize is how many verified tokens a Verifier remembers.
const DefaultCacheSize = 10000

// tokenKey identifies a token in the cache: the SHA-256 of its text, so
// that the cache never holds a token that could be presented again.
type tokenKey [sha256.Size]byte

// cached is a verified token's claims and the moment verification would
// start refusing it as expired (exp plus leeway).
type cached struct {
	claims Claims
	until  time.Time
}

// cache remembers verified tokens until they expire. It is bounded: when
// full, it drops the expired entries and, if that is not enough, an eighth
// of the rest, chosen by map order, so that one insertion in many pays for
// a sweep. Safe for concurrent use.
type cache struct {
	max int

	mu      sync.Mutex
	entries map[tokenKey]cached
}

func newCache(max int) *cache {
	return &cache{max: max, entries: make(map[tokenKey]cached)}
}

func (c *cache) get(k tokenKey) (cached, bool) {
	c.mu.Lock()
	e, ok := c.entries[k]
	c.mu.Unlock()
	return e, ok
}

func (c *cache) delete(k tokenKey) {
	c.mu.Lock()
	delete(c.entries, k)
	c.mu.Unlock()
}

func (c *cache) put(k tokenKey, e cached, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.entries) >= c.max {
		for k, old := range c.entries {
			if !now.Before(old.until) {
				delete(c.entries, k)
			}
		}
		for k := range c.entries {
			if len(c.entries) < c.max-c.max/8 {
				break
			}
			delete(c.entries, k)
		}
	}
	c.entries[k] = e
}

func (c *cache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.entries)
}

func (c *cache) clear() {
	c.mu.Lock()
	clear(c.entries)
	c.mu.Unlock()
}
