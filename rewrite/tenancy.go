package rewrite

import (
	"strconv"
	"strings"

	pg_query "github.com/pganalyze/pg_query_go/v5"
	"google.golang.org/protobuf/proto"
)

// maxParamNumber is the most parameters a Bind message can carry (its count
// is an Int16).
const maxParamNumber = 65535

// dynamicSQLArgs reports which arguments of a call to name with n
// arguments are queries that the function runs: with a query assembled
// from pieces such a function could call set_config without the name
// appearing anywhere. Each such argument must be a string constant, which
// tenancy then checks like any string and parses as statements. ok is
// false for a function that is not one of them; whole is true for one that
// builds its query from its arguments' text (connectby), which is refused
// outright.
//
// The built-in ones are query_to_xml and its two siblings, ts_stat and the
// two-argument ts_rewrite(tsquery, text); tablefunc, a trusted extension a
// database owner may install, adds crosstab, crosstab2 to crosstab4 and
// connectby. A function of the same name in another schema errs towards
// refusing.
func dynamicSQLArgs(name string, n int) (args []int, whole, ok bool) {
	switch name {
	case "query_to_xml", "query_to_xmlschema", "query_to_xml_and_xmlschema", "ts_stat",
		"crosstab2", "crosstab3", "crosstab4":
		return []int{0}, false, true
	case "crosstab":
		// crosstab(text), crosstab(text, integer), crosstab(text, text):
		// every argument that is not an integer constant is a query.
		return []int{0, 1}, false, true
	case "ts_rewrite":
		if n == 2 {
			return []int{1}, false, true
		}
	case "connectby":
		return nil, true, true
	}
	return nil, false, false
}

