package rewrite

import (
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/jackc/pgerrcode"
	"github.com/pganalyze/pg_query_go/v5/parser"
)

// Refusal is rewrite's only error: the statement text must not reach
// PostgreSQL, and this is why. The proxy turns it into an ErrorResponse with
// Severity ERROR, Code, "pgcloak: " + Message and Position.
//
// Messages name schemas, tables, columns, operators and functions, never a
// value from the statement; the one exception is a syntax error, whose
// message is PostgreSQL's and may quote the offending token. Log Code and
// Construct, not Message.
type Refusal struct {
	// Code is the SQLSTATE (a github.com/jackc/pgerrcode name):
	// FeatureNotSupported (0A000) for encrypted-column constructs,
	// InsufficientPrivilege (42501) for tenancy, SyntaxError (42601) for
	// texts that do not parse, UndefinedParameter (42P02) for parameter
	// numbers outside 1..65535.
	Code string
	// Message is the text after "pgcloak: ", e.g.
	// `public.patients.ssn is encrypted; operator "<" is not supported (supported: =, <>, IN, IS NULL)`.
	Message string
	// Schema, Table and Column name the declared object involved, when
	// there is one, the way ErrorResponse's SchemaName, TableName and
	// ColumnName fields want them: Table is unqualified, Column is empty for
	// table-level refusals (and names the index column for index_column).
	Schema, Table, Column string
	// Construct names what was refused: `operator "<"`, "ORDER BY",
	// "function lower()", "COPY", "tenant setting", "syntax", ...
	Construct string
	// Position is the 1-based character position in the text the refusal
	// points at (for syntax errors, pg_query's cursor position), or 0.
	Position int32

	kind *refusalKind
}

// Error returns Message.
func (r *Refusal) Error() string { return r.Message }

// refusalKind is one row of refusalKinds: a class of refusal with its
// SQLSTATE and the shape of its message. Constructors below build Refusals
// from kinds; a test walks the table and checks that every kind has a golden
// case.
type refusalKind struct {
	id   string
	code string
	// construct is the fixed Refusal.Construct of the kind; when empty the
	// constructor's construct is used.
	construct string
	// msg formats Message from the subject (schema.table.column,
	// schema.table or the tenant setting) and the construct.
	msg func(subject, construct string) string
	doc string
}

func notSupported(verb, hint string) func(subject, construct string) string {
	return func(subject, construct string) string {
		return subject + " " + verb + "; " + construct + " is not supported" + hint
	}
}

func notAllowed(hint string) func(subject, construct string) string {
	return func(subject, construct string) string {
		return `the tenant setting "` + subject + `" is managed by pgcloak; ` + construct + " is not allowed" + hint
	}
}

const (
	isEncrypted         = "is encrypted"
	hasEncryptedColumns = "has encrypted columns"
	tenantConstruct     = "tenant setting"
)

