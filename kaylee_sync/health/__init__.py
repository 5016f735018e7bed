"""How a unit's rollout stands: the typed report the scheduler publishes, and the one
judgement of done / failed / stuck that every reader of it shares (the runner, ``kaylee
ls``, ``kaylee run --wait``, status and metrics). Pure: no I/O, no clock of its own."""

from kaylee_sync.health.rollout import (
    QUIET_PHASES,
    FleetTally,
    Judgement,
    Phase,
    RolloutReport,
    Stuck,
    StuckWatch,
    Verdict,
    decode_report,
    encode_report,
    judge,
)

__all__ = [
    "QUIET_PHASES",
    "FleetTally",
    "Judgement",
    "Phase",
    "RolloutReport",
    "Stuck",
    "StuckWatch",
    "Verdict",
    "decode_report",
    "encode_report",
    "judge",
]
