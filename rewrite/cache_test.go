package rewrite

import (
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/pgcloak/pgcloak/config"
)

func TestCacheLRU(t *testing.T) {
	s := testSchema(t)
	c := NewCache(2)
	q1 := "SELECT * FROM patients WHERE ssn = '1'"
	q2 := "SELECT * FROM patients WHERE ssn = '2'"
	q3 := "SELECT * FROM patients WHERE ssn = '3'"
	p1, _ := s.Cached(c, q1)
	if p, _ := s.Cached(c, q1); p != p1 {
		t.Fatalf("second lookup returned a different plan")
	}
	s.Cached(c, q2)
	s.Cached(c, q1) // q1 is now the most recently used
	s.Cached(c, q3) // evicts q2
	if got := c.Len(); got != 2 {
		t.Fatalf("Len = %d, want 2", got)
	}
	if p, _ := s.Cached(c, q1); p != p1 {
		t.Errorf("q1 was evicted, want q2 evicted")
	}
	if _, _, ok := c.get(s, q2); ok {
		t.Errorf("q2 still cached, want evicted")
	}
}

func TestCacheRefusals(t *testing.T) {
	s := testSchema(t)
	c := NewCache(8)
	const q = "SELECT * FROM patients ORDER BY ssn"
	_, err1 := s.Cached(c, q)
	_, err2 := s.Cached(c, q)
	var r1, r2 *Refusal
	if !errors.As(err1, &r1) || !errors.As(err2, &r2) {
		t.Fatalf("got %v, %v, want refusals", err1, err2)
	}
	if r1 != r2 {
		t.Errorf("refusal was analysed twice, want it cached")
	}
}

func TestCacheOtherSchema(t *testing.T) {
	s1, s2 := testSchema(t), NewSchema(testSchema(t).encryptForTest(), "app.tenant_id")
	c := NewCache(8)
	const q = "SELECT * FROM patients WHERE ssn = '1'"
	p1, _ := s1.Cached(c, q)
	p2, _ := s2.Cached(c, q)
	if p1 == p2 {
		t.Errorf("a plan of another Schema was returned")
	}
	if p2.Slots[0].Column.Column == p1.Slots[0].Column.Column {
		t.Errorf("plans of two Schemas share column declarations")
	}
}

// encryptForTest rebuilds a config.Encrypt from a Schema.
func (s *Schema) encryptForTest() (enc config.Encrypt) {
	for _, t := range s.tables {
		enc.Tables = append(enc.Tables, config.Table{Schema: t.schema, Name: t.name, Columns: t.cols})
	}
	return enc
}

func TestCacheConcurrent(t *testing.T) {
	s := testSchema(t)
	c := NewCache(16)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 200 {
				q := fmt.Sprintf("SELECT * FROM patients WHERE ssn = '%d'", (i*7+g)%40)
				p, err := s.Cached(c, q)
				if err != nil || len(p.Slots) != 1 {
					t.Errorf("Cached(%q) = %+v, %v", q, p, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if c.Len() > 16 {
		t.Errorf("Len = %d, want <= 16", c.Len())
	}
}

func TestCacheLongText(t *testing.T) {
	s := testSchema(t)
	c := NewCache(8)
	q := "SELECT * FROM patients WHERE ssn = '1' -- " + fmt.Sprintf("%0*d", maxCachedSQL, 0)
	if _, err := s.Cached(c, q); err != nil {
		t.Fatal(err)
	}
	if c.Len() != 0 {
		t.Errorf("a text longer than maxCachedSQL was cached")
	}
}
