"""PostgreSQL adapters: table definitions, engine, the message store, LISTEN/NOTIFY, migrations."""
