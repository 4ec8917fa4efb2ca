package rewrite

import (
	"regexp"
	"strings"

	"github.com/jackc/pgerrcode"
	pg_query "github.com/pganalyze/pg_query_go/v5"
)

// A value written to or compared with a declared column reaches pgcloak as
// text, which it reads as the declared type. PostgreSQL would first give
// the value its own type: a cast's, or int4, numeric or boolean for such
// constants (an untyped string constant, a parameter and NULL take the
// column's). When that type is another type's, PostgreSQL either refuses
// the statement or converts the value, and its text may then not be what
// pgcloak would read: '\x31'::bytea compared with a text column is an
// error in PostgreSQL, not a search for the text \x31. checkValueType
// refuses those values with PostgreSQL's SQLSTATE where PostgreSQL
// refuses them, and with 0A000 where PostgreSQL would convert them in a
// way pgcloak does not reproduce; it never reads them as another value.

// typeFamilies groups types whose values PostgreSQL compares and assigns
// across without changing their text beyond what the declared type's
// canonical form already does.
var typeFamilies = map[string]string{
	"text": "string", "varchar": "string", "bpchar": "string", "name": "string", "char": "string",
	"int2": "number", "int4": "number", "int8": "number", "numeric": "number", "float4": "number", "float8": "number",
	"bool": "bool", "date": "date", "timestamp": "timestamp", "timestamptz": "timestamptz",
	"uuid": "uuid", "json": "json", "jsonb": "jsonb", "bytea": "bytea",
}

// pgTypeNames are the names PostgreSQL's messages give types.
var pgTypeNames = map[string]string{
	"text": "text", "varchar": "character varying", "bpchar": "character", "name": "name", "char": `"char"`,
	"int2": "smallint", "int4": "integer", "int8": "bigint", "numeric": "numeric", "float4": "real",
	"float8": "double precision", "bool": "boolean", "date": "date", "timestamp": "timestamp without time zone",
	"timestamptz": "timestamp with time zone", "uuid": "uuid", "json": "json", "jsonb": "jsonb", "bytea": "bytea",
}

func pgTypeName(t string) string {
	if n, ok := pgTypeNames[t]; ok {
		return n
	}
	return t
}

var (
	kindTypeOperator = &refusalKind{id: "type_operator", code: pgerrcode.UndefinedFunction, construct: "operator",
		msg: func(_, construct string) string { return "operator does not exist: " + construct },
		doc: "a comparison of a declared column with a value of another type (a cast or a number for a text column): PostgreSQL has no such operator"}
	kindTypeAssign = &refusalKind{id: "type_assignment", code: pgerrcode.DatatypeMismatch, construct: "assignment",
		msg: func(subject, construct string) string { return "column " + subject + " " + construct },
		doc: "a value of another type (a cast, a number or a boolean) written to a declared column that PostgreSQL would not assign it to"}
	kindTypeConvert = &refusalKind{id: "type_conversion", code: pgerrcode.FeatureNotSupported,
		msg: notSupported(isEncrypted, " (send the value as the column's type)"),
		doc: "a value of another type written to or compared with a declared column that PostgreSQL would convert: pgcloak reads values as the declared type's text and does not convert"}
)

// valueType is the type PostgreSQL gives value expression n before it
// meets a column; "" when it takes the column's type.
func valueType(n *pg_query.Node) string {
	if tc := n.GetTypeCast(); tc != nil {
		if tc.TypeName == nil {
			return ""
		}
		if len(tc.TypeName.ArrayBounds) > 0 {
			return lastName(tc.TypeName.Names) + "[]"
		}
		return lastName(tc.TypeName.Names)
	}
	if c := n.GetAConst(); c != nil && !c.Isnull {
		switch c.Val.(type) {
		case *pg_query.A_Const_Ival:
			return "int4"
		case *pg_query.A_Const_Fval:
			return "numeric"
		case *pg_query.A_Const_Boolval:
			return "bool"
		}
	}
	return ""
}

// pgNumberText is the form of PostgreSQL's output text for an integer or
// numeric value: no exponent, no leading zeros, no bare point, no plus.
var pgNumberText = regexp.MustCompile(`^-?(0|[1-9][0-9]*)(\.[0-9]+)?$`)

