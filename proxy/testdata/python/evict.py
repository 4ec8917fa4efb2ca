"""psycopg 3 with its default prepared-statement settings against pgcloak:
more distinct statements than its cache keeps (prepared_max 100), each run
often enough to be prepared (prepare_threshold 5). psycopg then evicts the
oldest with DEALLOCATE _pg3_N, which it sends through the extended protocol
(the unnamed statement), and the statements it evicts include ones pgcloak
prepared upstream under names of its own (searches of an encrypted column).

Prints, as JSON for TestDeallocatePsycopgEviction in
proxy/deallocate_test.go to check (it checks nothing itself):
{"settings": [prepare_threshold, prepared_max], "runs": n, "failed": n
(runs that raised or returned wrong rows), "errors": [the first few],
"select1": [[1]],
"found": [[name, ssn], ...], "upstream": [names of the upstream prepared
statements]}.

Environment: PGCLOAK_URL (a tenant role's connection through pgcloak),
PGCLOAK_STATEMENTS (how many distinct statements), PGCLOAK_RUNS (how often
each runs per round). The table holds the rows the test seeded:
patients (name, ssn) with ssn encrypted and searchable.

Run with the system Python (Debian: python3-psycopg).
"""

import json
import os
import sys

import psycopg

STATEMENTS = int(os.environ.get("PGCLOAK_STATEMENTS", "160"))
RUNS = int(os.environ.get("PGCLOAK_RUNS", "6"))
PATIENTS = json.loads(os.environ["PGCLOAK_PATIENTS"])  # [[name, ssn], ...]


def statement(k):
    """The k-th distinct statement, its parameters and the rows it must
    return. The text differs by k only in a constant, so each is a
    statement of its own to psycopg and to PostgreSQL."""
    name, ssn = PATIENTS[k % len(PATIENTS)]
    kind = k % 3
    if kind == 0:  # a search of the encrypted column (rewritten by pgcloak)
        return (f"select name from patients where ssn = %s and {k} = {k}", [ssn], [[name]])
    if kind == 1:  # undeclared columns only, the encrypted one decrypted
        return (f"select ssn from patients where name = %s and {k} > -1", [name], [[ssn]])
    return (f"select count(*) from patients where name <> %s and {k} < {k + 1}", [name], [[len(PATIENTS) - 1]])


def main():
    out = {"runs": 0, "failed": 0, "errors": []}
    with psycopg.connect(os.environ["PGCLOAK_URL"], autocommit=True) as conn:
        out["settings"] = [conn.prepare_threshold, conn.prepared_max]
        for rnd in range(2):
            for k in range(STATEMENTS):
                sql, params, want = statement(k)
                for _ in range(RUNS):
                    out["runs"] += 1
                    try:
                        got = [list(r) for r in conn.execute(sql, params).fetchall()]
                        problem = None if got == want else f"got {got}, want {want}"
                    except psycopg.Error as e:
                        problem = f"{e.sqlstate} {e}"
                    if problem:
                        out["failed"] += 1
                        if len(out["errors"]) < 5:
                            out["errors"].append(f"round {rnd} statement {k}: {problem}")
        name, ssn = PATIENTS[0]
        for key, sql, params in (("select1", "SELECT 1", None),
                                 ("found", "select name, ssn from patients where ssn = %s", [ssn])):
            try:
                out[key] = [list(r) for r in conn.execute(sql, params).fetchall()]
            except psycopg.Error as e:
                out[key] = f"{e.sqlstate} {e}"
        try:
            out["upstream"] = [r[0] for r in conn.execute(
                "select name from pg_prepared_statements order by name", prepare=False).fetchall()]
        except psycopg.Error as e:
            out["upstream"] = f"{e.sqlstate} {e}"
    json.dump(out, sys.stdout)
    print()


if __name__ == "__main__":
    main()
