package rewrite

import (
	"strconv"
	"strings"

	pg_query "github.com/pganalyze/pg_query_go/v5"
)

// usage says what a declared column found directly at this point of an
// expression would be used for, i.e. which refusal to raise.
type usage struct {
	kind      *refusalKind
	construct string
}

var (
	useValue     = usage{kindValueUse, "using it as a value"}
	useCondition = usage{kindExpression, "using it as a condition"}
	useSubscript = usage{kindExpression, "subscript or field selection"}
)

// aggregates are the built-in aggregate names rewrite recognises to word its
// refusals ("aggregate max()" rather than "function max()"); any other
// function is refused as a function, so the list only affects messages.
var aggregates = map[string]bool{
	"avg": true, "sum": true, "min": true, "max": true, "array_agg": true,
	"string_agg": true, "json_agg": true, "jsonb_agg": true, "json_object_agg": true,
	"jsonb_object_agg": true, "bool_and": true, "bool_or": true, "every": true,
	"bit_and": true, "bit_or": true, "bit_xor": true, "xmlagg": true, "mode": true,
	"percentile_cont": true, "percentile_disc": true, "stddev": true, "stddev_pop": true,
	"stddev_samp": true, "variance": true, "var_pop": true, "var_samp": true,
	"range_agg": true, "range_intersect_agg": true, "any_value": true,
}

// expr analyses an expression: it rewrites equality predicates on searchable
// columns and refuses every other use of a declared column, naming the
// construct from u when the column sits directly under it.
func (a *analyzer) expr(n *pg_query.Node, sc *scope, u usage) error {
	if n == nil {
		return nil
	}
	switch x := n.Node.(type) {
	case nil:
		return nil
	case *pg_query.Node_ColumnRef:
		use, stars, err := a.resolve(sc, x.ColumnRef)
		if err != nil {
			return err
		}
		if use != nil {
			return a.refuseColumn(u.kind, use.ref(), u.construct, x.ColumnRef.Location)
		}
		if len(stars) > 0 {
			return a.refuseTable(kindWholeRow, stars[0], "a whole-row reference", x.ColumnRef.Location)
		}
		return nil
	case *pg_query.Node_AConst, *pg_query.Node_ParamRef, *pg_query.Node_SetToDefault:
		return nil
	case *pg_query.Node_AExpr:
		return a.aexpr(x.AExpr, sc)
	case *pg_query.Node_BoolExpr:
		for _, arg := range x.BoolExpr.Args {
			if err := a.expr(arg, sc, useCondition); err != nil {
				return err
			}
		}
		return nil
	case *pg_query.Node_NullTest:
		// IS [NOT] NULL tests the data column itself: ciphertext is NULL
		// exactly when the value is.
		if x.NullTest.Arg.GetColumnRef() != nil {
			_, err := a.declaredOperand(x.NullTest.Arg, sc)
			return err
		}
		return a.expr(x.NullTest.Arg, sc, usage{kindExpression, "IS NULL on an expression"})
	case *pg_query.Node_FuncCall:
		return a.funcCall(x.FuncCall, sc)
	case *pg_query.Node_TypeCast:
		if err := a.expr(x.TypeCast.Arg, sc, usage{kindCast, "cast to " + typeName(x.TypeCast.TypeName)}); err != nil {
			return err
		}
		return a.typeModifiers(x.TypeCast.TypeName, sc)
	case *pg_query.Node_SubLink:
		return a.sublink(x.SubLink, sc)
	case *pg_query.Node_CaseExpr:
		c := x.CaseExpr
		cu := usage{kindConditional, "CASE"}
		if err := a.expr(c.Arg, sc, cu); err != nil {
			return err
		}
		for _, w := range c.Args {
			cw := w.GetCaseWhen()
			if cw == nil {
				if err := a.expr(w, sc, cu); err != nil {
					return err
				}
				continue
			}
			if err := a.expr(cw.Expr, sc, cu); err != nil {
				return err
			}
			if err := a.expr(cw.Result, sc, cu); err != nil {
				return err
			}
		}
		return a.expr(c.Defresult, sc, cu)
	case *pg_query.Node_CoalesceExpr:
		return a.exprs(x.CoalesceExpr.Args, sc, usage{kindConditional, "COALESCE"})
	case *pg_query.Node_MinMaxExpr:
		name := "GREATEST"
		if x.MinMaxExpr.Op == pg_query.MinMaxOp_IS_LEAST {
			name = "LEAST"
		}
		return a.exprs(x.MinMaxExpr.Args, sc, usage{kindConditional, name})
	case *pg_query.Node_NamedArgExpr:
		return a.expr(x.NamedArgExpr.Arg, sc, u)
	case *pg_query.Node_List:
		return a.exprs(x.List.Items, sc, u)
	case *pg_query.Node_SelectStmt:
		return a.selectStmt(x.SelectStmt, sc, qSubquery)
	}
	m := inner(n)
	nu := usage{kindExpression, exprName(nodeName(m))}
	return childNodes(m, func(c *pg_query.Node) error { return a.expr(c, sc, nu) })
}

