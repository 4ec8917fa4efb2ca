package proxy

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"
	"gorm.io/driver/postgres"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"
)

// GORM (gorm.io/gorm with gorm.io/driver/postgres, which runs on pgx's
// database/sql driver) through pgcloak, the Go row of the ORM matrix:
// TestORMGORM as tenant acme against ormEnv's patients table, in the
// driver's three ways of sending statements, and TestORMGORMTokenPool with
// one *gorm.DB logged in as the token role, a tenant token per
// transaction.

// Patient is the application's GORM model of patients: ssn is a plain
// string and birth_date a time.Time, as they would be without pgcloak; the
// model knows nothing of ciphertext or index columns. tenant_id is read
// only: PostgreSQL fills it from pgcloak.current_tenant().
type Patient struct {
	ID        int    `gorm:"primaryKey"`
	TenantID  string `gorm:"->;not null;default:pgcloak.current_tenant()"`
	Name      string
	SSN       string `gorm:"column:ssn"`
	Email     string
	Diagnosis string
	BirthDate time.Time `gorm:"type:date"`
}

// TableName is the table of Patient.
func (Patient) TableName() string { return "patients" }

// String is the row as the tests compare it: name|ssn|email|diagnosis|date.
func (p Patient) String() string {
	return strings.Join([]string{p.Name, p.SSN, p.Email, p.Diagnosis, p.BirthDate.Format(time.DateOnly)}, "|")
}

// gormDate is midnight UTC of a day, as pgx scans a date.
func gormDate(y int, m time.Month, d int) time.Time {
	return time.Date(y, m, d, 0, 0, 0, 0, time.UTC)
}

// gormOpen opens a *gorm.DB on url with the driver's simple protocol or
// GORM's prepared statement cache; it is closed when the test ends, before
// the proxy.
func gormOpen(t *testing.T, url string, simple, prepare bool) (*gorm.DB, *sql.DB) {
	t.Helper()
	db, err := gorm.Open(postgres.New(postgres.Config{DSN: url, PreferSimpleProtocol: simple}), &gorm.Config{
		PrepareStmt: prepare,
		Logger:      logger.Default.LogMode(logger.Silent),
	})
	fatalIf(t, err, "gorm.Open")
	sqlDB, err := db.DB()
	fatalIf(t, err, "gorm DB")
	t.Cleanup(func() { sqlDB.Close() })
	return db, sqlDB
}

// gormRows formats rows with Patient.String, joined by ", ".
func gormRows(ps []Patient) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return strings.Join(s, ", ")
}

// TestORMGORM: GORM as tenant acme, with the driver's default (pgx's cached
// prepared statements), its simple protocol, and GORM's PrepareStmt cache.
// Migrator().ColumnTypes reads the declared types (text, date) and no
// index column; AutoMigrate of Patient finds nothing to change and runs no
// DDL. Create (one row, then a batch), First, Find with Where("ssn = ?")
// and Where("ssn IN ?") and a struct condition find acme's rows and not
// globex's same-valued one; strings, an int id and time.Time dates come
// back; Updates, Update and Save; Rows() streams a search; a DECLARE'd
// cursor read with FETCH; Delete by ssn and by primary key. PostgreSQL,
// read directly, holds only ciphertext.
func TestORMGORM(t *testing.T) {
	for _, mode := range []struct {
		name            string
		simple, prepare bool
	}{
		{"default", false, false},
		{"PreferSimpleProtocol", true, false},
		{"PrepareStmt", false, true},
	} {
		t.Run(mode.name, func(t *testing.T) {
			env := ormEnv(t)
			db, _ := gormOpen(t, env.proxy.url(acmeRole, rolePassword, env.db), mode.simple, mode.prepare)
			testGORMTenant(t, env, db)
		})
	}
}

