"""Single source of truth for column names and Arrow schemas (see schemas.sample)."""