func (a *analyzer) exprs(list []*pg_query.Node, sc *scope, u usage) error {
	for _, n := range list {
		if err := a.expr(n, sc, u); err != nil {
			return err
		}
	}
	return nil
}

// exprName names expression nodes without a rule of their own.
func exprName(node string) string {
	switch node {
	case "A_ArrayExpr":
		return "ARRAY constructor"
	case "RowExpr":
		return "ROW constructor"
	case "A_Indirection", "A_Indices":
		return "subscript or field selection"
	case "CollateClause":
		return "COLLATE"
	case "BooleanTest":
		return "IS TRUE / IS FALSE"
	case "XmlExpr", "XmlSerialize":
		return "XML function"
	case "GroupingFunc":
		return "GROUPING()"
	case "SortBy":
		return "ORDER BY"
	}
	if strings.HasPrefix(node, "Json") {
		return "SQL/JSON function"
	}
	return node
}

func typeName(t *pg_query.TypeName) string {
	if t == nil {
		return "a type"
	}
	name := lastName(t.Names)
	if len(t.ArrayBounds) > 0 {
		name += "[]"
	}
	return name
}

// aexpr handles operator expressions.
func (a *analyzer) aexpr(e *pg_query.A_Expr, sc *scope) error {
	op := lastName(e.Name)
	switch e.Kind {
	case pg_query.A_Expr_Kind_AEXPR_OP, pg_query.A_Expr_Kind_AEXPR_DISTINCT, pg_query.A_Expr_Kind_AEXPR_NOT_DISTINCT:
		display := op
		switch e.Kind {
		case pg_query.A_Expr_Kind_AEXPR_DISTINCT:
			display = "IS DISTINCT FROM"
		case pg_query.A_Expr_Kind_AEXPR_NOT_DISTINCT:
			display = "IS NOT DISTINCT FROM"
		}
		if op == "=" || op == "<>" {
			done, err := a.equality(e, sc, display)
			if done || err != nil {
				return err
			}
		}
		return a.operands(e, sc, usage{kindOperator, opConstruct(display)})
	case pg_query.A_Expr_Kind_AEXPR_OP_ANY, pg_query.A_Expr_Kind_AEXPR_OP_ALL:
		q := " ANY"
		if e.Kind == pg_query.A_Expr_Kind_AEXPR_OP_ALL {
			q = " ALL"
		}
		if op == "=" || op == "<>" {
			done, err := a.anyAll(e, sc, op+q)
			if done || err != nil {
				return err
			}
		}
		return a.operands(e, sc, usage{kindOperator, opConstruct(op + q)})
	case pg_query.A_Expr_Kind_AEXPR_IN:
		display := "IN"
		if op == "<>" {
			display = "NOT IN"
		}
		done, err := a.inList(e, sc, display)
		if done || err != nil {
			return err
		}
		return a.operands(e, sc, usage{kindOperator, opConstruct(display)})
	case pg_query.A_Expr_Kind_AEXPR_NULLIF:
		return a.operands(e, sc, usage{kindConditional, "NULLIF"})
	case pg_query.A_Expr_Kind_AEXPR_LIKE, pg_query.A_Expr_Kind_AEXPR_ILIKE:
		display := map[string]string{"~~": "LIKE", "!~~": "NOT LIKE", "~~*": "ILIKE", "!~~*": "NOT ILIKE"}[op]
		if display == "" {
			display = op
		}
		return a.operands(e, sc, usage{kindOperator, opConstruct(display)})
	case pg_query.A_Expr_Kind_AEXPR_SIMILAR:
		return a.operands(e, sc, usage{kindOperator, opConstruct("SIMILAR TO")})
	case pg_query.A_Expr_Kind_AEXPR_BETWEEN, pg_query.A_Expr_Kind_AEXPR_NOT_BETWEEN,
		pg_query.A_Expr_Kind_AEXPR_BETWEEN_SYM, pg_query.A_Expr_Kind_AEXPR_NOT_BETWEEN_SYM:
		return a.operands(e, sc, usage{kindOperator, opConstruct("BETWEEN")})
	}
	return a.operands(e, sc, usage{kindOperator, opConstruct(op)})
}

