"""Django 3.2 (Debian's python3-django) with its psycopg2 backend through
pgcloak as a tenant: inspectdb of the encrypted patients table, then an
unmanaged model on it: create with a date, filter on the encrypted ssn and
email, iterator() (a server-side cursor), update, delete (by ssn, by IN
and an instance).

Prints inspectdb's model, then one line per fact, for TestORMDjango in
proxy/orm_test.go to compare (it checks nothing itself).

Environment: PGCLOAK_URL (a tenant role's connection through pgcloak),
PGCLOAK_SSN (the ssn to create and search; another tenant has a row with
it too).
"""

import datetime
import io
import os

import py_django_setup  # first: it configures Django
from django.core.management import call_command
from django.db import connection, models

ssn = os.environ["PGCLOAK_SSN"]

buf = io.StringIO()
call_command("inspectdb", "patients", stdout=buf)
model = buf.getvalue()
# The model inspectdb wrote, from its class line on (the header is
# comments).
print(model[model.index("class "):].rstrip())


class Patient(py_django_setup.UnmanagedPatients):
    name = models.TextField(blank=True, null=True)
    ssn = models.TextField(blank=True, null=True)
    email = models.TextField(blank=True, null=True)
    diagnosis = models.TextField(blank=True, null=True)
    birth_date = models.DateField(blank=True, null=True)


def row(p):
    return "|".join(str(v) for v in (p.name, p.ssn, p.email, p.diagnosis, p.birth_date))


# Which cursors iterator() reads through: psycopg2 named (server-side)
# cursors unless the connection disables them.
cursor_names = []
_chunked_cursor = connection.chunked_cursor


def chunked_cursor():
    c = _chunked_cursor()
    cursor_names.append(c.cursor.name)
    return c


connection.chunked_cursor = chunked_cursor

alice = Patient.objects.create(name="alice", ssn=ssn, email="Alice@Example.com", diagnosis="influenza",
                               birth_date=datetime.date(1980, 1, 2))
Patient.objects.create(name="carol", ssn="555-00-1111", email="carol@example.com", diagnosis="asthma",
                       birth_date=datetime.date(1990, 3, 4))
print("created", type(alice.pk).__name__)
found = list(Patient.objects.filter(ssn=ssn))
print("filter ssn", ", ".join(row(p) for p in found), type(found[0].ssn).__name__, type(found[0].birth_date).__name__)
print("filter email", list(Patient.objects.filter(email="alice@example.com").values_list("name", flat=True)))
print("filter in", list(Patient.objects.filter(ssn__in=[ssn, "000-00-0000"]).values_list("name", flat=True)))
print("exclude", list(Patient.objects.exclude(ssn=ssn).values_list("name", flat=True)))
print("get", row(Patient.objects.get(ssn="555-00-1111")))
print("count", Patient.objects.filter(ssn=ssn).count(), Patient.objects.filter(ssn=ssn).exists())
print("iterator", ", ".join(row(p) for p in Patient.objects.order_by("name").iterator(chunk_size=1)))
print("iterator search", ", ".join(row(p) for p in Patient.objects.filter(ssn=ssn).iterator(chunk_size=1)))
print("iterator cursors named", len(cursor_names), all(n is not None for n in cursor_names))
alice.diagnosis = "flu"
alice.birth_date = datetime.date(1981, 2, 3)
alice.save()
print("saved", row(Patient.objects.get(pk=alice.pk)))
print("update", Patient.objects.filter(ssn="555-00-1111").update(diagnosis="gout"), Patient.objects.get(name="carol").diagnosis)
with connection.cursor() as cur:
    cur.execute("select name from patients where ssn = %s", [ssn])
    print("raw", cur.fetchall())
erin = Patient.objects.create(name="erin", ssn="555-00-3333", email="erin@example.com", diagnosis="flu",
                              birth_date=datetime.date(2001, 2, 3))
Patient.objects.create(name="frank", ssn="555-00-4444", email="frank@example.com", diagnosis="gout",
                       birth_date=datetime.date(2002, 3, 4))
print("delete by ssn", Patient.objects.filter(ssn="555-00-4444").delete())
print("delete in", Patient.objects.filter(ssn__in=["555-00-3333", "987-65-4321"]).delete())
carol = Patient.objects.get(email="CAROL@example.com")
print("delete instance", carol.delete(), list(Patient.objects.order_by("name").values_list("name", flat=True)))
