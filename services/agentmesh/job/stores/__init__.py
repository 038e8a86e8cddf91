"""The Job service's SQL: every function takes the tenant first (housekeeping passes
over every tenant say so in their name)."""
