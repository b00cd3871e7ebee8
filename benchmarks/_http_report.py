"""bench_http.py's figures: one phase, the table of a run, the ratios, and the median of runs."""

from __future__ import annotations

import argparse
import statistics
from dataclasses import dataclass, field
from typing import Any

#: (numerator, denominator, the target the code meets today, issue #20's target).
RATIOS = (("c", "a", 0.5, 0.9), ("d1", "b", 0.4, 0.6), ("d10", "b", 0.4, 0.7))
ROW_ORDER = ["a#1", "a#2", "a", "b#1", "b#2", "b", "c1", "c10", "c", "d1", "d10"]
#: Before/after baselines further apart than this: something else moved the machine.
BASELINE_SPREAD_WARN = 0.10


@dataclass
class Phase:
    key: str
    label: str
    count: int
    seconds: float
    cpu: dict[str, float] = field(default_factory=dict)
    #: The whole machine over the phase (see _common.machine_load), and the wall time it spans.
    machine: dict[str, float] = field(default_factory=dict)
    wall: float = 0.0
    note: str = ""

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds > 0 else 0.0

    def cpu_percent(self, who: str) -> float | None:
        used = self.cpu.get(who)
        return None if used is None else 100.0 * used / self.seconds

    def daemon_us_per_job(self) -> float | None:
        used = self.cpu.get("daemon")
        return None if used is None or not self.count else 1e6 * used / self.count

    def other_cores(self) -> float | None:
        """Cores busy with processes other than the daemon, broker and load generator."""
        if not self.machine or self.wall <= 0:
            return None
        ours = sum(self.cpu.get(k, 0.0) for k in ("daemon", "broker", "client"))
        return self.machine["busy_cores"] - ours / self.wall

    def as_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "count": self.count,
            "seconds": self.seconds,
            "rate": self.rate,
            "cpu": self.cpu,
            "daemon_us_per_job": self.daemon_us_per_job(),
            "machine": self.machine,
            "other_cores": self.other_cores(),
            "note": self.note,
        }


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}%"


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _row(p: Phase) -> str:
    per_job = p.daemon_us_per_job() if p.key[0] not in "ab" else None
    m = p.machine
    return (
        f"{p.label:44} {p.count:>6} {p.seconds:>6.2f} {p.rate:>8.0f} "
        f"{_pct(p.cpu_percent('daemon')):>6} {_pct(p.cpu_percent('broker')):>6} "
        f"{_pct(p.cpu_percent('client')):>6} {_pct(p.cpu_percent('daemon_runq')):>6} "
        f"{_num(m.get('busy_cores'), '.2f'):>5} {_num(p.other_cores(), '.2f'):>5} "
        f"{_num(m.get('steal_pct'), '.1f'):>5} {_num(m.get('load1'), '.1f'):>5} "
        f"{_num(per_job, '.0f'):>7}"
    )


def ratios(phases: dict[str, Phase]) -> dict[str, float]:
    return {f"{n}/{d}": phases[n].rate / phases[d].rate for n, d, _, _ in RATIOS}


def baseline_spread(phases: dict[str, Phase]) -> dict[str, float]:
    """How far the before and after rounds of (a) and (b) are apart, relative to the best."""
    out = {}
    for key in ("a", "b"):
        one, two = phases[f"{key}#1"].rate, phases[f"{key}#2"].rate
        out[key] = abs(one - two) / max(one, two)
    return out


