"""SQLAlchemy 1.4 (Debian's python3-sqlalchemy) with psycopg2 through
pgcloak as a tenant: reflect the encrypted patients table, select and
search through the reflected Table, insert through it, stream a search
through a server-side cursor, and read indexes and CHECK constraints with
the inspector. Then a declarative model of the table (ssn a plain String
column): Session add and commit, select with = and IN, update, yield_per
(a server-side cursor), session.delete and a delete by ssn.

Prints one line per fact for TestORMSQLAlchemy in proxy/orm_test.go to
compare (it checks nothing itself).

Environment: PGCLOAK_URL (a tenant role's connection through pgcloak),
PGCLOAK_SSN (the ssn to insert and search; another tenant has a row with
it too).
"""

import datetime
import os

import sqlalchemy
from sqlalchemy import MetaData, Table, create_engine, inspect, select

url = os.environ["PGCLOAK_URL"].replace("postgres://", "postgresql+psycopg2://", 1)
ssn = os.environ["PGCLOAK_SSN"]
engine = create_engine(url, future=True)


def row(r):
    return "|".join(str(v) for v in (r.name, r.ssn, r.email, r.diagnosis, r.birth_date))


patients = Table("patients", MetaData(), autoload_with=engine)
print("columns", " ".join(f"{c.name}:{c.type!r}" for c in patients.columns))
print("primary key", [c.name for c in patients.primary_key])

with engine.begin() as conn:
    conn.execute(patients.insert(), [
        {"name": "alice", "ssn": ssn, "email": "Alice@Example.com", "diagnosis": "influenza",
         "birth_date": datetime.date(1980, 1, 2)},
        {"name": "carol", "ssn": "555-00-1111", "email": "carol@example.com", "diagnosis": "asthma",
         "birth_date": datetime.date(1990, 3, 4)},
    ])
    new = conn.execute(patients.insert().returning(patients.c.id, patients.c.tenant_id).values(
        name="dave", ssn="555-00-2222", email="dave@example.com", diagnosis="gout",
        birth_date=datetime.date(1970, 5, 6))).one()
    print("inserted", type(new.id).__name__, new.tenant_id)

with engine.connect() as conn:
    print("select", ", ".join(row(r) for r in conn.execute(select(patients).order_by(patients.c.id))))
    r = conn.execute(select(patients).where(patients.c.ssn == ssn)).one()
    print("where ssn", row(r), type(r.ssn).__name__, type(r.birth_date).__name__)
    print("where email", conn.execute(select(patients.c.name).where(patients.c.email == "alice@example.com")).scalars().all())
    print("where in", conn.execute(select(patients.c.name).where(patients.c.ssn.in_([ssn, "555-00-2222"])).order_by(patients.c.name)).scalars().all())
    streamed = conn.execution_options(stream_results=True, max_row_buffer=1).execute(
        select(patients).where(patients.c.ssn != "555-00-2222").order_by(patients.c.name))
    print("stream cursor named", streamed.cursor.name is not None)
    print("stream", ", ".join(row(r) for r in streamed))
    streamed = conn.execution_options(stream_results=True).execute(select(patients).where(patients.c.ssn == ssn))
    print("stream search", ", ".join(row(r) for r in streamed))

with engine.begin() as conn:
    conn.execute(patients.update().where(patients.c.ssn == ssn).values(diagnosis="flu", birth_date=datetime.date(1981, 2, 3)))
with engine.connect() as conn:
    print("updated", row(conn.execute(select(patients).where(patients.c.ssn == ssn)).one()))

insp = inspect(engine)
print("inspector columns", " ".join(f"{c['name']}:{c['type']!r}" for c in insp.get_columns("patients")))
print("indexes", sorted((i["name"], tuple(i["column_names"])) for i in insp.get_indexes("patients")))
print("checks", sorted(c["name"] for c in insp.get_check_constraints("patients")))
print("pk constraint", insp.get_pk_constraint("patients")["constrained_columns"])
print("unique", insp.get_unique_constraints("patients"))

# A declarative model of the same table, as an application writes it:
# ssn is a plain string column; nothing in the model knows of pgcloak.
from sqlalchemy import Column, Date, FetchedValue, Integer, String, delete  # noqa: E402
from sqlalchemy.orm import Session, declarative_base  # noqa: E402

Base = declarative_base()


class Patient(Base):
    __tablename__ = "patients"
    id = Column(Integer, primary_key=True)
    tenant_id = Column(String, server_default=FetchedValue())
    name = Column(String)
    ssn = Column(String)
    email = Column(String)
    diagnosis = Column(String)
    birth_date = Column(Date)


with Session(engine, future=True) as s:
    erin = Patient(name="erin", ssn="555-00-3333", email="erin@example.com", diagnosis="flu", birth_date=datetime.date(2001, 2, 3))
    frank = Patient(name="frank", ssn="555-00-4444", email="frank@example.com", diagnosis="gout", birth_date=datetime.date(2002, 3, 4))
    s.add_all([erin, frank])
    s.commit()
    print("orm created", type(erin.id).__name__, erin.tenant_id)

with Session(engine, future=True) as s:
    p = s.execute(select(Patient).where(Patient.ssn == "555-00-3333")).scalar_one()
    print("orm where ssn", row(p), type(p.ssn).__name__, type(p.birth_date).__name__)
    print("orm where in", s.execute(select(Patient.name).where(Patient.ssn.in_([ssn, "555-00-4444", "987-65-4321"])).order_by(Patient.name)).scalars().all())
    print("orm where email", s.execute(select(Patient.name).where(Patient.email == "FRANK@example.com")).scalars().all())
    print("orm other tenant's ssn", s.execute(select(Patient).where(Patient.ssn == "555-00-1111", Patient.name == "gina")).scalars().all())
    p.diagnosis = "asthma"
    p.birth_date = datetime.date(2001, 2, 4)
    s.commit()
    s.expire_all()
    print("orm updated", row(s.get(Patient, p.id)))
    streamed = s.execute(select(Patient).order_by(Patient.name).execution_options(yield_per=1))
    print("orm yield_per", ", ".join(p.name + ":" + str(p.birth_date) for p in streamed.scalars()))
    s.delete(s.execute(select(Patient).where(Patient.ssn == "555-00-4444")).scalar_one())
    s.commit()
    print("orm deleted by session", s.execute(select(Patient.name).where(Patient.ssn == "555-00-4444")).scalars().all())
    gone = s.execute(delete(Patient).where(Patient.ssn == "555-00-2222"))
    s.commit()
    print("orm deleted by ssn", gone.rowcount, s.execute(select(Patient.name).order_by(Patient.name)).scalars().all())