// The most digits numeric accepts before and after the point
// (NUMERIC_WEIGHT_MAX and NUMERIC_DSCALE_MAX); beyond them PostgreSQL
// refuses the constant.
const (
	numericMaxIntDigits  = 131072
	numericMaxFracDigits = 16383
)

// numberTextIsPG reports whether a numeric constant's text (an A_Const's
// Ival or Fval, or a shape's number) is exactly what PostgreSQL prints for
// the value it reads: only then is the constant, bound for a string
// column, the text pgcloak seals or indexes. PostgreSQL converts a number
// for a string column through its output text: 1e3 is 1000, 007.50 is
// 7.50, .5 is 0.5, -0.0 is 0.0 (numeric has no negative zero), and an
// integer too long for int4 is a numeric that drops its leading zeros.
func numberTextIsPG(s string) bool {
	if !pgNumberText.MatchString(s) {
		return false
	}
	digits := strings.TrimPrefix(s, "-")
	if len(digits) < len(s) && strings.Trim(digits, "0.") == "" {
		return false // negative zero
	}
	intPart, frac, _ := strings.Cut(digits, ".")
	return len(intPart) <= numericMaxIntDigits && len(frac) <= numericMaxFracDigits
}

// numberConst reports whether constant k is a number (the parser's
// integer or numeric).
func numberConst(k *pg_query.A_Const) bool {
	return k != nil && !k.Isnull && (k.GetIval() != nil || k.GetFval() != nil)
}

// checkValueType checks value n, written to (assign) or compared (with
// operator op) with declared column c.
func (a *analyzer) checkValueType(n *pg_query.Node, c ColumnRef, assign bool, op string) *Refusal {
	if r := a.checkType(valueType(n), n, c, assign, op); r != nil {
		return r
	}
	return a.checkCasts(n, c, false)
}

// checkCasts refuses the casts around value n (bound for declared column
// c) whose conversion may change the value: PostgreSQL converts the
// constant or parameter, pgcloak seals or indexes its text as written
// (classifyValue), so the two would be different values. Allowed is at
// most one cast, without type modifiers, to the column's own type, or
// one that keeps the text: text or varchar for a text or varchar column,
// an integer type (of anything but a decimal constant) for an integer or
// numeric column; a number cast for a string column only when it is
// written as PostgreSQL prints it (numberTextIsPG: 1e3::text is 1000). A
// cast of a cast ('0012'::int4::text is 12), a type
// modifier ('...'::varchar(11) truncates), bpchar, char(n), "char" and
// name (which pad, trim or truncate) are refused, as is a type that is
// not pg_catalog's. NULL stays NULL through any cast. For the array of
// = ANY(...) (array true), the casts' element types are checked.
func (a *analyzer) checkCasts(n *pg_query.Node, c ColumnRef, array bool) *Refusal {
	tc := n.GetTypeCast()
	if tc == nil {
		return nil
	}
	if v, ok := classifyValue(n); ok && v.kind == valNull {
		return nil
	}
	loc := exprLocation(n)
	refuse := func(what string) *Refusal { return a.refuseColumn(kindTypeConvert, c, what, loc) }
	if tc.Arg.GetTypeCast() != nil {
		return refuse("a cast of a cast")
	}
	t := tc.TypeName
	if t == nil {
		return refuse("a cast")
	}
	if len(t.Typmods) > 0 {
		return refuse("a cast with a type modifier")
	}
	if t.PctType || t.Setof || len(t.Names) == 0 || len(t.Names) > 2 ||
		(len(t.Names) == 2 && !strings.EqualFold(t.Names[0].GetString_().GetSval(), "pg_catalog")) {
		return refuse("a cast to a type other than pg_catalog's")
	}
	vt, ct := lastName(t.Names), c.Column.Type
	if k := tc.Arg.GetAConst(); typeFamilies[ct] == "string" && numberConst(k) {
		// PostgreSQL casts the number through its output text, which
		// pgcloak does not compute: only a number written as PostgreSQL
		// prints it keeps its text (1e3::text is 1000).
		if v, _ := constValue(k); !numberTextIsPG(v) {
			return refuse("a number not written as PostgreSQL prints it")
		}
	}
	switch {
	case array && len(t.ArrayBounds) == 0 && strings.HasPrefix(vt, "_"):
		// '{...}'::_bpchar is bpchar[].
		vt = vt[1:]
	case array && len(t.ArrayBounds) == 0:
		// A scalar type for = ANY: PostgreSQL's error, while the rewrite,
		// which drops the cast, would run.
		return refuse("a cast to a type that is not an array")
	case !array && len(t.ArrayBounds) > 0:
		// An array for a scalar: checkType's.
		return nil
	}
	if vt == ct {
		return nil
	}
	vf, cf := typeFamilies[vt], typeFamilies[ct]
	switch {
	case vf == "" || vf != cf:
		// Another type family: checkType has refused it, but for the
		// element type of an array type named _type.
		return refuse("a cast to " + pgTypeName(vt))
	case vf == "string" && (vt == "text" || vt == "varchar") && (ct == "text" || ct == "varchar"):
		return nil
	case vf == "number" && isIntType(vt) && (isIntType(ct) || ct == "numeric") && (tc.Arg.GetAConst().GetFval() == nil || isIntegerText(tc.Arg.GetAConst().GetFval().GetFval())):
		return nil
	}
	return refuse("a cast to " + pgTypeName(vt))
}

