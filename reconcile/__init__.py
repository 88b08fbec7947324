"""reconcile: shadow-write reconciliation for moving a ledger from Aurora PostgreSQL to Aurora DSQL."""

__version__ = "0.1.0"