func testGORMTenant(t *testing.T, env *encryptedEnv, db *gorm.DB) {
	t.Run("ColumnTypes", func(t *testing.T) {
		cols, err := db.Migrator().ColumnTypes(&Patient{})
		fatalIf(t, err, "ColumnTypes")
		var got []string
		for _, c := range cols {
			got = append(got, c.Name()+":"+c.DatabaseTypeName())
		}
		want := "id:int4 tenant_id:text name:text ssn:text email:text diagnosis:text birth_date:date"
		if strings.Join(got, " ") != want {
			t.Errorf("ColumnTypes: got %s, want %s", strings.Join(got, " "), want)
		}
		if db.Migrator().HasColumn(&Patient{}, "ssn_bidx") {
			t.Error("HasColumn(ssn_bidx): got true, want false (an index column)")
		}
		if !db.Migrator().HasColumn(&Patient{}, "ssn") || !db.Migrator().HasTable(&Patient{}) {
			t.Error("HasTable(patients), HasColumn(ssn): want true")
		}
	})

	t.Run("AutoMigrate", func(t *testing.T) {
		// The tenant role owns nothing: any DDL would fail. The
		// declared schema matches the model, so there is none.
		var ddl []string
		dry := db.Session(&gorm.Session{Logger: &ddlRecorder{stmts: &ddl}})
		err := dry.AutoMigrate(&Patient{})
		t.Logf("AutoMigrate ran:\n%s", strings.Join(ddl, "\n"))
		fatalIf(t, err, "AutoMigrate as tenant")
		for _, s := range ddl {
			if !strings.HasPrefix(strings.ToUpper(strings.TrimSpace(s)), "SELECT") {
				t.Errorf("AutoMigrate ran %q, want no DDL", s)
			}
		}
	})

	alice := Patient{Name: "alice", SSN: ormSSN, Email: "Alice@Example.com", Diagnosis: "influenza", BirthDate: gormDate(1980, 1, 2)}
	t.Run("Create", func(t *testing.T) {
		fatalIf(t, db.Create(&alice).Error, "Create")
		if alice.ID == 0 {
			t.Fatal("Create: no id returned")
		}
		batch := []Patient{
			{Name: "carol", SSN: "555-00-1111", Email: "carol@example.com", Diagnosis: "asthma", BirthDate: gormDate(1990, 3, 4)},
			{Name: "dave", SSN: "555-00-2222", Email: "dave@example.com", Diagnosis: "gout", BirthDate: gormDate(1970, 5, 6)},
		}
		res := db.Create(&batch)
		fatalIf(t, res.Error, "Create batch")
		if res.RowsAffected != 2 || batch[0].ID == 0 || batch[1].ID <= batch[0].ID {
			t.Errorf("Create batch: %d rows, ids %d %d", res.RowsAffected, batch[0].ID, batch[1].ID)
		}
		var got Patient
		fatalIf(t, db.First(&got, alice.ID).Error, "First by id")
		mustEqual(t, "First", got.String(), alice.String())
		mustEqual(t, "tenant_id", got.TenantID, "acme")
		if !got.BirthDate.Equal(alice.BirthDate) {
			t.Errorf("birth_date: got %v, want %v", got.BirthDate, alice.BirthDate)
		}
	})
	if t.Failed() {
		t.FailNow()
	}

	t.Run("search", func(t *testing.T) {
		var found []Patient
		fatalIf(t, db.Where("ssn = ?", ormSSN).Find(&found).Error, "Find ssn =")
		mustEqual(t, "Where(ssn = ?)", gormRows(found), alice.String())
		var first Patient
		fatalIf(t, db.Where(&Patient{SSN: "555-00-1111"}).First(&first).Error, "First by struct")
		mustEqual(t, "Where(&Patient{SSN})", first.Name, "carol")
		var in []Patient
		fatalIf(t, db.Where("ssn IN ?", []string{ormSSN, "555-00-2222", "000-00-0000"}).Order("name").Find(&in).Error, "Find ssn IN")
		mustEqual(t, "Where(ssn IN ?)", gormRows(in), alice.String()+", dave|555-00-2222|dave@example.com|gout|1970-05-06")
		var names []string
		fatalIf(t, db.Model(&Patient{}).Where("email = ?", "alice@example.com").Pluck("name", &names).Error, "Pluck by email")
		mustEqual(t, "Where(email = ?) (normalized)", strings.Join(names, ","), "alice")
		var n int64
		fatalIf(t, db.Model(&Patient{}).Where("ssn = ?", ormSSN).Count(&n).Error, "Count")
		mustEqual(t, "Count(ssn = ?)", n, int64(1))
		var not []Patient
		fatalIf(t, db.Not("ssn = ?", ormSSN).Order("name").Find(&not).Error, "Not")
		mustEqual(t, "Not(ssn = ?)", len(not), 2)
	})

	t.Run("update", func(t *testing.T) {
		res := db.Model(&alice).Updates(Patient{Diagnosis: "flu", BirthDate: gormDate(1981, 2, 3)})
		fatalIf(t, res.Error, "Updates")
		mustEqual(t, "Updates rows", res.RowsAffected, int64(1))
		res = db.Model(&Patient{}).Where("ssn = ?", "555-00-1111").Update("diagnosis", "gout")
		fatalIf(t, res.Error, "Update")
		mustEqual(t, "Update rows", res.RowsAffected, int64(1))
		var got Patient
		fatalIf(t, db.Where("ssn = ?", ormSSN).First(&got).Error, "First after Updates")
		mustEqual(t, "after Updates", got.String(), "alice|"+ormSSN+"|Alice@Example.com|flu|1981-02-03")
		got.Email = "alice@new.example.com"
		fatalIf(t, db.Save(&got).Error, "Save")
		var saved Patient
		fatalIf(t, db.Where("email = ?", "ALICE@new.example.com").First(&saved).Error, "First after Save")
		mustEqual(t, "after Save", saved.String(), "alice|"+ormSSN+"|alice@new.example.com|flu|1981-02-03")
		mustEqual(t, "tenant_id after Save", saved.TenantID, "acme")
		var carol Patient
		fatalIf(t, db.Where("ssn = ?", "555-00-1111").First(&carol).Error, "First carol")
		mustEqual(t, "after Update", carol.Diagnosis, "gout")
	})

	t.Run("Rows", func(t *testing.T) {
		rows, err := db.Model(&Patient{}).Where("ssn <> ?", "000-00-0000").Order("name").Rows()
		fatalIf(t, err, "Rows")
		defer rows.Close()
		var got []Patient
		for rows.Next() {
			var p Patient
			fatalIf(t, db.ScanRows(rows, &p), "ScanRows")
			got = append(got, p)
		}
		fatalIf(t, rows.Err(), "rows")
		mustEqual(t, "Rows", gormRows(got), "alice|"+ormSSN+"|alice@new.example.com|flu|1981-02-03, carol|555-00-1111|carol@example.com|gout|1990-03-04, dave|555-00-2222|dave@example.com|gout|1970-05-06")
	})

	t.Run("cursor", func(t *testing.T) {
		var got []Patient
		err := db.Transaction(func(tx *gorm.DB) error {
			if err := tx.Exec(`DECLARE gorm_patients CURSOR FOR SELECT * FROM patients WHERE ssn IN ? ORDER BY name`, []string{ormSSN, "555-00-1111"}).Error; err != nil {
				return fmt.Errorf("DECLARE: %w", err)
			}
			for {
				var batch []Patient
				if err := tx.Raw(`FETCH 1 FROM gorm_patients`).Scan(&batch).Error; err != nil {
					return fmt.Errorf("FETCH: %w", err)
				}
				if len(batch) == 0 {
					return tx.Exec(`CLOSE gorm_patients`).Error
				}
				got = append(got, batch...)
			}
		})
		fatalIf(t, err, "cursor")
		mustEqual(t, "FETCH 1 each", gormRows(got), "alice|"+ormSSN+"|alice@new.example.com|flu|1981-02-03, carol|555-00-1111|carol@example.com|gout|1990-03-04")
	})

	t.Run("Delete", func(t *testing.T) {
		res := db.Where("ssn = ?", "555-00-2222").Delete(&Patient{})
		fatalIf(t, res.Error, "Delete by ssn")
		mustEqual(t, "Delete(ssn = ?) rows", res.RowsAffected, int64(1))
		// globex's bob has acme's ssn: a delete by it as acme leaves him.
		extra := Patient{Name: "erin", SSN: ormSSN, Email: "erin@example.com", Diagnosis: "flu", BirthDate: gormDate(2000, 1, 1)}
		fatalIf(t, db.Create(&extra).Error, "Create erin")
		res = db.Delete(&Patient{}, extra.ID)
		fatalIf(t, res.Error, "Delete by id")
		mustEqual(t, "Delete(id) rows", res.RowsAffected, int64(1))
		var left []string
		fatalIf(t, db.Model(&Patient{}).Order("name").Pluck("name", &left).Error, "names left")
		mustEqual(t, "acme's rows left", strings.Join(left, ","), "alice,carol")
	})
	checkStored(t, env, 4, append(ormPlaintexts, "555-00-2222", "dave@example.com", "1970-05-06", "alice@new.example.com", "1981-02-03")...)
}

