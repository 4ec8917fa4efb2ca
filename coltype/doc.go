// Package coltype knows the declared column types of SPEC §3: their
// PostgreSQL type OIDs and, for each, how a value in PostgreSQL's text
// format is validated and what its canonical text is.
//
// # Why canonical text
//
// An encrypted column is bytea to PostgreSQL, so PostgreSQL no longer
// checks or normalises what the application writes into it. pgcloak does
// that work instead, before sealing: Canonical runs the checks PostgreSQL's
// input function would run and returns the text PostgreSQL would print.
// That text is what is sealed and what the blind index is computed over,
// so values PostgreSQL considers equal ("042" and "42" as int4,
// '{"b":1,"a":2}' and '{"a": 2, "b": 1}' as jsonb) are found by the same
// equality search, and a value decrypted for a client reads as the plain
// column would have.
//
// # Fidelity
//
// The rules follow PostgreSQL 15's input functions (int2in ... jsonb_in;
// the source files are named at each function), and a test compares every
// case with a real server. Where PostgreSQL accepts more than pgcloak
// implements - month names, two-digit years and zone abbreviations in
// dates, PostgreSQL 16's 0x and 1_000 integer forms - coltype refuses the
// value as invalid: a statement refused is safe, a value stored in a form
// PostgreSQL would not have produced is not. The text types are stored as
// given; bpchar keeps its trailing spaces (which PostgreSQL ignores when
// comparing), so 'ab' and 'ab ' have different blind indexes.
//
// # Errors
//
// An invalid value is an *Error with the SQLSTATE PostgreSQL would raise
// (22P02, 22003, 22007, 22008, ...) and PostgreSQL's message without the
// value: values are plaintext, and errors are logged.
//
// # Layer
//
// coltype imports pgtype (for OIDs) and pgerrcode, and no pgcloak package.
// It knows nothing of keys, sessions or SQL statements.
package coltype
