package rewrite

import (
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"

	pg_query "github.com/pganalyze/pg_query_go/v5"
	"google.golang.org/protobuf/proto"

	"github.com/pgcloak/pgcloak/config"
)

// analyzer holds the state of one Analyze call. It is not shared.
type analyzer struct {
	s   *Schema
	sql string

	plan   *Plan
	slots  []Slot        // by creation order; markers name the index
	params []ParamSource // placeholders: a ParamRef with Number -(i+1) is params[i]
	prefix string        // marker prefix, absent from sql

	edits    int       // tree modifications so far
	lastEdit ColumnRef // the column of the latest modification, for messages
	inJoin   int       // > 0 while analysing JOIN ... ON
	// touchesDeclared is set while analysing a statement that names a
	// declared table (touches).
	touchesDeclared bool
	stmtLoc         int32 // where the current statement starts, for refusals without a location
}

// Analyze decides what the proxy does with one SQL text: forward it
// (Plan.Passthrough), send a rewritten text with computed slots and
// parameters, or refuse it. The error is always a *Refusal; texts that do not
// parse are refused with SQLSTATE 42601 and the parser's cursor position.
//
// Analyze parses with pg_query (a cgo call that marshals the tree both ways),
// so call it once per distinct text: see Cached and MightNeedAnalysis.
func (s *Schema) Analyze(sql string) (*Plan, error) {
	if strings.IndexByte(sql, 0) >= 0 {
		return nil, &Refusal{Code: kindSyntax.code, Construct: kindSyntax.construct,
			Message: "query text contains a NUL byte", Position: position(sql, int32(strings.IndexByte(sql, 0))), kind: kindSyntax}
	}
	if r := pinText(sql, sql); r != nil {
		return nil, r
	}
	tree, err := pg_query.Parse(sql)
	if err != nil {
		return nil, parseError(err)
	}
	a := &analyzer{s: s, sql: sql, plan: &Plan{Statements: len(tree.Stmts)}, prefix: markerPrefix(sql)}
	plan, err := a.run(tree)
	if err != nil {
		return nil, err
	}
	return plan, nil
}

// PinWord is in every text that may carry a tenant pin's MAC
// (keystore.PinWord): pgcloak.pin() and pin_next() accept a MAC only
// while the top-level text holds it, so no text from a client, as written
// or as rewritten, may contain it in any spelling of its ASCII letters.
// Comments included: this is a byte search, not a parse.
const PinWord = "pgcloak.pin"

// pinText refuses text (the client's sql, or its rewritten form) when it
// contains PinWord.
func pinText(text, sql string) *Refusal {
	i := indexFold(text, PinWord)
	if i < 0 {
		return nil
	}
	pos := int32(0)
	if text == sql {
		pos = position(sql, int32(i))
	}
	return &Refusal{Code: kindTenantPin.code, Construct: "text containing " + PinWord, kind: kindTenantPin, Position: pos,
		Message: kindTenantPin.msg("", "text containing "+PinWord)}
}

// indexFold is strings.Index with ASCII letters matched in any case.
func indexFold(text, tok string) int {
	for i := 0; i+len(tok) <= len(text); i++ {
		if hasPrefixFold(text[i:], tok) {
			return i
		}
	}
	return -1
}

// markerPrefix returns a random marker prefix that does not occur in sql.
// Markers are string constants '<prefix><n>' that stand for slots in the
// tree handed to the deparser; the deparsed text is split on them. The
// randomness only makes accidental collisions implausible; split verifies
// that every marker occurs exactly once and fails closed otherwise.
func markerPrefix(sql string) string {
	var b [8]byte
	for {
		for i := range b {
			b[i] = byte(rand.Uint32())
		}
		p := "pgcloak_" + hex.EncodeToString(b[:]) + "_"
		if !strings.Contains(sql, p) {
			return p
		}
	}
}