// tenancy checks one top-level statement, every node of it, for attempts to
// change the tenant setting. It runs for every statement, declared tables or
// not, before any other analysis, so its refusals (42501) win.
//
// What it cannot see: a function created earlier (or outside pgcloak) that
// runs dynamic SQL assembled from pieces. The tenant setting is defence in
// depth for row-level security; the cryptographic isolation does not depend
// on it, because the proxy picks keys from the authenticated tenant, never
// from the setting.
func (a *analyzer) tenancy(n *pg_query.Node) error {
	top := n.GetVariableSetStmt()
	setting := asciiLower(a.s.setting)
	return visit(n, func(m proto.Message) (bool, error) {
		switch x := m.(type) {
		case *pg_query.VariableSetStmt:
			if a.s.setting != "" && strings.EqualFold(strings.TrimSpace(x.Name), a.s.setting) {
				return false, a.refuseTenant(kindTenantSet, setVerb(x), -1)
			}
			if pinSetting(x.Name) {
				return false, a.refusePin(setVerb(x)+" of a pgcloak.* setting", -1)
			}
			if x != top && (strings.EqualFold(x.Name, RoleChangeRole) || strings.EqualFold(x.Name, RoleChangeSessionAuthorization)) {
				return false, a.refuseTenant(kindTenantRoleNested, "setting "+strings.ToLower(x.Name)+" inside a function definition or a role or database default", -1)
			}
			if err := a.lexerSet(x); err != nil {
				return false, err
			}
			if err := a.searchPathSet(x); err != nil {
				return false, err
			}
		case *pg_query.PrepareStmt:
			return true, a.reservedName(x.Name, "PREPARE")
		case *pg_query.ExecuteStmt:
			return true, a.reservedName(x.Name, "EXECUTE")
		case *pg_query.DeallocateStmt:
			return true, a.reservedName(x.Name, "DEALLOCATE")
		case *pg_query.DeclareCursorStmt:
			return true, a.reservedName(x.Portalname, "DECLARE")
		case *pg_query.FetchStmt:
			what := "FETCH"
			if x.Ismove {
				what = "MOVE"
			}
			return true, a.reservedName(x.Portalname, what)
		case *pg_query.ClosePortalStmt:
			return true, a.reservedName(x.Portalname, "CLOSE")
		case *pg_query.ParamRef:
			// Not tenancy, but this walk sees every node: parameter
			// numbers must be ones a Bind can supply.
			if x.Number < 1 || x.Number > maxParamNumber {
				return false, a.refusal(kindParameter, "", "", "", "$"+strconv.Itoa(int(x.Number)), x.Location)
			}
		case *pg_query.FuncCall:
			if err := a.tenancyFunc(x); err != nil {
				return false, err
			}
			if err := a.tableExport(x); err != nil {
				return false, err
			}
		case *pg_query.A_Const:
			if s := x.GetSval(); s != nil {
				if err := a.tenancyString(s.Sval, setting, x.Location); err != nil {
					return false, err
				}
			}
		case *pg_query.DoStmt:
			for _, arg := range x.Args {
				if d := arg.GetDefElem(); d != nil && d.Defname == "as" {
					if mentionsTenancy(d.Arg.GetString_().GetSval(), setting) {
						return false, a.refuseTenant(kindTenantBody, "a DO block that mentions it, set_config, pg_settings or the tenant pin", d.Location)
					}
					if len(a.s.tables) > 0 && ContainsFold(d.Arg.GetString_().GetSval(), tableExportWord) {
						return false, a.refusal(kindTableExport, "", "", "", "a DO block that mentions "+tableExportWord+" functions", d.Location)
					}
				}
			}
		case *pg_query.CreateFunctionStmt:
			bad := false
			forBodyStrings(x, func(s string) { bad = bad || mentionsTenancy(s, setting) })
			if !bad && x.SqlBody != nil {
				_ = visit(x.SqlBody, func(m proto.Message) (bool, error) {
					switch y := m.(type) {
					case *pg_query.String:
						bad = bad || mentionsTenancy(y.Sval, setting)
					case *pg_query.A_Const:
						bad = bad || mentionsTenancy(y.GetSval().GetSval(), setting)
					}
					return !bad, nil
				})
			}
			if bad {
				what := "a function body that mentions it, set_config, pg_settings or the tenant pin"
				if x.IsProcedure {
					what = "a procedure body that mentions it, set_config, pg_settings or the tenant pin"
				}
				return false, a.refuseTenant(kindTenantBody, what, -1)
			}
			if len(a.s.tables) > 0 {
				export := false
				forBodyStrings(x, func(s string) { export = export || ContainsFold(s, tableExportWord) })
				if export {
					return false, a.refusal(kindTableExport, "", "", "", "a routine body that mentions "+tableExportWord+" functions", -1)
				}
			}
		case *pg_query.RangeVar:
			if strings.EqualFold(x.Schemaname, pinSchema) {
				return false, a.refusePin("naming pgcloak."+x.Relname, x.Location)
			}
		case *pg_query.InsertStmt:
			return true, a.pgSettingsWrite(x.Relation)
		case *pg_query.UpdateStmt:
			return true, a.pgSettingsWrite(x.Relation)
		case *pg_query.DeleteStmt:
			return true, a.pgSettingsWrite(x.Relation)
		case *pg_query.MergeStmt:
			return true, a.pgSettingsWrite(x.Relation)
		}
		return true, nil
	})
}

func setVerb(v *pg_query.VariableSetStmt) string {
	switch {
	case v.Kind == pg_query.VariableSetKind_VAR_RESET || v.Kind == pg_query.VariableSetKind_VAR_RESET_ALL:
		return "RESET"
	case v.IsLocal:
		return "SET LOCAL"
	}
	return "SET"
}

