package proxy

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The TestORM tests run real ORMs and drivers, from Debian's packages,
// through pgcloak as tenant acme against the patients table of
// startEncrypted, shaped as "pgcloak schema" leaves it (an index on each
// blind-index column, a format CHECK on each declared and index column)
// plus an index and a CHECK of the application's own. Globex has a row
// with the ssn acme searches for. Each ORM reflects the table, writes,
// searches and reads back; the scripts in testdata/orm print what they
// saw and the tests compare it line by line. Afterwards psql, connected
// to PostgreSQL directly, must find only ciphertext.

// ormSSN is the ssn every ORM creates for acme and searches; globex has a
// row with it too.
const ormSSN = "123-45-6789"

// Rows the tenant fixtures print (name|ssn|email|diagnosis|birth_date):
// acme's alice and carol as created, and alice after her update.
const (
	ormAlice        = "alice|" + ormSSN + "|Alice@Example.com|influenza|1980-01-02"
	ormCarol        = "carol|555-00-1111|carol@example.com|asthma|1990-03-04"
	ormAliceUpdated = "alice|" + ormSSN + "|Alice@Example.com|flu|1981-02-03"
)

// ormEnv starts the encrypted environment with the catalog a real
// deployment has, and globex's rows.
func ormEnv(t *testing.T) *encryptedEnv {
	t.Helper()
	env := startEncrypted(t)
	ctx := ctxT(t)
	var ddl []string
	for _, c := range patientsDecl().Tables[0].Columns {
		ddl = append(ddl, fmt.Sprintf(`alter table patients add constraint patients_%[1]s_pgcloak_format check (%[1]s is null or (length(%[1]s) >= 33 and get_byte(%[1]s, 0) = 1))`, c.Name))
		if c.IndexColumn != "" {
			ddl = append(ddl,
				fmt.Sprintf(`alter table patients add constraint patients_%[1]s_pgcloak_format check (%[1]s is null or length(%[1]s) = 16)`, c.IndexColumn),
				fmt.Sprintf(`create index patients_%[1]s_idx on patients (%[1]s)`, c.IndexColumn))
		}
	}
	ddl = append(ddl,
		`create index patients_name_idx on patients (name)`,
		`alter table patients add constraint patients_name_check check (name <> '')`)
	fatalIf(t, env.pg.Exec(ctx, env.db, strings.Join(ddl, ";\n")), "the catalog of a deployment")
	globex := env.tenantConn(t, globexRole)
	insertPatient(t, globex, "bob", ormSSN, "bob@globex.test", "fractured femur", "1975-06-30")
	insertPatient(t, globex, "gina", "555-00-1111", "alice@example.com", "influenza", "1980-01-02")
	return env
}