// The refusal kinds. Keep refusalKinds below in step.
var (
	kindSyntax = &refusalKind{id: "syntax", code: pgerrcode.SyntaxError, construct: "syntax",
		msg: func(_, m string) string { return m },
		doc: "the text does not parse (message and position from the PostgreSQL parser)"}

	kindParameter = &refusalKind{id: "parameter", code: pgerrcode.UndefinedParameter, construct: "parameter",
		msg: func(_, construct string) string { return "there is no parameter " + construct },
		doc: "a parameter number outside 1..65535 (the protocol's limit; pg_query would deparse $0 as ?)"}

	kindOperator = &refusalKind{id: "operator", code: pgerrcode.FeatureNotSupported,
		msg: notSupported(isEncrypted, " (supported: =, <>, IN, IS NULL)"),
		doc: "an operator other than =, <>, IN, IS [NOT] NULL applied to a searchable column (<, LIKE, ||, +, BETWEEN, ...)"}
	kindNoSearch = &refusalKind{id: "no_search", code: pgerrcode.FeatureNotSupported,
		msg: notSupported("is encrypted without search", " (only IS [NOT] NULL; declare search: equality to compare it)"),
		doc: "a comparison or operator on a declared column without search"}
	kindComparison = &refusalKind{id: "comparison", code: pgerrcode.FeatureNotSupported,
		msg: notSupported(isEncrypted, " (compare it with a literal or a parameter)"),
		doc: "= / <> / IN comparing a searchable column with a computed expression"}
	kindJoin = &refusalKind{id: "join_condition", code: pgerrcode.FeatureNotSupported,
		msg: notSupported(isEncrypted, ""),
		doc: "comparing a declared column with another column (join conditions, JOIN USING, NATURAL JOIN)"}
	kindSubqueryComparison = &refusalKind{id: "subquery_comparison", code: pgerrcode.FeatureNotSupported,
		msg: notSupported(isEncrypted, ""),
		doc: "comparing a declared column with a subquery (IN (SELECT ...), = (SELECT ...), = ANY (SELECT ...))"}
	kindArrayLiteral = &refusalKind{id: "array_literal", code: pgerrcode.FeatureNotSupported,
		msg: notSupported(isEncrypted, " (use = ANY($n) with an array parameter, = ANY('{...}'), = ANY(ARRAY[...]) or IN (...))"),
		doc: "= ANY / <> ALL on a searchable column with an operand that is not a parameter, an array literal or ARRAY[...] of values"}
	kindLiteral = &refusalKind{id: "literal", code: pgerrcode.FeatureNotSupported,
		msg: notSupported(isEncrypted, ""),
		doc: "a constant pgcloak cannot carry for a declared column (bit strings)"}
	kindOrderBy = &refusalKind{id: "order_by", code: pgerrcode.FeatureNotSupported,
		msg: notSupported(isEncrypted, ""), doc: "ORDER BY a declared column (also by position or output name)"}
	kindGroupBy = &refusalKind{id: "group_by", code: pgerrcode.FeatureNotSupported,
		msg: notSupported(isEncrypted, ""), doc: "GROUP BY a declared column (also by position or output name)"}
	kindDistinct = &refusalKind{id: "distinct", code: pgerrcode.FeatureNotSupported,
		msg: notSupported(isEncrypted, ""), doc: "SELECT DISTINCT over a declared column, DISTINCT ON, count(DISTINCT ...)"}
	kindFunction = &refusalKind{id: "function", code: pgerrcode.FeatureNotSupported,
		msg: notSupported(isEncrypted, ""), doc: "a function call with a declared column as an argument"}
	kindAggregate = &refusalKind{id: "aggregate", code: pgerrcode.FeatureNotSupported,
		msg: notSupported(isEncrypted, " (only count)"), doc: "an aggregate other than count over a declared column"}
	kindWindow = &refusalKind{id: "window", code: pgerrcode.FeatureNotSupported,
		msg: notSupported(isEncrypted, ""), doc: "a declared column in a window function, PARTITION BY or window ORDER BY"}
	kindConditional = &refusalKind{id: "conditional", code: pgerrcode.FeatureNotSupported,
		msg: notSupported(isEncrypted, ""), doc: "CASE, COALESCE, NULLIF, GREATEST, LEAST on a declared column"}
	kindCast = &refusalKind{id: "cast", code: pgerrcode.FeatureNotSupported,
		msg: notSupported(isEncrypted, ""), doc: "a cast of a declared column"}
	kindExpression = &refusalKind{id: "expression", code: pgerrcode.FeatureNotSupported,
		msg: notSupported(isEncrypted, ""),
		doc: "a declared column inside any other expression (ARRAY[...], ROW(...), subscripts, COLLATE, IS TRUE, a bare column as a condition, ...)"}
	kindValueUse = &refusalKind{id: "value_use", code: pgerrcode.FeatureNotSupported,
		msg: notSupported(isEncrypted, ""), doc: "a declared column used as a value outside the select list (assigned to another column, a LIMIT, ...)"}
	kindSubqueryOutput = &refusalKind{id: "subquery_output", code: pgerrcode.FeatureNotSupported,
		msg: notSupported(isEncrypted, ""), doc: "a subquery or CTE whose select list or RETURNING exposes a declared column (results are only decrypted at the top level)"}
	kindSetOperation = &refusalKind{id: "set_operation", code: pgerrcode.FeatureNotSupported,
		msg: notSupported(isEncrypted, ""), doc: "UNION / INTERSECT / EXCEPT whose select lists expose a declared column"}
	kindSharedParam = &refusalKind{id: "shared_parameter", code: pgerrcode.FeatureNotSupported,
		msg: notSupported(isEncrypted, " (bind the value again as its own parameter for the other use)"),
		doc: "a parameter bound for a declared column that the statement also uses as it is (another column, a comparison with a plain column, RETURNING): its plaintext would reach PostgreSQL"}
	kindWholeRow = &refusalKind{id: "whole_row", code: pgerrcode.FeatureNotSupported,
		msg: notSupported(hasEncryptedColumns, ""), doc: "a whole-row reference (t, t.* inside an expression, (t).col) to a declared table"}
	kindColumnAlias = &refusalKind{id: "column_alias", code: pgerrcode.FeatureNotSupported, construct: "a column alias list",
		msg: notSupported(hasEncryptedColumns, " (alias the columns in the select list instead)"),
		doc: "a column alias list (FROM t AS a(x, y), (... JOIN ...) AS j(x, y)) on a declared table or a join over one: it renames declared columns by position"}
	kindAmbiguousColumn = &refusalKind{id: "ambiguous_column", code: pgerrcode.FeatureNotSupported,
		msg: notSupported(isEncrypted, " (qualify the column with its table)"),
		doc: "an unqualified column name in a subquery that could be a declared column of an outer query"}
	kindUnresolvedQualifier = &refusalKind{id: "unresolved_qualifier", code: pgerrcode.UndefinedTable, construct: "qualified column reference",
		msg: func(subject, _ string) string {
			return "missing FROM-clause entry for the qualifier of a column reference named like encrypted column " + subject
		},
		doc: "a column reference named like a declared or index column whose qualifier names no relation in scope (an alias in another case, the table's name after an alias, a JOIN ... USING alias), in a statement over a declared table: PostgreSQL would refuse it only after logging the text"}
	kindAmbiguousTable = &refusalKind{id: "ambiguous_table", code: pgerrcode.FeatureNotSupported,
		msg: func(subject, construct string) string {
			return "table name " + construct + " matches encrypted tables " + subject + "; qualify it with its schema"
		},
		doc: "an unqualified table name that matches declared tables in more than one schema"}
	kindComputedValue = &refusalKind{id: "computed_value", code: pgerrcode.FeatureNotSupported,
		msg: notSupported(isEncrypted, " (use a literal, a parameter, NULL or DEFAULT)"),
		doc: "INSERT VALUES / UPDATE SET / ON CONFLICT DO UPDATE SET of a declared column to an expression"}
	kindAssignment = &refusalKind{id: "assignment", code: pgerrcode.FeatureNotSupported,
		msg: notSupported(isEncrypted, ""), doc: "multi-column assignment or assignment to a subscript or field of a declared column"}
	kindOnConflict = &refusalKind{id: "on_conflict", code: pgerrcode.FeatureNotSupported,
		msg: notSupported(isEncrypted, ""), doc: "ON CONFLICT arbitration on a column without search or an expression, DO UPDATE SET col = EXCLUDED.other"}
	kindInsertSelect = &refusalKind{id: "insert_select", code: pgerrcode.FeatureNotSupported,
		msg: notSupported(isEncrypted, ""), doc: "INSERT ... SELECT into a declared column, or copying one into another table"}
	kindInsertNoColumns = &refusalKind{id: "insert_no_columns", code: pgerrcode.FeatureNotSupported,
		construct: "INSERT without a column list",
		msg:       notSupported(hasEncryptedColumns, " (name the columns)"),
		doc:       "INSERT into a declared table without a column list"}
	kindIndexColumn = &refusalKind{id: "index_column", code: pgerrcode.FeatureNotSupported,
		construct: "index column",
		msg: func(subject, _ string) string {
			return subject + " is managed by pgcloak; statements must not name it"
		},
		doc: "a statement naming a blind-index column"}
	kindCopy = &refusalKind{id: "copy", code: pgerrcode.FeatureNotSupported, construct: "COPY",
		msg: func(subject, construct string) string {
			return subject + " has encrypted columns; COPY " + construct + " is not supported"
		},
		doc: "COPY on a declared table with a file or program, WHERE, FORCE_* or HEADER MATCH options, inside a multi-statement query, or COPY (query) that searches a declared column"}
	kindDerived = &refusalKind{id: "derived_object", code: pgerrcode.FeatureNotSupported,
		msg: notSupported(hasEncryptedColumns, " over it"),
		doc: "CREATE VIEW / MATERIALIZED VIEW / RULE / TABLE AS, SELECT INTO over a declared table; a table that inherits from or is a partition of one"}
	kindNested = &refusalKind{id: "nested_rewrite", code: pgerrcode.FeatureNotSupported,
		msg: notSupported(isEncrypted, " (send the statement itself; pgcloak must rewrite it)"),
		doc: "PREPARE or EXPLAIN of a statement that needs rewriting"}
	kindMerge = &refusalKind{id: "merge", code: pgerrcode.FeatureNotSupported, construct: "MERGE",
		msg: notSupported(hasEncryptedColumns, ""), doc: "MERGE touching a declared table"}
	kindBody = &refusalKind{id: "routine_body", code: pgerrcode.FeatureNotSupported,
		msg: notSupported(hasEncryptedColumns, " (values written there would bypass pgcloak)"),
		doc: "a DO block or function/procedure body that mentions a declared table"}
	kindStatement = &refusalKind{id: "statement", code: pgerrcode.FeatureNotSupported,
		msg: notSupported(hasEncryptedColumns, " with a query over it"),
		doc: "any other statement kind that embeds a query over a declared table (CREATE POLICY ... (SELECT ...), ...)"}
	kindRewriteFailed = &refusalKind{id: "rewrite_failed", code: pgerrcode.FeatureNotSupported,
		construct: "rewrite",
		msg: func(_, construct string) string {
			return "statement could not be rewritten safely: " + construct
		},
		doc: "the deparser could not render the rewritten statement (fail closed)"}

	kindTenantSet = &refusalKind{id: "tenant_set", code: pgerrcode.InsufficientPrivilege, construct: tenantConstruct,
		msg: notAllowed(""), doc: "SET, SET LOCAL, RESET of the tenant setting, also inside ALTER ROLE/DATABASE/SYSTEM and function SET clauses"}
	kindTenantSetConfig = &refusalKind{id: "tenant_set_config", code: pgerrcode.InsufficientPrivilege, construct: tenantConstruct,
		msg: notAllowed(""), doc: "set_config() of the tenant setting anywhere in a statement"}
	kindTenantSetConfigDynamic = &refusalKind{id: "tenant_set_config_dynamic", code: pgerrcode.InsufficientPrivilege, construct: tenantConstruct,
		msg: notAllowed(" (the setting name must be a string constant)"), doc: "set_config() whose setting name is not a string constant"}
	kindTenantBody = &refusalKind{id: "tenant_body", code: pgerrcode.InsufficientPrivilege, construct: tenantConstruct,
		msg: notAllowed(""), doc: "a DO block or function/procedure body that mentions the tenant setting, set_config, pg_settings or the tenant pin"}
	kindTenantString = &refusalKind{id: "tenant_string", code: pgerrcode.InsufficientPrivilege, construct: tenantConstruct,
		msg: notAllowed(""), doc: "a string constant containing set_config, or the tenant setting name inside other text (dynamic SQL)"}
	kindTenantPgSettings = &refusalKind{id: "tenant_pg_settings", code: pgerrcode.InsufficientPrivilege, construct: tenantConstruct,
		msg: notAllowed(""), doc: "INSERT / UPDATE / DELETE / MERGE on pg_settings (an updatable view over set_config)"}
	kindTenantDynamicSQL = &refusalKind{id: "tenant_dynamic_sql", code: pgerrcode.InsufficientPrivilege, construct: tenantConstruct,
		msg: notAllowed(" (the query must be a string constant)"), doc: "query_to_xml*() / ts_stat() / ts_rewrite(tsquery, text) / tablefunc's crosstab*() with a query that is not a string constant, and connectby()"}
	kindTenantRoleNested = &refusalKind{id: "tenant_role_nested", code: pgerrcode.InsufficientPrivilege, construct: tenantConstruct,
		msg: func(_, construct string) string {
			return construct + " is not allowed: pgcloak checks every role change against the session's tenant"
		},
		doc: "role or session_authorization set inside a function definition or a role/database default"}

	kindTenantPin = &refusalKind{id: "tenant_pin", code: pgerrcode.InsufficientPrivilege,
		msg: func(_, construct string) string {
			return "the tenant pin is managed by pgcloak; " + construct + " is not allowed"
		},
		doc: "SET, RESET or set_config() of a pgcloak.* setting (the pin's proof), a call of pgcloak.pin(), pin_challenge(), unpin() or any other function or relation of schema pgcloak but current_tenant(), a string constant or routine body that names them"}

	kindOpaque = &refusalKind{id: "opaque_sql", code: pgerrcode.InsufficientPrivilege,
		msg: func(_, construct string) string {
			return construct + " is not allowed in a session with a tenant: pgcloak cannot see the SQL it runs or what it defines (tenancy.allow_dynamic_sql allows it)"
		},
		doc: "DO, CREATE/ALTER FUNCTION/PROCEDURE/ROUTINE, CREATE RULE, CREATE [EVENT] TRIGGER, CREATE [MATERIALIZED] VIEW, CREATE FOREIGN TABLE, IMPORT FOREIGN SCHEMA, CREATE SUBSCRIPTION, ALTER ROLE/DATABASE ... SET: Plan.Opaque, which the proxy refuses in sessions with a tenant"}
	kindLexer = &refusalKind{id: "lexer_setting", code: pgerrcode.InsufficientPrivilege,
		msg: func(_, construct string) string {
			return construct + " is not allowed: pgcloak reads statements and arrays as PostgreSQL does only while client_encoding is UTF8 and standard_conforming_strings and array_nulls are on"
		},
		doc: "SET, SET LOCAL, RESET, SET ... DEFAULT or set_config() of client_encoding to anything but UTF8, or of standard_conforming_strings or array_nulls to anything but on (refused with declared tables; else Plan.LexerChange, refused in sessions with a tenant)"}
	kindSearchPath = &refusalKind{id: "type_shadowing", code: pgerrcode.FeatureNotSupported,
		msg: func(_, construct string) string {
			return construct + " is not supported while tables have encrypted columns: pgcloak reads unqualified type names as pg_catalog's, which must stay the first found"
		},
		doc: "SET, SET LOCAL, a function SET clause or set_config() of search_path naming pg_catalog after another schema, or to a value that is not a constant; a type or domain named like a pg_catalog type (text, int4, ...) made in pg_temp (searched before pg_catalog) or unqualified, or a type, domain or relation renamed to such a name (with declared tables)"}
	kindTableExport = &refusalKind{id: "table_export", code: pgerrcode.FeatureNotSupported,
		msg: func(_, construct string) string {
			return construct + " is not supported while tables have encrypted columns: table_to_xml() and its siblings return stored rows, ciphertext and blind indexes included, which pgcloak cannot decrypt"
		},
		doc: "table_to_xml*(), schema_to_xml*(), database_to_xml*(), cursor_to_xml*() anywhere in a statement (also inside query_to_xml()'s query), or a DO block or routine body mentioning _to_xml, with declared tables"}
	kindReserved = &refusalKind{id: "reserved_name", code: pgerrcode.InsufficientPrivilege,
		msg: func(_, construct string) string {
			return construct + ` of a name starting with "` + ReservedPrefix + `" is not allowed: those statements and portals are pgcloak's own`
		},
		doc: "PREPARE, EXECUTE, DEALLOCATE, DECLARE, FETCH, MOVE or CLOSE of a name with pgcloak's reserved prefix, also inside the query of query_to_xml() and ts_stat()"}
)

