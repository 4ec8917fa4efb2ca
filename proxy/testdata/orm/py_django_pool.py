"""Django 3.2 (Debian's python3-django, with psycopg2) through pgcloak as
the token role, for TestORMDjango's token pool in proxy/orm_test.go: ONE
connection (Django's, per thread) serves 2 tenants, a token per
transaction: transaction.atomic() and cursor.execute("SET LOCAL
pgcloak.tenant_token = %s", [tok]) (psycopg2 sends the token as a
literal in a simple query). An unmanaged model writes, filters on its
encrypted ssn, deletes by it and reads with iterator() (a psycopg2 named
cursor). Prints the transactions as JSON (py_pooljobs); it checks nothing
itself.

Environment: PGCLOAK_URL (the token role through pgcloak), PGCLOAK_TOKENS.
"""

import py_django_setup  # first: it configures Django
import py_pooljobs
from django.db import DatabaseError, connection, models, transaction
from django.db.models.expressions import RawSQL


class Patient(py_django_setup.UnmanagedPatients):
    name = models.TextField(blank=True, null=True)
    ssn = models.TextField(blank=True, null=True)
    diagnosis = models.TextField(blank=True, null=True)


def rows(qs):
    # tenant_id is the database's default (pgcloak.current_tenant());
    # the model leaves it out so that inserts do not write it.
    return list(qs.annotate(tenant_id=RawSQL("tenant_id", ())).values(*py_pooljobs.COLUMNS))


def run(tenant, tok, tag):
    res = py_pooljobs.new_result(tenant)
    connection.ensure_connection()
    res["pid"] = connection.connection.get_backend_pid()
    if not tenant:
        try:
            with transaction.atomic():
                res["read"] = rows(Patient.objects.all())
                w = py_pooljobs.patient("nobody", tag)
                Patient.objects.create(name=w["name"], ssn=w["ssn"], diagnosis=w["diagnosis"])
        except DatabaseError as e:
            res["refused"] = getattr(e.__cause__, "pgcode", None) or str(e)
        return res
    with transaction.atomic():
        with connection.cursor() as cur:
            cur.execute("SET LOCAL pgcloak.tenant_token = %s", [tok])
        res["wrote"] = [py_pooljobs.patient(tenant, f"{tag}.{i}") for i in (0, 1)]
        temp = py_pooljobs.patient(tenant, tag + ".temp")
        Patient.objects.bulk_create([Patient(name=w["name"], ssn=w["ssn"], diagnosis=w["diagnosis"]) for w in res["wrote"]])
        Patient.objects.create(name=temp["name"], ssn=temp["ssn"], diagnosis=temp["diagnosis"])
        res["found"] = rows(Patient.objects.filter(ssn=res["wrote"][0]["ssn"]))
        res["other"] = Patient.objects.filter(ssn=py_pooljobs.other_ssn(tenant)).count()
        deleted, _ = Patient.objects.filter(ssn=temp["ssn"]).delete()
        if deleted != 1:
            raise RuntimeError(f"deleted {deleted} rows by ssn, want 1")
        res["read"] = list(Patient.objects.annotate(tenant_id=RawSQL("tenant_id", ()))
                           .values(*py_pooljobs.COLUMNS).iterator(chunk_size=1))
    return res


py_pooljobs.report([run(*j) for j in py_pooljobs.jobs()])
