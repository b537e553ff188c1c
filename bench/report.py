"""The benchmark's report: a markdown table of figures vs targets, and notes on the run."""

from __future__ import annotations

from scale_rounds import SWEEP_LATENCY_MS


def checks(out: dict) -> list[tuple[str, str, str, str]]:
    """(figure, value, target, PASS/FAIL/—) rows; ratios are also stored in ``out``."""
    rows = []

    def row(figure, value, target="—", ok=None):
        rows.append((figure, value, target, "—" if ok is None else "PASS" if ok else "FAIL"))

    for key, r in out.get("rounds", {}).items():
        # A pop counts only with a 200, its own kernel, and the user's directory made.
        broken = r["failed"] or not r["distinct_ids"] or r["user_dirs_made"] != r["ok"]
        bad = f", {r['failed']} failed, dirs {r['user_dirs_made']}/{r['ok']}" if broken else ""
        ms = " / ".join(f"{r[k]:.1f}" for k in ("min_ms", "p50_ms", "p95_ms", "p99_ms", "max_ms"))
        c = r["concurrency"]
        name = f"c={c}" + (", refill at once" if r["refill_delay_s"] == 0 else "")
        row(f"pop {name} (n={r['pops']}) min / p50 / p95 / p99 / max", f"{ms} ms{bad}")
        row(f"pop {name}: mean inside jkp (claim to hand-over)", f"{r['jkp_mean_ms']:.1f} ms")
        if "jkp_s" in r["cpu"]:
            per_pop = 1000 * r["cpu"]["jkp_s"] / r["pops"]
            row(f"pop {name}: jkp CPU per pop (/proc schedstat)", f"{per_pop:.2f} ms")
        if key == "c1":
            row("pop p50, c=1", f"{r['p50_ms']:.1f} ms", "≤ 10 ms", r["p50_ms"] <= 10 and not bad)
            row("pop p99, c=1", f"{r['p99_ms']:.1f} ms", "≤ 30 ms", r["p99_ms"] <= 30 and not bad)
        if key == "c32":
            row(
                "pop p99, c=32", f"{r['p99_ms']:.1f} ms", "≤ 100 ms", r["p99_ms"] <= 100 and not bad
            )
            ok = r["pops_per_s"] >= 200 and not bad
            row("pops/s from a full pool, c=32", f"{r['pops_per_s']:.0f}/s", "≥ 200/s", ok)
        else:
            row(f"pops/s, {name}", f"{r['pops_per_s']:.0f}/s")
    if "cold_path" in out and "steady" in out:
        ratio = out["cold_path"]["p50_ms"] / out["steady"]["answered"]["p50_ms"]
        out["cold_vs_steady_pop_p50"] = ratio
        # No target: the cold path is timed on a quiet pool, the steady pops beside refills.
        row("cold path p50 / steady-state pop p50", f"{ratio:.1f}×")
    for key, kind in (
        ("steady", "pop"),
        ("steady_kept", "pop, connection kept"),
        ("steady_create", "warm create"),
        ("steady_create_kept", "warm create, connection kept"),
    ):
        if key not in out:
            continue
        s = out[key]
        answered, floor = s["answered"], s["floor"]
        row(
            f"steady state: {kind} (n={s['requests']}, Poisson arrivals, one every "
            f"{s['interval_s']} s on average, refills running; connection: {s['connection']}) "
            "p50 / p95",
            f"{answered['p50_ms']:.1f} / {answered['p95_ms']:.1f} ms "
            f"({s['kernels_started_meanwhile']} kernels started meanwhile, "
            f"≥ {s['least_idle_seen']} idle)",
        )
        row(f"steady state ({kind}): EG floor (kernel_info on an open websocket) p50 / p95; "
            "the same until the kernel's idle status, p50",
            f"{floor['p50_ms']:.1f} / {floor['p95_ms']:.1f} ms; "
            f"{s['floor_to_idle']['p50_ms']:.1f} ms")  # fmt: skip
        row(f"steady state: {kind} p50 / floor p50", f"{s['p50_vs_floor']:.2f}×", "≤ 1.5×",
            s["p50_vs_floor"] <= 1.5)  # fmt: skip
        row(f"steady state: {kind} p95 / floor p95", f"{s['p95_vs_floor']:.2f}×", "≤ 3×",
            s["p95_vs_floor"] <= 3)  # fmt: skip
        steps = ", ".join(f"{k} {v:.2f}" for k, v in s["step_p50_ms"].items())
        row(f"steady state: {kind} p50 per step inside jkp (Server-Timing, ms); around "
            "them in jkp (HTTP, checks); outside jkp (client, connection, waits for a CPU)",
            f"{steps}; around {s['around_steps_p50_ms']:.2f}; "
            f"outside {s['outside_jkp_p50_ms']:.2f}")  # fmt: skip
        row(f"steady state: {kind} set-up p50 / floor p50", f"{s['set_up_p50_vs_floor']:.2f}×")
        # No target: the part of a pop that is EG's and the kernel's, measured beside it.
        on_eg = s["set_up_straight_on_eg"]
        row(f"steady state ({kind}): the same set-up straight on EG, without jkp, p50 (/ floor "
            f"p50); jkp's set-up step / it; {kind} p50 minus it",
            f"{on_eg['p50_ms']:.1f} ms ({s['set_up_straight_on_eg_p50_vs_floor']:.2f}×); "
            f"{s['set_up_p50_vs_straight_on_eg']:.2f}×; "
            f"{s['p50_minus_straight_set_up_ms']:.2f} ms")  # fmt: skip
        if "least" in s:
            # No target: the floors of what a request passes through besides EG, same moments.
            row(f"steady state ({kind}): the hops it adds, p50: an HTTP POST to a bare tornado "
                "service (a JSON answer); a Redis script round trip (redis-py asyncio)",
                f"{s['http_floor']['p50_ms']:.2f} ms; "
                f"{s['redis_floor']['p50_ms']:.2f} ms")  # fmt: skip
            row(f"steady state ({kind}): the least it can take here (set-up straight on EG + "
                f"both hops, per sample) p50 (/ floor p50); {kind} p50 / it; minus it",
                f"{s['least']['p50_ms']:.1f} ms ({s['least_p50_vs_floor']:.2f}×); "
                f"{s['p50_vs_least']:.2f}×; {s['p50_minus_least_ms']:.2f} ms")  # fmt: skip
        # No target: what a pop would cost against a floor that, like it, ends at idle.
        row(f"steady state: {kind} p50 / floor-until-idle p50",
            f"{s['p50_vs_floor_to_idle']:.2f}×")  # fmt: skip
        row(f"steady state: jkp CPU per {kind}, its refill included",
            f"{s['jkp_cpu_ms_per_request']:.2f} ms")  # fmt: skip
        if "http_floor_cpu_ms_per_request" in s:
            row(f"steady state ({kind}): the bare tornado service's CPU per request",
                f"{s['http_floor_cpu_ms_per_request']:.2f} ms")  # fmt: skip
    if "gateway" in out:
        g = out["gateway"]
        warm, info, cold = g["warm_answered"], g["warm_first_kernel_info"], g["cold"]
        row(f"gateway: warm create through jkp (n={warm['n']}), answered p50 / p95",
            f"{warm['p50_ms']:.1f} / {warm['p95_ms']:.1f} ms")  # fmt: skip
        opened = g["warm_websocket_open"]
        row("gateway: warm create + websocket through jkp open p50 / p95",
            f"{opened['p50_ms']:.1f} / {opened['p95_ms']:.1f} ms")  # fmt: skip
        row("gateway: warm create + first kernel_info over jkp's websocket p50 / p95",
            f"{info['p50_ms']:.1f} / {info['p95_ms']:.1f} ms")  # fmt: skip
        row(f"gateway: cold create on EG until it answers and is set up (n={cold['n']}) "
            "p50 / p95", f"{cold['p50_ms']:.0f} / {cold['p95_ms']:.0f} ms")  # fmt: skip
        ratio = g["cold_vs_answered_p50"]
        row("gateway: cold p50 / warm create answered p50", f"{ratio:.1f}×", "≥ 20×",
            ratio >= 20)  # fmt: skip
        ratio = g["cold_vs_first_kernel_info_p50"]
        row("gateway: cold p50 / warm create + first kernel_info p50", f"{ratio:.1f}×", "≥ 20×",
            ratio >= 20)  # fmt: skip
        steps = ", ".join(f"{k} {v:.2f}" for k, v in g["step_mean_ms"].items())
        row("gateway: warm create, mean per step inside jkp (ms)", steps)
    if "websocket" in out:
        w = out["websocket"]
        direct, via = w["direct"], w["via_jkp"]
        row(f"websocket: kernel_info round trip straight to EG (n={direct['n']}) p50 / p95",
            f"{direct['p50_ms']:.2f} / {direct['p95_ms']:.2f} ms")  # fmt: skip
        row(f"websocket: the same through jkp's bridge (n={via['n']}) p50 / p95",
            f"{via['p50_ms']:.2f} / {via['p95_ms']:.2f} ms")  # fmt: skip
        ok = via["p50_ms"] <= 1.5 * direct["p50_ms"] + 1
        row("websocket: via jkp p50 / direct p50", f"{w['p50_vs_direct']:.2f}× "
            f"(+{w['p50_added_ms']:.2f} ms)", "≤ 1.5× direct + 1 ms", ok)  # fmt: skip
        added = via["p95_ms"] - direct["p95_ms"]
        row("websocket: via jkp p95 / direct p95", f"{w['p95_vs_direct']:.2f}× (+{added:.2f} ms)")
        direct, via = w["connect_direct"], w["connect_via_jkp"]
        row(f"websocket: opening one (n={direct['n']}), straight to EG / through jkp, p50 / p95",
            f"{direct['p50_ms']:.1f} / {direct['p95_ms']:.1f} ms; "
            f"{via['p50_ms']:.1f} / {via['p95_ms']:.1f} ms")  # fmt: skip
        direct, via = w["connect_first_info_direct"], w["connect_first_info_via_jkp"]
        row("websocket: opening one + its first kernel_info, straight to EG / through jkp, "
            "p50 / p95", f"{direct['p50_ms']:.1f} / {direct['p95_ms']:.1f} ms; "
            f"{via['p50_ms']:.1f} / {via['p95_ms']:.1f} ms")  # fmt: skip
    if "cold_path" in out:
        cold, c1 = out["cold_path"], out["rounds"]["c1"]
        ms = " / ".join(f"{cold[k]:.0f}" for k in ("min_ms", "p50_ms", "p95_ms"))
        row(f"cold path (n={cold['n']}) min / p50 / p95", f"{ms} ms")
        ratio = out["cold_vs_pop_p50"] = cold["p50_ms"] / c1["p50_ms"]
        row("cold p50 / pop p50 (c=1)", f"{ratio:.1f}×", "≥ 30×", ratio >= 30)
    s = out.get("scale")
    if s:
        pool, sw, lat = s["pool"], s["sweep"], s["sweep_latency_ms"]
        value = f"{s['fill_no_latency_s']:.1f} s ({s['fill_s']:.1f} s at {lat} ms latency)"
        row(f"sim: fill {pool} kernels, 50 starts at once", value)
        # "Bounded": at most the 50 concurrent starts jkp was given, far below the pool.
        ok = sw["duration_s"] <= 10 and sw["kernels"] == pool and sw["max_in_flight"] <= 50
        value = (
            f"{sw['duration_s']:.2f} s, {sw['kernels']} kernels, ≤ {sw['max_in_flight']} in flight"
        )
        row(f"sim: one activation sweep, {pool} pooled, {lat} ms latency", value,
            "≤ 10 s, all, ≤ 50 in flight", ok)  # fmt: skip
        value = f"{s['rss_mb']:.0f} MB (peak {s['peak_rss_mb']:.0f})"
        row(f"sim: jkp RSS, {pool} pooled", value, "≤ 150 MB", s["rss_mb"] <= 150)
        big, small = s["pop_c1_big"], s["pop_c1_small"]
        ratio = s["p50_big_vs_small"] = big["p50_ms"] / small["p50_ms"]
        value = f"{big['p50_ms']:.1f} / {small['p50_ms']:.1f} ms = {ratio:.2f}×"
        ok = ratio <= 1.5 and not (big["failed"] or small["failed"])
        row(f"sim: pop p50 c=1, {pool} vs 10 pooled", value, "≤ 1.5×", ok)
        one, three = s["replicas_1"], s["replicas_3"]
        ratio = s["replicas_3_vs_1"] = three["pops_per_s"] / one["pops_per_s"]
        value = f"{three['pops_per_s']:.0f} / {one['pops_per_s']:.0f} pops/s = {ratio:.2f}×"
        ok = ratio >= 2 and not (one["failed"] or three["failed"])
        row("sim: pops/s c=32, 3 replicas vs 1", value, "≥ 2×", ok)
    return rows


