package rewrite

import (
	"github.com/pgcloak/pgcloak/config"
)

// Plan is the result of analysing one SQL text: a simple-protocol Query
// (which may hold several statements) or one extended-protocol Parse.
//
// A Plan is immutable once Analyze returns it and may be shared between
// sessions (Cache hands the same *Plan to every caller); callers must not
// modify it or the slices it holds. It is tenant-independent: it says where
// values go, never what they encrypt to.
type Plan struct {
	// Passthrough means the proxy may forward the original text unchanged
	// and has nothing else to do: no statement needs rewriting, extended
	// protocol parameters map one to one, and there are no RoleChanges and no
	// ResetsSettings. Statements that merely read declared columns in their
	// select list (the proxy decrypts by RowDescription origin) and plain DDL
	// on declared tables (ALTER TABLE, CREATE INDEX, DROP, TRUNCATE, GRANT,
	// VACUUM, ANALYZE, COMMENT, ...) are Passthrough. A plan with Opaque or
	// LexerChange set is not: the proxy has them to judge.
	//
	// When Passthrough is true, Segments is the original text, Slots is
	// empty and Params is nil.
	Passthrough bool

	// Segments and Slots are the text to send upstream:
	//
	//	Segments[0] + render(Slots[0]) + Segments[1] + ... + Segments[len(Slots)]
	//
	// len(Segments) == len(Slots)+1. Statements that needed no rewrite keep
	// their original text; rewritten ones are pg_query deparse output. A slot
	// stands where a value expression goes; render it as one self-contained
	// bytea expression, e.g. '\x0102...'::bytea (with the cast, so that it
	// also types correctly inside ARRAY[...]). Segments never hold a value
	// bound for a declared column.
	Segments []string
	Slots    []Slot

	// Params describes the rewritten statement's parameters for the extended
	// protocol: Params[i] says where output parameter $i+1 comes from. Plain
	// parameters may be renumbered when a statement is rewritten (numbers are
	// given in order of first use), so always build the upstream Bind from
	// Params. For a text without parameters Params is empty. For a rewritten
	// text whose parameters all stay plain, Params is the identity
	// {1,Plain}..{n,Plain} up to the highest parameter number used.
	// Parameters of Data and Index kinds are bytea upstream; ParamIndexArray
	// is bytea[].
	Params []ParamSource

	// Statements is the number of statements in the text.
	Statements int

	// RoleChanges lists top-level SET ROLE / SET SESSION AUTHORIZATION /
	// RESET ROLE / RESET SESSION AUTHORIZATION statements, in text order.
	// rewrite does not judge them: the proxy checks that the target role
	// maps to the session's tenant before forwarding the text.
	RoleChanges []RoleChange

	// Copy is set for a COPY to or from STDIN/STDOUT on a declared table:
	// the text is then that one statement, and the proxy transforms the
	// rows it carries.
	Copy *CopyPlan

	// ResetsSettings is set when the text holds RESET ALL or DISCARD ALL:
	// PostgreSQL restores the tenant setting to its startup value, so the
	// proxy pins the tenant as a startup parameter (or re-applies it).
	ResetsSettings bool

	// Opaque is the refusal (42501) of the first statement whose effect
	// pgcloak cannot read from its text: DO, CREATE or ALTER of a function
	// or procedure, CREATE RULE, CREATE [EVENT] TRIGGER, CREATE
	// [MATERIALIZED] VIEW, CREATE FOREIGN TABLE, IMPORT FOREIGN SCHEMA,
	// CREATE SUBSCRIPTION, ALTER ROLE / DATABASE ... SET. rewrite does not
	// judge it: the proxy refuses it in sessions with a tenant unless
	// tenancy.allow_dynamic_sql is set, and forwards it for the others.
	// nil when the text has none.
	Opaque *Refusal

	// Outlives names the first statement that leaves rows in the session
	// past the end of its transaction outside any table's row-level
	// security: DECLARE ... WITH HOLD, and a temporary table (CREATE
	// TEMPORARY TABLE, CREATE TABLE pg_temp.t, CREATE TEMPORARY TABLE ...
	// AS, SELECT ... INTO TEMPORARY) not dropped ON COMMIT, anywhere in
	// the text (EXPLAIN ANALYZE runs what it explains); also what outlives
	// it outside any table: a temporary sequence, a type or domain in
	// pg_temp (which type names in pgcloak's own statements would find
	// first), a search_path that names pg_temp (CREATE TABLE would then
	// make a temporary table, and a later transaction's names find it).
	// The proxy refuses
	// it in sessions whose tenant changes by tenant token: the next
	// transaction may be another tenant's. "" when the text has none.
	Outlives string

	// Prepared lists the text's PREPARE, EXECUTE and DEALLOCATE statements
	// (EXECUTE also where CREATE TABLE AS or EXPLAIN holds it) and DISCARD
	// ALL, in text order. It is informational, set on Passthrough plans
	// too: the proxy follows which statement names the session has
	// prepared and refuses an EXECUTE with arguments of any other name,
	// whose arguments PostgreSQL would otherwise write to its log with the
	// error.
	Prepared []PreparedUse

	// LexerChange is the refusal (42501) of the first statement that would
	// change client_encoding away from UTF8 or standard_conforming_strings
	// away from on (or back to a default pgcloak cannot see). With declared
	// tables Analyze refuses such a statement itself; without, the proxy
	// refuses it in sessions with a tenant. nil when the text has none.
	LexerChange *Refusal
}