func (a *analyzer) operands(e *pg_query.A_Expr, sc *scope, u usage) error {
	if err := a.expr(e.Lexpr, sc, u); err != nil {
		return err
	}
	return a.expr(e.Rexpr, sc, u)
}

// declaredOperand resolves n if it is a plain reference to a declared
// column.
func (a *analyzer) declaredOperand(n *pg_query.Node, sc *scope) (*colUse, error) {
	cr := n.GetColumnRef()
	if cr == nil {
		return nil, nil
	}
	u, stars, err := a.resolve(sc, cr)
	if err != nil {
		return nil, err
	}
	if len(stars) > 0 {
		return nil, a.refuseTable(kindWholeRow, stars[0], "a whole-row reference", cr.Location)
	}
	return u, nil
}

// equality rewrites col = v, v = col, col <> v, col IS [NOT] DISTINCT FROM v
// into the same comparison of the index column with v's blind index.
// It reports whether it handled e.
func (a *analyzer) equality(e *pg_query.A_Expr, sc *scope, display string) (bool, error) {
	lu, err := a.declaredOperand(e.Lexpr, sc)
	if err != nil {
		return true, err
	}
	ru, err := a.declaredOperand(e.Rexpr, sc)
	if err != nil {
		return true, err
	}
	if lu == nil && ru == nil {
		return false, nil
	}
	if lu != nil && ru != nil {
		return true, a.refuseColumn(kindJoin, lu.ref(), a.joinConstruct(), e.Lexpr.GetColumnRef().Location)
	}
	use, colNode, other := lu, e.Lexpr, e.Rexpr
	if use == nil {
		use, colNode, other = ru, e.Rexpr, e.Lexpr
	}
	loc := colNode.GetColumnRef().Location
	if !searchable(use.col) {
		return true, a.refuseColumn(kindNoSearch, use.ref(), opConstruct(display), loc)
	}
	if err := a.comparable(other, use, loc); err != nil {
		return true, err
	}
	if r := a.checkValueType(other, use.ref(), false, lastName(e.Name)); r != nil {
		return true, r
	}
	v, _ := classifyValue(other)
	a.renameToIndex(colNode, use)
	other.Node = a.indexValue(v, use.ref()).Node
	return true, nil
}

// comparable checks that n, the other side of a comparison with a
// searchable column, is a value rewrite can index: a constant, a parameter
// or NULL (casts allowed).
func (a *analyzer) comparable(n *pg_query.Node, use *colUse, loc int32) error {
	switch {
	case n.GetSubLink() != nil:
		return a.refuseColumn(kindSubqueryComparison, use.ref(), "comparison with a subquery", loc)
	case n.GetColumnRef() != nil:
		return a.refuseColumn(kindJoin, use.ref(), a.joinConstruct(), loc)
	}
	v, ok := classifyValue(n)
	if !ok || v.kind == valDefault {
		if v.kind == valBits {
			return a.refuseColumn(kindLiteral, use.ref(), "a bit-string constant", loc)
		}
		return a.refuseColumn(kindComparison, use.ref(), "comparison with an expression", loc)
	}
	return nil
}