func (a *analyzer) run(tree *pg_query.ParseResult) (*Plan, error) {
	plan := a.plan
	changed := make([]bool, len(tree.Stmts))
	anyChanged := false
	for i, raw := range tree.Stmts {
		before := a.edits
		a.stmtLoc = raw.StmtLocation
		for int(a.stmtLoc) < len(a.sql) && isSpace(a.sql[a.stmtLoc]) {
			a.stmtLoc++
		}
		if err := a.statement(raw.Stmt); err != nil {
			return nil, err
		}
		changed[i] = a.edits != before
		anyChanged = anyChanged || changed[i]
	}
	if !anyChanged {
		plan.Segments = []string{a.sql}
		plan.Passthrough = len(plan.RoleChanges) == 0 && !plan.ResetsSettings && plan.Copy == nil &&
			plan.Opaque == nil && plan.LexerChange == nil
		if !plan.Passthrough {
			plan.Params = identityParams(maxParam(tree))
		}
		return plan, nil
	}

	if len(a.params) > 0 {
		plan.Params = a.renumber(tree, changed)
		if err := a.sharedParam(plan.Params); err != nil {
			return nil, err
		}
	} else {
		plan.Params = identityParams(maxParam(tree))
	}

	// Splice: rewritten statements replace their own span of the text;
	// everything else (untouched statements, separators, comments) stays
	// as written.
	var out strings.Builder
	cur := 0
	for i, raw := range tree.Stmts {
		if !changed[i] {
			continue
		}
		start, end := int(raw.StmtLocation), len(a.sql)
		if raw.StmtLen > 0 {
			end = start + int(raw.StmtLen)
		}
		a.stmtLoc = raw.StmtLocation
		if start < cur || end > len(a.sql) || start > end {
			return nil, a.refuseRewrite("statement boundaries out of range")
		}
		text, err := pg_query.Deparse(&pg_query.ParseResult{Version: tree.Version, Stmts: []*pg_query.RawStmt{raw}})
		if err != nil {
			return nil, a.refuseRewrite("the SQL deparser cannot render it")
		}
		if err := verifyDeparse(raw.Stmt, text); err != nil {
			return nil, a.refuseRewrite("the SQL deparser does not render it faithfully")
		}
		out.WriteString(a.sql[cur:start])
		if start > 0 && !isSpace(a.sql[start-1]) {
			out.WriteByte(' ')
		}
		out.WriteString(text)
		cur = end
	}
	out.WriteString(a.sql[cur:])
	if r := pinText(out.String(), a.sql); r != nil {
		return nil, r // the deparser spelt it (a U&"..." name)
	}
	if err := a.split(out.String()); err != nil {
		return nil, err
	}
	return plan, nil
}

// verifyDeparse checks that the deparser rendered stmt faithfully: text
// must parse back to the same tree, locations aside. pg_query's deparser has
// gaps (it renders FOR UPDATE OF t SKIP LOCKED as "tSKIP LOCKED", for one);
// a statement it cannot render is refused rather than sent in a form that
// means something else. stmt's locations are cleared.
func verifyDeparse(stmt *pg_query.Node, text string) error {
	back, err := pg_query.Parse(text)
	if err != nil {
		return fmt.Errorf("deparsed statement does not parse: %w", err)
	}
	if len(back.Stmts) != 1 {
		return fmt.Errorf("deparsed statement parses as %d statements", len(back.Stmts))
	}
	clearLocations(stmt)
	clearLocations(back.Stmts[0].Stmt)
	if !proto.Equal(stmt, back.Stmts[0].Stmt) {
		return errors.New("deparsed statement does not parse back to the rewritten tree")
	}
	return nil
}

// clearLocations zeroes every location field under m.
func clearLocations(m proto.Message) {
	_ = visit(m, func(m proto.Message) (bool, error) {
		r := m.ProtoReflect()
		if fd := r.Descriptor().Fields().ByName("location"); fd != nil {
			r.Clear(fd)
		}
		return true, nil
	})
}

func isSpace(c byte) bool { return c == ' ' || c == '\n' || c == '\t' || c == '\r' || c == '\f' }

// split cuts the rewritten text at the markers into Plan.Segments and
// Plan.Slots, checking that each slot's marker occurs exactly once and that
// no other occurrence of the prefix is left behind.
func (a *analyzer) split(text string) error {
	open := "'" + a.prefix
	seen := make([]bool, len(a.slots))
	var segs []string
	var slots []Slot
	rest := text
	for {
		j := strings.Index(rest, open)
		if j < 0 {
			break
		}
		k := j + len(open)
		e := k
		for e < len(rest) && '0' <= rest[e] && rest[e] <= '9' {
			e++
		}
		if e == k || e >= len(rest) || rest[e] != '\'' {
			return a.refuseRewrite("a slot marker did not survive deparsing")
		}
		idx, err := strconv.Atoi(rest[k:e])
		if err != nil || idx >= len(a.slots) || seen[idx] {
			return a.refuseRewrite("a slot marker did not survive deparsing")
		}
		seen[idx] = true
		segs = append(segs, rest[:j])
		slots = append(slots, a.slots[idx])
		rest = rest[e+1:]
	}
	segs = append(segs, rest)
	if len(slots) != len(a.slots) {
		return a.refuseRewrite("a slot marker did not survive deparsing")
	}
	for _, s := range segs {
		if strings.Contains(s, a.prefix) {
			return a.refuseRewrite("a slot marker did not survive deparsing")
		}
	}
	a.plan.Segments = segs
	a.plan.Slots = slots
	return nil
}

