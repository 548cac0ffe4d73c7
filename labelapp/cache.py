"""Django's database cache with an atomic `incr`.

The stock DatabaseCache increments with a read and a write, so two processes incrementing at once
lose one increment, and a throttle counting failed log-ins in it would let a parallel burst
through. Here the row is locked (SELECT … FOR UPDATE; SQLite's IMMEDIATE transactions serialise
writers anyway) between the read and the write. `add` is already atomic: the key is the primary key.
"""
from __future__ import annotations

import base64
import pickle

from django.core.cache.backends.db import DatabaseCache
from django.db import connections, models, router, transaction
from django.utils.timezone import now as tz_now


class AtomicDatabaseCache(DatabaseCache):
    def incr(self, key, delta=1, version=None):
        key = self.make_and_validate_key(key, version=version)
        db = router.db_for_write(self.cache_model_class)
        connection = connections[db]
        q = connection.ops.quote_name
        lock = " FOR UPDATE" if connection.features.has_select_for_update else ""
        with transaction.atomic(using=db), connection.cursor() as cursor:
            cursor.execute(
                f"SELECT {q('value')}, {q('expires')} FROM {q(self._table)} WHERE {q('cache_key')} = %s{lock}", [key]
            )
            row = cursor.fetchone()
            expires = row[1] if row else None
            if row is not None:
                expression = models.Expression(output_field=models.DateTimeField())
                for converter in connection.ops.get_db_converters(expression) + expression.get_db_converters(connection):
                    expires = converter(expires, expression, connection)
            if row is None or expires < tz_now():
                raise ValueError(f"Key '{key}' not found")
            value = pickle.loads(base64.b64decode(connection.ops.process_clob(row[0]).encode())) + delta
            encoded = base64.b64encode(pickle.dumps(value, self.pickle_protocol)).decode("latin1")
            cursor.execute(f"UPDATE {q(self._table)} SET {q('value')} = %s WHERE {q('cache_key')} = %s", [encoded, key])
        return value

    def decr(self, key, delta=1, version=None):
        return self.incr(key, -delta, version)
