"""What the Python ORM matrix's token-pool runs share: the rows a tenant's
transaction writes, the jobs (one transaction per token, and transactions
without a token between them) and the report, a JSON list of poolTx for
checkPoolRun in proxy/tokenpool_test.go.

Each library's script (py_psycopg.py, py_asyncpg.py, py_sqlalchemy_pool.py,
py_django_pool.py) runs every job on ONE pool of connections logged in as
the token role, presenting the job's token in its transaction, and calls
transaction_result for what the transaction did and saw. Each tenant
transaction writes the two rows it reports, plus a third it deletes again
by its encrypted ssn (so the stored rows are exactly those reported).

Environment: PGCLOAK_URL (the token role through pgcloak), PGCLOAK_TOKENS
({"tenant": ["jwt", ...]}, one transaction per token).
"""

import json
import os
import sys

TOKENS = json.loads(os.environ.get("PGCLOAK_TOKENS", "{}"))

COLUMNS = ("name", "ssn", "diagnosis", "tenant_id")


def patient(tenant, tag):
    """The row tenant writes under tag: every value names the tenant
    (poolPatient in proxy/tokenpool_test.go)."""
    name = f"{tenant}/{tag}"
    return {"name": name, "ssn": f"{tenant}-ssn-{tag}", "diagnosis": f"diagnosis of {name}", "tenant_id": tenant}


def other_ssn(tenant):
    """The ssn of seedPool's row of another tenant: a search for it must
    find nothing."""
    return patient("tenant01" if tenant == "tenant00" else "tenant00", "seed.0")["ssn"]


def jobs():
    """(tenant, token, tag) per transaction: the tenants' tokens
    interleaved, a transaction without a token ("", "", tag) after every
    third."""
    out = []
    rounds = max(len(t) for t in TOKENS.values())
    for r in range(rounds):
        for tenant, toks in TOKENS.items():
            if r < len(toks):
                out.append((tenant, toks[r], f"py{r}.{len(out)}"))
                if len(out) % 3 == 0:
                    out.append(("", "", f"none{r}.{len(out)}"))
    return out


def new_result(tenant, pid=0):
    return {"tenant": tenant, "pid": pid, "wrote": [], "read": [], "found": [], "other": 0, "refused": ""}


def as_row(values):
    """A row of COLUMNS (a sequence or a mapping) as poolRow's JSON."""
    if isinstance(values, dict):
        return {c: values[c] for c in COLUMNS}
    return dict(zip(COLUMNS, values))


def report(results):
    json.dump(results, sys.stdout)
    print()
