// Package rewrite decides, for one SQL text, whether pgcloak forwards it
// unchanged, forwards a rewritten text, or refuses it.
//
// # Layer
//
// rewrite knows SQL and the declarations (config.Encrypt), nothing else: no
// sockets, no keys, no clocks, no tenant. proxy calls it with the text of a
// simple-protocol Query (which may hold several statements) or of one
// extended-protocol Parse, and gets a *Plan or a *Refusal. A Plan is
// tenant-independent: it says "this slot is the ciphertext of '123' for
// public.patients.ssn", "output parameter $2 is the blind index of the
// client's $1", and proxy does the cryptography when it has the session's
// keys and, for parameters, the values from Bind. TestDeps keeps the import
// arrows honest: the only pgcloak package rewrite may import is config.
//
// # How a rewrite is built
//
// Analyze parses with pg_query (PostgreSQL's own parser), walks the
// protobuf tree statement by statement and modifies it in place:
//
//   - a constant bound for a declared column, or compared with a searchable
//     one, is replaced by a marker string constant '<random prefix><n>'
//     and recorded as Slot n;
//   - a parameter in such a position is replaced by a placeholder ParamRef;
//     at the end all parameters of the rewritten statement are renumbered in
//     order of first use and Plan.Params maps each back to its source;
//   - index columns are added next to their data columns (INSERT column
//     lists and rows, UPDATE SET, ON CONFLICT DO UPDATE SET) and equality
//     predicates are pointed at the index column.
//
// Only rewritten statements go through pg_query's deparser (with trees that
// came from Parse plus our own node constructors, as pg_query asks); the
// rest of the text, including untouched statements of a multi-statement
// Query, is kept as written. Each deparsed statement is parsed again and
// must give back exactly the rewritten tree (locations aside): the deparser
// has gaps, and a statement it cannot render faithfully is refused, never
// sent. The text is then cut at the quoted markers into Plan.Segments, and
// split verifies that every marker survived exactly once, so a value bound
// for a declared column can only ever leave as a slot.
//
// The select list is never rewritten: proxy decrypts result columns whose
// RowDescription origin is a declared column. That is why a declared column
// may appear as a plain column reference in the top-level select list or
// RETURNING and nowhere else that would carry it out of the query:
// subqueries, CTEs and set operations that expose one are refused, because
// their results lose the origin.
//
// # Name resolution
//
// rewrite has no catalog. It resolves column references the way PostgreSQL
// does (innermost query level first, aliases, schema-qualified names, case
// folding done by the parser) against the declared tables, and where the
// catalog would be needed it errs towards refusing: an unqualified table
// name matches a declared table in any schema (search_path is unknown), a
// CTE shadows a table only where PostgreSQL says it does, and an unqualified
// column that an enclosing query level declares is refused as ambiguous when
// the inner level has relations of its own. Names compare case-insensitively
// with the declarations.
//
// # Tenancy
//
// Every statement, whether it touches a declared table or not, is walked
// node by node (protobuf reflection, so no node type is missed) for changes
// to the tenant setting: SET/RESET of it, set_config on it (or with a name
// that is not a constant), writes to pg_settings, routine bodies and string
// constants that mention it, and the built-in functions that run a query
// given as text. Those are refused with 42501. SET ROLE / SESSION
// AUTHORIZATION and RESET ALL / DISCARD ALL are reported in the Plan for
// proxy to judge. Dynamic SQL inside routines created earlier is out of
// reach; the setting pins row-level security, and encryption does not depend
// on it.
//
// # Cost
//
// Parsing is a cgo round trip through protobuf. MightNeedAnalysis is the
// allocation-free substring pre-check that lets proxy forward most traffic
// without parsing at all, and Cache keeps plans per exact text so each
// distinct text is analysed once per Schema.
//
// # What is refused
//
// refusalKinds in refusal.go is the complete list, one row per kind with its
// SQLSTATE; the golden files in testdata exercise every row.
package rewrite
