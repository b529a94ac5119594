"""Data phases: sources → extracts → quality gate → curated dataset versions."""