// needCommand fails the test unless probe runs, saying which Debian
// packages to install.
func needCommand(t *testing.T, packages string, probe ...string) string {
	t.Helper()
	out, err := exec.Command(probe[0], probe[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s fails (%v: %s); install what it needs with: apt-get install -y %s", strings.Join(probe, " "), err, bytes.TrimSpace(out), packages)
	}
	return strings.TrimSpace(string(out))
}

// runORM runs cmd (a script of testdata/orm) with PGCLOAK_URL set to
// url and env added, and returns its output lines. It fails the test with
// the output, and pgcloak's log lines that report errors, when cmd fails.
func runORM(t *testing.T, env *encryptedEnv, url string, cmd *exec.Cmd, vars ...string) []string {
	t.Helper()
	dir, err := filepath.Abs(filepath.Join("testdata", "orm"))
	fatalIf(t, err, "testdata/orm")
	cmd.Dir = dir
	cmd.Env = append(append(os.Environ(), "PGCLOAK_URL="+url), vars...)
	start := time.Now()
	out, err := cmd.CombinedOutput()
	t.Logf("%s: %s", strings.Join(cmd.Args, " "), time.Since(start).Round(time.Millisecond))
	if err != nil {
		t.Fatalf("%s through pgcloak: %v\n%s\npgcloak's errors:\n%s", strings.Join(cmd.Args, " "), err, out, proxyErrors(env))
	}
	t.Logf("%s printed:\n%s", filepath.Base(cmd.Args[len(cmd.Args)-1]), out)
	return strings.Split(strings.TrimRight(string(out), "\n"), "\n")
}

// runORMPool runs cmd (a fixture of testdata/orm, in pool mode) as the
// token role on a fresh token environment, with PGCLOAK_URL set to url of
// that environment, one token for each of 3 tenants as "tenant:jwt ..."
// in PGCLOAK_TOKENS, a pool of 2 connections, 10 rounds and vars added,
// and checks the transactions it prints with checkPoolRun.
func runORMPool(t *testing.T, cmd *exec.Cmd, url func(env *encryptedEnv) string, vars ...string) {
	t.Helper()
	env := startTokenEnv(t)
	seeds := seedPool(t, env)
	var toks []string
	for _, tenant := range poolTenants(3) {
		toks = append(toks, tenant+":"+mintToken(t, tenant, time.Hour))
	}
	dir, err := filepath.Abs(filepath.Join("testdata", "orm"))
	fatalIf(t, err, "testdata/orm")
	cmd.Dir = dir
	cmd.Env = append(append(os.Environ(), "PGCLOAK_URL="+url(env), "PGCLOAK_MODE=pool",
		"PGCLOAK_TOKENS="+strings.Join(toks, " "), "PGCLOAK_POOL_MAX=2", "PGCLOAK_ROUNDS=10"), vars...)
	start := time.Now()
	txs := runPoolFixture(t, cmd)
	t.Logf("%s (pool): %s", filepath.Base(cmd.Args[len(cmd.Args)-1]), time.Since(start).Round(time.Millisecond))
	checkPoolRun(t, env, append(seeds, txs...), 2)
}

// proxyErrors returns the lines of pgcloak's log that report errors.
func proxyErrors(env *encryptedEnv) string {
	var b strings.Builder
	for _, l := range strings.Split(env.logs.String(), "\n") {
		if strings.Contains(l, `"level":"error"`) || strings.Contains(l, `"level":"warn"`) || strings.Contains(l, "refus") {
			b.WriteString(l)
			b.WriteByte('\n')
		}
	}
	return b.String()
}

// wantLines compares the output of an ORM script with want, line by line.
func wantLines(t *testing.T, got, want []string) {
	t.Helper()
	for i := 0; i < len(got) || i < len(want); i++ {
		var g, w string
		if i < len(got) {
			g = got[i]
		}
		if i < len(want) {
			w = want[i]
		}
		if g != w {
			t.Errorf("line %d:\ngot  %s\nwant %s", i+1, g, w)
		}
	}
}

// checkStored reads the patients table with psql, connected to PostgreSQL
// directly as the superuser: every declared column must hold pgcloak's
// format (or NULL), every index column 16 bytes, and no plaintext the ORM
// wrote may appear. It wants rows rows in all.
func checkStored(t *testing.T, env *encryptedEnv, rows int, plaintexts ...string) {
	t.Helper()
	const q = `select tenant_id, name,
		coalesce(get_byte(ssn, 0), 1) = 1 and coalesce(length(ssn), 33) >= 33,
		coalesce(length(ssn_bidx), 16) = 16,
		coalesce(get_byte(email, 0), 1) = 1 and coalesce(length(email_bidx), 16) = 16,
		coalesce(get_byte(diagnosis, 0), 1) = 1,
		coalesce(get_byte(birth_date, 0), 1) = 1,
		encode(ssn, 'hex'), encode(email, 'hex'), encode(diagnosis, 'hex'), encode(birth_date, 'hex')
		from patients order by id`
	out, err := exec.Command(env.pg.Bin("psql"), "-X", "-At", "-F", "\t", "-c", q, env.pg.SuperuserURL(env.db)).CombinedOutput()
	fatalIf(t, err, "psql, directly: %s", out)
	lines := strings.Split(strings.TrimRight(string(out), "\n"), "\n")
	if len(lines) != rows {
		t.Errorf("rows stored: got %d, want %d:\n%s", len(lines), rows, out)
	}
	for _, l := range lines {
		f := strings.Split(l, "\t")
		if len(f) != 11 || f[2] != "t" || f[3] != "t" || f[4] != "t" || f[5] != "t" || f[6] != "t" {
			t.Errorf("a stored row is not in pgcloak's format (tenant, name, ssn, ssn_bidx, email, diagnosis, birth_date): %.80s", l)
		}
	}
	for _, p := range plaintexts {
		if bytes.Contains(out, []byte(p)) || bytes.Contains(out, []byte(hex.EncodeToString([]byte(p)))) {
			t.Errorf("PostgreSQL stores plaintext %q", p)
		}
	}
}

// ormPlaintexts are values the ORM tests write that must not be stored.
var ormPlaintexts = []string{ormSSN, "555-00-1111", "Alice@Example.com", "alice@example.com", "influenza", "asthma", "1980-01-02", "1990-03-04", "1981-02-03", "gout", "flu"}

// TestORMActiveRecord: ActiveRecord 6.1 (ruby-pg) with prepared
// statements on and off. As a tenant: the model's columns have the
// declared types and no index column; create with strings and a Date;
// where(ssn:) finds acme's row and not globex's; values read back are
// UTF-8 Strings and Dates; find_each; update and update_all; destroy and
// delete_all by an encrypted ssn; indexes, check_constraints and the
// schema dump (rails db:schema:dump) show the declared schema. As the
// token role, with prepared statements: ActiveRecord's pool of 2
// connections serves 2 tenants from 4 threads, Patient.transaction with a
// token each (SET LOCAL through connection.execute, set_config with the
// token as a bind), checked by checkPoolRun; without prepared statements
// the token pool hits a known limit (literals in the extended protocol,
// 0A000), which the test expects until it is lifted.
func TestORMActiveRecord(t *testing.T) {
	version := needCommand(t, "ruby-activerecord ruby-pg", "ruby", "-e", `require "active_record"; require "pg"; puts ActiveRecord::VERSION::STRING`)
	t.Logf("ActiveRecord %s", version)
	for _, prepared := range []string{"true", "false"} {
		t.Run("prepared_statements="+prepared, func(t *testing.T) {
			env := ormEnv(t)
			got := runORM(t, env, env.proxy.url(acmeRole, rolePassword, env.db), exec.Command("ruby", "activerecord.rb"),
				"PGCLOAK_MODE=tenant", "PGCLOAK_PREPARED="+prepared, "PGCLOAK_SSN="+ormSSN)
			wantLines(t, got, []string{
				"prepared " + prepared,
				"columns id:integer:integer tenant_id:text:text name:text:text ssn:text:text email:text:text diagnosis:text:text birth_date:date:date",
				"bidx attribute []",
				"primary key id",
				"created id Integer tenant acme",
				"where ssn " + ormAlice,
				`where email ["alice"]`,
				`where ssn in ["alice"]`,
				"find_by carol",
				"exists true count 1",
				"classes ssn=String/UTF-8 diagnosis=String/UTF-8 birth_date=Date",
				`raw [["` + ormSSN + `", "1980-01-02"]]`,
				"find_each alice:1980-01-02,carol:1990-03-04",
				"updated " + ormAliceUpdated,
				"update_all gout",
				"destroy dave destroyed true find_by nil",
				"delete_all 1",
				"delete_all bob 0",
				`left ["alice"]`,
				`indexes ["patients_name_idx:name"]`,
				`check constraints ["patients_name_check"]`,
				`  create_table "patients", id: :serial, force: :cascade do |t|`,
				`    t.text "tenant_id", default: -> { "pgcloak.current_tenant()" }, null: false`,
				`    t.text "name"`,
				`    t.text "ssn"`,
				`    t.text "email"`,
				`    t.text "diagnosis"`,
				`    t.date "birth_date"`,
				`    t.index ["name"], name: "patients_name_idx"`,
				`    t.check_constraint "name <> ''::text", name: "patients_name_check"`,
				`  end`,
			})
			checkStored(t, env, 3, append(ormPlaintexts, "555-00-2222", "dave@example.com", "1970-05-06")...)
		})
		t.Run("token pool prepared_statements="+prepared, func(t *testing.T) {
			runORMPool(t, exec.Command("ruby", "activerecord.rb"), func(env *encryptedEnv) string {
				return env.proxy.url(poolRole, rolePassword, env.db)
			}, "PGCLOAK_PREPARED="+prepared)
		})
	}
}

// TestORMSQLAlchemy: SQLAlchemy 1.4 with psycopg2 reflects patients with
// the declared types (TEXT, DATE) and no index column; select(table), a
// search, IN, an insert and an update through the reflected Table work on
// plaintext; stream_results (a server-side cursor) over a search; the
// inspector's indexes and CHECKs have none of pgcloak's.
// A declarative model (ssn a plain String column) adds, searches with =
// and IN, updates, streams with yield_per and deletes (session.delete
// and by ssn). As the token role (runPyPool), one engine's pool of 2
// connections serves 2 tenants from 4 threads, SET LOCAL in each
// transaction from an after_begin event. SQLAlchemy 1.4 has no psycopg 3
// dialect (2.0 has): psycopg2 throughout.
func TestORMSQLAlchemy(t *testing.T) {
	version := needCommand(t, "python3-sqlalchemy python3-psycopg2", python3, "-c", "import sqlalchemy, psycopg2; print(sqlalchemy.__version__, psycopg2.__version__)")
	t.Logf("SQLAlchemy, psycopg2: %s", version)
	env := ormEnv(t)
	got := runORM(t, env, env.proxy.url(acmeRole, rolePassword, env.db), exec.Command(python3, "sqlalchemy_reflect.py"), "PGCLOAK_SSN="+ormSSN)
	wantLines(t, got, []string{
		"columns id:INTEGER() tenant_id:TEXT() name:TEXT() ssn:TEXT() email:TEXT() diagnosis:TEXT() birth_date:DATE()",
		"primary key ['id']",
		"inserted int acme",
		"select " + ormAlice + ", " + ormCarol + ", dave|555-00-2222|dave@example.com|gout|1970-05-06",
		"where ssn " + ormAlice + " str date",
		"where email ['alice']",
		"where in ['alice', 'dave']",
		"stream cursor named True",
		"stream " + ormAlice + ", " + ormCarol,
		"stream search " + ormAlice,
		"updated " + ormAliceUpdated,
		"inspector columns id:INTEGER() tenant_id:TEXT() name:TEXT() ssn:TEXT() email:TEXT() diagnosis:TEXT() birth_date:DATE()",
		"indexes [('patients_name_idx', ('name',))]",
		"checks ['patients_name_check']",
		"pk constraint ['id']",
		"unique []",
		"orm created int acme",
		"orm where ssn erin|555-00-3333|erin@example.com|flu|2001-02-03 str date",
		"orm where in ['alice', 'frank']",
		"orm where email ['frank']",
		"orm other tenant's ssn []",
		"orm updated erin|555-00-3333|erin@example.com|asthma|2001-02-04",
		"orm yield_per alice:1981-02-03, carol:1990-03-04, dave:1970-05-06, erin:2001-02-04, frank:2002-03-04",
		"orm deleted by session []",
		"orm deleted by ssn 1 ['alice', 'carol', 'erin']",
	})
	checkStored(t, env, 5, append(ormPlaintexts, "555-00-2222", "dave@example.com", "1970-05-06", "555-00-3333", "erin@example.com", "555-00-4444")...)
	t.Run("token pool", func(t *testing.T) {
		runPyPool(t, 2, 6, "py_sqlalchemy_pool.py")
	})
}

// TestORMJDBC: pgjdbc 42.5 with prepareThreshold 0 (never
// server-prepared), 1 and 5 (the default). As a tenant, DatabaseMetaData
// shows patients with the declared types and no index column or index;
// PreparedStatements insert with setString and setObject(LocalDate),
// search by ssn (also after pgjdbc has server-prepared the statement and
// reads binary results), read in batches with a fetch size, update and
// delete; values read back with getString and getObject(LocalDate). As
// the token role, a pool of 2 connections serves 2 tenants from 4
// threads, a token per transaction (SET LOCAL, set_config with the token
// bound), checked by checkPoolRun.
func TestORMJDBC(t *testing.T) {
	const jar = "/usr/share/java/postgresql.jar"
	needCommand(t, "libpostgresql-jdbc-java", "test", "-r", jar)
	version := needCommand(t, "default-jdk-headless (javac compiles testdata/orm/OrmJdbc.java)", "javac", "-version")
	t.Logf("%s, pgjdbc %s", version, jar)
	// Compiled once: java's single-source mode compiles on every run.
	classes := t.TempDir()
	src, _ := filepath.Abs(filepath.Join("testdata", "orm", "OrmJdbc.java"))
	out, err := exec.Command("javac", "-cp", jar, "-d", classes, src).CombinedOutput()
	fatalIf(t, err, "javac OrmJdbc.java: %s", out)
	java := func() *exec.Cmd { return exec.Command("java", "-cp", jar+":"+classes, "OrmJdbc") }
	jdbcURL := func(env *encryptedEnv, role string, threshold int) string {
		return fmt.Sprintf("jdbc:postgresql://%s/%s?user=%s&password=%s&sslmode=disable&prepareThreshold=%d", env.proxy.addr, env.db, role, rolePassword, threshold)
	}
	for _, threshold := range []int{0, 1, 5} {
		t.Run(fmt.Sprintf("prepareThreshold=%d", threshold), func(t *testing.T) {
			t.Run("tenant", func(t *testing.T) {
				env := ormEnv(t)
				got := runORM(t, env, jdbcURL(env, acmeRole, threshold), java(),
					"PGCLOAK_MODE=tenant", "PGCLOAK_SSN="+ormSSN)
				// pgjdbc uses a named server-prepared statement from run
				// prepareThreshold on, never with 0.
				prepared := func(run int) bool { return threshold > 0 && run >= threshold }
				wantLines(t, got, []string{
					"columns id:serial:4:1 tenant_id:text:12:2 name:text:12:3 ssn:text:12:4 email:text:12:5 diagnosis:text:12:6 birth_date:date:91:7",
					"indexes patients_pkey:id patients_name_idx:name",
					"primary key id",
					fmt.Sprintf("search run 1 %s types text,date server prepared %t", ormAlice, prepared(1)),
					fmt.Sprintf("search run 6 %s types text,date server prepared %t", ormAlice, prepared(6)),
					"email or ssn carol,dave",
					"fetch size 1 " + ormAlice + ", " + ormCarol,
					"updated rows 1",
					"updated " + ormAliceUpdated + " Date",
					"deleted rows 1",
					"deleted bob rows 0",
					"left alice,carol",
				})
				checkStored(t, env, 4, append(ormPlaintexts, "555-00-2222", "dave@example.com", "1970-05-06")...)
			})
			t.Run("token pool", func(t *testing.T) {
				runORMPool(t, java(), func(env *encryptedEnv) string {
					return jdbcURL(env, poolRole, threshold)
				})
			})
		})
	}
}

// TestORMDjango: Django 3.2's inspectdb writes patients with TextField and
// DateField and no index column; an unmanaged model on it creates with a
// date, filters on the encrypted columns (=, IN, exclude), reads with
// iterator() (a server-side cursor), updates and deletes (by ssn, by IN,
// an instance), all in plaintext. As the token role (runPyPool), one
// connection serves 2 tenants: transaction.atomic() and SET LOCAL
// pgcloak.tenant_token through cursor.execute in each transaction.
func TestORMDjango(t *testing.T) {
	version := needCommand(t, "python3-django python3-psycopg2", python3, "-c", "import django, psycopg2; print(django.__version__, psycopg2.__version__)")
	t.Logf("Django, psycopg2: %s", version)
	env := ormEnv(t)
	got := runORM(t, env, env.proxy.url(acmeRole, rolePassword, env.db), exec.Command(python3, "django_orm.py"), "PGCLOAK_SSN="+ormSSN)
	wantLines(t, got, []string{
		"class Patients(models.Model):",
		"    tenant_id = models.TextField()",
		"    name = models.TextField(blank=True, null=True)",
		"    ssn = models.TextField(blank=True, null=True)",
		"    email = models.TextField(blank=True, null=True)",
		"    diagnosis = models.TextField(blank=True, null=True)",
		"    birth_date = models.DateField(blank=True, null=True)",
		"",
		"    class Meta:",
		"        managed = False",
		"        db_table = 'patients'",
		"created int",
		"filter ssn " + ormAlice + " str date",
		"filter email ['alice']",
		"filter in ['alice']",
		"exclude ['carol']",
		"get " + ormCarol,
		"count 1 True",
		"iterator " + ormAlice + ", " + ormCarol,
		"iterator search " + ormAlice,
		"iterator cursors named 2 True",
		"saved " + ormAliceUpdated,
		"update 1 gout",
		"raw [('alice',)]",
		"delete by ssn (1, {'orm.Patient': 1})",
		"delete in (1, {'orm.Patient': 1})",
		"delete instance (1, {'orm.Patient': 1}) ['alice']",
	})
	checkStored(t, env, 3, append(ormPlaintexts, "555-00-3333", "erin@example.com", "555-00-4444")...)
	t.Run("token pool", func(t *testing.T) {
		runPyPool(t, 1, 6, "py_django_pool.py")
	})
}
