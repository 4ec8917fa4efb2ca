"""asyncpg (Debian's python3-asyncpg) through pgcloak, for TestORMAsyncpg
in proxy/orm_python_test.go. asyncpg prepares every statement (named,
cached per connection) and reads and binds in binary.

  py_asyncpg.py tenant   as a tenant role: the migration (as the unscoped
                         migrator), the schema as the tenant reads it,
                         prepared statements, fetch, executemany,
                         searches with = and IN,
                         cursor() inside a transaction, update and delete.
                         Prints one line per fact (it checks nothing
                         itself).
  py_asyncpg.py pool     an asyncpg pool as the token role: a token per
                         transaction (set_config with the token bound, or
                         SET LOCAL as text with PGCLOAK_TOKEN_FORM=set_local),
                         writes, searches, a delete and a cursor read. Prints
                         the transactions as JSON (py_pooljobs).

Environment: PGCLOAK_URL (the tenant role, or the token role for pool),
PGCLOAK_MIGRATOR_URL (the unscoped migrator), PGCLOAK_SSN (the ssn to
insert and search; another tenant has a row with it too), PGCLOAK_TOKENS
(pool).
"""

import asyncio
import datetime
import decimal
import os
import sys

import asyncpg

import py_pooljobs

URL = os.environ["PGCLOAK_URL"]
SELECT = "select name, ssn, email, diagnosis, birth_date from patients"
INSERT = "insert into patients (name, ssn, email, diagnosis, birth_date) values ($1, $2, $3, $4, $5)"


def row(r):
    return "|".join(str(v) for v in r)


async def migrate():
    """The application's own migration, as the unscoped migrator."""
    conn = await asyncpg.connect(os.environ["PGCLOAK_MIGRATOR_URL"])
    try:
        await conn.execute("create index patients_name_idx on patients (name)")
        await conn.execute("alter table patients add constraint patients_name_check check (name <> '')")
    finally:
        await conn.close()
    print("migrated")


async def tenant():
    ssn = os.environ["PGCLOAK_SSN"]
    await migrate()
    conn = await asyncpg.connect(URL)
    try:
        cols = await conn.fetch("select column_name, data_type from information_schema.columns"
                                " where table_name = 'patients' order by ordinal_position")
        print("columns", " ".join(f"{n}:{t}" for n, t in cols))
        print("indexes", [r[0] for r in await conn.fetch("select indexname from pg_indexes where tablename = 'patients' order by 1")])

        new = await conn.fetchrow(INSERT + " returning id, tenant_id", "alice", ssn, "Alice@Example.com", "influenza",
                                  datetime.date(1980, 1, 2))
        print("inserted", type(new["id"]).__name__, new["tenant_id"])
        await conn.executemany(INSERT, [
            ("carol", "555-00-1111", "carol@example.com", "asthma", datetime.date(1990, 3, 4)),
            ("dave", "555-00-2222", "dave@example.com", "gout", datetime.date(1970, 5, 6)),
        ])

        stmt = await conn.prepare(SELECT + " where ssn = $1")
        print("prepared types", " ".join(f"{a.name}:{a.type.name}" for a in stmt.get_attributes()),
              "params", [p.name for p in stmt.get_parameters()])
        runs = [await stmt.fetch(ssn) for _ in range(7)]
        print("prepared runs", len(runs), all(r == runs[0] for r in runs), ", ".join(row(x) for x in runs[0]),
              type(runs[0][0]["ssn"]).__name__, type(runs[0][0]["birth_date"]).__name__)
        print("prepared other", await stmt.fetch("000-00-0000"))
        print("fetch email", [r["name"] for r in await conn.fetch("select name from patients where email = $1", "ALICE@example.com")])
        print("fetch in", [r["name"] for r in await conn.fetch(
            "select name from patients where ssn in ($1, $2) order by name", ssn, "555-00-2222")])
        n = await conn.fetchval("select count(*) from patients where ssn = $1", ssn)
        print("numbers", n, type(n).__name__, type(await conn.fetchval("select id from patients where ssn = $1", ssn)).__name__)

        async with conn.transaction():
            streamed = [row(r) async for r in conn.cursor(SELECT + " where ssn <> $1 order by name", "555-00-2222", prefetch=1)]
            print("cursor", ", ".join(streamed))
            cur = await conn.cursor(SELECT + " where ssn in ($1, $2) order by name", ssn, "555-00-1111")
            first = await cur.fetch(1)
            print("cursor fetch", ", ".join(row(x) for x in first), "|", row(await cur.fetchrow()))

        # PostgreSQL refuses COPY FROM where row-level security applies
        # (patients has it; see copy mode for a declared table without).
        try:
            await conn.copy_records_to_table("patients", columns=["name", "ssn", "email", "diagnosis", "birth_date"],
                                             records=[("erin", "555-00-3333", "erin@example.com", "flu",
                                                       datetime.date(2001, 2, 3))])
            print("copy into patients worked")
        except asyncpg.PostgresError as e:
            print("copy into patients", e.sqlstate, e.args[0].splitlines()[0])

        print("update", await conn.execute("update patients set diagnosis = $1, birth_date = $2 where ssn = $3",
                                           "flu", datetime.date(1981, 2, 3), ssn),
              row(await conn.fetchrow(SELECT + " where ssn = $1", ssn)))
        print("delete", await conn.execute("delete from patients where email = $1", "dave@example.com"),
              [r["name"] for r in await conn.fetch("select name from patients order by name")])
    finally:
        await conn.close()


