"""psycopg 3's ConnectionPool as a multi-tenant application uses it against
pgcloak: one login role (a token role), a pool of a few connections shared
by worker threads, and a tenant per transaction from a signed tenant token.
Prints what each transaction wrote and read as JSON (a list of poolTx) for
TestTokenPoolPsycopg in proxy/tokenpool_test.go to check; it checks
nothing itself.

Environment: PGCLOAK_URL; PGCLOAK_TOKENS, {"tenant": ["jwt", ...]}: one
transaction per token; PGCLOAK_TOKEN_FORM, set_local (SET LOCAL with the
token as a literal, a statement without parameters: psycopg sends it in the
simple protocol) or set_config (set_config('pgcloak.tenant_token', %s,
true), the token a bound parameter: the extended protocol);
PGCLOAK_POOL_MAX, the pool's size.

Run with the system Python (Debian: python3-psycopg, python3-psycopg-pool).
"""

import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

FORM = os.environ.get("PGCLOAK_TOKEN_FORM", "set_local")
TOKENS = json.loads(os.environ["PGCLOAK_TOKENS"])
POOL_MAX = int(os.environ.get("PGCLOAK_POOL_MAX", "2"))

INSERT = "insert into patients (name, ssn, diagnosis) values (%s, %s, %s)"
SELECT = "select name, ssn, diagnosis, tenant_id from patients"


def patient(tenant, tag):
    name = f"{tenant}/{tag}"
    return {"name": name, "ssn": f"{tenant}-ssn-{tag}", "diagnosis": f"diagnosis of {name}", "tenant_id": tenant}


def other_ssn(tenant):
    """The seed row of another tenant (seedPool in proxy/tokenpool_test.go)."""
    return patient("tenant01" if tenant == "tenant00" else "tenant00", "seed.0")["ssn"]


def set_token(conn, tok):
    if FORM == "set_config":
        conn.execute("select pg_catalog.set_config('pgcloak.tenant_token', %s, true)", [tok])
    else:
        # No parameters: the simple protocol. psycopg quotes the literal.
        conn.execute(sql.SQL("SET LOCAL pgcloak.tenant_token = {}").format(sql.Literal(tok)))


def transaction(pool, tenant, tok, tag):
    res = {"tenant": tenant, "pid": 0, "wrote": [], "read": [], "found": [], "other": 0, "refused": ""}
    with pool.connection() as conn:
        res["pid"] = conn.info.backend_pid
        conn.row_factory = dict_row
        if not tenant:
            try:
                with conn.transaction():
                    res["read"] = conn.execute(SELECT).fetchall()
                    w = patient("nobody", tag)
                    # Never prepared: an unnamed statement parsed now.
                    conn.execute(INSERT, [w["name"], w["ssn"], w["diagnosis"]], prepare=False)
            except psycopg.Error as e:
                res["refused"] = e.sqlstate or str(e)
            return res
        try:
            with conn.transaction():
                set_token(conn, tok)
                for i in (0, 1):
                    w = patient(tenant, f"{tag}.{i}")
                    conn.execute(INSERT, [w["name"], w["ssn"], w["diagnosis"]])
                    res["wrote"].append(w)
                res["read"] = conn.execute(SELECT).fetchall()
                res["found"] = conn.execute(SELECT + " where ssn = %s", [res["wrote"][0]["ssn"]]).fetchall()
                res["other"] = conn.execute("select count(*) as n from patients where ssn = %s", [other_ssn(tenant)]).fetchone()["n"]
        except psycopg.Error as e:
            raise RuntimeError(f"transaction {tag} of {tenant}: {e.sqlstate} {e}") from e
    return res


def main():
    jobs = []
    rounds = max(len(t) for t in TOKENS.values())
    for r in range(rounds):
        for tenant, toks in TOKENS.items():
            if r < len(toks):
                jobs.append((tenant, toks[r], f"py{r}.{len(jobs)}"))
                if len(jobs) % 3 == 0:
                    jobs.append(("", "", f"none{r}.{len(jobs)}"))
    with ConnectionPool(os.environ["PGCLOAK_URL"], min_size=POOL_MAX, max_size=POOL_MAX,
                        kwargs={"autocommit": True}, open=True) as pool:
        pool.wait(timeout=30)
        with ThreadPoolExecutor(max_workers=6) as ex:
            results = list(ex.map(lambda j: transaction(pool, *j), jobs))
    json.dump(results, sys.stdout)
    print()


if __name__ == "__main__":
    main()
