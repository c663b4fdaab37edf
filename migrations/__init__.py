"""Alembic migrations of the mail2ticket schema (shipped as mail2ticket.migrations)."""