// ReservedPrefix starts the names of pgcloak's own prepared statements and
// portals. Clients may not use such names, in protocol messages or in SQL.
const ReservedPrefix = "pgcloak:"

// refusalKinds is the one table of refusal kinds.
var refusalKinds = []*refusalKind{
	kindSyntax, kindParameter,
	kindOperator, kindNoSearch, kindComparison, kindJoin, kindSubqueryComparison,
	kindArrayLiteral, kindLiteral, kindOrderBy, kindGroupBy, kindDistinct, kindFunction,
	kindAggregate, kindWindow, kindConditional, kindCast, kindExpression, kindValueUse,
	kindSubqueryOutput, kindSetOperation, kindWholeRow, kindSharedParam, kindColumnAlias, kindAmbiguousColumn,
	kindUnresolvedQualifier, kindAmbiguousTable, kindComputedValue, kindAssignment, kindOnConflict,
	kindInsertSelect, kindInsertNoColumns, kindIndexColumn, kindCopy, kindDerived,
	kindNested, kindMerge, kindBody, kindStatement, kindRewriteFailed,
	kindTenantSet, kindTenantSetConfig, kindTenantSetConfigDynamic, kindTenantBody,
	kindTenantString, kindTenantPgSettings, kindTenantDynamicSQL, kindTenantRoleNested,
	kindTenantPin, kindOpaque, kindLexer, kindSearchPath, kindTableExport, kindReserved,
	kindTypeOperator, kindTypeAssign, kindTypeConvert,
}

