"""A Django host on SQLite sending with `SqlOutbox.send(connection, ...)`, run as a
process of its own (Django's settings can be configured once per process).

Usage: python -m tests.sql.django_host <sqlite file> <partitions>. Inside `transaction.atomic()` it
inserts order 1 and sends b"rolled back" (the block then raises: rolled back), then
order 2 and b"committed" (committed). Outside any atomic block in autocommit mode, a
send must raise RuntimeError; it prints that error's text and exits 0.
"""

from __future__ import annotations

import sys

import django
from django.conf import settings


class Rollback(Exception):
    """Raised inside a block to roll it back."""


def main(path: str, partitions: int) -> None:
    settings.configure(
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": path}},
        USE_TZ=True,
    )
    django.setup()
    from django.db import connection, transaction  # noqa: PLC0415  # after setup()

    from surelay.sql import SqlOutbox  # noqa: PLC0415

    outbox = SqlOutbox(f"sqlite:///{path}", partitions=partitions)
    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY, note TEXT)")
    try:
        with transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute("INSERT INTO orders VALUES (%s, %s)", [1, "rolled back"])
            outbox.send(connection, "hooks", b"rolled back", key="order-1")
            raise Rollback
    except Rollback:
        pass
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("INSERT INTO orders VALUES (%s, %s)", [2, "committed"])
        outbox.send(connection, "hooks", b"committed", key="order-2")
    try:
        outbox.send(connection, "hooks", b"autocommit")
    except RuntimeError as error:
        print(error)
    else:
        sys.exit("send outside transaction.atomic() in autocommit mode was accepted")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
