"""The ground floor: settings, the database (pool, codecs, migrations), the error tree and metrics."""
