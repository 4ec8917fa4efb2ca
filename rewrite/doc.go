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
// reach; the setting pins row-level security (which PostgreSQL verifies
// through pgcloak.current_tenant()), and encryption does not depend on it.
//
// The same walk refuses, in every session, statements that name
// pgcloak's own prepared statements or portals (ReservedPrefix, however
// quoted or escaped: the parser has already decoded the name) through
// PREPARE, EXECUTE, DEALLOCATE, DECLARE, FETCH, MOVE or CLOSE, including
// inside the query of query_to_xml(), ts_stat(), ts_rewrite() and
// tablefunc's crosstab() (connectby(), which builds its query from its
// arguments, is refused outright in tenant sessions). Plan.Prepared lists
// every PREPARE, EXECUTE and DEALLOCATE (and DISCARD ALL) so that the proxy
// can follow which names the session has prepared and refuse an EXECUTE
// with arguments of any other: its arguments would reach PostgreSQL's log.
//
// A table that would inherit from, or become a partition of, a declared
// table is refused like a view over one (derived_object): rows written to
// it by its own name are read through the declared table.
//
// # SQL pgcloak cannot read
//
// Some statements run or define SQL whose text pgcloak never sees: DO,
// CREATE and ALTER FUNCTION / PROCEDURE / ROUTINE (a body can EXECUTE a
// string assembled at run time, with format('%I'), names read from the
// catalog or Unicode escapes), CREATE RULE, CREATE [EVENT|CONSTRAINT]
// TRIGGER, CREATE [MATERIALIZED|RECURSIVE] VIEW, CREATE FOREIGN TABLE,
// IMPORT FOREIGN SCHEMA, CREATE SUBSCRIPTION and ALTER ROLE / USER /
// DATABASE ... SET. Analyze reports the first one in Plan.Opaque, wherever
// it sits in the statement (CREATE SCHEMA can hold views and triggers); it
// stays tenant-independent, and the proxy refuses it (42501, audited) in
// sessions with a tenant unless tenancy.allow_dynamic_sql is set.
//
// Views are opaque whatever they select from. Text alone cannot tell
// whether a view reaches a declared table (through another view, a
// function, a set-returning function or a rule), and a view that does is an
// alias: its result columns name the view, so pgcloak would neither decrypt
// reads through it nor rewrite writes. Refusing every CREATE VIEW in
// tenant sessions is the simple rule that is right without a catalog;
// applications rarely create views at run time. CREATE TABLE AS and SELECT
// INTO are not opaque: they copy stored values (ciphertext bound to its
// table and column) into a plain table that aliases nothing, and over a
// declared table they are refused as derived objects anyway.
//
// # The lexer
//
// pg_query lexes as PostgreSQL does only while client_encoding is UTF8 and
// standard_conforming_strings is on. Under SJIS, GBK, GB18030 or BIG5 a
// multibyte character can end in a backslash or quote byte, and with
// standard_conforming_strings off a backslash escapes a quote in an
// ordinary string: one text then reads as different statements to the two.
// A SET, SET LOCAL, RESET, SET ... DEFAULT, FROM CURRENT, function SET
// clause, ALTER ROLE/DATABASE ... SET or set_config() of either setting
// passes only with an explicit value pgcloak agrees with (UTF8 under any
// name PostgreSQL maps to it, or SQL_ASCII, which PostgreSQL does not
// convert; on under any spelling parse_bool takes);
// RESET and DEFAULT fail closed, since the value they restore is not in the
// text. With declared tables Analyze refuses the others in every session
// (42501); without, it reports them in Plan.LexerChange and the proxy
// refuses them in sessions with a tenant. Startup parameters, options and
// role defaults are the proxy's to check; inside DO blocks and functions,
// refusing those covers it.
//
// # Cost
//
// Parsing is a cgo round trip through protobuf. MightNeedAnalysis is the
// allocation-free substring pre-check that lets proxy forward most traffic
// without parsing at all, and Cache keeps plans per exact text so each
// distinct text is analysed once per Schema. It may say false only for a
// text that cannot change what a session may touch: its tokens are the
// declared names, the tenant setting and every word a statement needs to
// reach the tenant, a lexer setting or a reserved name, with u& and the
// backslash for texts that spell names with escapes (see alwaysTokens).
// MightNeedTenantAnalysis, for sessions with a tenant, also matches the
// keywords of the opaque statements as whole words (keywords cannot be
// quoted or escaped, so comments, dollar quotes and case cannot hide them).
// A pure passthrough configuration (no declared tables, no tenant) does
// not call rewrite at all.
//
// # What is refused
//
// refusalKinds in refusal.go is the complete list, one row per kind with its
// SQLSTATE; the golden files in testdata exercise every row.
package rewrite
