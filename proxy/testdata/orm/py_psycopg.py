"""psycopg 3 (Debian's python3-psycopg, default prepare settings) through
pgcloak, for TestORMPsycopg in proxy/orm_python_test.go.

  py_psycopg.py tenant   as a tenant role: the migration (as the unscoped
                         migrator: the application's index and CHECK), the
                         schema as the tenant reads it, inserts with dates,
                         typed reads, searches with = and IN, more than
                         prepared_max distinct statements run past
                         prepare_threshold on one connection, named
                         (server-side) cursors, pipeline mode, update and
                         delete. Prints one line per fact (it checks
                         nothing itself).
  py_psycopg.py pool     psycopg_pool's ConnectionPool as the token role:
                         a token per transaction (set_config with the
                         token bound), writes and searches in pipeline
                         mode, reads through a named cursor. Prints the
                         transactions as JSON (py_pooljobs).

Environment: PGCLOAK_URL (the tenant role, or the token role for pool),
PGCLOAK_MIGRATOR_URL (the unscoped migrator), PGCLOAK_SSN (the ssn to
insert and search; another tenant has a row with it too), PGCLOAK_TOKENS
(pool).
"""

import datetime
import os
import sys
from concurrent.futures import ThreadPoolExecutor

import psycopg
from psycopg.rows import dict_row

import py_pooljobs

URL = os.environ["PGCLOAK_URL"]
SELECT = "select name, ssn, email, diagnosis, birth_date from patients"
INSERT = "insert into patients (name, ssn, email, diagnosis, birth_date) values (%s, %s, %s, %s, %s)"


def row(r):
    return "|".join(str(v) for v in r)


def migrate():
    """The application's own migration, as the unscoped migrator."""
    with psycopg.connect(os.environ["PGCLOAK_MIGRATOR_URL"]) as conn:
        conn.execute("create index patients_name_idx on patients (name)")
        conn.execute("alter table patients add constraint patients_name_check check (name <> '')")
    print("migrated")


def tenant():
    ssn = os.environ["PGCLOAK_SSN"]
    migrate()
    with psycopg.connect(URL, autocommit=True) as conn:
        cols = conn.execute("select column_name, data_type from information_schema.columns"
                            " where table_name = 'patients' order by ordinal_position").fetchall()
        print("columns", " ".join(f"{n}:{t}" for n, t in cols))
        print("indexes", [r[0] for r in conn.execute("select indexname from pg_indexes where tablename = 'patients' order by 1")])
        print("checks", [r[0] for r in conn.execute("select conname from pg_constraint"
                                                     " where conrelid = 'patients'::regclass and contype = 'c' order by 1")])

        cur = conn.execute(INSERT + " returning id, tenant_id",
                           ["alice", ssn, "Alice@Example.com", "influenza", datetime.date(1980, 1, 2)])
        new_id, stamp = cur.fetchone()
        print("inserted", type(new_id).__name__, stamp)
        conn.cursor().executemany(INSERT, [
            ["carol", "555-00-1111", "carol@example.com", "asthma", datetime.date(1990, 3, 4)],
            ["dave", "555-00-2222", "dave@example.com", "gout", datetime.date(1970, 5, 6)],
        ])

        r = conn.execute(SELECT + " where ssn = %s", [ssn]).fetchall()
        print("where ssn", ", ".join(row(x) for x in r), type(r[0][1]).__name__, type(r[0][4]).__name__)
        r = conn.cursor(binary=True).execute(SELECT + " where ssn = %s", [ssn]).fetchall()
        print("binary", ", ".join(row(x) for x in r), type(r[0][4]).__name__)
        print("where email", [x[0] for x in conn.execute("select name from patients where email = %s", ["alice@example.com"])])
        print("where in", [x[0] for x in conn.execute(
            "select name from patients where ssn in (%s, %s) order by name", [ssn, "555-00-2222"])])
        n, ids = conn.execute("select count(*), sum(id) from patients where ssn = %s", [ssn]).fetchone()
        print("numbers", n, type(n).__name__, type(ids).__name__)

        # More distinct statements than psycopg keeps prepared (100),
        # each run 7 times round-robin: the 6th run prepares it, and the
        # 101st prepared statement evicts the oldest (DEALLOCATE).
        wrong = []
        statements = []
        for k in range(210):
            kind = k % 4
            if kind == 0:
                statements.append((f"select name, ssn, birth_date from patients where ssn = %s and id > -{k}",
                                   [ssn], [("alice", ssn, datetime.date(1980, 1, 2))]))
            elif kind == 1:
                statements.append((f"select name from patients where email = %s and {k} >= 0",
                                   ["ALICE@example.com"], [("alice",)]))
            elif kind == 2:
                statements.append((f"update patients set diagnosis = %s where ssn = %s and id > -{k}",
                                   ["influenza", ssn], 1))
            else:
                statements.append((f"select count(*) from patients where ssn in (%s, %s) and {k} = {k}",
                                   [ssn, "555-00-1111"], [(2,)]))
        for run in range(7):
            for q, params, want in statements:
                cur = conn.execute(q, params)
                got = cur.rowcount if isinstance(want, int) else cur.fetchall()
                if got != want:
                    wrong.append((run, q, got))
        print("statements", len(statements), "runs 7 wrong", wrong[:3])
        prepared = conn.execute("select count(*) from pg_prepared_statements").fetchone()[0]
        print("prepared upstream", 0 < prepared <= 100)

        with conn.transaction():
            with conn.cursor(name="by_ssn") as cur:
                cur.itersize = 1
                cur.execute(SELECT + " where ssn in (%s, %s) order by name", [ssn, "555-00-1111"])
                print("named cursor", ", ".join(row(x) for x in cur))
            with conn.cursor(name="all", scrollable=True) as cur:
                cur.execute(SELECT + " order by name")
                first = cur.fetchmany(2)
                cur.scroll(0, mode="absolute")
                print("scroll", ", ".join(row(x) for x in first), "|", row(cur.fetchone()))

        with conn.pipeline():
            conn.execute(INSERT, ["erin", "555-00-3333", "erin@example.com", "flu", datetime.date(2001, 2, 3)])
            conn.execute(INSERT, ["frank", "555-00-4444", "frank@example.com", "gout", datetime.date(2002, 3, 4)])
            found = conn.execute(SELECT + " where ssn = %s", ["555-00-3333"])
            both = conn.execute("select name, birth_date from patients where email in (%s, %s) order by name",
                                ["ERIN@example.com", "frank@example.com"])
            gone = conn.execute("delete from patients where ssn = %s", ["555-00-4444"])
        print("pipeline", ", ".join(row(x) for x in found.fetchall()), "|", ", ".join(row(x) for x in both.fetchall()),
              "| deleted", gone.rowcount)

        cur = conn.execute("update patients set diagnosis = %s, birth_date = %s where ssn = %s",
                           ["flu", datetime.date(1981, 2, 3), ssn])
        print("updated", cur.rowcount, row(conn.execute(SELECT + " where ssn = %s", [ssn]).fetchone()))
        cur = conn.execute("delete from patients where email = %s", ["dave@example.com"])
        print("deleted", cur.rowcount, [x[0] for x in conn.execute("select name from patients order by name")])