// tenancyFunc checks set_config and the dynamic-SQL functions.
func (a *analyzer) tenancyFunc(f *pg_query.FuncCall) error {
	name := strings.ToLower(lastName(f.Funcname))
	switch {
	case name == "set_config":
		if len(f.Args) == 0 {
			return a.refuseTenant(kindTenantSetConfigDynamic, "set_config()", f.Location)
		}
		s, ok := constString(f.Args[0])
		if !ok {
			return a.refuseTenant(kindTenantSetConfigDynamic, "set_config()", f.Location)
		}
		if strings.EqualFold(strings.TrimSpace(s), a.s.setting) {
			return a.refuseTenant(kindTenantSetConfig, "set_config()", f.Location)
		}
		if pinSetting(strings.TrimSpace(s)) {
			return a.refusePin("set_config() of a pgcloak.* setting", f.Location)
		}
		if n := asciiLower(strings.TrimSpace(s)); n == "role" || n == "session_authorization" {
			// SET ROLE's check against the tenant map sees SET only.
			return a.refuseTenant(kindTenantRoleNested, "set_config() of "+n, f.Location)
		}
		if strings.EqualFold(strings.TrimSpace(s), settingSearchPath) {
			if len(f.Args) < 2 {
				return nil
			}
			if err := a.searchPathValue(f.Args[1], "set_config() of search_path", f.Location); err != nil {
				return err
			}
		}
		if setting := lexerSetting(s); setting != "" {
			if len(f.Args) >= 2 {
				if v, ok := constString(f.Args[1]); ok && lexerValueOK(setting, v) {
					return nil
				}
			}
			return a.lexerRefusal("set_config() of "+setting, f.Location)
		}
	case name == "pin_next" || name == "pin_challenge":
		// Refused qualified or not: a search_path that names pgcloak (or a
		// schema of the session's own making) would otherwise reach them.
		return a.refusePin("calling "+name+"()", f.Location)
	case len(f.Funcname) > 1 && strings.EqualFold(f.Funcname[len(f.Funcname)-2].GetString_().GetSval(), pinSchema) && name != "current_tenant":
		// Unqualified, pin() and unpin() resolve to these only on a
		// search_path that names pgcloak; they still verify their MAC
		// (pin) or only drop the session's own pin (unpin), so the
		// qualified names, which the pre-check sees, are what is refused.
		return a.refusePin("calling pgcloak."+name+"()", f.Location)
	default:
		args, whole, ok := dynamicSQLArgs(name, len(f.Args))
		if !ok {
			return nil
		}
		if whole {
			return a.refuseTenant(kindTenantDynamicSQL, name+"(), which builds its query from its arguments,", f.Location)
		}
		for _, i := range args {
			if i >= len(f.Args) || (name == "crosstab" && intConst(f.Args[i])) {
				continue
			}
			q, ok := constString(f.Args[i])
			if !ok {
				return a.refuseTenant(kindTenantDynamicSQL, name+"()", f.Location)
			}
			// The constant itself is checked as a string by tenancyString;
			// the statements in it get the checks of any statement, so that
			// they cannot reach pgcloak's own prepared statements either.
			if err := a.dynamicQuery(name, q, f.Location); err != nil {
				return err
			}
		}
	}
	return nil
}

// intConst reports whether n is an integer constant, possibly cast.
func intConst(n *pg_query.Node) bool {
	for n != nil {
		switch x := n.Node.(type) {
		case *pg_query.Node_TypeCast:
			n = x.TypeCast.Arg
		case *pg_query.Node_AConst:
			return x.AConst.GetIval() != nil
		default:
			return false
		}
	}
	return false
}

// dynamicQuery applies the tenancy checks to the statements of a query
// given as text to the function name, which runs it, and refuses one that
// names a declared table (rewrite cannot rewrite inside the string). A
// text pg_query cannot parse is refused: PostgreSQL may well run it
// (pg_query reads its tree back with a nesting limit PostgreSQL does not
// have, and a newer server knows syntax pg_query does not), and then
// nothing would have checked it. A refusal points at the function call.
func (a *analyzer) dynamicQuery(name, q string, loc int32) error {
	tree, err := pg_query.Parse(q)
	if err != nil {
		return a.refuseTenant(kindTenantDynamicSQL, name+"() with a query pgcloak cannot parse", loc)
	}
	for _, raw := range tree.Stmts {
		if err := a.tenancy(raw.Stmt); err != nil {
			if r, ok := err.(*Refusal); ok {
				r.Position = a.position(loc)
			}
			return err
		}
		// The statements run unrewritten: a search on a declared column
		// would send its plaintext to PostgreSQL, a read return
		// ciphertext inside the function's result. Any mention of a
		// declared table is refused (conservatively: CTE names and
		// search_path aside).
		if t := a.touches(raw.Stmt); t != nil {
			return a.refuseTable(kindStatement, t, name+"()", loc)
		}
	}
	return nil
}

// reservedName refuses a statement that names one of pgcloak's own
// prepared statements or portals (ReservedPrefix), compared without regard
// to ASCII case: the proxy's names are lower-case, and erring towards
// refusing costs nothing.
func (a *analyzer) reservedName(name, what string) error {
	if len(name) >= len(ReservedPrefix) && strings.EqualFold(name[:len(ReservedPrefix)], ReservedPrefix) {
		return a.refusal(kindReserved, "", "", "", what, -1)
	}
	return nil
}