// renumber gives every parameter of the rewritten statements its output
// number, in order of first use, and returns the Params table. Placeholders
// (negative numbers) become the Data/Index parameters they stand for; the
// same source used the same way shares one output parameter.
func (a *analyzer) renumber(tree *pg_query.ParseResult, changed []bool) []ParamSource {
	type key struct {
		param int
		kind  ParamKind
		col   *config.Column
	}
	numbers := map[key]int32{}
	var params []ParamSource
	for i, raw := range tree.Stmts {
		if !changed[i] {
			continue
		}
		_ = visit(raw, func(m proto.Message) (bool, error) {
			p, ok := m.(*pg_query.ParamRef)
			if !ok {
				return true, nil
			}
			src := ParamSource{Param: int(p.Number), Kind: ParamPlain}
			if p.Number < 0 {
				src = a.params[-p.Number-1]
			}
			k := key{src.Param, src.Kind, src.Column.Column}
			n, ok := numbers[k]
			if !ok {
				params = append(params, src)
				n = int32(len(params))
				numbers[k] = n
			}
			p.Number = n
			return false, nil
		})
	}
	return params
}

// sharedParam refuses a client parameter that is bound for a declared
// column and also used as it is elsewhere (INSERT ... (note, ssn) VALUES
// ($1, $1), WHERE ssn = $1 OR name = $1, RETURNING $1): its value is
// plaintext meant for the declared column, and the other use would send it
// to PostgreSQL as it is, to be stored, logged or returned.
func (a *analyzer) sharedParam(params []ParamSource) error {
	sealed := map[int]ColumnRef{}
	for _, p := range params {
		if p.Kind != ParamPlain {
			sealed[p.Param] = p.Column
		}
	}
	for _, p := range params {
		if c, ok := sealed[p.Param]; ok && p.Kind == ParamPlain {
			return a.refuseColumn(kindSharedParam, c, "parameter $"+strconv.Itoa(p.Param)+" used for it and for another value", -1)
		}
	}
	return nil
}

func identityParams(n int) []ParamSource {
	if n == 0 {
		return nil
	}
	ps := make([]ParamSource, n)
	for i := range ps {
		ps[i] = ParamSource{Param: i + 1, Kind: ParamPlain}
	}
	return ps
}

func maxParam(tree *pg_query.ParseResult) int {
	n := 0
	_ = visit(tree, func(m proto.Message) (bool, error) {
		if p, ok := m.(*pg_query.ParamRef); ok && int(p.Number) > n {
			n = int(p.Number)
		}
		return true, nil
	})
	return n
}

// edit records a tree modification for column c.
func (a *analyzer) edit(c ColumnRef) {
	a.edits++
	a.lastEdit = c
}

// slot registers a slot and returns the marker constant that stands for it.
func (a *analyzer) slot(kind SlotKind, c ColumnRef, text string) *pg_query.Node {
	v := text
	a.slots = append(a.slots, Slot{Kind: kind, Column: c, Value: &v})
	a.edit(c)
	return pg_query.MakeAConstStrNode(a.prefix+strconv.Itoa(len(a.slots)-1), -1)
}

// placeholder registers a computed parameter and returns the ParamRef that
// stands for it until renumber.
func (a *analyzer) placeholder(param int32, kind ParamKind, c ColumnRef, loc int32) *pg_query.Node {
	a.params = append(a.params, ParamSource{Param: int(param), Kind: kind, Column: c})
	a.edit(c)
	return pg_query.MakeParamRefNode(-int32(len(a.params)), loc)
}

// statement analyses one top-level statement (or the statement inside
// PREPARE / EXPLAIN / DECLARE, through dispatch).
func (a *analyzer) statement(n *pg_query.Node) error {
	if err := a.tenancy(n); err != nil {
		return err
	}
	if a.plan.Opaque == nil {
		a.plan.Opaque = a.opaque(n)
	}
	if a.plan.Outlives == "" {
		a.plan.Outlives = outlives(n)
	}
	if err := a.inheritance(n); err != nil {
		return err
	}
	if err := a.typeShadow(n); err != nil {
		return err
	}
	a.preparedUses(n)
	a.touchesDeclared = a.touches(n) != nil
	return a.dispatch(n)
}