// PreparedOp is what a statement does with a prepared statement name.
type PreparedOp int

// Prepared statement operations.
const (
	PreparedPrepare    PreparedOp = 1 // PREPARE name
	PreparedExecute    PreparedOp = 2 // EXECUTE name [(args)]
	PreparedDeallocate PreparedOp = 3 // DEALLOCATE name; Name "" for ALL and DISCARD ALL
)

// PreparedUse is one use of a prepared statement name in a text.
type PreparedUse struct {
	Op   PreparedOp
	Name string // as PostgreSQL sees it (identifiers case-folded)
	Args bool   // an EXECUTE with arguments
}

// RoleChange is one top-level change of the session's role.
type RoleChange struct {
	// Kind is "role" (SET ROLE, RESET ROLE) or "session_authorization"
	// (SET SESSION AUTHORIZATION, RESET SESSION AUTHORIZATION).
	Kind string
	// Target is the role named, as PostgreSQL will see it (identifiers
	// case-folded); "" for RESET, DEFAULT and NONE.
	Target string
}

// Role change kinds.
const (
	RoleChangeRole                 = "role"
	RoleChangeSessionAuthorization = "session_authorization"
)

// ColumnRef identifies a declared column. Column points into the Schema's own
// copy of the declarations and stays valid as long as the Schema.
type ColumnRef struct {
	Schema, Table string
	Column        *config.Column
}

// String returns schema.table.column.
func (c ColumnRef) String() string {
	if c.Column == nil {
		return c.Schema + "." + c.Table
	}
	return c.Schema + "." + c.Table + "." + c.Column.Name
}

// SlotKind says what the proxy computes for a Slot. The values are explicit
// because plans are logged and compared in tests.
type SlotKind int

// Slot kinds.
const (
	// SlotData: the AEAD ciphertext of Value for Column.
	SlotData SlotKind = 1
	// SlotIndex: the blind index of Value (normalised as Column says).
	SlotIndex SlotKind = 2
	// SlotIndexArray: Value is an array literal of Column's values (col =
	// ANY('{...}')); the proxy renders the bytea[] of their blind indexes,
	// NULL elements staying NULL.
	SlotIndexArray SlotKind = 3
)

// String returns "data", "index" or "index-array".
func (k SlotKind) String() string {
	switch k {
	case SlotData:
		return "data"
	case SlotIndex:
		return "index"
	case SlotIndexArray:
		return "index-array"
	}
	return "unknown"
}

// Slot is a value the proxy computes and renders into the text.
type Slot struct {
	Kind   SlotKind
	Column ColumnRef
	// Value is the literal's text as written: a string constant's content,
	// or an integer, float or boolean constant's text (true/false). A cast
	// around the constant ('2024-01-31'::date) is dropped; the proxy
	// canonicalises Value for Column's declared type. nil would mean SQL
	// NULL; rewrite currently writes NULL into the text instead of a slot,
	// so Value is never nil, but renderers should treat nil as NULL.
	//
	// Value is plaintext. It must not be logged.
	Value *string
}

// ParamKind says what the proxy does with a client parameter.
type ParamKind int

// Parameter kinds.
const (
	// ParamPlain: pass the client's value (and its format and type)
	// through.
	ParamPlain ParamKind = 1
	// ParamData: encrypt the client's value for Column.
	ParamData ParamKind = 2
	// ParamIndex: compute the blind index of the client's value for Column.
	ParamIndex ParamKind = 3
	// ParamIndexArray: the client's value is an array (col = ANY($n));
	// send an array holding the blind index of each element (NULL elements
	// stay NULL).
	ParamIndexArray ParamKind = 4
)

// String returns "plain", "data", "index" or "index[]".
func (k ParamKind) String() string {
	switch k {
	case ParamPlain:
		return "plain"
	case ParamData:
		return "data"
	case ParamIndex:
		return "index"
	case ParamIndexArray:
		return "index[]"
	}
	return "unknown"
}

// ParamSource says where one output parameter comes from.
type ParamSource struct {
	// Param is the 1-based parameter number in the original statement.
	Param int
	Kind  ParamKind
	// Column is set for the Data, Index and IndexArray kinds.
	Column ColumnRef
}
