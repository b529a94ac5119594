"""Release: promotion (alias moves through the ledger) and canary analysis."""