// cursorOptHold is CURSOR_OPT_HOLD (parsenodes.h): DECLARE ... WITH HOLD.
const cursorOptHold = 0x0020

// outlives returns what Plan.Outlives names for n, or "".
func outlives(n *pg_query.Node) string {
	found := ""
	temp := func(rel *pg_query.RangeVar, onCommit pg_query.OnCommitAction) bool {
		return rel != nil && (rel.Relpersistence == "t" || tempSchema(rel.Schemaname)) &&
			onCommit != pg_query.OnCommitAction_ONCOMMIT_DROP
	}
	_ = visit(n, func(m proto.Message) (bool, error) {
		switch x := m.(type) {
		case *pg_query.DeclareCursorStmt:
			if x.Options&cursorOptHold != 0 {
				found = "DECLARE ... WITH HOLD"
			}
		case *pg_query.CreateStmt:
			if temp(x.Relation, x.Oncommit) {
				found = "CREATE TEMPORARY TABLE"
			}
		case *pg_query.IntoClause:
			if temp(x.Rel, x.OnCommit) {
				found = "a temporary table made by CREATE TABLE AS or SELECT INTO"
			}
		case *pg_query.CreateSeqStmt:
			if x.Sequence != nil && (x.Sequence.Relpersistence == "t" || tempSchema(x.Sequence.Schemaname)) {
				found = "CREATE TEMPORARY SEQUENCE"
			}
		case *pg_query.AlterSeqStmt:
			// OWNED BY NONE keeps a serial column's sequence when its
			// ON COMMIT DROP table goes.
			for _, o := range x.Options {
				if d := o.GetDefElem(); d != nil && d.Defname == "owned_by" {
					found = "ALTER SEQUENCE ... OWNED BY"
				}
			}
		case *pg_query.CreateDomainStmt:
			if tempName(x.Domainname) {
				found = "a domain in pg_temp"
			}
		case *pg_query.DefineStmt:
			if tempName(x.Defnames) {
				found = "an object in pg_temp"
			}
		case *pg_query.CompositeTypeStmt:
			if x.Typevar != nil && tempSchema(x.Typevar.Schemaname) {
				found = "a type in pg_temp"
			}
		case *pg_query.CreateEnumStmt:
			if tempName(x.TypeName) {
				found = "a type in pg_temp"
			}
		case *pg_query.CreateRangeStmt:
			if tempName(x.TypeName) {
				found = "a type in pg_temp"
			}
		case *pg_query.VariableSetStmt:
			if strings.EqualFold(x.Name, "search_path") {
				for _, arg := range x.Args {
					if v, ok := constString(arg); !ok || tempSchema(v) {
						found = "a search_path that names pg_temp"
					}
				}
			}
		case *pg_query.FuncCall:
			if strings.EqualFold(lastName(x.Funcname), "set_config") && len(x.Args) >= 2 {
				if name, ok := constString(x.Args[0]); ok && strings.EqualFold(strings.TrimSpace(name), "search_path") {
					if v, ok := constString(x.Args[1]); !ok || strings.Contains(asciiLower(v), "pg_temp") {
						found = "a search_path that names pg_temp"
					}
				}
			}
		}
		return found == "", nil
	})
	return found
}

// tempSchema reports whether a schema name is the session's temporary
// schema: pg_temp, or its real name pg_temp_<n> (and their TOAST
// counterpart), as PostgreSQL resolves them. It errs towards yes.
func tempSchema(name string) bool {
	return strings.HasPrefix(asciiLower(name), "pg_temp") || strings.HasPrefix(asciiLower(name), "pg_toast_temp")
}

// tempName reports whether a qualified name list names the temporary
// schema.
func tempName(names []*pg_query.Node) bool {
	return len(names) > 1 && tempSchema(names[len(names)-2].GetString_().GetSval())
}

