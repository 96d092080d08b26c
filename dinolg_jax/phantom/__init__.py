"""The synthetic phantom: a COCA-format release (the default data) and synthetic records."""