// position converts a pg_query byte offset into sql to PostgreSQL's 1-based
// character position; unknown locations (-1) give 0.
func position(sql string, loc int32) int32 {
	if loc < 0 || int(loc) > len(sql) {
		return 0
	}
	return int32(utf8.RuneCountInString(sql[:loc])) + 1
}

// parseError turns a pg_query parse failure into a syntax Refusal.
func parseError(err error) *Refusal {
	r := &Refusal{Code: kindSyntax.code, Construct: kindSyntax.construct, Message: err.Error(), kind: kindSyntax}
	var pe *parser.Error
	if errors.As(err, &pe) {
		r.Message = pe.Message
		r.Position = int32(pe.Cursorpos)
	}
	return r
}

// refuseColumn is the constructor for column-level kinds. Kinds that compare
// values become no_search when the column has no blind index, so the message
// says what the column lacks rather than which operator failed.
func (a *analyzer) refuseColumn(k *refusalKind, c ColumnRef, construct string, loc int32) *Refusal {
	if !searchable(c.Column) && (k == kindOperator || k == kindComparison || k == kindArrayLiteral || k == kindSubqueryComparison) {
		k = kindNoSearch
	}
	return a.refusal(k, c.Schema, c.Table, c.Column.Name, construct, loc)
}

// refuseTable is the constructor for table-level kinds.
func (a *analyzer) refuseTable(k *refusalKind, t *declTable, construct string, loc int32) *Refusal {
	return a.refusal(k, t.schema, t.name, "", construct, loc)
}

