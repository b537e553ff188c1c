"""Where a trace's slowest pops spent their time (bench/traces.py): a timeline per pop.

For each of a run's slowest pops, in ms from the moment the pop was sent: when the start of
the kernel it got was requested at the simulator, when the simulator had it ready, when jkp
asked the set-up comm its probe (warm-up done) and logged it pooled, when the pop's set-up
reached the simulator, and when the answer came back; with jkp's own Server-Timing steps.
A pop that waited gets the kernel pooled next in line, not necessarily one started for it.
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path

SLOWEST = 5
_POOLED_LINE = re.compile(
    r"\[I (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) [^\]]*\] Kernel (\S+) is ready and pooled"
)


def pooled_in_jkp(logs: list[Path]) -> dict[str, float]:
    """Epoch seconds at which a replica logged each kernel pooled, from its log (local time,
    to the ms)."""
    pooled = {}
    for path in logs:
        for when, kernel_id in _POOLED_LINE.findall(path.read_text(errors="replace")):
            pooled[kernel_id] = datetime.strptime(when, "%Y-%m-%d %H:%M:%S.%f").timestamp()
    return pooled


def server_timing(header: str | None) -> dict[str, float]:
    """ms by step, from a Server-Timing header ('claim;dur=1.20, set_up;dur=3.40')."""
    steps = {}
    for part in (header or "").split(","):
        name, _, dur = part.strip().partition(";dur=")
        if dur:
            steps[name] = float(dur)
    return steps


def slowest_timelines(pops: list[dict], lives: list[dict], logs: list[Path],
                      n: int = SLOWEST) -> list[dict]:  # fmt: skip
    """Timelines of the ``n`` slowest pops served, slowest first, in ms from each one's send."""
    by_id = {life["id"]: life for life in lives}
    pooled = pooled_in_jkp(logs)
    served = sorted((p for p in pops if p["code"] == 200), key=lambda p: -p["seconds"])
    out = []
    for pop in served[:n]:
        life = by_id.get(pop["kernel_id"], {})

        def at(t: float | None, sent: float = pop["sent"]) -> float | None:
            return None if t is None else round(1000 * (t - sent), 1)

        out.append({
            "i": pop["i"],
            "replica": pop["i"] % 2,
            "start_requested": at(life.get("requested")),
            "sim_ready": at(life.get("ready")),
            "probe_at_sim": at(life.get("pooled")),
            "pooled_in_jkp": at(pooled.get(pop["kernel_id"])),
            "set_up_at_sim": at(life.get("handed_out")),
            "answered": at(pop["sent"] + pop["seconds"]),
            "server_timing": server_timing(pop.get("server_timing")),
        })  # fmt: skip
    return out


def timeline_lines(name: str, timelines: list[dict]) -> list[str]:
    """A markdown table of one run's slowest pops."""
    lines = [
        f"Slowest pops of {name}, ms from the pop's send (start requested at the simulator, "
        "ready there, probe there, pooled in jkp's log, set-up there, answered; jkp's steps):",
        "",
        "| pop | requested | ready | probe | pooled | set-up | answered | Server-Timing |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for t in timelines:
        steps = ", ".join(f"{k} {v:.0f}" for k, v in t["server_timing"].items())
        cells = [t[k] for k in ("start_requested", "sim_ready", "probe_at_sim", "pooled_in_jkp",
                                "set_up_at_sim", "answered")]  # fmt: skip
        lines.append(f"| {t['i']} | " + " | ".join("-" if c is None else f"{c:.0f}" for c in cells)
                     + f" | {steps} |")  # fmt: skip
    return lines