func (a *analyzer) joinConstruct() string {
	if a.inJoin > 0 {
		return "join condition"
	}
	return "comparison with another column"
}

// anyAll rewrites col = ANY($n) (an array parameter: ParamIndexArray) and
// col = ANY(ARRAY[v, ...]), and the <> / ALL forms.
func (a *analyzer) anyAll(e *pg_query.A_Expr, sc *scope, display string) (bool, error) {
	use, err := a.declaredOperand(e.Lexpr, sc)
	if err != nil || use == nil {
		return err != nil, err
	}
	loc := e.Lexpr.GetColumnRef().Location
	if !searchable(use.col) {
		return true, a.refuseColumn(kindNoSearch, use.ref(), opConstruct(display), loc)
	}
	r := e.Rexpr
	for r.GetTypeCast() != nil {
		// The array's element type meets the column as a value's would.
		if rf := a.checkType(arrayElementValueType(r), r, use.ref(), false, lastName(e.Name)); rf != nil {
			return true, rf
		}
		// A type modifier or a cast of a cast converts the elements.
		if rf := a.checkCasts(r, use.ref(), true); rf != nil {
			return true, rf
		}
		r = r.GetTypeCast().Arg
	}
	switch x := r.Node.(type) {
	case *pg_query.Node_ParamRef:
		a.renameToIndex(e.Lexpr, use)
		e.Rexpr = a.placeholder(x.ParamRef.Number, ParamIndexArray, use.ref(), x.ParamRef.Location)
		return true, nil
	case *pg_query.Node_AArrayExpr:
		for _, el := range x.AArrayExpr.Elements {
			if err := a.comparable(el, use, loc); err != nil {
				return true, err
			}
			if r := a.checkValueType(el, use.ref(), false, lastName(e.Name)); r != nil {
				return true, r
			}
		}
		a.renameToIndex(e.Lexpr, use)
		for _, el := range x.AArrayExpr.Elements {
			v, _ := classifyValue(el)
			el.Node = a.indexValue(v, use.ref()).Node
		}
		e.Rexpr = r
		return true, nil
	case *pg_query.Node_AConst:
		// An array literal, as pgx's simple protocol writes an array
		// parameter: its cast, if any, is dropped; the proxy reads the
		// elements as the declared type's values.
		sval := x.AConst.GetSval()
		if sval == nil {
			return true, a.refuseColumn(kindArrayLiteral, use.ref(), display+" with a constant that is not an array literal", loc)
		}
		a.renameToIndex(e.Lexpr, use)
		e.Rexpr = a.slot(SlotIndexArray, use.ref(), sval.Sval)
		return true, nil
	}
	return true, a.refuseColumn(kindComparison, use.ref(), display+" with an expression", loc)
}

// inList rewrites col [NOT] IN (v, ...).
func (a *analyzer) inList(e *pg_query.A_Expr, sc *scope, display string) (bool, error) {
	use, err := a.declaredOperand(e.Lexpr, sc)
	if err != nil || use == nil {
		return err != nil, err
	}
	loc := e.Lexpr.GetColumnRef().Location
	if !searchable(use.col) {
		return true, a.refuseColumn(kindNoSearch, use.ref(), opConstruct(display), loc)
	}
	items := e.Rexpr.GetList().GetItems()
	if e.Rexpr.GetList() == nil {
		return true, a.refuseColumn(kindComparison, use.ref(), display+" with an expression", loc)
	}
	for _, it := range items {
		if err := a.comparable(it, use, loc); err != nil {
			return true, err
		}
		if r := a.checkValueType(it, use.ref(), false, lastName(e.Name)); r != nil {
			return true, r
		}
	}
	a.renameToIndex(e.Lexpr, use)
	for _, it := range items {
		v, _ := classifyValue(it)
		it.Node = a.indexValue(v, use.ref()).Node
	}
	return true, nil
}