// refuseIndexColumn refuses a statement that names index column name of t.
func (a *analyzer) refuseIndexColumn(t *declTable, name string, loc int32) *Refusal {
	return a.refusal(kindIndexColumn, t.schema, t.name, name, "", loc)
}

// refuseTenant is the constructor for the tenancy kinds (42501).
func (a *analyzer) refuseTenant(k *refusalKind, construct string, loc int32) *Refusal {
	r := &Refusal{
		Code:      k.code,
		Message:   k.msg(a.s.setting, construct),
		Construct: k.construct,
		Position:  a.position(loc),
		kind:      k,
	}
	return r
}

// position is the refusal position for pg_query location loc; nodes without
// a location point at the start of the statement.
func (a *analyzer) position(loc int32) int32 {
	if loc < 0 {
		loc = a.stmtLoc
	}
	return position(a.sql, loc)
}

func (a *analyzer) refuseAmbiguousTable(name string, t1, t2 *declTable, loc int32) *Refusal {
	r := a.refusal(kindAmbiguousTable, "", name, "", name, loc)
	r.Message = kindAmbiguousTable.msg(t1.qualified()+" and "+t2.qualified(), name)
	return r
}

// refuseRewrite refuses a statement whose rewrite could not be rendered
// safely; reason is a short, value-free explanation.
func (a *analyzer) refuseRewrite(reason string) *Refusal {
	return a.refusal(kindRewriteFailed, "", "", "", reason, -1)
}

func (a *analyzer) refusal(k *refusalKind, schema, table, column, construct string, loc int32) *Refusal {
	if construct == "" {
		construct = k.construct
	}
	subject := schema + "." + table
	if schema == "" {
		subject = table
	}
	if column != "" {
		subject += "." + column
	}
	r := &Refusal{
		Code:      k.code,
		Message:   k.msg(subject, construct),
		Schema:    schema,
		Table:     table,
		Column:    column,
		Construct: construct,
		Position:  a.position(loc),
		kind:      k,
	}
	if k.construct != "" {
		r.Construct = k.construct
	}
	return r
}

// opConstruct names an operator for messages: operator "<".
func opConstruct(op string) string { return fmt.Sprintf("operator %q", op) }

// funcConstruct names a function for messages: function lower().
func funcConstruct(kind, name string) string { return kind + " " + strings.ToLower(name) + "()" }
