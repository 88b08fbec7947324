"""Invariant expectations (Great Expectations). Keep this package's import light: GX loads inside functions."""
