"""SQLAlchemy 1.4 (Debian's python3-sqlalchemy, with psycopg2) through
pgcloak as the token role, for TestORMSQLAlchemy's token pool in
proxy/orm_test.go: ONE engine whose pool of 2 connections serves 2
tenants from 4 threads, a token per transaction presented by an
after_begin event (SET LOCAL pgcloak.tenant_token; psycopg2 sends the
token as a literal in a simple query). A declarative model writes,
searches by its encrypted ssn, deletes by it and streams with yield_per
(a psycopg2 named cursor). Prints the transactions as JSON (py_pooljobs);
it checks nothing itself.

SQLAlchemy 1.4 has no psycopg 3 dialect (postgresql+psycopg came with
2.0): psycopg2 it is.

Environment: PGCLOAK_URL (the token role through pgcloak), PGCLOAK_TOKENS.
"""

import os
import threading
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import Column, FetchedValue, Integer, String, create_engine, delete, event, func, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, declarative_base

import py_pooljobs

Base = declarative_base()


class Patient(Base):
    __tablename__ = "patients"
    id = Column(Integer, primary_key=True)
    tenant_id = Column(String, server_default=FetchedValue())
    name = Column(String)
    ssn = Column(String)
    diagnosis = Column(String)


engine = create_engine(os.environ["PGCLOAK_URL"].replace("postgres://", "postgresql+psycopg2://", 1),
                       future=True, pool_size=2, max_overflow=0)
current = threading.local()


@event.listens_for(Session, "after_begin")
def present_token(session, transaction, connection):
    tok = getattr(current, "token", "")
    if tok:
        connection.execute(text("SET LOCAL pgcloak.tenant_token = :tok"), {"tok": tok})


def as_row(p):
    return {"name": p.name, "ssn": p.ssn, "diagnosis": p.diagnosis, "tenant_id": p.tenant_id}


def transaction(tenant, tok, tag):
    res = py_pooljobs.new_result(tenant)
    current.token = tok
    sel = select(Patient)
    with Session(engine, future=True) as s:
        if not tenant:
            try:
                with s.begin():
                    res["pid"] = s.connection().connection.get_backend_pid()
                    res["read"] = [as_row(p) for p in s.execute(sel).scalars()]
                    w = py_pooljobs.patient("nobody", tag)
                    s.add(Patient(name=w["name"], ssn=w["ssn"], diagnosis=w["diagnosis"]))
            except DBAPIError as e:
                res["refused"] = e.orig.pgcode or str(e)
            return res
        with s.begin():
            res["pid"] = s.connection().connection.get_backend_pid()
            res["wrote"] = [py_pooljobs.patient(tenant, f"{tag}.{i}") for i in (0, 1)]
            temp = py_pooljobs.patient(tenant, tag + ".temp")
            s.add_all([Patient(name=w["name"], ssn=w["ssn"], diagnosis=w["diagnosis"]) for w in res["wrote"] + [temp]])
            s.flush()
            res["found"] = [as_row(p) for p in s.execute(sel.where(Patient.ssn == res["wrote"][0]["ssn"])).scalars()]
            res["other"] = s.execute(select(func.count()).select_from(Patient).where(Patient.ssn == py_pooljobs.other_ssn(tenant))).scalar_one()
            gone = s.execute(delete(Patient).where(Patient.ssn == temp["ssn"]), execution_options={"synchronize_session": False})
            if gone.rowcount != 1:
                raise RuntimeError(f"deleted {gone.rowcount} rows by ssn, want 1")
            s.expunge_all()
            res["read"] = [as_row(p) for p in s.execute(sel.execution_options(yield_per=1)).scalars()]
    return res


with ThreadPoolExecutor(max_workers=4) as ex:
    results = list(ex.map(lambda j: transaction(*j), py_pooljobs.jobs()))
engine.dispose()
py_pooljobs.report(results)
