// Package metrics counts what an operator of pgcloak watches, in Prometheus
// form: sessions per tenant, rewritten and refused statements, decrypt
// failures, the data-key cache and every call to the key provider.
//
// # Layer
//
// metrics sits beside the proxy, not inside it. It imports crypto (to
// decorate a Provider and read a KeyCache's counters) and the Prometheus
// client, and nothing that knows SQL or sockets: the proxy reports its
// events through the proxy.Observer interface, which *Metrics implements
// without importing proxy. cmd/pgcloak builds one Metrics per process and
// serves its registry on the admin listener (admin.address).
//
// Each Metrics has a prometheus.Registry of its own, never the global one,
// so tests and several servers in one process do not share counters.
//
// # What it refuses to count
//
// Labels are identities, never values: a tenant name, a "schema.table", a
// column, a SQLSTATE, a provider operation. No label or metric carries a
// key, a token, SQL text or a value. Every label is bounded, because each
// label value is a time series Prometheus keeps forever: tenants get a
// label of their own only for the first MaxTenantLabels distinct tenants
// the process sees, later ones share "other"; a SQLSTATE that is not five
// letters or digits is counted as "other"; tables and columns are the
// declared ones, a set the configuration bounds.
//
// # Concurrency
//
// Every method is safe for concurrent use and cheap enough for the session
// hot path: a counter increment, and for a session's start and end one
// short mutex-guarded map lookup.
package metrics
