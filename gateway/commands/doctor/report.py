"""Findings and the report the doctor prints."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, TextIO

Level = Literal["ok", "warn", "FAIL", "info"]


@dataclass(frozen=True, slots=True)
class Finding:
    level: Level
    area: str
    text: str


@dataclass
class Report:
    findings: list[Finding] = field(default_factory=list)

    def ok(self, area: str, text: str) -> None:
        self.findings.append(Finding("ok", area, text))

    def info(self, area: str, text: str) -> None:
        self.findings.append(Finding("info", area, text))

    def warn(self, area: str, text: str) -> None:
        self.findings.append(Finding("warn", area, text))

    def fail(self, area: str, text: str) -> None:
        self.findings.append(Finding("FAIL", area, text))

    @property
    def failures(self) -> int:
        return sum(f.level == "FAIL" for f in self.findings)

    @property
    def warnings(self) -> int:
        return sum(f.level == "warn" for f in self.findings)

    def print(self, out: TextIO) -> None:
        width = max((len(f.area) for f in self.findings), default=0)
        for f in self.findings:
            out.write(f"{f.level:<5} {f.area:<{width}}  {f.text}\n")
        verdict = "something is wrong" if self.failures else "healthy"
        out.write(f"\n{self.failures} problem(s), {self.warnings} warning(s): {verdict}\n")