// renameToIndex points a column reference at the column's index column,
// keeping its qualifiers.
func (a *analyzer) renameToIndex(n *pg_query.Node, use *colUse) {
	cr := n.GetColumnRef()
	fields := make([]*pg_query.Node, len(cr.Fields))
	copy(fields, cr.Fields)
	fields[len(fields)-1] = pg_query.MakeStrNode(use.col.IndexColumn)
	cr.Fields = fields
	a.edit(use.ref())
}

// funcCall handles function calls: count(col) is fine, any other function
// or aggregate over a declared column is refused.
func (a *analyzer) funcCall(f *pg_query.FuncCall, sc *scope) error {
	name := strings.ToLower(lastName(f.Funcname))
	qualifier := ""
	if len(f.Funcname) > 1 {
		qualifier = strings.ToLower(f.Funcname[0].GetString_().GetSval())
	}
	builtin := qualifier == "" || qualifier == "pg_catalog"
	var u usage
	switch {
	case f.Over != nil:
		u = usage{kindWindow, "window function " + name + "()"}
		if err := a.windowDef(f.Over, sc, u); err != nil {
			return err
		}
	case builtin && name == "count":
		// count(col) counts non-NULL values: ciphertext is NULL exactly
		// when the value is.
		for _, arg := range f.Args {
			if cr := arg.GetColumnRef(); cr != nil {
				use, err := a.declaredOperand(arg, sc)
				if err != nil {
					return err
				}
				if use != nil && f.AggDistinct {
					return a.refuseColumn(kindDistinct, use.ref(), "count(DISTINCT)", cr.Location)
				}
				continue
			}
			if err := a.expr(arg, sc, usage{kindAggregate, "aggregate count() of an expression"}); err != nil {
				return err
			}
		}
		return a.aggExtras(f, sc)
	case builtin && aggregates[name]:
		u = usage{kindAggregate, funcConstruct("aggregate", name)}
	default:
		u = usage{kindFunction, funcConstruct("function", name)}
	}
	if err := a.exprs(f.Args, sc, u); err != nil {
		return err
	}
	return a.aggExtras(f, sc)
}

func (a *analyzer) aggExtras(f *pg_query.FuncCall, sc *scope) error {
	if err := a.sortExprs(f.AggOrder, sc, usage{kindOrderBy, "ORDER BY"}); err != nil {
		return err
	}
	return a.expr(f.AggFilter, sc, useCondition)
}

// windowDef analyses a window definition (a WINDOW clause's or an inline
// OVER's): PARTITION BY, ORDER BY and the frame's offsets
// (ROWS <expr> PRECEDING and the like), which may hold subqueries.
func (a *analyzer) windowDef(wd *pg_query.WindowDef, sc *scope, u usage) error {
	if wd == nil {
		return nil
	}
	if err := a.exprs(wd.PartitionClause, sc, u); err != nil {
		return err
	}
	if err := a.sortExprs(wd.OrderClause, sc, u); err != nil {
		return err
	}
	if err := a.expr(wd.StartOffset, sc, u); err != nil {
		return err
	}
	return a.expr(wd.EndOffset, sc, u)
}

// typeModifiers analyses the expressions of a type name: its type
// modifiers (numeric((SELECT ...))), which the grammar accepts as any
// expression.
func (a *analyzer) typeModifiers(t *pg_query.TypeName, sc *scope) error {
	if t == nil {
		return nil
	}
	u := usage{kindExpression, "type modifier"}
	return childNodes(t, func(c *pg_query.Node) error { return a.expr(c, sc, u) })
}

