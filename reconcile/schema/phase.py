"""Which phase ``reconcile schema apply`` runs when ``--phase`` is not given: decided from the control state.

Foreign keys are enforced from the moment they are added, and the backfill copies chunks in parallel
(a reversal can land before the journal row it reverses) while the replay catches up with writes that
raced the copy: foreign keys added before both are done make the target refuse rows (SQLSTATE 23503)
that are perfectly consistent on the source. So the default is the safe one:

* ``all`` (post-load included) only when the control schema shows the initial backfill complete for
  every configured table under ``[replay] slot_name`` (every chunk done, none refused, the same rule the
  replay applies before it starts) **and** a replay run of that slot caught up after the last chunk
  was written;
* ``pre-load`` otherwise, with the reason, so the command says what it did and what comes next.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

from reconcile.config import Config

__all__ = ["PhaseDecision", "default_phase"]


@dataclass(frozen=True)
class PhaseDecision:
    phase: str
    """``pre-load`` or ``all``."""
    reason: str
    """Why, in one sentence (no trailing period)."""

    def message(self) -> str:
        if self.phase == "all":
            return f"--phase not given: applying both phases, foreign keys included, because {self.reason}"
        return (f"--phase not given: applying the pre-load phase only (no foreign keys), because {self.reason}; "
                "run `reconcile schema apply --phase post-load` once the backfill is complete and the replay has "
                "caught up")


def _exists(conn: psycopg.Connection, name: str) -> bool:
    return bool(conn.execute("SELECT to_regclass(%s) IS NOT NULL", (name,)).fetchone()[0])


def default_phase(config: Config, target: psycopg.Connection) -> PhaseDecision:
    """The phase a bare ``schema apply`` runs (see the module docstring)."""
    from reconcile.backfill.checkpoints import Control
    from reconcile.budget import budget_from
    from reconcile.occ import policy_from
    from reconcile.replay.apply import read_watermark
    from reconcile.replay.runner import backfill_problems

    slot = config.replay.slot_name
    if not all(_exists(target, f"reconcile.{t}") for t in ("runs", "chunks", "rejects")):
        return PhaseDecision("pre-load", "no backfill has run yet")
    control = Control(target, budget=budget_from(config), policy=policy_from(config))
    problems = backfill_problems(control, config.tables, slot)
    if problems:
        return PhaseDecision("pre-load", f"the backfill is not complete ({problems[0]})")
    if not _exists(target, "reconcile.replay_state"):
        return PhaseDecision("pre-load", f"no replay of slot {slot} has caught up yet")
    wm = read_watermark(target, slot)
    (last_chunk,) = target.execute(
        "SELECT max(updated_at) FROM reconcile.chunks WHERE table_name = ANY(%s)",
        ([t.name for t in config.tables],)).fetchone()
    if not wm.caught_up_lsn or wm.updated_at is None or (last_chunk is not None and wm.updated_at < last_chunk):
        return PhaseDecision("pre-load", f"no replay of slot {slot} has caught up since the backfill finished")
    from reconcile.replay import pgoutput as po

    return PhaseDecision("all", f"the backfill is complete and the replay of slot {slot} caught up "
                                f"(to {po.int_to_lsn(wm.caught_up_lsn)})")