func isIntType(t string) bool { return t == "int2" || t == "int4" || t == "int8" }

// checkType checks a value of type vt ("" for the column's own), at node
// n, written to or compared with declared column c.
func (a *analyzer) checkType(vt string, n *pg_query.Node, c ColumnRef, assign bool, op string) *Refusal {
	ct := c.Column.Type
	if vt == "" || vt == ct {
		return nil
	}
	vf, cf := typeFamilies[vt], typeFamilies[ct]
	loc := exprLocation(n)
	switch {
	case vf != "" && vf == cf:
		return nil
	case !assign && isTimeFamily(vf) && isTimeFamily(cf):
		// date = timestamp and the like exist, comparing converted values.
		return a.refuseColumn(kindTypeConvert, c, "comparison with a value of type "+pgTypeName(vt), loc)
	case !assign:
		return a.refusal(kindTypeOperator, c.Schema, c.Table, c.Column.Name, pgTypeName(ct)+" "+op+" "+pgTypeName(vt), loc)
	case cf == "string":
		// PostgreSQL assigns any value to a string column through its
		// output text: a boolean's is its constant's, a number's only
		// when the constant is written as PostgreSQL prints it
		// (numberTextIsPG: 007.50 is 7.50).
		if k := n.GetAConst(); k != nil {
			if v, ok := constValue(k); ok && (vt == "bool" || numberConst(k) && numberTextIsPG(v)) {
				return nil
			}
		}
		return a.refuseColumn(kindTypeConvert, c, "a value of type "+pgTypeName(vt), loc)
	case isTimeFamily(vf) && isTimeFamily(cf):
		return a.refuseColumn(kindTypeConvert, c, "a value of type "+pgTypeName(vt), loc)
	}
	return a.refusal(kindTypeAssign, c.Schema, c.Table, c.Column.Name,
		"is of type "+pgTypeName(ct)+" but expression is of type "+pgTypeName(vt), loc)
}

// numberFits reports whether a numeric constant (its value as the parser
// keeps it: numberValue) is read as the same value by PostgreSQL and by
// pgcloak for a column of type typ (checkType's rules for a number).
func numberFits(typ, text string) bool {
	switch typeFamilies[typ] {
	case "number":
		return true
	case "string":
		return numberTextIsPG(text)
	}
	return false
}

func isTimeFamily(f string) bool { return f == "date" || f == "timestamp" || f == "timestamptz" }

// arrayElementValueType is the element type of an array value's cast
// ('{...}'::text[] -> text); "" without one.
func arrayElementValueType(n *pg_query.Node) string {
	if tc := n.GetTypeCast(); tc != nil && tc.TypeName != nil && len(tc.TypeName.ArrayBounds) > 0 {
		return lastName(tc.TypeName.Names)
	}
	return ""
}
