package main

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/pgcloak/pgcloak/config"
	"github.com/pgcloak/pgcloak/keystore"
	"github.com/pgcloak/pgcloak/testenv"
	"gopkg.in/yaml.v3"
)

// repoRoot is where docker-compose.yml, the Dockerfile and go.mod live,
// seen from this package's directory.
const repoRoot = "../.."

// composeFile is the part of docker-compose.yml the test reads.
type composeFile struct {
	Services map[string]composeService `yaml:"services"`
	Volumes  map[string]any            `yaml:"volumes"`
}

type composeService struct {
	Image       string            `yaml:"image"`
	Build       any               `yaml:"build"`
	Entrypoint  []string          `yaml:"entrypoint"`
	Command     []string          `yaml:"command"`
	Environment map[string]string `yaml:"environment"`
	Volumes     []string          `yaml:"volumes"`
	Tmpfs       []string          `yaml:"tmpfs"`
	Ports       []string          `yaml:"ports"`
	Restart     string            `yaml:"restart"`
	Healthcheck *struct {
		Test []string `yaml:"test"`
	} `yaml:"healthcheck"`
	DependsOn map[string]struct {
		Condition string `yaml:"condition"`
	} `yaml:"depends_on"`
}

// mount is one "source:target[:mode]" entry of a service's volumes.
type mount struct{ source, target string }

func (s composeService) mounts(t *testing.T) []mount {
	t.Helper()
	var ms []mount
	for _, v := range s.Volumes {
		parts := strings.Split(v, ":")
		if len(parts) < 2 || len(parts) > 3 || (len(parts) == 3 && parts[2] != "ro" && parts[2] != "rw") {
			t.Errorf("volume %q: want source:target[:ro]", v)
			continue
		}
		ms = append(ms, mount{parts[0], parts[1]})
	}
	return ms
}

// mountOf returns the local file mounted at target, relative to repoRoot.
func (s composeService) mountOf(t *testing.T, target string) (string, bool) {
	t.Helper()
	for _, m := range s.mounts(t) {
		if m.target == target && strings.HasPrefix(m.source, "./") {
			return m.source, true
		}
	}
	return "", false
}

// publishes reports whether the service publishes containerPort on the host.
func (s composeService) publishes(containerPort string) bool {
	for _, p := range s.Ports {
		if strings.HasSuffix(p, ":"+containerPort) {
			return true
		}
	}
	return false
}