def render(phases: dict[str, Phase], info: dict[str, str], args: argparse.Namespace) -> str:
    out = [
        "",
        "machine: " + ", ".join(f"{k} {v}" for k, v in info.items()),
        f"client {args.client}, {args.load}, raw messages {args.raw_jobs}, "
        f"concurrency {args.concurrency}, warm-up {args.warmup}",
        "",
    ]
    head = (
        f"{'phase':44} {'count':>6} {'sec':>6} {'rate/s':>8} {'daemon':>6} {'broker':>6} "
        f"{'client':>6} {'d.runq':>6} {'busy':>5} {'other':>5} {'steal':>5} {'load1':>5} "
        f"{'us/job':>7}"
    )
    out += [head, "-" * len(head)]
    out += [_row(p) for p in sorted(phases.values(), key=lambda p: ROW_ORDER.index(p.key))]
    out.append(
        "(daemon/broker/client: CPU used during the phase, % of one core; d.runq: % of the "
        "phase the daemon's loop was runnable but waiting for a CPU; busy: cores busy on the "
        "whole machine, other: of those, cores used by anything but daemon, broker and client; "
        "steal: % of CPU time taken by the hypervisor; load1: 1-min load average at the "
        "phase's end; us/job: daemon CPU per job)"
    )
    notes = [f"  {p.key}: {p.note}" for p in phases.values() if p.note]
    if notes:
        out += ["", "checked against the daemon's store:", *notes]
    out.append("")
    rates = ratios(phases)
    for num, den, target, goal in RATIOS:
        ratio = rates[f"{num}/{den}"]
        verdict = "MET" if ratio >= target else "NOT MET"
        out.append(
            f"ratio ({num})/({den}) = {ratio:.3f}   target {target:.2f} {verdict:7}   "
            f"issue #20 goal {goal:.2f}   daemon {_num(phases[num].daemon_us_per_job(), '.0f')}"
            " us/job"
        )
    for key, spread in baseline_spread(phases).items():
        flag = "   NOISY: the machine moved during the run" if spread > BASELINE_SPREAD_WARN else ""
        out.append(
            f"baseline ({key}) before {phases[key + '#1'].rate:,.0f}/s, after "
            f"{phases[key + '#2'].rate:,.0f}/s: {100 * spread:.1f}% apart{flag}"
        )
    return "\n".join(out)


def render_median(runs: list[dict[str, Phase]]) -> str:
    """One line per run and the median: the ratios, the daemon's CPU per job, the noise."""
    head = (
        f"{'run':>6} {'c/a':>6} {'d1/b':>6} {'d10/b':>6} {'a/s':>7} {'b/s':>7} {'c/s':>7} "
        f"{'d1/s':>7} {'d10/s':>7} {'us c':>5} {'us d1':>5} {'us d10':>6} {'steal':>5} "
        f"{'other':>5} {'a/b apart':>10}"
    )
    rows = [_summary(str(i + 1), phases) for i, phases in enumerate(runs)]
    median = [statistics.median(col) for col in zip(*rows, strict=True)]
    lines = ["", f"{len(runs)} runs and their median:", head, "-" * len(head)]
    lines += [_summary_line(str(i + 1), row) for i, row in enumerate(rows)]
    lines.append(_summary_line("median", median))
    return "\n".join(lines)


def _summary(_: str, phases: dict[str, Phase]) -> list[float]:
    r = ratios(phases)
    http = [phases[k] for k in ("c", "d1", "d10")]
    steal = max(p.machine.get("steal_pct", 0.0) for p in http)
    other = statistics.mean(p.other_cores() or 0.0 for p in http)
    spread = max(baseline_spread(phases).values())
    return [
        r["c/a"],
        r["d1/b"],
        r["d10/b"],
        *(phases[k].rate for k in ("a", "b", "c", "d1", "d10")),
        *(phases[k].daemon_us_per_job() or 0.0 for k in ("c", "d1", "d10")),
        steal,
        other,
        100 * spread,
    ]


def _summary_line(name: str, v: list[float]) -> str:
    return (
        f"{name:>6} {v[0]:>6.3f} {v[1]:>6.3f} {v[2]:>6.3f} {v[3]:>7.0f} {v[4]:>7.0f} "
        f"{v[5]:>7.0f} {v[6]:>7.0f} {v[7]:>7.0f} {v[8]:>5.0f} {v[9]:>5.0f} {v[10]:>6.0f} "
        f"{v[11]:>5.1f} {v[12]:>5.2f} {v[13]:>9.1f}%"
    )


def median_json(runs: list[dict[str, Phase]]) -> dict[str, float]:
    return {
        name: statistics.median(ratios(phases)[name] for phases in runs)
        for name in ("c/a", "d1/b", "d10/b")
    }
