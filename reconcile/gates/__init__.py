"""Cutover gates: criteria from stored history, human approval, an append-only audit trail, publishing."""
