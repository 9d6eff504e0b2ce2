"""A deploy gone wrong: the module raises while it is imported."""

raise RuntimeError("database URL is not configured")
