"""results.json, tables, overlays, saved predictions."""