func readCompose(t *testing.T) composeFile {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(repoRoot, "docker-compose.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var c composeFile
	if err := yaml.Unmarshal(data, &c); err != nil {
		t.Fatalf("docker-compose.yml: %v", err)
	}
	return c
}

// pgcloakServices returns the names of the services that run the
// Dockerfile's image as it is, `pgcloak serve`, sorted: the replicas.
func pgcloakServices(c composeFile) []string {
	var names []string
	for name, s := range c.Services {
		if s.Build != nil && s.Entrypoint == nil {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	return names
}

// kmsArgs is what the test reads from the kms service's pgcloak-kms
// command line.
type kmsArgs struct {
	host, port string
	alias      string            // --alias: the default KEK
	tenantKeys map[string]string // --tenant-key TENANT=ALIAS
}

// parseKMSArgs reads pgcloak-kms's flags (see cmd/pgcloak-kms; its
// TestComposeKMSCommand runs the real command with these arguments).
func parseKMSArgs(t *testing.T, args []string) kmsArgs {
	t.Helper()
	a := kmsArgs{host: "127.0.0.1", port: "4599", alias: "alias/pgcloak", tenantKeys: map[string]string{}}
	for i := 0; i < len(args); i++ {
		flag, value, inline := strings.Cut(args[i], "=")
		if !inline {
			if i+1 >= len(args) {
				t.Errorf("kms: flag %s has no value", flag)
				break
			}
			i++
			value = args[i]
		}
		switch flag {
		case "--listen":
			var err error
			if a.host, a.port, err = net.SplitHostPort(value); err != nil {
				t.Errorf("kms: --listen %q: %v", value, err)
			}
		case "--alias":
			a.alias = value
		case "--tenant-key":
			tenant, alias, ok := strings.Cut(value, "=")
			if !ok {
				alias = "alias/" + tenant
			}
			a.tenantKeys[tenant] = alias
		default:
			t.Errorf("kms: unknown pgcloak-kms flag %q", flag)
		}
	}
	return a
}

// TestCompose checks docker-compose.yml without a Docker engine: the
// services exist, what they mount exists, ports stay on loopback, and each
// replica's configuration loads and points at the compose services.
func TestCompose(t *testing.T) {
	c := readCompose(t)

	pg, ok := c.Services["postgres"]
	if !ok || !strings.HasPrefix(pg.Image, "postgres:15") {
		t.Errorf("service postgres: got image %q, want postgres:15", pg.Image)
	}
	kms, ok := c.Services["kms"]
	if !ok || kms.Build == nil || kms.Image != "" {
		t.Errorf("service kms: got image %q, build %v; want it built from the Dockerfile", kms.Image, kms.Build)
	}
	if want := "/usr/local/bin/pgcloak-kms"; len(kms.Entrypoint) == 0 || kms.Entrypoint[0] != want {
		t.Errorf("service kms: got entrypoint %q, want %s (where the Dockerfile installs it)", kms.Entrypoint, want)
	}
	emu := parseKMSArgs(t, append(slices.Clone(kms.Entrypoint[min(1, len(kms.Entrypoint)):]), kms.Command...))
	if emu.host != "0.0.0.0" {
		t.Errorf("kms: --listen host %q, want 0.0.0.0 (reachable from the replicas in the compose network)", emu.host)
	}
	if len(kms.Ports) > 0 {
		t.Errorf("kms: publishes %v; the emulator authenticates nobody, publish nothing", kms.Ports)
	}
	if kms.Healthcheck == nil || len(kms.Healthcheck.Test) == 0 || !strings.Contains(strings.Join(kms.Healthcheck.Test, " "), "/"+emu.port) {
		t.Errorf("kms: want a healthcheck of port %s, so that replicas start once it serves", emu.port)
	}
	// The emulator keeps its keys in memory: PostgreSQL's wrapped data keys
	// must not outlive them, or restarts leave data no KEK can open.
	if !slices.Contains(pg.Tmpfs, "/var/lib/postgresql/data") {
		t.Errorf("postgres: got tmpfs %v, want /var/lib/postgresql/data (lost together with the emulator's keys)", pg.Tmpfs)
	}
	for name, s := range map[string]composeService{"postgres": pg, "kms": kms} {
		if s.Restart != "" && s.Restart != "no" {
			t.Errorf("%s: restart %q; want none, so that one never restarts without the other", name, s.Restart)
		}
		for _, m := range s.mounts(t) {
			if !strings.HasPrefix(m.source, ".") && !strings.HasPrefix(m.source, "/") {
				t.Errorf("%s: named volume %q outlives the emulator's keys", name, m.source)
			}
		}
	}
	replicas := pgcloakServices(c)
	if len(replicas) < 2 {
		t.Fatalf("got pgcloak services %v, want at least two replicas built from the Dockerfile", replicas)
	}

	t.Run("mounts exist", func(t *testing.T) {
		for name, s := range c.Services {
			for _, m := range s.mounts(t) {
				if !strings.HasPrefix(m.source, ".") && !strings.HasPrefix(m.source, "/") {
					if _, ok := c.Volumes[m.source]; !ok {
						t.Errorf("%s: volume %q is not declared under volumes", name, m.source)
					}
					continue
				}
				if _, err := os.Stat(filepath.Join(repoRoot, m.source)); err != nil {
					t.Errorf("%s: mounts %s: %v", name, m.source, err)
				}
			}
		}
	})

	t.Run("ports on loopback", func(t *testing.T) {
		for name, s := range c.Services {
			for _, p := range s.Ports {
				if !strings.HasPrefix(p, "127.0.0.1:") {
					t.Errorf("%s: port %q is published on every interface; want 127.0.0.1:host:container", name, p)
				}
			}
		}
	})

	t.Run("host ports distinct", func(t *testing.T) {
		seen := make(map[string]string)
		for name, s := range c.Services {
			for _, p := range s.Ports {
				host := strings.Join(strings.Split(p, ":")[:2], ":")
				if prev, dup := seen[host]; dup {
					t.Errorf("%s and %s both publish %s", prev, name, host)
				}
				seen[host] = name
			}
		}
	})

	initSQL, ok := pg.mountOf(t, "/docker-entrypoint-initdb.d/10-pgcloak.sql")
	if !ok {
		t.Fatalf("postgres: no init SQL mounted under /docker-entrypoint-initdb.d")
	}
	initData, err := os.ReadFile(filepath.Join(repoRoot, initSQL))
	if err != nil {
		t.Fatal(err)
	}
	schema := string(initData)

	for _, name := range replicas {
		t.Run(name, func(t *testing.T) {
			s := c.Services[name]
			if dep, ok := s.DependsOn["postgres"]; !ok || dep.Condition != "service_healthy" {
				t.Errorf("depends_on postgres: got %+v, want condition service_healthy", dep)
			}
			if dep, ok := s.DependsOn["kms"]; !ok || dep.Condition != "service_healthy" {
				t.Errorf("depends_on kms: got %+v, want condition service_healthy", dep)
			}
			file, ok := s.mountOf(t, "/etc/pgcloak/pgcloak.yaml")
			if !ok {
				t.Fatal("no configuration mounted at /etc/pgcloak/pgcloak.yaml (the Dockerfile's entrypoint)")
			}
			if !strings.HasPrefix(file, "./docker/") {
				t.Errorf("configuration %s: want it under docker/", file)
			}
			cfg := loadComposeConfig(t, filepath.Join(repoRoot, file), s.Environment)

			// Addresses name compose services and the ports they listen on.
			wantHostPort(t, "upstream.address", cfg.Upstream.Address, "postgres", "5432")
			if cfg.Keys.Provider != config.ProviderAWS {
				t.Errorf("keys.provider: got %q, want aws (the KMS emulator)", cfg.Keys.Provider)
			}
			endpoint, ok := strings.CutPrefix(cfg.Keys.AWS.Endpoint, "http://")
			if !ok {
				t.Errorf("keys.aws.endpoint: got %q, want http:// (the emulator speaks plain HTTP)", cfg.Keys.AWS.Endpoint)
			}
			wantHostPort(t, "keys.aws.endpoint", endpoint, "kms", emu.port)
			if got, want := cfg.Keys.AWS.Region, testenv.KMSRegion; got != want {
				t.Errorf("keys.aws.region: got %q, want the emulator's %q", got, want)
			}
			if got := s.Environment["AWS_REGION"]; got != cfg.Keys.AWS.Region {
				t.Errorf("environment AWS_REGION: got %q, want keys.aws.region %q", got, cfg.Keys.AWS.Region)
			}
			for _, name := range []string{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} {
				if s.Environment[name] == "" {
					t.Errorf("environment: %s is not set; the SDK sends nothing unsigned", name)
				}
			}
			if cfg.Keys.AWS.KeyID != emu.alias {
				t.Errorf("keys.aws.key_id: got %q, want the emulator's default alias %q", cfg.Keys.AWS.KeyID, emu.alias)
			}
			if len(cfg.Keys.Tenants) == 0 {
				t.Error("keys.tenants: none; the compose setup should show a tenant with its own KEK")
			}
			for tenant, tk := range cfg.Keys.Tenants {
				if got := emu.tenantKeys[tenant]; got != tk.KeyID {
					t.Errorf("keys.tenants.%s.key_id: got %q, but pgcloak-kms creates %q for it", tenant, tk.KeyID, got)
				}
				if _, known := cfg.Tenancy.Login.Roles[tenantRole(cfg, tenant)]; !known {
					t.Errorf("keys.tenants.%s: no login role maps to that tenant", tenant)
				}
			}
			if got, want := cfg.Upstream.Password.Reveal(), roleSQLPassword(schema, cfg.Upstream.User); got != want || got == "" {
				t.Errorf("upstream.password does not match the password init SQL gives role %q", cfg.Upstream.User)
			}

			// The container listens where compose publishes.
			for key, addr := range map[string]string{"listen.address": cfg.Listen.Address, "admin.address": cfg.Admin.Address} {
				host, port, err := net.SplitHostPort(addr)
				switch {
				case err != nil:
					t.Errorf("%s %q: %v", key, addr, err)
				case host != "0.0.0.0":
					t.Errorf("%s: got host %q, want 0.0.0.0 (inside the container; compose publishes on 127.0.0.1)", key, host)
				case !s.publishes(port):
					t.Errorf("%s: port %s is not published (ports %v)", key, port, s.Ports)
				}
			}

			// Every role and table the configuration names is made by init SQL.
			roles := []string{cfg.Upstream.User}
			for role := range cfg.Tenancy.Login.Roles {
				roles = append(roles, role)
			}
			roles = append(roles, cfg.Tenancy.UnscopedRoles...)
			for _, role := range roles {
				if !regexp.MustCompile(`(?m)^create role ` + regexp.QuoteMeta(role) + ` `).MatchString(schema) {
					t.Errorf("role %q is not created by %s", role, initSQL)
				}
			}
			if len(cfg.Encrypt.Tables) == 0 {
				t.Error("encrypt.tables: none declared; the compose setup should show encryption")
			}
			for _, tbl := range cfg.Encrypt.Tables {
				if !strings.Contains(schema, "create table "+tbl.QualifiedName()+" (") {
					t.Errorf("table %s is not created by %s", tbl.QualifiedName(), initSQL)
				}
				// The bytea columns, CHECKs and indexes are pgcloak schema's
				// DDL, as it prints it now.
				var ddl strings.Builder
				writeTableSchema(&ddl, tbl)
				if !strings.Contains(schema, ddl.String()) {
					t.Errorf("%s does not hold what pgcloak schema prints for %s now:\n%s", initSQL, tbl.QualifiedName(), ddl.String())
				}
			}
			if pin := keystore.PinSchema(cfg.Tenancy.Setting); !strings.Contains(schema, pin) {
				t.Errorf("%s does not hold the verified tenant pin's DDL for %s as keystore prints it now:\n%s", initSQL, cfg.Tenancy.Setting, pin)
			}
		})
	}
}

// loadComposeConfig loads a replica's configuration with exactly the
// service's environment: every ${NAME} it references must be set there.
func loadComposeConfig(t *testing.T, path string, env map[string]string) *config.Config {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range regexp.MustCompile(`\$\{(\w+)\}`).FindAllStringSubmatch(string(data), -1) {
		if _, ok := env[m[1]]; !ok {
			t.Errorf("%s references ${%s}, which the service's environment does not set", path, m[1])
		}
		// Whatever the machine running the test has set must not count.
		t.Setenv(m[1], "")
	}
	for k, v := range env {
		t.Setenv(k, v)
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatalf("config.Load: %v", err)
	}
	return cfg
}

func wantHostPort(t *testing.T, key, addr, host, port string) {
	t.Helper()
	h, p, err := net.SplitHostPort(addr)
	if err != nil || h != host || p != port {
		t.Errorf("%s: got %q, want %s:%s (the compose service)", key, addr, host, port)
	}
}

// roleSQLPassword returns the password init SQL gives role, or "".
func roleSQLPassword(schema, role string) string {
	m := regexp.MustCompile(`(?m)^create role ` + regexp.QuoteMeta(role) + ` +login[^;]* password '([^']*)'`).FindStringSubmatch(schema)
	if m == nil {
		return ""
	}
	return m[1]
}

// tenantRole returns a login role that tenancy.login.roles maps to
// tenant, or "".
func tenantRole(cfg *config.Config, tenant string) string {
	for role, t := range cfg.Tenancy.Login.Roles {
		if t == tenant {
			return role
		}
	}
	return ""
}

// TestDockerfileGoVersion checks that the image builds with a Go at least
// as new as go.mod asks for.
func TestDockerfileGoVersion(t *testing.T) {
	mod, err := os.ReadFile(filepath.Join(repoRoot, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^go (\d+)\.(\d+)(?:\.(\d+))?\s*$`).FindStringSubmatch(string(mod))
	if m == nil {
		t.Fatal("go.mod has no go directive")
	}
	want := versionOf(m[1:])

	docker, err := os.ReadFile(filepath.Join(repoRoot, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	froms := regexp.MustCompile(`(?mi)^FROM\s+(?:--\S+\s+)*golang:(\d+)\.(\d+)(?:\.(\d+))?(?:-(\S+))?\s+AS\s+(\S+)`).FindAllStringSubmatch(string(docker), -1)
	if len(froms) == 0 {
		t.Fatal("Dockerfile: no FROM golang:X.Y... AS stage")
	}
	for _, f := range froms {
		got := versionOf(f[1:4])
		if f[3] == "" {
			// golang:1.26 is the newest 1.26.x, so any patch go.mod asks for.
			got[2] = want[2]
		}
		if slices.Compare(got, want) < 0 {
			t.Errorf("Dockerfile stage %s: golang:%s.%s is older than go.mod's go %s.%s", f[5], f[1], f[2], m[1], m[2])
		}
		if !strings.HasPrefix(f[4], "bookworm") {
			t.Errorf("Dockerfile stage %s: got golang variant %q, want bookworm (the runtime stage's Debian, for glibc)", f[5], f[4])
		}
	}
	if !regexp.MustCompile(`(?m)^FROM\s+debian:bookworm-slim\s*$`).Match(docker) {
		t.Error("Dockerfile: no debian:bookworm-slim runtime stage")
	}
	if !regexp.MustCompile(`(?m)^ENV CGO_ENABLED=1\s*$`).Match(docker) {
		t.Error("Dockerfile: the build stage must set CGO_ENABLED=1 (pg_query is C)")
	}
}

// TestDockerfileImage checks the image's contents without a Docker
// engine: the build stage builds both commands, the runtime stage installs
// them where docker-compose.yml runs them and runs as an unprivileged user.
func TestDockerfileImage(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(repoRoot, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	// Join continued lines, drop comments: one instruction per line.
	text := regexp.MustCompile(`\\\n\s*`).ReplaceAllString(string(data), " ")
	var stages [][]string
	for _, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
		case strings.HasPrefix(strings.ToUpper(line), "FROM "):
			stages = append(stages, []string{line})
		case len(stages) > 0:
			stages[len(stages)-1] = append(stages[len(stages)-1], line)
		}
	}
	if len(stages) < 2 {
		t.Fatalf("Dockerfile: got %d stages, want a build stage and a runtime stage", len(stages))
	}
	build, runtime := strings.Join(stages[0], "\n"), stages[len(stages)-1]

	for _, cmd := range []string{"pgcloak", "pgcloak-kms"} {
		if _, err := os.Stat(filepath.Join(repoRoot, "cmd", cmd)); err != nil {
			t.Errorf("cmd/%s: %v", cmd, err)
		}
		if !regexp.MustCompile(`go build [^\n&]*-o /out/` + regexp.QuoteMeta(cmd) + ` \./cmd/` + regexp.QuoteMeta(cmd) + `(\s|$)`).MatchString(build) {
			t.Errorf("Dockerfile: the build stage does not build ./cmd/%s into /out/%s", cmd, cmd)
		}
		installed := false
		for _, line := range runtime {
			f := strings.Fields(line)
			if len(f) >= 3 && strings.EqualFold(f[0], "COPY") && strings.HasPrefix(f[1], "--from=") &&
				slices.Contains(f[2:len(f)-1], "/out/"+cmd) && (f[len(f)-1] == "/usr/local/bin/" || f[len(f)-1] == "/usr/local/bin/"+cmd) {
				installed = true
			}
		}
		if !installed {
			t.Errorf("Dockerfile: the runtime stage does not copy /out/%s to /usr/local/bin", cmd)
		}
	}

	var user string
	for _, line := range runtime {
		if f := strings.Fields(line); len(f) == 2 && strings.EqualFold(f[0], "USER") {
			user = f[1]
		}
	}
	name, _, _ := strings.Cut(user, ":")
	if name == "" || name == "root" || name == "0" {
		t.Errorf("Dockerfile: the runtime stage runs as %q; want a USER other than root", user)
	}
}

func versionOf(parts []string) []int {
	v := make([]int, 3)
	for i, p := range parts[:3] {
		v[i], _ = strconv.Atoi(p)
	}
	return v
}

// TestComposeInitSQL runs docker/postgres/init.sql on a real PostgreSQL,
// inside a transaction that is rolled back (roles are cluster-wide), and
// checks that it leaves the table under forced row-level security.
func TestComposeInitSQL(t *testing.T) {
	pg := testenv.Shared(t)
	db := testenv.NewDatabase(t, pg)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()

	data, err := os.ReadFile(filepath.Join(repoRoot, "docker", "postgres", "init.sql"))
	if err != nil {
		t.Fatal(err)
	}
	// The compose database is "app"; this test's has another name.
	sql := regexp.MustCompile(`\bon database app\b`).ReplaceAllString(string(data), "on database "+db)

	conn, err := pgx.Connect(ctx, pg.SuperuserURL(db))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(context.Background())
	if _, err := tx.Exec(ctx, sql); err != nil {
		t.Fatalf("init.sql: %v", err)
	}
	var enabled, forced bool
	if err := tx.QueryRow(ctx, "select relrowsecurity, relforcerowsecurity from pg_class where oid = 'public.patients'::regclass").Scan(&enabled, &forced); err != nil {
		t.Fatal(err)
	}
	if !enabled || !forced {
		t.Errorf("public.patients: got row security enabled %v, forced %v; want both", enabled, forced)
	}
	var policies int
	if err := tx.QueryRow(ctx, `select count(*) from pg_policies where tablename = 'patients'
		and qual like '%pgcloak.current_tenant()%' and with_check like '%pgcloak.current_tenant()%'`).Scan(&policies); err != nil || policies != 1 {
		t.Errorf("public.patients: %d policies on pgcloak.current_tenant() (%v), want 1", policies, err)
	}
	var checks int
	if err := tx.QueryRow(ctx, `select count(*) from pg_constraint where conrelid = 'public.patients'::regclass
		and contype = 'c' and conname like '%pgcloak_format'`).Scan(&checks); err != nil || checks != 6 {
		t.Errorf("public.patients: %d format CHECKs (%v), want 6 (4 declared columns, 2 index columns)", checks, err)
	}
	var bypass bool
	if err := tx.QueryRow(ctx, "select rolbypassrls from pg_roles where rolname = 'pgcloak'").Scan(&bypass); err != nil || bypass {
		t.Errorf("role pgcloak: got bypassrls %v, %v; want false", bypass, err)
	}
}
