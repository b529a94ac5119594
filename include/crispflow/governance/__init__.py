"""Data governance: keyed pseudonyms of subjects' keys and PII values, and per-file membership indexes."""