// preparedUses appends the statement's uses of prepared statement names to
// Plan.Prepared.
func (a *analyzer) preparedUses(n *pg_query.Node) {
	_ = visit(n, func(m proto.Message) (bool, error) {
		switch x := m.(type) {
		case *pg_query.PrepareStmt:
			a.plan.Prepared = append(a.plan.Prepared, PreparedUse{Op: PreparedPrepare, Name: x.Name})
		case *pg_query.ExecuteStmt:
			a.plan.Prepared = append(a.plan.Prepared, PreparedUse{Op: PreparedExecute, Name: x.Name, Args: len(x.Params) > 0})
		case *pg_query.DeallocateStmt:
			a.plan.Prepared = append(a.plan.Prepared, PreparedUse{Op: PreparedDeallocate, Name: x.Name})
		case *pg_query.DiscardStmt:
			if x.Target == pg_query.DiscardMode_DISCARD_ALL {
				a.plan.Prepared = append(a.plan.Prepared, PreparedUse{Op: PreparedDeallocate})
			}
		}
		return true, nil
	})
}

// inheritance refuses a table that would inherit from, or become a
// partition of, a declared table: rows written to it by name are read
// through the declared table, but pgcloak would forward them unrewritten.
// (The declared table's format CHECKs are inherited too; this refuses
// before PostgreSQL has to.)
func (a *analyzer) inheritance(n *pg_query.Node) error {
	return visit(n, func(m proto.Message) (bool, error) {
		switch x := m.(type) {
		case *pg_query.CreateStmt:
			what := "CREATE TABLE ... INHERITS"
			if x.Partbound != nil {
				what = "CREATE TABLE ... PARTITION OF"
			}
			for _, inh := range x.InhRelations {
				if rv := inh.GetRangeVar(); rv != nil {
					if t := a.s.anyTableNamed(rv.Schemaname, rv.Relname); t != nil {
						return false, a.refuseTable(kindDerived, t, what, rv.Location)
					}
				}
			}
		case *pg_query.AlterTableStmt:
			for _, c := range x.Cmds {
				cmd := c.GetAlterTableCmd()
				switch {
				case cmd == nil:
				case cmd.Subtype == pg_query.AlterTableType_AT_AddInherit:
					if rv := cmd.Def.GetRangeVar(); rv != nil {
						if t := a.s.anyTableNamed(rv.Schemaname, rv.Relname); t != nil {
							return false, a.refuseTable(kindDerived, t, "ALTER TABLE ... INHERIT", rv.Location)
						}
					}
				case cmd.Subtype == pg_query.AlterTableType_AT_AttachPartition && x.Relation != nil:
					if t := a.s.anyTableNamed(x.Relation.Schemaname, x.Relation.Relname); t != nil {
						return false, a.refuseTable(kindDerived, t, "ALTER TABLE ... ATTACH PARTITION", x.Relation.Location)
					}
				}
			}
		}
		return true, nil
	})
}

// opaque returns the refusal of the first node of a statement whose effect
// pgcloak cannot read from the text (see Plan.Opaque), or nil. It walks the
// whole statement: CREATE SCHEMA can hold views and triggers.
//
// Views are opaque whatever they select from: a view's query can reach a
// declared table through another view, a function or a rule that the text
// does not show, and the result columns of a view name the view, so pgcloak
// would neither rewrite writes through it nor decrypt reads. CREATE TABLE AS
// and SELECT INTO are not: they copy stored values (ciphertext, bound to the
// declared table it came from) into a plain table and alias nothing; over a
// declared table they are refused as derived objects anyway. A foreign
// table can alias a declared table through a loopback server, and a
// subscription writes rows that never pass pgcloak: both are opaque too.
func (a *analyzer) opaque(n *pg_query.Node) *Refusal {
	var found *Refusal
	_ = visit(n, func(m proto.Message) (bool, error) {
		if found != nil {
			return false, nil
		}
		what := ""
		switch x := m.(type) {
		case *pg_query.DoStmt:
			what = "DO"
		case *pg_query.CreateFunctionStmt:
			what = "CREATE FUNCTION"
			if x.IsProcedure {
				what = "CREATE PROCEDURE"
			}
		case *pg_query.AlterFunctionStmt:
			switch x.Objtype {
			case pg_query.ObjectType_OBJECT_PROCEDURE:
				what = "ALTER PROCEDURE"
			case pg_query.ObjectType_OBJECT_ROUTINE:
				what = "ALTER ROUTINE"
			default:
				what = "ALTER FUNCTION"
			}
		case *pg_query.RuleStmt:
			what = "CREATE RULE"
		case *pg_query.CreateTrigStmt:
			what = "CREATE TRIGGER"
		case *pg_query.CreateEventTrigStmt:
			what = "CREATE EVENT TRIGGER"
		case *pg_query.ViewStmt:
			what = "CREATE VIEW"
		case *pg_query.CreateTableAsStmt:
			if x.Objtype == pg_query.ObjectType_OBJECT_MATVIEW {
				what = "CREATE MATERIALIZED VIEW"
			}
		case *pg_query.CreateForeignTableStmt:
			what = "CREATE FOREIGN TABLE"
		case *pg_query.ImportForeignSchemaStmt:
			what = "IMPORT FOREIGN SCHEMA"
		case *pg_query.CreateSubscriptionStmt:
			what = "CREATE SUBSCRIPTION"
		case *pg_query.AlterRoleSetStmt:
			what = "ALTER ROLE ... SET"
		case *pg_query.AlterDatabaseSetStmt:
			what = "ALTER DATABASE ... SET"
		case *pg_query.DefineStmt:
			// An aggregate's state and final functions, and an operator's
			// function, are named as types are, not called: the function
			// checks never see them (SFUNC = set_config runs set_config on
			// every row).
			switch x.Kind {
			case pg_query.ObjectType_OBJECT_AGGREGATE:
				what = "CREATE AGGREGATE"
			case pg_query.ObjectType_OBJECT_OPERATOR:
				what = "CREATE OPERATOR"
			}
		case *pg_query.AlterOperatorStmt:
			what = "ALTER OPERATOR"
		case *pg_query.CreateCastStmt:
			what = "CREATE CAST"
		}
		if what != "" {
			found = a.refusal(kindOpaque, "", "", "", what, -1)
			return false, nil
		}
		return true, nil
	})
	return found
}

