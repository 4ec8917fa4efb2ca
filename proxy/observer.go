package proxy

// Observer receives the proxy-side events that operations count: sessions
// per tenant, rewritten and refused statements, and values that could not
// be decrypted. Package metrics implements it over Prometheus.
//
// Calls come from session goroutines, many at once, on the hot path: an
// implementation must be safe for concurrent use and must not block. No
// argument carries a value, a key, a token or SQL text; tenant, table and
// column names are identities, safe to count.
type Observer interface {
	// SessionStarted is called once per session, after the tenant is
	// pinned upstream and before the client sees its first ReadyForQuery.
	// tenant is "" for an unscoped session (and for every session of a
	// pure passthrough proxy).
	SessionStarted(tenant string)

	// SessionEnded is called once for every session SessionStarted saw,
	// with the same tenant, however the session ended.
	SessionEnded(tenant string)

	// StatementRewritten is called for each statement whose text the
	// proxy changed before forwarding it (encrypted writes, blind-index
	// predicates). Statements forwarded unchanged are not counted.
	StatementRewritten()

	// StatementRefused is called for each statement or message the proxy
	// answered with an ErrorResponse of its own instead of forwarding it;
	// sqlstate is that response's code, e.g. "0A000" or "42501".
	StatementRefused(sqlstate string)

	// DecryptFailed is called for each value of a declared column that
	// could not be decrypted for the session's tenant, whether the session
	// got an error or NULL (on_decrypt_error). table is "schema.table".
	DecryptFailed(table, column string)
}

// nopObserver is the Observer of a server built without one.
type nopObserver struct{}

func (nopObserver) SessionStarted(string)        {}
func (nopObserver) SessionEnded(string)          {}
func (nopObserver) StatementRewritten()          {}
func (nopObserver) StatementRefused(string)      {}
func (nopObserver) DecryptFailed(string, string) {}

var _ Observer = nopObserver{}
