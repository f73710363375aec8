"""Model sources that are not plain storage locations (the bundled model)."""