func (a *analyzer) dispatch(n *pg_query.Node) error {
	switch x := n.Node.(type) {
	case *pg_query.Node_VariableSetStmt:
		a.variableSet(x.VariableSetStmt)
		return nil
	case *pg_query.Node_DiscardStmt:
		if x.DiscardStmt.Target == pg_query.DiscardMode_DISCARD_ALL {
			a.plan.ResetsSettings = true
		}
		return nil
	case *pg_query.Node_SelectStmt:
		if x.SelectStmt.IntoClause != nil {
			if t := a.touches(n); t != nil {
				return a.refuseTable(kindDerived, t, "SELECT INTO", x.SelectStmt.IntoClause.Rel.GetLocation())
			}
		}
		return a.selectStmt(x.SelectStmt, nil, qTop)
	case *pg_query.Node_InsertStmt:
		return a.insert(x.InsertStmt, nil, qTop)
	case *pg_query.Node_UpdateStmt:
		return a.update(x.UpdateStmt, nil, qTop)
	case *pg_query.Node_DeleteStmt:
		return a.delete(x.DeleteStmt, nil, qTop)
	case *pg_query.Node_MergeStmt:
		if t := a.touches(n); t != nil {
			return a.refuseTable(kindMerge, t, "", x.MergeStmt.Relation.GetLocation())
		}
		return nil
	case *pg_query.Node_CopyStmt:
		return a.copyStmt(x.CopyStmt)
	case *pg_query.Node_ViewStmt:
		if t := a.touches(x.ViewStmt.Query); t != nil {
			return a.refuseTable(kindDerived, t, "CREATE VIEW", x.ViewStmt.View.GetLocation())
		}
		return nil
	case *pg_query.Node_CreateTableAsStmt:
		c := x.CreateTableAsStmt
		if t := a.touches(c.Query); t != nil {
			what := "CREATE TABLE AS"
			switch {
			case c.Objtype == pg_query.ObjectType_OBJECT_MATVIEW:
				what = "CREATE MATERIALIZED VIEW"
			case c.IsSelectInto:
				what = "SELECT INTO"
			}
			return a.refuseTable(kindDerived, t, what, c.Into.GetRel().GetLocation())
		}
		return nil
	case *pg_query.Node_RuleStmt:
		r := x.RuleStmt
		t := a.touches(n)
		if t != nil {
			return a.refuseTable(kindDerived, t, "CREATE RULE", r.Relation.GetLocation())
		}
		return nil
	case *pg_query.Node_PrepareStmt:
		return a.nested(x.PrepareStmt.Query, "PREPARE")
	case *pg_query.Node_ExplainStmt:
		return a.nested(x.ExplainStmt.Query, "EXPLAIN")
	case *pg_query.Node_DeclareCursorStmt:
		// A cursor runs its query at DECLARE with the values it holds then
		// (literals in the text, or the DECLARE's own bound parameters), so
		// it is rewritten as that query is; FETCH and MOVE only read it,
		// and its rows are decrypted by their RowDescription like any
		// others.
		return a.dispatch(x.DeclareCursorStmt.Query)
	case *pg_query.Node_DoStmt:
		for _, arg := range x.DoStmt.Args {
			if d := arg.GetDefElem(); d != nil && d.Defname == "as" {
				if t := a.s.mentionedTable(d.Arg.GetString_().GetSval()); t != nil {
					return a.refuseTable(kindBody, t, "a DO block that uses it", d.Location)
				}
			}
		}
		return nil
	case *pg_query.Node_CreateFunctionStmt:
		f := x.CreateFunctionStmt
		what := "a function body that uses it"
		if f.IsProcedure {
			what = "a procedure body that uses it"
		}
		var found *declTable
		forBodyStrings(f, func(s string) {
			if found == nil {
				found = a.s.mentionedTable(s)
			}
		})
		if found == nil && f.SqlBody != nil {
			found = a.touches(f.SqlBody)
		}
		if found != nil {
			return a.refuseTable(kindBody, found, what, -1)
		}
		return nil
	}
	return a.otherStatement(n)
}

