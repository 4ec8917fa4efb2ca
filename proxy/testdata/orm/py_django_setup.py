"""Django for the Django fixtures (django_orm.py and py_django_pool.py).

Importing this module configures Django, once, with PGCLOAK_URL's database
(through pgcloak, with Django's psycopg2 backend, without TLS) and no
installed apps, and runs django.setup(); import django.db after it.
"""

import os
import urllib.parse

import django
from django.conf import settings

url = urllib.parse.urlparse(os.environ["PGCLOAK_URL"])
settings.configure(
    DATABASES={"default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": url.path.lstrip("/"),
        "USER": urllib.parse.unquote(url.username),
        "PASSWORD": urllib.parse.unquote(url.password),
        "HOST": url.hostname,
        "PORT": url.port,
        "OPTIONS": {"sslmode": "disable"},
    }},
    INSTALLED_APPS=[],
    USE_TZ=True,
)
django.setup()

from django.db import models  # noqa: E402


class UnmanagedPatients(models.Model):
    """An unmanaged model on the patients table, to subclass with the
    fields a fixture uses: Django neither creates nor migrates it, and
    tenant_id is left to the database's default."""

    class Meta:
        abstract = True
        app_label = "orm"
        managed = False
        db_table = "patients"
