"""The artifact format: per-rank files plus a checksummed manifest (lmi-artifact.json)."""