// The settings that decide how PostgreSQL's lexer reads a statement text.
// pg_query lexes as PostgreSQL does with client_encoding UTF8 and
// standard_conforming_strings on; with another client encoding (SJIS, GBK,
// GB18030, BIG5 have multibyte characters whose second byte is a backslash
// or a quote) or with backslash escapes in ordinary strings, one text is
// read as different statements by the two.
const (
	settingClientEncoding = "client_encoding"
	settingSCS            = "standard_conforming_strings"
	// array_nulls decides whether an unquoted NULL in an array's text is
	// NULL: pgcloak reads the arrays of col = ANY(...) itself.
	settingArrayNulls = "array_nulls"
)

// lexerSetting returns which lexer setting name names (GUC names compare
// case-insensitively), or "".
func lexerSetting(name string) string {
	switch {
	case strings.EqualFold(name, settingClientEncoding):
		return settingClientEncoding
	case strings.EqualFold(name, settingSCS):
		return settingSCS
	case strings.EqualFold(name, settingArrayNulls):
		return settingArrayNulls
	}
	return ""
}

// lexerValueOK reports whether v keeps setting where pgcloak needs it:
// client_encoding UTF8 under any name PostgreSQL's clean_encoding_name
// maps to it (utf8, UTF-8, unicode, ...) or SQL_ASCII (no conversion:
// PostgreSQL verifies the bytes as the database encoding and lexes them
// as they are, as the startup check also accepts), and
// standard_conforming_strings any spelling of true that parse_bool
// accepts.
func lexerValueOK(setting, v string) bool {
	switch setting {
	case settingClientEncoding:
		var b [8]byte
		n := 0
		for i := 0; i < len(v); i++ {
			c := v[i]
			if 'A' <= c && c <= 'Z' {
				c += 'a' - 'A'
			}
			if ('a' <= c && c <= 'z') || ('0' <= c && c <= '9') {
				if n == len(b) {
					return false
				}
				b[n] = c
				n++
			}
		}
		name := string(b[:n])
		return name == "utf8" || name == "unicode" || name == "sqlascii"
	case settingSCS, settingArrayNulls:
		l := strings.ToLower(v)
		return l != "" && (strings.HasPrefix("true", l) || strings.HasPrefix("yes", l) || l == "on" || l == "1")
	}
	return false
}

// lexerSet checks a SET, SET LOCAL, RESET or function SET clause of a lexer
// setting. Only an explicit value pgcloak agrees with passes: DEFAULT,
// RESET and FROM CURRENT go back to a value the text does not show.
func (a *analyzer) lexerSet(v *pg_query.VariableSetStmt) error {
	setting := lexerSetting(v.Name)
	if setting == "" {
		return nil
	}
	if v.Kind == pg_query.VariableSetKind_VAR_SET_VALUE && len(v.Args) == 1 {
		if c := v.Args[0].GetAConst(); c != nil {
			if val, ok := constValue(c); ok && lexerValueOK(setting, val) {
				return nil
			}
		}
	}
	return a.lexerRefusal(setVerb(v)+" "+setting, -1)
}

// lexerRefusal refuses a change of a lexer setting outright when tables are
// declared, and otherwise records it in Plan.LexerChange for the proxy,
// which refuses it in sessions with a tenant.
func (a *analyzer) lexerRefusal(construct string, loc int32) error {
	r := a.refusal(kindLexer, "", "", "", construct, loc)
	if len(a.s.tables) > 0 {
		return r
	}
	if a.plan.LexerChange == nil {
		a.plan.LexerChange = r
	}
	return nil
}

// tenancyString checks a string constant. Naming the setting or pg_settings
// exactly is fine (current_setting('app.tenant_id') is how policies read
// it); a longer text that embeds either, or any text containing set_config,
// may be SQL that some function will run, and is refused.
func (a *analyzer) tenancyString(s, setting string, loc int32) error {
	if mentionsPin(s) {
		return a.refusePin("a string constant that names it", loc)
	}
	if ContainsFold(s, "set_config") {
		return a.refuseTenant(kindTenantString, "a string constant containing set_config", loc)
	}
	if ContainsFold(s, "pg_settings") {
		switch t := strings.ToLower(strings.TrimSpace(s)); t {
		case "pg_settings", "pg_catalog.pg_settings":
		default:
			return a.refuseTenant(kindTenantString, "a string constant that embeds pg_settings", loc)
		}
	}
	if setting != "" && ContainsFold(s, setting) && !strings.EqualFold(strings.TrimSpace(s), a.s.setting) {
		return a.refuseTenant(kindTenantString, "a string constant that embeds the setting name", loc)
	}
	return nil
}

