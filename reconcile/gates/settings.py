"""The [gates] section of reconcile.toml (also `RECONCILE__GATES__<KEY>`).

Keys and their types come from the fields below (int, float, bool, str, str | None, tuple[str, ...]);
`__post_init__` validates values and raises :class:`reconcile.config.InvalidSetting`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GateSettings:
    """Settings of the gates stage."""
