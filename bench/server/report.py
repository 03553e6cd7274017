"""Tables, ours/peer ratios and the targets of issues 4 and 10 (reported, never asserted)."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from typing import Any

# (peer, protocol both sides are measured on)
PEERS = (("kserve", "v1"), ("mlserver", "v2"))
PEER_LABEL = {"kserve": "KServe", "mlserver": "MLServer"}


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], left: int = 4) -> str:
    """Plain-text table; the first `left` columns are names (left-aligned), the rest numbers."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]

    def line(cells: Sequence[str]) -> str:
        parts = [
            cell.ljust(w) if i < left else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    out = [line(headers), "  ".join("-" * w for w in widths)]
    out.extend(line(r) for r in rows)
    return "\n".join(out)


Cell = Callable[[dict[str, Any]], str]


def columns_table(items: Sequence[dict[str, Any]], columns: dict[str, Cell], left: int = 4) -> str:
    """`table` with a row per item; `columns` maps each header to how its cell is made."""
    rows = [[cell(item) for cell in columns.values()] for item in items]
    return table(list(columns), rows, left)


def fmt(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def fmt_ratio(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}x"


KEY = ("model", "scenario", "server", "protocol")
SUMMED = ("requests", "errors", "errors_status", "errors_socket")


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per model, scenario, server and protocol: the median of its rounds.

    Each number is the median on its own (so p99 and req/s may come from different
    rounds); error counts are added up. With one round, the row is that run.
    """
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault(tuple(run[k] for k in KEY), []).append(run)
    out = []
    for members in groups.values():
        row: dict[str, Any] = {k: members[0][k] for k in KEY}
        row["rounds"] = len(members)
        for name in members[0]:
            if name in KEY or name in ("round", "invalid"):
                continue
            values = [m[name] for m in members if isinstance(m.get(name), int | float)]
            if not values:
                row[name] = None
                continue
            row[name] = sum(values) if name in SUMMED else statistics.median(values)
        if any("invalid" in m for m in members):
            row["invalid"] = members[0].get("invalid", "invalid")
        out.append(row)
    model_order = {m: i for i, m in enumerate(dict.fromkeys(r["model"] for r in out))}
    scenario_order = {s: i for i, s in enumerate(dict.fromkeys(r["scenario"] for r in out))}
    server_order = {"ours": 0, "kserve": 1, "mlserver": 2}
    out.sort(
        key=lambda r: (
            model_order[r["model"]],
            scenario_order[r["scenario"]],
            server_order.get(r["server"], 9),
            r["protocol"],
        )
    )
    return out


def find(runs: list[dict[str, Any]], **match: Any) -> dict[str, Any] | None:
    for run in runs:
        if all(run.get(k) == v for k, v in match.items()):
            return run
    return None


def _div(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def ratios(
    runs: list[dict[str, Any]], models: list[str], scenarios: list[str]
) -> list[dict[str, Any]]:
    """ours/peer per model and scenario, each side on the peer's protocol."""
    out = []
    for model in models:
        for scenario in scenarios:
            for peer, protocol in PEERS:
                ours = find(runs, server="ours", protocol=protocol, model=model, scenario=scenario)
                theirs = find(runs, server=peer, protocol=protocol, model=model, scenario=scenario)
                if ours is None or theirs is None:
                    continue
                out.append(
                    {
                        "model": model,
                        "scenario": scenario,
                        "peer": peer,
                        "protocol": protocol,
                        "rps": _div(ours["rps"], theirs["rps"]),
                        "p50": _div(ours["p50_ms"], theirs["p50_ms"]),
                        "p99": _div(ours["p99_ms"], theirs["p99_ms"]),
                        "per_core": _div(ours.get("rps_per_core"), theirs.get("rps_per_core")),
                    }
                )
    return out


def runs_table(runs: list[dict[str, Any]]) -> str:
    return columns_table(
        runs,
        {
            "model": lambda r: r["model"],
            "scenario": lambda r: r["scenario"],
            "server": lambda r: r["server"],
            "proto": lambda r: r["protocol"],
            "req/s": lambda r: fmt(r["rps"], 0),
            "p50 ms": lambda r: fmt(r["p50_ms"], 2),
            "p99 ms": lambda r: fmt(r["p99_ms"], 2),
            "errors": lambda r: str(r["errors"]) + (" (invalid)" if "invalid" in r else ""),
            "srv cores": lambda r: fmt(r["server_cpu_cores"], 2),
            "req/core-s": lambda r: fmt(r.get("rps_per_core"), 0),
            "other cores": lambda r: fmt(r["other_cpu_cores"], 2),
        },
    )


def ratios_table(rows_in: list[dict[str, Any]]) -> str:
    return columns_table(
        rows_in,
        {
            "model": lambda r: r["model"],
            "scenario": lambda r: r["scenario"],
            "vs": lambda r: PEER_LABEL[r["peer"]],
            "proto": lambda r: r["protocol"],
            "req/s ratio": lambda r: fmt_ratio(r["rps"]),
            "p50 ratio": lambda r: fmt_ratio(r["p50"]),
            "p99 ratio": lambda r: fmt_ratio(r["p99"]),
            "per-core ratio": lambda r: fmt_ratio(r.get("per_core")),
        },
    )


def servers_table(servers: list[dict[str, Any]]) -> str:
    return columns_table(
        servers,
        {
            "model": lambda s: s["model"],
            "server": lambda s: s["server"],
            "cold start s": lambda s: fmt(s.get("cold_start_s"), 2),
            "RSS ready MB": lambda s: fmt(s.get("rss_ready_mb"), 0),
            "RSS peak MB": lambda s: fmt(s.get("rss_peak_mb"), 0),
            "PSS after MB": lambda s: fmt(s.get("pss_after_mb"), 0),
            "procs": lambda s: str(s.get("processes", "-")),
            "status": lambda s: s.get("status", "-"),
        },
        left=2,
    )


def targets(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Issue 4's and issue 10's goals against KServe (V1 on both sides). Reported, not asserted."""
    goals = [
        ("pipeline", "single-c64", "rps", ">=", 8.0, "throughput >= 8x KServe"),
        ("forest", "single-c64", "rps", ">=", 20.0, "throughput >= 20x KServe"),
        ("pipeline", "single-c64", "p99_ms", "<=", 0.25, "p99 <= 1/4 of KServe"),
        ("forest", "single-c64", "p99_ms", "<=", 0.25, "p99 <= 1/4 of KServe"),
        ("pipeline", "single-c1", "p50_ms", "<=", 1.0, "p50 no worse than KServe"),
        ("forest", "single-c1", "p50_ms", "<=", 1.0, "p50 no worse than KServe"),
        # issue 10: the large-request weak spot, while single rows keep their lead
        ("pipeline", "batch64-c8", "rps", ">=", 8.0, "throughput >= 8x KServe"),
        ("pipeline", "batch64-c8", "p99_ms", "<=", 0.25, "p99 <= 1/4 of KServe"),
        ("pipeline", "single-c64", "rps", ">=", 15.0, "throughput >= 15x KServe"),
        ("forest", "single-c64", "rps", ">=", 100.0, "throughput >= 100x KServe"),
    ]
    out = []
    for model, scenario, metric, op, bound, text in goals:
        ours = find(runs, server="ours", protocol="v1", model=model, scenario=scenario)
        theirs = find(runs, server="kserve", protocol="v1", model=model, scenario=scenario)
        ratio = _div(ours[metric], theirs[metric]) if ours and theirs else None
        met = None if ratio is None else (ratio >= bound if op == ">=" else ratio <= bound)
        out.append(
            {
                "model": model,
                "scenario": scenario,
                "goal": text,
                "metric": metric,
                "ratio": ratio,
                "bound": bound,
                "met": met,
            }
        )
    return out


def targets_table(rows_in: list[dict[str, Any]]) -> str:
    return columns_table(
        rows_in,
        {
            "model": lambda r: r["model"],
            "scenario": lambda r: r["scenario"],
            "goal": lambda r: r["goal"],
            "ours/KServe": lambda r: fmt_ratio(r["ratio"]),
            "result": lambda r: "n/a" if r["met"] is None else ("met" if r["met"] else "MISSED"),
        },
        left=3,
    )


def attack_line(r: dict[str, Any]) -> str:
    """What the attackers of one run saw, in one line."""
    return (
        f"attack: slow headers {r['atk_slow_headers_opened']} opened / "
        f"{r['atk_slow_headers_closed']} closed by the server; non-readers "
        f"{r['atk_non_readers_requests']} requests ({r['atk_non_readers_mb_sent']} MB) on "
        f"{r['atk_non_readers_opened']} connections, {r['atk_non_readers_closed']} closed; giant "
        f"bodies {r['atk_giant_bodies_opened']} opened, {r['atk_giant_bodies_mb_sent']} MB sent, "
        f"{r['atk_giant_bodies_closed']} closed{_statuses(r.get('attack'))}; server RSS "
        f"{fmt(r['rss_before_attack_mb'], 0)} -> peak {fmt(r['rss_peak_attack_mb'], 0)} MB; "
        f"ready after: {'yes' if r['ready_after_attack'] else 'NO'}"
    )


def _statuses(attack: dict[str, Any] | None) -> str:
    """The status codes the attackers were answered with, e.g. ` (answers: 413 x2)`."""
    if not attack:
        return ""
    seen: dict[str, int] = {}
    for stats in attack["kinds"].values():
        for code, count in stats["statuses"].items():
            seen[code] = seen.get(code, 0) + count
    if not seen:
        return ""
    return " (answers: " + ", ".join(f"{c} x{n}" for c, n in sorted(seen.items())) + ")"


def attack_rows(summary: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per model, server and protocol of an attack scenario: its run without the
    attackers ("<name> off") next to its run with them ("<name> on")."""
    out = []
    for on in summary:
        scenario = on["scenario"]
        if not scenario.endswith(" on"):
            continue
        base = scenario[: -len(" on")]
        off = find(
            summary,
            scenario=base + " off",
            server=on["server"],
            protocol=on["protocol"],
            model=on["model"],
        )
        if off is None:
            continue
        out.append({"scenario": base, "off": off, "on": on, **{k: on[k] for k in KEY[:1]}})
    return out


def attack_table(rows_in: list[dict[str, Any]]) -> str:
    return columns_table(
        rows_in,
        {
            "model": lambda r: r["model"],
            "server": lambda r: r["on"]["server"],
            "proto": lambda r: r["on"]["protocol"],
            "req/s calm": lambda r: fmt(r["off"]["rps"], 0),
            "req/s attacked": lambda r: fmt(r["on"]["rps"], 0),
            "kept": lambda r: fmt_ratio(_div(r["on"]["rps"], r["off"]["rps"])),
            "p99 ms calm": lambda r: fmt(r["off"]["p99_ms"], 2),
            "p99 ms attacked": lambda r: fmt(r["on"]["p99_ms"], 2),
            # Good answers per CPU-second of the server (which also works for the attackers):
            # steadier than req/s when other work on the machine comes and goes.
            "req/core-s calm": lambda r: fmt(r["off"].get("rps_per_core"), 0),
            "req/core-s attacked": lambda r: fmt(r["on"].get("rps_per_core"), 0),
            "other cores": lambda r: (
                f"{fmt(r['off']['other_cpu_cores'], 2)}/{fmt(r['on']['other_cpu_cores'], 2)}"
            ),
            "errors attacked": lambda r: str(r["on"]["errors"]),
            "RSS peak MB": lambda r: fmt(r["on"].get("rss_peak_attack_mb"), 0),
            "atk closed": lambda r: "{}/{}/{}".format(
                *(
                    fmt(r["on"].get(f"atk_{kind}_closed"), 0)
                    for kind in ("slow_headers", "non_readers", "giant_bodies")
                )
            ),
            "ready after": lambda r: "yes" if r["on"].get("ready_after_attack") else "NO",
        },
        left=3,
    )
