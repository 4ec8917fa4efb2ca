package rewrite

import (
	"container/list"
	"sync"
)

// maxCachedSQL is the longest text Cached keeps. Longer texts (bulk
// INSERTs, generated IN lists) rarely repeat, would pin a lot of memory as
// keys, and hold plaintext in their literals and slots; they are analysed
// every time.
const maxCachedSQL = 32 << 10

// Cache is a bounded LRU of analysis results (plans and refusals) keyed by
// the exact SQL text. It is safe for concurrent use; the proxy shares one per
// Schema across sessions and makes a new one when a reload makes a new
// Schema. Entries made by another Schema are ignored and replaced, so mixing
// them up costs hits, never correctness.
//
// Cached plans hold the literal values of their slots, which are plaintext:
// the cache keeps them in memory until evicted.
type Cache struct {
	mu      sync.Mutex
	size    int
	order   *list.List // of *cacheEntry, most recently used first
	entries map[string]*list.Element
}

type cacheEntry struct {
	schema *Schema
	sql    string
	plan   *Plan
	err    error
	shape  *shapeEntry // for shape keys
}

// NewCache returns a Cache holding at most size entries; size < 1 means 1.
func NewCache(size int) *Cache {
	if size < 1 {
		size = 1
	}
	return &Cache{size: size, order: list.New(), entries: make(map[string]*list.Element, size)}
}

// Len returns the number of cached entries.
func (c *Cache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.order.Len()
}

// Cached is Analyze through cache: the same text analysed by the same Schema
// returns the same *Plan (or *Refusal) without parsing again. The returned
// Plan is shared and must not be modified. A nil cache analyses every time.
//
// Concurrent misses on one text may each analyse it; the results are equal
// and the last one is kept.
func (s *Schema) Cached(cache *Cache, sql string) (*Plan, error) {
	if cache == nil || len(sql) > maxCachedSQL {
		return s.Analyze(sql)
	}
	if plan, err, ok := cache.get(s, sql); ok {
		return plan, err
	}
	plan, err := s.Analyze(sql)
	cache.put(&cacheEntry{schema: s, sql: sql, plan: plan, err: err})
	return plan, err
}

func (c *Cache) get(s *Schema, sql string) (*Plan, error, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.entries[sql]
	if !ok {
		return nil, nil, false
	}
	e := el.Value.(*cacheEntry)
	if e.schema != s {
		return nil, nil, false
	}
	c.order.MoveToFront(el)
	return e.plan, e.err, true
}

func (c *Cache) put(e *cacheEntry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.entries[e.sql]; ok {
		el.Value = e
		c.order.MoveToFront(el)
		return
	}
	c.entries[e.sql] = c.order.PushFront(e)
	for c.order.Len() > c.size {
		old := c.order.Back()
		c.order.Remove(old)
		delete(c.entries, old.Value.(*cacheEntry).sql)
	}
}

// shapeKeyPrefix keeps shape entries apart from exact texts: no SQL text
// holds a NUL byte.
const shapeKeyPrefix = "\x00shape:"

type shapeEntry struct{ plan *ShapePlan }

// getShape returns the cached shape plan of key; found with a nil plan means
// the shape is known to need the exact path.
func (c *Cache) getShape(s *Schema, key string) (*ShapePlan, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.entries[shapeKeyPrefix+key]
	if !ok {
		return nil, false
	}
	e := el.Value.(*cacheEntry)
	if e.schema != s {
		return nil, false
	}
	c.order.MoveToFront(el)
	return e.shape.plan, true
}

func (c *Cache) putShape(s *Schema, key string, sp *ShapePlan) {
	c.put(&cacheEntry{schema: s, sql: shapeKeyPrefix + key, shape: &shapeEntry{plan: sp}})
}