// otherStatement handles every statement kind without its own rule: plain
// DDL and utility statements pass through, unless they embed a query over a
// declared table, which rewrite cannot follow.
func (a *analyzer) otherStatement(n *pg_query.Node) error {
	return visit(n, func(m proto.Message) (bool, error) {
		switch m.(type) {
		case *pg_query.SelectStmt, *pg_query.InsertStmt, *pg_query.UpdateStmt,
			*pg_query.DeleteStmt, *pg_query.MergeStmt:
			if t := a.touches(m); t != nil {
				return false, a.refuseTable(kindStatement, t, statementName(inner(n)), -1)
			}
			return false, nil
		}
		return true, nil
	})
}

// statementName turns a statement's node name into SQL words:
// CreatePolicyStmt -> CREATE POLICY.
func statementName(m proto.Message) string {
	name := strings.TrimSuffix(nodeName(m), "Stmt")
	var b strings.Builder
	for i, r := range name {
		if i > 0 && 'A' <= r && r <= 'Z' {
			b.WriteByte(' ')
		}
		b.WriteRune(r)
	}
	return strings.ToUpper(b.String())
}

// nested analyses the statement inside PREPARE or EXPLAIN.
// Those run the statement later or elsewhere with values rewrite cannot
// reach (EXECUTE arguments, cursor fetches), so a statement that would need
// rewriting is refused; one that needs none passes through.
func (a *analyzer) nested(q *pg_query.Node, what string) error {
	if q == nil {
		return nil
	}
	before := a.edits
	if err := a.dispatch(q); err != nil {
		return err
	}
	if a.edits != before {
		return a.refuseColumn(kindNested, a.lastEdit, what+" of a statement that writes or compares it", -1)
	}
	return nil
}

// variableSet records role changes and RESET ALL. (SET of the tenant setting
// is refused by tenancy before dispatch.)
func (a *analyzer) variableSet(v *pg_query.VariableSetStmt) {
	switch {
	case v.Kind == pg_query.VariableSetKind_VAR_RESET_ALL:
		a.plan.ResetsSettings = true
	case strings.EqualFold(v.Name, RoleChangeRole), strings.EqualFold(v.Name, RoleChangeSessionAuthorization):
		rc := RoleChange{Kind: strings.ToLower(v.Name)}
		if v.Kind == pg_query.VariableSetKind_VAR_SET_VALUE && len(v.Args) > 0 {
			rc.Target = constText(v.Args[0])
			if rc.Target == "none" && rc.Kind == RoleChangeRole {
				rc.Target = ""
			}
		}
		a.plan.RoleChanges = append(a.plan.RoleChanges, rc)
	}
}

// constText returns the text of a constant as PostgreSQL's SET would see it.
func constText(n *pg_query.Node) string {
	c := n.GetAConst()
	if c == nil {
		return ""
	}
	v, _ := constValue(c)
	return v
}

// touches returns a declared table that a RangeVar anywhere under m names
// (ignoring CTE shadowing and search_path: conservative), or nil.
func (a *analyzer) touches(m proto.Message) *declTable {
	var found *declTable
	_ = visit(m, func(m proto.Message) (bool, error) {
		if found != nil {
			return false, nil
		}
		if rv, ok := m.(*pg_query.RangeVar); ok {
			found = a.s.anyTableNamed(rv.Schemaname, rv.Relname)
		}
		return true, nil
	})
	return found
}