// ddlRecorder is a GORM logger that records every statement run.
type ddlRecorder struct {
	mu    sync.Mutex
	stmts *[]string
}

func (r *ddlRecorder) LogMode(logger.LogLevel) logger.Interface { return r }
func (r *ddlRecorder) Info(context.Context, string, ...any)     {}
func (r *ddlRecorder) Warn(context.Context, string, ...any)     {}
func (r *ddlRecorder) Error(context.Context, string, ...any)    {}

func (r *ddlRecorder) Trace(_ context.Context, _ time.Time, fc func() (string, int64), _ error) {
	s, _ := fc()
	r.mu.Lock()
	*r.stmts = append(*r.stmts, s)
	r.mu.Unlock()
}

// gormTokenForm is a way for a GORM transaction to present its token.
type gormTokenForm struct {
	name string
	set  func(tx *gorm.DB, tok string) error
	// simpleOnly: only where the driver puts the value into the text
	// (PreferSimpleProtocol); PostgreSQL's SET takes no parameter, and
	// pgcloak refuses a bound one (22023).
	simpleOnly bool
}

var gormTokenForms = []gormTokenForm{
	{name: "set_config(?)", set: func(tx *gorm.DB, tok string) error {
		return tx.Exec(`SELECT pg_catalog.set_config('pgcloak.tenant_token', ?, true)`, tok).Error
	}},
	{name: "SET LOCAL literal", set: func(tx *gorm.DB, tok string) error {
		// Without arguments pgx sends a simple query.
		return tx.Exec(`SET LOCAL pgcloak.tenant_token = '` + tok + `'`).Error
	}},
	{name: "SET LOCAL ?", simpleOnly: true, set: func(tx *gorm.DB, tok string) error {
		return tx.Exec(`SET LOCAL pgcloak.tenant_token = ?`, tok).Error
	}},
}

