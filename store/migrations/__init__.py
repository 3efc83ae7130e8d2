"""Alembic migrations of Canopy's store (the validator's and the API's tables); see ``store.schema``."""
