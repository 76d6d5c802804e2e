"""The fault suite's figures: each scenario records the figures the README's "Reliability"
section quotes with `figures.add`; they are printed at the end of the run and written to
faults-report.md in the working directory.

They travel in each test's report (`user_properties`), so they reach the summary from
pytest-xdist's worker processes as from a run in one process; the summary is made where the
whole run's reports are (the root conftest's hook; a worker, which has only its own, writes
nothing).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

_FIGURE = "fault suite figure"


@dataclass
class Figures:
    properties: list[tuple[str, object]]

    def add(self, scenario: str, text: str) -> None:
        self.properties.append((_FIGURE, (scenario, text)))


def _report(lines: dict[str, list[str]]) -> str:
    out = ["# Fault suite figures", ""]
    for scenario, texts in lines.items():
        out.append(f"## {scenario}")
        out += [f"- {text}" for text in texts]
        out.append("")
    return "\n".join(out)


def summary(terminalreporter: pytest.TerminalReporter) -> None:
    if hasattr(terminalreporter.config, "workerinput"):
        return  # a pytest-xdist worker: the controller has every report
    lines: dict[str, list[str]] = {}
    reports = [r for kind in ("passed", "failed") for r in terminalreporter.stats.get(kind, [])]
    # In the files' order, as one process runs them, whichever worker ran each.
    for report in sorted(reports, key=lambda r: (r.location[0], r.location[1] or 0)):
        if getattr(report, "when", None) != "call":
            continue
        for name, value in report.user_properties:
            if name == _FIGURE:
                scenario, text = value
                lines.setdefault(scenario, []).append(text)
    if not lines:
        return
    report = _report(lines)
    terminalreporter.write_sep("=", "fault suite figures")
    terminalreporter.write_line(report)
    Path("faults-report.md").write_text(report, encoding="utf-8")