// errGORMRollback makes db.Transaction roll back a transaction whose
// insert was refused, as it must be.
var errGORMRollback = errors.New("roll back")

// gormPoolTx runs one transaction of tenant on db with db.Transaction,
// presenting tok in form (no token when tenant is ""), and reports what
// it saw, as pgxPoolTx does for pgx.
func gormPoolTx(db *gorm.DB, form gormTokenForm, tenant, tok, tag string) (poolTx, error) {
	res := poolTx{Tenant: tenant}
	read := func(tx *gorm.DB) error {
		// Rows: GORM streams the result through database/sql.
		rows, err := tx.Model(&Patient{}).Rows()
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var p Patient
			if err := tx.ScanRows(rows, &p); err != nil {
				return err
			}
			res.Read = append(res.Read, poolRow{Name: p.Name, SSN: p.SSN, Diagnosis: p.Diagnosis, Tenant: p.TenantID})
		}
		return rows.Err()
	}
	err := db.Transaction(func(tx *gorm.DB) error {
		if err := tx.Raw(`select pg_backend_pid()`).Scan(&res.PID).Error; err != nil {
			return fmt.Errorf("backend pid: %w", err)
		}
		if tenant == "" {
			if err := read(tx); err != nil {
				return fmt.Errorf("select without a token: %w", err)
			}
			w := poolPatient("nobody", tag)
			res.Refused = pgCode(tx.Create(&Patient{Name: w.Name, SSN: w.SSN, Diagnosis: w.Diagnosis, BirthDate: gormDate(2001, 2, 3)}).Error)
			return errGORMRollback
		}
		if err := form.set(tx, tok); err != nil {
			return fmt.Errorf("token (%s): %w", form.name, err)
		}
		for i := range 2 {
			w := poolPatient(tenant, fmt.Sprintf("%s.%d", tag, i))
			p := Patient{Name: w.Name, SSN: w.SSN, Diagnosis: w.Diagnosis, BirthDate: gormDate(2001, 2, 3)}
			if err := tx.Create(&p).Error; err != nil {
				return fmt.Errorf("insert: %w", err)
			}
			var back Patient
			if err := tx.First(&back, p.ID).Error; err != nil {
				return fmt.Errorf("read back: %w", err)
			}
			if back.TenantID != tenant || !back.BirthDate.Equal(p.BirthDate) {
				return fmt.Errorf("row %d read back with tenant_id %q and birth_date %v, want %s and %v", p.ID, back.TenantID, back.BirthDate, tenant, p.BirthDate)
			}
			res.Wrote = append(res.Wrote, w)
		}
		if err := read(tx); err != nil {
			return fmt.Errorf("select: %w", err)
		}
		var found []Patient
		if err := tx.Where("ssn = ?", res.Wrote[0].SSN).Find(&found).Error; err != nil {
			return fmt.Errorf("search: %w", err)
		}
		for _, p := range found {
			res.Found = append(res.Found, poolRow{Name: p.Name, SSN: p.SSN, Diagnosis: p.Diagnosis, Tenant: p.TenantID})
		}
		var other int64
		if err := tx.Model(&Patient{}).Where("ssn IN ?", []string{otherSSN(tenant), "000-00-0000"}).Count(&other).Error; err != nil {
			return fmt.Errorf("search for another tenant's ssn: %w", err)
		}
		res.Other = int(other)
		return nil
	})
	if errors.Is(err, errGORMRollback) {
		err = nil
	}
	if err != nil {
		return res, fmt.Errorf("tenant %q: %w", tenant, err)
	}
	return res, nil
}

