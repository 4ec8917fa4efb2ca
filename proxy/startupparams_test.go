package proxy

import (
	"testing"

	"github.com/pgcloak/pgcloak/config"
)

// TestCheckStartupParameters: a StartupMessage may not set the tenant
// setting or a pgcloak.* setting however its options spell the name
// (PostgreSQL reads a dash in a name as an underscore and a backslash as an
// escape), and may set anything else.
func TestCheckStartupParameters(t *testing.T) {
	ten := config.Tenancy{Setting: "app.tenant_id"}
	refused := []map[string]string{
		{"app.tenant_id": "globex"},
		{"APP.Tenant_ID": "globex"},
		{"pgcloak.tenant_token": "x"},
		{"options": "-c app.tenant_id=globex"},
		{"options": "-c app.tenant-id=globex"},
		{"options": `-c app.tenant\_id=globex`},
		{"options": "--app.tenant-id=globex"},
		{"options": "-capp.tenant-id=globex"},
		{"options": "-c APP.TENANT-ID=globex"},
		{"options": `-c pgcloak\.tenant_proof=x`},
		{"options": "-c pgcloak-x.y=1 --pgcloak.tenant-proof=x"},
		{"options": "-c work_mem=64MB -c app.tenant-id=globex"},
		{"search_path": "pg_temp, public"},
		{"search_path": "public,pg_temp_3"},
		{"options": "-c search_path=pg_temp,public"},
		{"options": "--search-path=PG_TEMP"},
	}
	for _, p := range refused {
		if err := checkStartupParameters(ten, p); err == nil {
			t.Errorf("%v: accepted, want refused", p)
		}
	}
	allowed := []map[string]string{
		{"application_name": "app", "options": "-c work_mem=64MB"},
		{"options": "-c app.other=1 --search-path=public"},
		{"search_path": "public, app"},
		{"options": ""},
	}
	for _, p := range allowed {
		if err := checkStartupParameters(ten, p); err != nil {
			t.Errorf("%v: refused: %v", p, err)
		}
	}
}
