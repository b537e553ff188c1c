"""The trace replay's report (bench/traces.py): its table, and the issue's checks on it."""

from __future__ import annotations

from trace_bound import best_pool, fixed_pool
from trace_shapes import BATCH_SIZE, REFILL_DELAY_S, REPLICAS, START_LATENCY_S
from trace_timeline import timeline_lines


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.0f}"


def checks(out: dict) -> list[tuple[str, str, str, str]]:
    """The issue's "Done when" rows for the trace replay: (check, value, target, result)."""
    traces = out["traces"]
    if not out["adaptive_available"]:
        why = "not run: jkp has no PoolManager.min_pending_kernels"
        return [(name, "-", "-", why) for name in ("day", "batches", "classroom")]

    def result(ok: bool) -> str:
        return "PASS" if ok else "FAIL"

    def split(name: str) -> tuple[dict, list[dict]]:
        results = traces[name]["results"]
        return ([r for r in results if r["pool"].startswith("adaptive")][0],
                [r for r in results if r["pool"].startswith("fixed")])  # fmt: skip

    rows = []
    if "day" in traces:
        ad, fixed = split("day")
        reaching = [r for r in fixed if r["warm"] >= 0.99]
        if reaching:
            ref = min(reaching, key=lambda r: int(r["pool"].split()[1]))
            share = ad["idle_kernel_hours"] / ref["idle_kernel_hours"]
            value = f"{pct(ad['warm'])} warm, idle {share:.0%} of {ref['pool']}'s"
            ok = ad["warm"] >= 0.99 and share <= 0.5
        else:
            value, ok = f"{pct(ad['warm'])} warm; no fixed pool reached 99%", False
        rows.append(("day: adaptive warm, idle cost vs the smallest fixed pool at 99%",
                     value, "≥ 99%, ≤ 50%", result(ok)))  # fmt: skip
        if reaching and not out["quick"]:
            replacement = START_LATENCY_S + REFILL_DELAY_S
            warm, hours = best_pool(replacement, 0.99)
            share = hours / ref["idle_kernel_hours"]
            # The same model's smallest fixed pool at 99% (it has no jkp overhead).
            size = next(n for n in range(1, 64) if fixed_pool(n, replacement)[0] >= 0.99)
            model_warm, model_hours = fixed_pool(size, replacement)
            rows.append(("day, for scale: the cheapest pool told the true rate (model, "
                         "trace_bound.py)", f"{pct(warm)} warm, idle {hours:.1f} kernel-h = "
                         f"{share:.0%} of {ref['pool']}'s; in the model fixed {size} is "
                         f"{pct(model_warm)} warm, and this {hours / model_hours:.0%} of it",
                         "-", "bound"))  # fmt: skip
    if "batches" in traces:
        ad, fixed = split("batches")
        ref = [r for r in fixed if r["pool"] == f"fixed {BATCH_SIZE}"]
        warm = ad.get("warm_after_first_batch", 0.0)
        if ref:
            share = ad["idle_kernel_hours"] / ref[0]["idle_kernel_hours"]
            value, ok = f"{pct(warm)} warm, idle {share:.0%} of fixed {BATCH_SIZE}'s", \
                warm >= 0.95 and share <= 1.1  # fmt: skip
        else:
            value, ok = f"{pct(warm)} warm; no fixed {BATCH_SIZE} run", False
        rows.append(("batches: adaptive warm after the first batch, idle cost vs fixed "
                     f"{BATCH_SIZE}", value, "≥ 95%, ≤ 110%", result(ok)))  # fmt: skip
    if "classroom" in traces:
        ad, _ = split("classroom")
        limit = 1000 * (START_LATENCY_S + 1) / traces["classroom"]["time_scale"]
        value = f"{ad['refused']} refused, max {ms(ad['max_ms'])} ms"
        ok = ad["refused"] == 0 and ad["max_ms"] is not None and ad["max_ms"] <= limit
        rows.append(("classroom: adaptive refused, longest time to kernel", value,
                     f"0, ≤ {limit:.0f} ms (start + 1 s)", result(ok)))  # fmt: skip
    return rows


def refused(r: dict) -> str:
    """'0', or the count and why: '3 (503 Pool empty)'."""
    why = ", ".join(f"{n} {outcome}" if len(r["refused_by"]) > 1 else outcome
                    for outcome, n in r["refused_by"].items())  # fmt: skip
    return f"{r['refused']} ({why})" if why else str(r["refused"])


def report(out: dict) -> str:
    scales = ", ".join(
        f"{name} {t['time_scale']:g}x (a start {1000 * START_LATENCY_S / t['time_scale']:.0f} ms)"
        for name, t in out["traces"].items()
    )
    lines = [
        f"Trace replay: kernel start {START_LATENCY_S:g} s real, time compressed: {scales}; "
        f"{REPLICAS} jkp replicas per pool; jkp {out['jkp_git']}"
        + ("; QUICK run (short traces)" if out["quick"] else ""),
        "",
        "| trace | pool | pops | warm | p50 ms | p99 ms | max ms | idle kernel-h | "
        "peak kernels | refused |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    notes = []
    for name, trace in out["traces"].items():
        late = max(r["client_late_max_ms"] for r in trace["results"])
        notes.append(f"{name}: machine CPU busy {trace['results'][0]['machine_busy']:.0%}, "
                     f"pops sent late by up to {late:.0f} ms")  # fmt: skip
        for r in trace["results"]:
            warm = pct(r["warm"])
            if "warm_after_first_batch" in r:
                warm += f" ({pct(r['warm_after_first_batch'])} after the 1st)"
            lines.append(
                f"| {name} | {r['pool']} | {r['served']}/{r['pops']} | {warm} | {ms(r['p50_ms'])} "
                f"| {ms(r['p99_ms'])} | {ms(r['max_ms'])} | {r['idle_kernel_hours']:.1f} | "
                f"{r['peak_pool_kernels']} | {refused(r)} |"
            )
    lines += [
        "",
        "warm: share of all pops served without waiting (jkp_pop_waits_total). Times to kernel are "
        "compressed (a waiting pop waits about a compressed start) but jkp's own work in them "
        "is not. Idle kernel-h: real hours of kernels ready and not handed out, exact from "
        "the simulator. Peak kernels: the most the pool held at once (idle + starting).",
        "; ".join(notes),
    ]
    if "classroom" in out["traces"]:
        for r in out["traces"]["classroom"]["results"]:
            if r.get("slowest") and r["waited"] and not r["refused"]:
                lines += ["", *timeline_lines(f"classroom {r['pool']}", r["slowest"])]
    if not out["adaptive_available"]:
        lines.append("Adaptive pool skipped: this jkp has no PoolManager.min_pending_kernels.")
    lines += ["", "| check | value | target | result |", "|---|---|---|---|"]
    lines += [f"| {' | '.join(row)} |" for row in checks(out)]
    return "\n".join(lines)