// TestORMGORMTokenPool: one *gorm.DB logged in as the token role, its
// database/sql pool limited to 2 connections, serves 2 tenants from 4
// goroutines, 12 transactions per tenant and transactions without a
// token: db.Transaction, the token presented with tx.Exec in turn as
// set_config('pgcloak.tenant_token', ?, true), SET LOCAL with the token in
// the text and, with PreferSimpleProtocol, SET LOCAL ... = ? (which the
// extended protocol refuses, as PostgreSQL refuses SET $1); Create, First, Rows and Where on ssn. Each
// transaction sees only its tenant's rows and plaintext, one without a
// token sees nothing and may not write (42501), and every stored row is
// stamped with the tenant that wrote it (checkPoolRun).
func TestORMGORMTokenPool(t *testing.T) {
	for _, mode := range []struct {
		name   string
		simple bool
	}{{"default", false}, {"PreferSimpleProtocol", true}} {
		t.Run(mode.name, func(t *testing.T) {
			const (
				perTenant = 12
				workers   = 4
				maxConns  = 2
			)
			env := startTokenEnv(t)
			seeds := seedPool(t, env)
			db, sqlDB := gormOpen(t, env.proxy.url(poolRole, rolePassword, env.db), mode.simple, false)
			sqlDB.SetMaxOpenConns(maxConns)

			var forms []gormTokenForm
			for _, f := range gormTokenForms {
				if mode.simple || !f.simpleOnly {
					forms = append(forms, f)
				}
			}
			type job struct {
				form             gormTokenForm
				tenant, tok, tag string
			}
			var jobs []job
			for i := range perTenant {
				for k, tenant := range poolTenants(3) {
					jobs = append(jobs, job{forms[(i+k)%len(forms)], tenant, mintToken(t, tenant, time.Hour), fmt.Sprintf("g%d", i)})
				}
				if i%4 == 3 {
					jobs = append(jobs, job{tag: fmt.Sprintf("none%d", i)})
				}
			}
			results := make([]poolTx, len(jobs))
			var g errgroup.Group
			next := make(chan int)
			for range workers {
				g.Go(func() error {
					for i := range next {
						res, err := gormPoolTx(db, jobs[i].form, jobs[i].tenant, jobs[i].tok, jobs[i].tag)
						if err != nil {
							// Drain, so that the feeder ends.
							for range next {
							}
							return fmt.Errorf("transaction %d: %w", i, err)
						}
						results[i] = res
					}
					return nil
				})
			}
			for i := range jobs {
				next <- i
			}
			close(next)
			if err := g.Wait(); err != nil {
				t.Fatalf("GORM pool: %v\npgcloak's errors:\n%s", err, proxyErrors(env))
			}
			if got := sqlDB.Stats().OpenConnections; got > maxConns {
				t.Errorf("open connections: got %d, want at most %d", got, maxConns)
			}
			checkPoolRun(t, env, append(seeds, results...), maxConns)
			if !slices.ContainsFunc(results, func(r poolTx) bool { return r.Tenant == "" }) {
				t.Error("no transaction without a token")
			}
			if !mode.simple {
				// A token bound to SET LOCAL's "?" in the extended
				// protocol: refused, as PostgreSQL refuses SET $1.
				err := db.Transaction(func(tx *gorm.DB) error {
					return tx.Exec(`SET LOCAL pgcloak.tenant_token = ?`, mintToken(t, "tenant00", time.Hour)).Error
				})
				if pgCode(err) != "22023" {
					t.Errorf("SET LOCAL pgcloak.tenant_token = $1: got %v, want 22023 (set_config binds the token)", err)
				}
			}
		})
	}
}
