"""The history's schema version: how many named migrations (``migrations.MIGRATIONS``) a current
database has applied. Its own module so a reader can check a database without importing
SQLAlchemy; ``migrations`` refuses to import when its list and this number disagree."""

SCHEMA_VERSION = 5
