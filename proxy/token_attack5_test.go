package proxy

import (
	"fmt"
	"strings"
	"testing"
)

// Third review (2026-12-07): dynamicQuery let through a query text that
// pg_query cannot parse ("left to PostgreSQL"); now it refuses it.
// pg_query_go unmarshals the parse tree with protobuf's default recursion
// limit (10000), so a chain of 5000 ::int casts (which PostgreSQL's parser
// and analysis accept) makes pg_query fail while PostgreSQL runs the text.
// The outer string constant is only checked for the literal words
// set_config / the setting / pgcloak+pin, which U& escapes avoid.
func r3Deep(n int) string { return "1 = 1" + strings.Repeat("::int", n) }

func r3QueryToXML(inner string) string {
	return `SELECT query_to_xml('` + strings.ReplaceAll(inner, "'", "''") + `', true, false, '')`
}

// Step 1: set the lexer setting and the tenant setting by name.
func TestTokenAttack5_DeepQueryToXMLSetConfig(t *testing.T) {
	env := startTokenEnv(t)
	conn := atkRaw(t, env)
	inner := `SELECT U&"set\005fconfig"(U&'app.tenant\005fid', 'globex', false) WHERE ` + r3Deep(5000)
	_, err := atkExec(t, conn, r3QueryToXML(inner))
	t.Logf("query_to_xml deep: %v", err)
	if pgCode(err) != "42501" {
		t.Errorf("query_to_xml of a query pg_query cannot parse: %v, want 42501", err)
	}
	res, err2 := atkExec(t, conn, `select current_setting('app.tenant_id', true)`)
	if err2 == nil {
		got := string(res[0].Rows[0][0])
		t.Logf("app.tenant_id now %q", got)
		if got == "globex" {
			t.Errorf("set_config of the tenant setting ran through query_to_xml with a deep expression")
		}
	}
}

// Step 2: replay a victim's unexecuted pin (its MAC read from
// pg_stat_activity, as in token_attack4) through the same hole.
func TestTokenAttack5_DeepQueryToXMLPinReplay(t *testing.T) {
	env := startTokenEnv(t)
	atkSeed(t, env)
	victim, pin := rvUnexecutedPin(t, env)
	inner := fmt.Sprintf(`SELECT U&"set\005fconfig"(U&'app.tenant\005fid', '%s', false) || U&"set\005fconfig"(U&'pgcl\006fak.tenant\005fproof', U&"pgcl\006fak".U&"pin\005fnext"('%s', '%s', %s, %s, %s, '%s'), false) WHERE `,
		pin[0], pin[0], pin[1], pin[2], pin[3], pin[4], pin[5]) + r3Deep(5000)
	_, err := atkExec(t, victim, r3QueryToXML(inner))
	t.Logf("attacker's query_to_xml: %v", err)
	rvSeesNothing(t, victim, "replayed an unexecuted pin through query_to_xml")
}