def pool_transaction(pool, tenant, tok, tag):
    res = py_pooljobs.new_result(tenant)
    with pool.connection() as conn:
        res["pid"] = conn.info.backend_pid
        conn.row_factory = dict_row
        ins = "insert into patients (name, ssn, diagnosis) values (%s, %s, %s)"
        sel = "select " + ", ".join(py_pooljobs.COLUMNS) + " from patients"
        if not tenant:
            try:
                with conn.transaction():
                    res["read"] = conn.execute(sel).fetchall()
                    w = py_pooljobs.patient("nobody", tag)
                    conn.execute(ins, [w["name"], w["ssn"], w["diagnosis"]])
            except psycopg.Error as e:
                res["refused"] = e.sqlstate or str(e)
            return res
        try:
            with conn.transaction():
                conn.execute("select pg_catalog.set_config('pgcloak.tenant_token', %s, true)", [tok])
                temp = py_pooljobs.patient(tenant, tag + ".temp")
                with conn.pipeline():
                    for i in (0, 1):
                        w = py_pooljobs.patient(tenant, f"{tag}.{i}")
                        conn.execute(ins, [w["name"], w["ssn"], w["diagnosis"]])
                        res["wrote"].append(w)
                    conn.execute(ins, [temp["name"], temp["ssn"], temp["diagnosis"]])
                    found = conn.execute(sel + " where ssn = %s", [res["wrote"][0]["ssn"]])
                    other = conn.execute("select count(*) as n from patients where ssn = %s", [py_pooljobs.other_ssn(tenant)])
                    gone = conn.execute("delete from patients where ssn = %s", [temp["ssn"]])
                res["found"] = found.fetchall()
                res["other"] = other.fetchone()["n"]
                if gone.rowcount != 1:
                    raise RuntimeError(f"deleted {gone.rowcount} rows by ssn, want 1")
                with conn.cursor(name=f"read_{tag}".replace(".", "_")) as cur:
                    cur.itersize = 1
                    cur.execute(sel)
                    res["read"] = list(cur)
        except psycopg.Error as e:
            raise RuntimeError(f"transaction {tag} of {tenant}: {e.sqlstate} {e}") from e
    return res


def pool():
    from psycopg_pool import ConnectionPool

    with ConnectionPool(URL, min_size=2, max_size=2, kwargs={"autocommit": True}, open=True) as p:
        p.wait(timeout=30)
        with ThreadPoolExecutor(max_workers=4) as ex:
            results = list(ex.map(lambda j: pool_transaction(p, *j), py_pooljobs.jobs()))
    py_pooljobs.report(results)


if __name__ == "__main__":
    {"tenant": tenant, "pool": pool}[sys.argv[1]]()