// mentionsTenancy reports whether text (a routine body, a string constant)
// mentions the setting (lower-case), set_config, pg_settings or the tenant
// pin (mentionsPin).
func mentionsTenancy(body, setting string) bool {
	return (setting != "" && ContainsFold(body, setting)) ||
		ContainsFold(body, "set_config") || ContainsFold(body, "pg_settings") || mentionsPin(body)
}

// The tenant pin (package keystore): schema pgcloak holds pin_challenge(),
// pin(), unpin() and current_tenant(), the pin key table and the pin's
// sequences, and the pin's proof travels in a pgcloak.* setting. Only
// current_tenant() is the client's to call; the rest is pgcloak's.
const pinSchema = "pgcloak"

// pinSetting reports whether name is a pgcloak.* setting, which the proxy
// reserves for itself.
func pinSetting(name string) bool {
	return len(name) > len(pinSchema)+1 && strings.EqualFold(name[:len(pinSchema)+1], pinSchema+".")
}

// mentionsPin reports whether a text (a string constant, a routine body)
// may name the pin's functions, table, sequences or proof setting: whether
// it mentions pgcloak (which the pre-check sees) and pin_*, unpin,
// tenant_proof or the word pin, however quoted.
func mentionsPin(text string) bool {
	return ContainsFold(text, pinSchema) && (ContainsFold(text, "pin_") || ContainsFold(text, "unpin") ||
		ContainsFold(text, "tenant_proof") || containsWordFold(text, "pin"))
}

// refusePin refuses a statement that touches the tenant pin.
func (a *analyzer) refusePin(construct string, loc int32) *Refusal {
	return a.refusal(kindTenantPin, "", "", "", construct, loc)
}

// pgSettingsWrite refuses writes to pg_settings, whose UPDATE rule calls
// set_config.
func (a *analyzer) pgSettingsWrite(rv *pg_query.RangeVar) error {
	if rv != nil && strings.EqualFold(rv.Relname, "pg_settings") &&
		(rv.Schemaname == "" || strings.EqualFold(rv.Schemaname, "pg_catalog")) {
		return a.refuseTenant(kindTenantPgSettings, "writing pg_settings", rv.Location)
	}
	return nil
}

// constString returns the value of a string constant, looking through
// casts ('app.tenant_id'::text).
func constString(n *pg_query.Node) (string, bool) {
	for n != nil {
		switch x := n.Node.(type) {
		case *pg_query.Node_TypeCast:
			n = x.TypeCast.Arg
		case *pg_query.Node_AConst:
			if s := x.AConst.GetSval(); s != nil {
				return s.Sval, true
			}
			return "", false
		default:
			return "", false
		}
	}
	return "", false
}

// lastName returns the last element of a qualified name list.
func lastName(names []*pg_query.Node) string {
	if len(names) == 0 {
		return ""
	}
	return names[len(names)-1].GetString_().GetSval()
}

// settingSearchPath decides which schema an unqualified name means.
// checkCasts reads an unqualified type name as pg_catalog's, which holds
// while search_path does not name pg_catalog after another schema
// (PostgreSQL searches pg_catalog first unless search_path places it
// later): a schema of the tenant's making could otherwise hold a domain
// named text over varchar(3), and 'abc   '::text would be 'abc' in
// PostgreSQL while pgcloak sealed 'abc   '.
const settingSearchPath = "search_path"

// searchPathSet checks a SET, SET LOCAL or function SET clause of
// search_path when tables are declared: each schema named must leave
// pg_catalog first. SET ... DEFAULT, RESET and FROM CURRENT return to a
// value a client statement did not give (or one already checked).
func (a *analyzer) searchPathSet(v *pg_query.VariableSetStmt) error {
	if len(a.s.tables) == 0 || !strings.EqualFold(v.Name, settingSearchPath) || v.Kind != pg_query.VariableSetKind_VAR_SET_VALUE {
		return nil
	}
	construct := setVerb(v) + " search_path"
	var names []string
	for _, arg := range v.Args {
		c := arg.GetAConst()
		if c == nil || c.Isnull {
			return a.refusal(kindSearchPath, "", "", "", construct+" to a value that is not a constant", -1)
		}
		// Each item is one schema name, as written (quoted or folded).
		val, _ := constValue(c)
		names = append(names, val)
	}
	if !pgCatalogFirst(names) {
		return a.refusal(kindSearchPath, "", "", "", construct+" naming pg_catalog after another schema", -1)
	}
	return nil
}