// forBodyStrings calls fn with each string of a function's AS clause (the
// body, or the object file and link symbol of a C function).
func forBodyStrings(f *pg_query.CreateFunctionStmt, fn func(string)) {
	for _, o := range f.Options {
		d := o.GetDefElem()
		if d == nil || d.Defname != "as" || d.Arg == nil {
			continue
		}
		if s := d.Arg.GetString_(); s != nil {
			fn(s.Sval)
		}
		for _, item := range d.Arg.GetList().GetItems() {
			if s := item.GetString_(); s != nil {
				fn(s.Sval)
			}
		}
	}
}

// mentionedTable returns a declared table whose name occurs in text as a
// word (case-insensitively), or nil. It serves DO and function bodies, which
// rewrite cannot parse reliably (any language, dynamic SQL).
func (s *Schema) mentionedTable(text string) *declTable {
	for _, t := range s.tables {
		if containsWordFold(text, asciiLower(t.name)) {
			return t
		}
	}
	return nil
}

// containsWordFold reports whether text contains word (lower-case) with no
// identifier character directly before or after it.
func containsWordFold(text, word string) bool {
	if word == "" {
		return false
	}
	for i := 0; i+len(word) <= len(text); i++ {
		if !hasPrefixFold(text[i:], word) {
			continue
		}
		if i > 0 && isIdentByte(text[i-1]) {
			continue
		}
		if j := i + len(word); j < len(text) && isIdentByte(text[j]) {
			continue
		}
		return true
	}
	return false
}

func isIdentByte(c byte) bool {
	return c == '_' || c == '$' || c >= 0x80 ||
		('a' <= c && c <= 'z') || ('A' <= c && c <= 'Z') || ('0' <= c && c <= '9')
}

// typeShadow refuses, when tables are declared, a statement that makes a
// type or domain, unqualified or in pg_temp, or renames one, named like a
// type checkCasts reads unqualified as pg_catalog's (text, _text, int4,
// ...): the session's temporary schema is
// searched for type names before pg_catalog unless search_path names it
// (an unqualified name lands there when search_path names it first), so
// 'abc   '::text would then mean a domain over varchar(3) ('abc' in
// PostgreSQL) while pgcloak sealed 'abc   '. A schema-qualified name
// elsewhere is searched after pg_catalog (searchPathSet keeps it first).
func (a *analyzer) typeShadow(n *pg_query.Node) error {
	if len(a.s.tables) == 0 {
		return nil
	}
	shadows := func(schema, name string) bool {
		if schema != "" && !tempSchema(schema) {
			return false
		}
		name = asciiLower(name)
		_, ok := typeFamilies[strings.TrimPrefix(name, "_")]
		return ok
	}
	names := func(ns []*pg_query.Node) (string, string) {
		switch len(ns) {
		case 0:
			return "", ""
		case 1:
			return "", ns[0].GetString_().GetSval()
		}
		return ns[len(ns)-2].GetString_().GetSval(), lastName(ns)
	}
	return visit(n, func(m proto.Message) (bool, error) {
		found := ""
		switch x := m.(type) {
		case *pg_query.CreateDomainStmt:
			if shadows(names(x.Domainname)) {
				found = "CREATE DOMAIN"
			}
		case *pg_query.DefineStmt:
			if x.Kind == pg_query.ObjectType_OBJECT_TYPE && shadows(names(x.Defnames)) {
				found = "CREATE TYPE"
			}
		case *pg_query.CompositeTypeStmt:
			if x.Typevar != nil && shadows(x.Typevar.Schemaname, x.Typevar.Relname) {
				found = "CREATE TYPE"
			}
		case *pg_query.CreateEnumStmt:
			if shadows(names(x.TypeName)) {
				found = "CREATE TYPE"
			}
		case *pg_query.CreateRangeStmt:
			if shadows(names(x.TypeName)) {
				found = "CREATE TYPE"
			}
		case *pg_query.RenameStmt:
			switch x.RenameType {
			case pg_query.ObjectType_OBJECT_TYPE, pg_query.ObjectType_OBJECT_DOMAIN, pg_query.ObjectType_OBJECT_TABLE,
				pg_query.ObjectType_OBJECT_VIEW, pg_query.ObjectType_OBJECT_MATVIEW, pg_query.ObjectType_OBJECT_SEQUENCE,
				pg_query.ObjectType_OBJECT_FOREIGN_TABLE:
			default:
				return true, nil
			}
			if shadows("", x.Newname) {
				found = "a RENAME"
			}
		}
		if found != "" {
			return false, a.refusal(kindSearchPath, "", "", "", found+" of an object named like a pg_catalog type", -1)
		}
		return true, nil
	})
}
