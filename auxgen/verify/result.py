"""What every check returns, and the report that gathers them."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

MAX_LISTED = 8  # problems spelled out in a reason; the count says how many more


@dataclass
class CheckResult:
    """One check: status is pass, fail or skip; figures are the numbers behind the reason."""

    name: str
    status: str
    reason: str
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.status == "pass"


@dataclass
class Report:
    """All checks of one `auxgen verify` call; it passes when no check failed."""

    run_dir: str
    checkpoint: str
    labels: str | None
    checks: list[CheckResult]

    @property
    def passed(self) -> bool:
        return all(c.status != "fail" for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {"run_dir": self.run_dir, "checkpoint": self.checkpoint, "labels": self.labels,
                "passed": self.passed, "checks": [asdict(c) for c in self.checks]}


def problems_reason(problems: list[str]) -> str:
    """Problems as one line: the first MAX_LISTED, then how many more."""
    more = f" (and {len(problems) - MAX_LISTED} more)" if len(problems) > MAX_LISTED else ""
    return "; ".join(problems[:MAX_LISTED]) + more