async def copy():
    """copy_records_to_table into visits, a declared table without RLS
    (startVisits in proxy/copy_test.go): asyncpg reads the columns' types
    from a prepared SELECT and sends binary COPY FROM STDIN with a column
    list."""
    conn = await asyncpg.connect(URL)
    try:
        records = [(i, f"note {i}", f"ssn-{i}", datetime.date(2020, 1, 1), datetime.date(2020, 1, 1) + datetime.timedelta(days=i),
                    decimal.Decimal(i) + decimal.Decimal("0.25")) for i in range(500)]
        records.append((500, "nulls", None, None, None, None))
        print("copy", await conn.copy_records_to_table(
            "visits", columns=["id", "note", "ssn", "seen", "visit_date", "amount"], records=records))
        r = await conn.fetchrow("select id, note, ssn, seen, visit_date, amount from visits where ssn = $1", "ssn-321")
        print("search", row(r), " ".join(type(v).__name__ for v in r))
        back = await conn.fetch("select id, note, ssn, seen, visit_date, amount from visits order by id")
        print("read back", len(back), [tuple(r) for r in back] == records)
    finally:
        await conn.close()


FORM = os.environ.get("PGCLOAK_TOKEN_FORM", "set_config")


async def set_token(conn, tok):
    if FORM == "set_local":
        # No arguments: the simple protocol, the token a literal.
        await conn.execute(f"SET LOCAL pgcloak.tenant_token = '{tok}'")
    else:
        await conn.execute("select pg_catalog.set_config('pgcloak.tenant_token', $1, true)", tok)


async def pool_transaction(pool, tenant, tok, tag):
    res = py_pooljobs.new_result(tenant)
    ins = "insert into patients (name, ssn, diagnosis) values ($1, $2, $3)"
    sel = "select " + ", ".join(py_pooljobs.COLUMNS) + " from patients"
    async with pool.acquire() as conn:
        res["pid"] = conn.get_server_pid()
        if not tenant:
            try:
                async with conn.transaction():
                    res["read"] = [dict(r) for r in await conn.fetch(sel)]
                    w = py_pooljobs.patient("nobody", tag)
                    await conn.execute(ins, w["name"], w["ssn"], w["diagnosis"])
            except asyncpg.PostgresError as e:
                res["refused"] = e.sqlstate
            return res
        try:
            async with conn.transaction():
                await set_token(conn, tok)
                res["wrote"] = [py_pooljobs.patient(tenant, f"{tag}.{i}") for i in (0, 1)]
                temp = py_pooljobs.patient(tenant, tag + ".temp")
                await conn.executemany(ins, [(w["name"], w["ssn"], w["diagnosis"]) for w in res["wrote"] + [temp]])
                res["found"] = [dict(r) for r in await conn.fetch(sel + " where ssn = $1", res["wrote"][0]["ssn"])]
                res["other"] = await conn.fetchval("select count(*) from patients where ssn = $1", py_pooljobs.other_ssn(tenant))
                gone = await conn.execute("delete from patients where ssn = $1", temp["ssn"])
                if gone != "DELETE 1":
                    raise RuntimeError(f"delete by ssn: {gone}, want DELETE 1")
                res["read"] = [dict(r) async for r in conn.cursor(sel, prefetch=1)]
        except asyncpg.PostgresError as e:
            raise RuntimeError(f"transaction {tag} of {tenant}: {e.sqlstate} {e}") from e
    return res


async def pool():
    async with asyncpg.create_pool(URL, min_size=2, max_size=2) as p:
        results = await asyncio.gather(*(pool_transaction(p, *j) for j in py_pooljobs.jobs()))
    py_pooljobs.report(list(results))


if __name__ == "__main__":
    asyncio.run({"tenant": tenant, "copy": copy, "pool": pool}[sys.argv[1]]())
