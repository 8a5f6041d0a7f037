"""The transactional outbox in the host's own database (PostgreSQL or SQLite).

`SqlOutbox.send(conn, ...)` inserts a message on the host's connection, inside the
host's transaction; `rt.relay(outbox)` delivers the committed rows from any number of
runtimes on any number of machines. PostgreSQL needs `surelay[postgres]` (psycopg 3).
"""

from surelay.sql.outbox import SqlOutbox

__all__ = ["SqlOutbox"]