// searchPathValue checks the value set_config() gives search_path when
// tables are declared: a string constant (no cast, which could change
// it) whose list leaves pg_catalog first.
func (a *analyzer) searchPathValue(n *pg_query.Node, construct string, loc int32) error {
	if len(a.s.tables) == 0 {
		return nil
	}
	c := n.GetAConst()
	if c == nil || c.GetSval() == nil {
		return a.refusal(kindSearchPath, "", "", "", construct+" to a value that is not a string constant", loc)
	}
	names, ok := splitIdentifierList(c.GetSval().GetSval())
	if !ok || !pgCatalogFirst(names) {
		return a.refusal(kindSearchPath, "", "", "", construct+" naming pg_catalog after another schema", loc)
	}
	return nil
}

// SearchPathCatalogFirst reports whether a search_path setting's text is a
// valid list that leaves pg_catalog searched first (see pgCatalogFirst):
// for a search_path given at login, which no statement sets.
func SearchPathCatalogFirst(value string) bool {
	names, ok := splitIdentifierList(value)
	return ok && pgCatalogFirst(names)
}

// pgCatalogFirst reports whether a search_path's schema names leave
// pg_catalog searched first: not named, or named first. Names compare
// without ASCII case, erring towards refusing.
func pgCatalogFirst(names []string) bool {
	for i, n := range names {
		if strings.EqualFold(n, "pg_catalog") {
			return i == 0
		}
	}
	return true
}

// splitIdentifierList splits a list setting's text into names as
// PostgreSQL's SplitIdentifierString does: comma-separated, each either
// double-quoted (with "" for a quote, kept as written) or unquoted (ASCII
// letters folded to lower case), with whitespace around. ok is false for a
// text PostgreSQL would refuse as invalid list syntax.
func splitIdentifierList(s string) (names []string, ok bool) {
	space := func(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' }
	i := 0
	for i < len(s) && space(s[i]) {
		i++
	}
	if i == len(s) {
		return nil, true
	}
	for {
		var name string
		if s[i] == '"' {
			var b strings.Builder
			i++
			for {
				if i >= len(s) {
					return nil, false
				}
				if s[i] == '"' {
					if i+1 < len(s) && s[i+1] == '"' {
						b.WriteByte('"')
						i += 2
						continue
					}
					i++
					break
				}
				b.WriteByte(s[i])
				i++
			}
			name = b.String()
		} else {
			j := i
			for j < len(s) && s[j] != ',' && !space(s[j]) {
				j++
			}
			if j == i {
				return nil, false
			}
			name = asciiLower(s[i:j])
			i = j
		}
		names = append(names, name)
		for i < len(s) && space(s[i]) {
			i++
		}
		if i == len(s) {
			return names, true
		}
		if s[i] != ',' {
			return nil, false
		}
		i++
		for i < len(s) && space(s[i]) {
			i++
		}
		if i == len(s) {
			return nil, false
		}
	}
}

// tableExportWord is in the name of every function that returns a table's
// stored rows as XML: table_to_xml, schema_to_xml, database_to_xml,
// cursor_to_xml and their _xmlschema and _and_xmlschema forms (and the
// query_to_xml family, which tenancyFunc checks).
const tableExportWord = "_to_xml"

// tableExport refuses, when tables are declared, a call of a function that
// returns stored rows as one XML value: table_to_xml*(), schema_to_xml*(),
// database_to_xml*() and cursor_to_xml*() name their rows by a string, an
// OID, a schema, the database or a cursor, not by a query rewrite could
// read, and the value would carry encrypted columns' ciphertext and their
// blind indexes to the client undecrypted. It runs in the tenancy walk, so
// it also sees the queries of query_to_xml() and its siblings; in any
// schema, erring towards refusing.
func (a *analyzer) tableExport(f *pg_query.FuncCall) error {
	if len(a.s.tables) == 0 {
		return nil
	}
	name := asciiLower(lastName(f.Funcname))
	for _, p := range []string{"table_to_xml", "schema_to_xml", "database_to_xml", "cursor_to_xml"} {
		if strings.HasPrefix(name, p) {
			return a.refusal(kindTableExport, "", "", "", "function "+name+"()", f.Location)
		}
	}
	return nil
}