// sortExprs analyses a list of SortBy nodes.
func (a *analyzer) sortExprs(list []*pg_query.Node, sc *scope, u usage) error {
	for _, n := range list {
		if sb := n.GetSortBy(); sb != nil {
			n = sb.Node
		}
		if err := a.expr(n, sc, u); err != nil {
			return err
		}
	}
	return nil
}

// sublink handles subqueries in expressions.
func (a *analyzer) sublink(sl *pg_query.SubLink, sc *scope) error {
	if sl.Testexpr != nil {
		su := usage{kindSubqueryComparison, "comparison with a subquery"}
		if err := a.expr(sl.Testexpr, sc, su); err != nil {
			return err
		}
	}
	q := qSubquery
	if sl.SubLinkType == pg_query.SubLinkType_EXISTS_SUBLINK {
		// EXISTS ignores its select list.
		q = qExists
	}
	return a.query(sl.Subselect, sc, q)
}

// valueKind classifies the values rewrite can encrypt or index.
type valueKind int

const (
	valNone valueKind = iota
	valConst
	valParam
	valNull
	valDefault
	valBits
)

// value is a classified value expression.
type value struct {
	kind  valueKind
	text  string // valConst
	param int32  // valParam
	loc   int32
}

// classifyValue recognises constants, parameters, NULL and DEFAULT, looking
// through casts.
func classifyValue(n *pg_query.Node) (value, bool) {
	for n != nil {
		switch x := n.Node.(type) {
		case *pg_query.Node_TypeCast:
			n = x.TypeCast.Arg
		case *pg_query.Node_AConst:
			c := x.AConst
			if c.Isnull {
				return value{kind: valNull, loc: c.Location}, true
			}
			text, ok := constValue(c)
			if !ok {
				return value{kind: valBits, loc: c.Location}, false
			}
			return value{kind: valConst, text: text, loc: c.Location}, true
		case *pg_query.Node_ParamRef:
			if x.ParamRef.Number <= 0 {
				return value{}, false
			}
			return value{kind: valParam, param: x.ParamRef.Number, loc: x.ParamRef.Location}, true
		case *pg_query.Node_SetToDefault:
			return value{kind: valDefault, loc: x.SetToDefault.Location}, true
		default:
			return value{}, false
		}
	}
	return value{}, false
}

// constValue returns a non-NULL constant's text as written.
func constValue(c *pg_query.A_Const) (string, bool) {
	switch v := c.Val.(type) {
	case *pg_query.A_Const_Sval:
		return v.Sval.GetSval(), true
	case *pg_query.A_Const_Ival:
		return strconv.FormatInt(int64(v.Ival.GetIval()), 10), true
	case *pg_query.A_Const_Fval:
		return v.Fval.GetFval(), true
	case *pg_query.A_Const_Boolval:
		return strconv.FormatBool(v.Boolval.GetBoolval()), true
	}
	return "", false
}

// dataValue replaces value node n, bound for column c, with what the data
// column receives.
func (a *analyzer) dataValue(v value, c ColumnRef, n *pg_query.Node) {
	switch v.kind {
	case valConst:
		n.Node = a.slot(SlotData, c, v.text).Node
	case valParam:
		n.Node = a.placeholder(v.param, ParamData, c, v.loc).Node
	case valNull:
		if n.GetAConst() == nil {
			// NULL::text would not fit a bytea column.
			n.Node = nullNode().Node
			a.edit(c)
		}
	}
}

// indexValue returns the node the index column receives for v.
func (a *analyzer) indexValue(v value, c ColumnRef) *pg_query.Node {
	switch v.kind {
	case valConst:
		return a.slot(SlotIndex, c, v.text)
	case valParam:
		return a.placeholder(v.param, ParamIndex, c, v.loc)
	case valDefault:
		return &pg_query.Node{Node: &pg_query.Node_SetToDefault{SetToDefault: &pg_query.SetToDefault{Location: -1}}}
	}
	return nullNode()
}

func nullNode() *pg_query.Node {
	return &pg_query.Node{Node: &pg_query.Node_AConst{AConst: &pg_query.A_Const{Isnull: true, Location: -1}}}
}
