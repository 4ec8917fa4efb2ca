// Package migrate is the batch work behind `pgcloak reencrypt` and
// `pgcloak encrypt-existing`: it walks a declared table in throttled
// batches and rewrites values in place, online, while the application keeps
// writing through the proxy.
//
// # Layer
//
// migrate uses pgx, config (for the declarations), coltype (canonical text)
// and crypto (a KeyCache's Keyrings). It never imports proxy or rewrite and
// knows nothing of sockets or the command line: the caller hands it a pool
// of upstream.user sessions, a key cache and a Progress to report to.
//
// # A batch
//
// Rows are visited in primary-key order (keyset pagination: each batch
// selects the next BatchSize rows after the last key of the previous one,
// so a batch costs an index range scan, not a scan of the table). Every
// batch is one short transaction: a SELECT of the rows still to do, the
// cryptography in memory, and one UPDATE per changed row, pipelined in one
// round trip. Between batches the runner sleeps for Pause, so that the work
// leaves room for the application.
//
// # No lost update
//
// Every UPDATE is a compare-and-set: it names the row by its primary key
// and repeats, in its WHERE clause, the values the batch read and replaced
// (the old ciphertext; for encrypt-existing the old plaintext and the still
// empty encrypted column). If the application changed the row in between,
// the UPDATE matches nothing and the application's write stands; the row is
// counted as raced and visited again by a further pass (at most MaxPasses),
// or by the next run.
//
// # Resumable
//
// A batch commits what it did, and the SELECT only asks for rows that still
// need work: for reencrypt, values whose key version (bytes 2 to 5 of the
// value) is below their tenant's active version; for encrypt-existing, rows
// whose plaintext column is not yet NULL. A run that is interrupted -
// Ctrl-C, a lost connection - is resumed by running it again.
//
// # Tenants
//
// A value is bound to its tenant, and the tenant of a row is in its tenant
// column; a row whose tenant column is NULL is never encrypted under a
// guess, it is counted and left alone.
//
// Reencrypt visits the tenants that have data keys in the key store, one
// at a time: it selects that tenant's rows and sets the tenancy setting
// (app.tenant_id) to it in every transaction, and pins it with
// pgcloak.pin() when Options.Pinner is set, as the proxy does, so it works
// whether or not upstream.user is subject to row-level security, on
// policies that read pgcloak.current_tenant() or the bare setting.
//
// EncryptExisting cannot list the tenants beforehand (the first value of a
// tenant creates its keys). Without Options.Tenant it visits every row with
// row_security off, so that a login subject to row-level security gets
// ErrRowSecurity instead of silently seeing no rows; with it, it visits
// that tenant's rows with the tenancy setting set.
//
// # Blind indexes
//
// The index key's version is not recorded in an index value, so a rotated
// index key cannot be detected from the rows. Reencrypt therefore leaves
// index columns alone unless asked (Reindex): then it recomputes the index
// of every searchable value of the selected tenants and writes those that
// differ, so a reindex that was interrupted is resumed by running it again
// (rows already done compare equal and are not written).
//
// # What is printed
//
// Nothing here logs or returns a value, plaintext or ciphertext: errors
// and statistics name tables, columns, tenants and counts only.
package migrate
