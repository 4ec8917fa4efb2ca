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

// dynamicSQLFuncs are built-in functions whose first argument is a query
// that they run: with a query assembled from pieces they could call
// set_config without the name appearing anywhere. Their query must be a
// string constant, which tenancy then checks like any string.
var dynamicSQLFuncs = map[string]bool{
	"query_to_xml":               true,
	"query_to_xmlschema":         true,
	"query_to_xml_and_xmlschema": true,
	"ts_stat":                    true,
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
			if x != top && (strings.EqualFold(x.Name, RoleChangeRole) || strings.EqualFold(x.Name, RoleChangeSessionAuthorization)) {
				return false, a.refuseTenant(kindTenantRoleNested, "setting "+strings.ToLower(x.Name)+" inside a function definition or a role or database default", -1)
			}
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
						return false, a.refuseTenant(kindTenantBody, "a DO block that mentions it, set_config or pg_settings", d.Location)
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
				what := "a function body that mentions it, set_config or pg_settings"
				if x.IsProcedure {
					what = "a procedure body that mentions it, set_config or pg_settings"
				}
				return false, a.refuseTenant(kindTenantBody, what, -1)
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
	case dynamicSQLFuncs[name]:
		if len(f.Args) == 0 {
			return nil
		}
		if _, ok := constString(f.Args[0]); !ok {
			return a.refuseTenant(kindTenantDynamicSQL, name+"()", f.Location)
		}
		// The constant itself is checked as a string by tenancyString.
	}
	return nil
}

// tenancyString checks a string constant. Naming the setting or pg_settings
// exactly is fine (current_setting('app.tenant_id') is how policies read
// it); a longer text that embeds either, or any text containing set_config,
// may be SQL that some function will run, and is refused.
func (a *analyzer) tenancyString(s, setting string, loc int32) error {
	if containsFold(s, "set_config") {
		return a.refuseTenant(kindTenantString, "a string constant containing set_config", loc)
	}
	if containsFold(s, "pg_settings") {
		switch t := strings.ToLower(strings.TrimSpace(s)); t {
		case "pg_settings", "pg_catalog.pg_settings":
		default:
			return a.refuseTenant(kindTenantString, "a string constant that embeds pg_settings", loc)
		}
	}
	if setting != "" && containsFold(s, setting) && !strings.EqualFold(strings.TrimSpace(s), a.s.setting) {
		return a.refuseTenant(kindTenantString, "a string constant that embeds the setting name", loc)
	}
	return nil
}

// mentionsTenancy reports whether text (a routine body, a string constant)
// mentions the setting (lower-case), set_config or pg_settings.
func mentionsTenancy(body, setting string) bool {
	return (setting != "" && containsFold(body, setting)) ||
		containsFold(body, "set_config") || containsFold(body, "pg_settings")
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