def report(out: dict) -> str:
    m = out["machine"]
    eg = m.get("enterprise_gateway") or {}
    quick = "; QUICK run (small N, not the defined figures)" if out["quick"] else ""
    busy = m.get("busy_before_start", 0)
    warning = [f"WARNING: {busy:.0%} of the CPUs were busy before the run began; that load "
               "skews every figure.", ""] if busy > 0.15 else []  # fmt: skip
    text = [
        f"machine: {m['nproc']} CPUs, {m['cpu']}; Python {m['python']}; "
        f"EG {eg.get('gateway_version', '?')} (jupyter_server {eg.get('version', '?')}); "
        f"jkp {m['jkp_git']}{quick}",
        "",
        *warning,
        "| figure | value | target | result |",
        "|---|---|---|---|",
        *(f"| {' | '.join(r)} |" for r in checks(out)),
        "",
        "Notes: each pop is timed in the client from send to full response (a new TCP connection "
        "per request, but in the steady rounds marked 'connection kept', which send every "
        "request on one connection kept open; the steady rounds use a minimal HTTP client; "
        "client, jkp, Redis, EG and the kernels share the same cores). The steady rounds' "
        "requests come as a Poisson process; each floor sample "
        "is taken at a uniformly random moment before one. jkp "
        "starts replacements refill_delay (default 1 s) after a burst's first pop; each round "
        "is shorter, so its pops do not compete with kernel starts (~0.4 s CPU each here). The "
        "'refill at once' round (refill_delay=0) shows what they cost when they do. "
        "With few samples p99 is close to the maximum. Gateway creates are timed like pops (a "
        "new connection each); a cold one until the kernel answers kernel_info and has entered "
        "its directory, what a warm create's answer already includes. Websocket round trips "
        "run on two websockets to one kernel open at once, so each sees the other's iopub "
        "traffic; TCP_QUICKACK is re-armed before every read on every client socket."
        + (
            " Scale (sim) figures come from bench/gateway_simulator.py, not EG: the activation "
            f"sweep from one that answers after {SWEEP_LATENCY_MS} ms (so the requests jkp keeps "
            "in flight show), the rest from one that answers at once."
            if "scale" in out
            else ""
        ),
    ]
    events = out.get("real_stack_events")
    if events:
        text.append(
            f"  real stack: {events['kernel_starts_failed']} kernel starts failed in jkp; EG "
            f"logged 'Address already in use' {events['eg_port_in_use']} times"
        )
    rounds = [(f"real {k}", r) for k, r in out.get("rounds", {}).items()]
    rounds += [(f"sim {k}", r) for k, r in out.get("scale", {}).items() if isinstance(r, dict)
               and "cpu" in r]  # fmt: skip
    for key, r in rounds:
        cpu = ", ".join(f"{k[:-2]} {v:.2f}" for k, v in r["cpu"].items() if k.endswith("_s"))
        pool = ""
        if "pool_after_round" in r:
            pool = f"; pool after: {r['pool_after_round']}, full again {r['refill_s']:.1f} s later"
        before = r["cpu"].get("machine_busy_1s_before")
        before = "" if before is None else f" ({before:.0%} in the 1 s before)"
        text.append(f"  {key}: machine CPU busy {r['cpu']['machine_busy']:.0%}{before}, "
                    f"CPU seconds: {cpu}{pool}")  # fmt: skip
    return "\n".join(text)
