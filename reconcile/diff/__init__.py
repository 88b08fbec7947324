"""Reconciliation: entry-level diffs (segment checksums, bisection, lag-aware re-checks) and balance diffs."""
