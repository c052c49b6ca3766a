"""The scale run's table: one block per node count, device-plugin and DRA side by side with the
DRA / device-plugin ratio, as Markdown (stdout and docs/benchmarks.md alike)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .publishers import DEFAULT_NODE_CARDS, NODE_CARDS

Json = dict[str, Any]
PROCS = ("kube-apiserver", "etcd", "kube-scheduler", "kube-controller-manager", "kwok", "bench")
CONTROL_PLANE = PROCS[:4]
IDLE = "before the first job"
CPUS = 2  # the machine's; the ceiling below is what they could bind if the control plane had them


def cp_ms_per_pod(r: Json, phase: str, key: str = "cpu_ms_per_bound_pod") -> float | None:
    """Control-plane CPU per pod bound (kwok and the bench left out: they stand in for
    kubelets and users)."""
    per = _get(r, key, phase)
    if not per or any(p not in per for p in CONTROL_PLANE):
        return None
    return round(float(sum(per[p] for p in CONTROL_PLANE)), 1)


def ceiling(r: Json, phase: str) -> float | None:
    """Pods/s the control plane could bind on CPUS CPUs of its own at its marginal CPU per
    pod (the idle background taken off): an upper bound that the shared machine's other
    work does not move, unlike pods/s. Only where no client rate limit sets the pace."""
    if r.get("client_qps") is None:
        return None
    ms = cp_ms_per_pod(r, phase, "cpu_ms_per_bound_pod_marginal")
    return round(CPUS * 1000 / ms, 1) if ms else None


def _get(r: Json, *path: str) -> Any:
    for p in path:
        if not isinstance(r, dict) or p not in r:
            return None
        r = r[p]
    return r


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)


def _ratio(a: Any, b: Any) -> str:
    if isinstance(a, int | float) and isinstance(b, int | float) and a:
        return f"{b / a:.2f}x"
    return ""


def qps_label(q: float | None) -> str:
    return "defaults" if q is None else f"QPS {q:g}"


def one_line(r: Json) -> str:
    first: Json = next(iter(r["phases"].values()), {})
    return (f"  {r['nodes']} nodes, client {qps_label(r.get('client_qps'))}, {r['mode']}: "
            f"{first.get('throughput_pods_per_s')} pods/s "
            f"bound in the first fill ({first.get('created_pods_per_s')} created/s), "
            f"p99 creation->bound {_fmt(_get(first, 'create_to_bound_s', 'p99'))} s; "
            f"{r['seconds']} s")


def _at(*path: str) -> Callable[[Json], Any]:
    return lambda r: _get(r, *path)


def _with(count: tuple[str, ...], share: tuple[str, ...]) -> Callable[[Json], Any]:
    """`count (share)` in one cell."""
    return lambda r: f"{_fmt(_get(r, *count))} ({_fmt(_get(r, *share))})"


def _rows(first: str, loads: list[str]) -> list[tuple[str, Callable[[Json], Any]]]:
    f = ("phases", first)
    rows: list[tuple[str, Callable[[Json], Any]]] = [
        ("nodes Ready after create, s", _at("nodes_ready_s")),
        (f"throughput, {first}, pods/s", _at(*f, "throughput_pods_per_s")),
        (f"  bench created, {first}, pods/s", _at(*f, "created_pods_per_s")),
        (f"  drain after the last create, {first}, pods/s (jobs)",
         _with((*f, "drain_pods_per_s"), (*f, "drain_pods"))),
        (f"  control-plane CPU per pod bound, {first}, ms", lambda r: cp_ms_per_pod(r, first)),
        (f"  of which above the idle background, {first}, ms",
         lambda r: cp_ms_per_pod(r, first, "cpu_ms_per_bound_pod_marginal")),
        (f"  ceiling on {CPUS} CPUs of its own, {first}, pods/s", lambda r: ceiling(r, first)),
        (f"  creation->bound p50, {first}, s", _at(*f, "create_to_bound_s", "p50")),
        (f"  creation->bound p99, {first}, s", _at(*f, "create_to_bound_s", "p99")),
    ]
    for ph in loads:
        p = ("phases", ph)
        rows += [
            (f"{ph}: creation->bound p50, s", _at(*p, "create_to_bound_s", "p50")),
            (f"{ph}: creation->bound p99, s", _at(*p, "create_to_bound_s", "p99")),
            *[(f"{ph}: creation->bound p50 (p99), {k}-SoC jobs, s",
               _with((*p, f"create_to_bound_{k}soc_s", "p50"),
                     (*p, f"create_to_bound_{k}soc_s", "p99"))) for k in (1, 2, 4)],
            (f"{ph}: jobs (of which waited, %)", _with((*p, "jobs"), (*p, "waited_pct"))),
            (f"{ph}: waited jobs, creation->bound p50, s",
             _at(*p, "waited_create_to_bound_s", "p50")),
            (f"{ph}: never bound (p50 wait so far, s)",
             _with((*p, "never_bound"), (*p, "never_bound_waited_s", "p50"))),
            (f"{ph}: 4-SoC jobs waited, %", _at(*p, "waited_4soc_pct")),
            (f"{ph}: 4-SoC on one card, %", _at(*p, "one_card_4soc_pct")),
            (f"{ph}: 4-SoC on one card when some card had room, %",
             _at(*p, "one_card_4soc_when_a_card_had_room_pct")),
            (f"{ph}: 2-SoC on one card, %", _at(*p, "one_card_2soc_pct")),
            (f"{ph}: 4-SoC waits while a card had room (bench's view)",
             _at(*p, "waited_4soc_while_a_card_had_room")),
        ]
    sl = "slices"
    rows += [
        ("DRA devices (counter sets) per node", _with(("dra_devices", "devices_per_node"),
                                                      ("dra_devices", "counter_sets_per_node"))),
        ("DRA 4-SoC claim", _at("dra_devices", "four_soc")),
        ("slice writes per node, start", _at(sl, "start", "writes_per_node")),
        ("slice writes per node, idle resync", _at(sl, "idle", "writes_per_node")),
        ("slice writes per node, idle after jobs", _at(sl, "idle_after_jobs", "writes_per_node")),
        ("slice writes (lists) per node per idle hour",
         _with((sl, "idle_hour", "writes_per_node"), (sl, "idle_hour", "reads_per_node"))),
        ("slice writes per node, one SoC fails (most on a node)",
         _with((sl, "health_change", "writes_per_node"),
               (sl, "health_change", "writes_per_node_max"))),
        ("slice writes per node, the SoC recovers (most on a node)",
         _with((sl, "health_back", "writes_per_node"),
               (sl, "health_back", "writes_per_node_max"))),
        ("kubelet restart on every node: slices per node wiped",
         _at(sl, "kubelet_restart_all", "slices_per_node")),
        ("  drivers' writes per node, mean (most on a node)",
         _with((sl, "kubelet_restart_all", "writes_per_node_mean"),
               (sl, "kubelet_restart_all", "writes_per_node_max"))),
        ("  API writes per node (the kubelet's delete + the driver's)",
         _at(sl, "kubelet_restart_all", "api_writes_per_node")),
        ("  every node's slices back after, s", _at(sl, "kubelet_restart_all", "all_back_s")),
        ("  slice writes per node, idle resync after it",
         _at(sl, "after_restart_idle", "writes_per_node")),
    ]
    rows += [(f"CPU {proc}, {first}, ms per pod bound", _at("cpu_ms_per_bound_pod", first, proc))
             for proc in PROCS]
    rows += [(f"CPU {proc}, {first}, cores", _at("cpu_cores", first, proc))
             for proc in (*PROCS, "others")]
    rows += [(f"CPU {proc}, idle {IDLE}, cores", _at("cpu_cores", "idle", proc))
             for proc in CONTROL_PLANE]
    rows.append((f"load average at the end of {first}", _at("load_average", first)))
    rows += [(f"RSS {proc} at end, MB", _at("rss_mb", proc)) for proc in PROCS[:4]]
    return rows


def table(result: Json) -> str:
    by_n: dict[tuple[int, str], dict[str, Json]] = {}
    for r in result["runs"]:
        by_n.setdefault((r["nodes"], qps_label(r.get("client_qps"))), {})[r["mode"]] = r
    out = ["| nodes, client rate | figure | device-plugin | DRA | DRA / device-plugin |",
           "|---|---|---|---|---|"]
    for (nodes, qps), modes in by_n.items():
        n = f"{nodes}, {qps}"
        dp, dra = modes.get("device-plugin", {}), modes.get("dra", {})
        phases = list((dra or dp).get("phases", {}))
        if not phases:
            continue
        first = phases[0]
        for label, get in _rows(first, [p for p in phases if p.startswith("churn")]):
            a, b = (get(dp) if dp else None), (get(dra) if dra else None)
            if a is None and b is None:
                continue
            out.append(f"| {n} | {label} | {_fmt(a)} | {_fmt(b)} | {_ratio(a, b)} |")
    return "\n".join(out)


def profile(result: Json, top: int = 10) -> str:
    """Per run, the API requests per bound pod in the first fill, largest first: where the
    control plane's work per pod goes (the profile behind a throughput miss)."""
    lines = ["API requests per bound pod in the first fill (apiserver_request_total):"]
    for r in result["runs"]:
        first = next(iter(r.get("api_requests_per_bound_pod", {})), None)
        if first is None:
            continue
        per = r["api_requests_per_bound_pod"][first]
        total = sum(per.values())
        items = sorted(per.items(), key=lambda kv: -kv[1])[:top]
        lines.append(f"  {r['nodes']} nodes, {qps_label(r.get('client_qps'))}, {r['mode']}: "
                     f"{total:.1f} in all; " + ", ".join(f"{k} {v:g}" for k, v in items))
    return "\n".join(lines)


def profile_tops(result: Json, lines: int = 12) -> str:
    """The heaviest functions of each CPU profile taken (`--profile`)."""
    out = []
    for r in result["runs"]:
        for proc, top in (r.get("profiles") or {}).items():
            body = top[:lines + 1]
            out.append(f"{proc}, {r['nodes']} nodes, {qps_label(r.get('client_qps'))}, "
                       f"{r['mode']}, first fill:\n  " + "\n  ".join(body))
    return "\n".join(out)


def _pair(dp: Json, dra: Json, get: Callable[[Json], Any], ratio: bool = True) -> str:
    a, b = get(dp), get(dra)
    cell = f"{_fmt(a)} / {_fmt(b)}"
    return f"{cell} ({_ratio(a, b)})" if ratio and _ratio(a, b) else cell


def _c2b(r: Json, ph: str) -> str:
    return (f"{_fmt(_get(r, 'phases', ph, 'create_to_bound_s', 'p50'))} / "
            f"{_fmt(_get(r, 'phases', ph, 'create_to_bound_s', 'p99'))}")


def _rss(r: Json) -> str:
    return " / ".join(_fmt(_get(r, "rss_mb", p)) for p in CONTROL_PLANE[:3])


def node_cards(result: Json) -> str:
    """What cards the run's fake nodes had (`--node-cards`; a run before the option: ultra)."""
    plan = _get(result, "meta", "plan") or {}
    return str(plan.get("node_cards") or DEFAULT_NODE_CARDS)


def headline(result: Json) -> str:
    """The few figures the targets speak to, one row per node count and client setting:
    device-plugin / DRA (DRA / device-plugin). A line above the table names the nodes' cards,
    and a row of a run on other nodes than four Ultra cards says so, so runs are told apart."""
    cards = node_cards(result)
    label = "" if cards == DEFAULT_NODE_CARDS else f", {cards} cards"
    rows = [f"Fake nodes: 16 SoCs each, {NODE_CARDS.get(cards, cards)} "
            f"(`--node-cards {cards}`).", "",
            "| nodes, client rate | pods/s, first fill | control-plane CPU per pod, ms | "
            "scheduler CPU per pod, ms | creation->bound p50 / p99 at 0.85, s | "
            "4-SoC on one card at 0.85, % | 4-SoC waited at 0.85, % | "
            "slice writes per node: start, idle, SoC fails, all kubelets restart | "
            "RSS apiserver / etcd / scheduler, MB |",
            "|---|---|---|---|---|---|---|---|---|"]
    by: dict[tuple[int, str], dict[str, Json]] = {}
    for r in result["runs"]:
        by.setdefault((r["nodes"], qps_label(r.get("client_qps"))), {})[r["mode"]] = r
    for (n, q), m in by.items():
        dp, dra = m.get("device-plugin", {}), m.get("dra", {})
        if not dp or not dra:
            continue
        first = next(iter(dp["phases"]))
        for r in (dp, dra):
            r["cp_ms"] = {first: cp_ms_per_pod(r, first)}
        ph = "churn-0.85" if "churn-0.85" in dp["phases"] else list(dp["phases"])[-1]
        rows.append(
            f"| {n}, {q}{label} "
            f"| {_pair(dp, dra, _at('phases', first, 'throughput_pods_per_s'))} "
            f"| {_pair(dp, dra, _at('cp_ms', first))} "
            f"| {_pair(dp, dra, _at('cpu_ms_per_bound_pod', first, 'kube-scheduler'))} "
            f"| {_c2b(dp, ph)} ; {_c2b(dra, ph)} "
            f"| {_pair(dp, dra, _at('phases', ph, 'one_card_4soc_pct'), False)} "
            f"| {_pair(dp, dra, _at('phases', ph, 'waited_4soc_pct'), False)} "
            f"| {_fmt(_get(dra, 'slices', 'start', 'writes_per_node'))}, "
            f"{_fmt(_get(dra, 'slices', 'idle', 'writes_per_node'))}, "
            f"{_fmt(_get(dra, 'slices', 'health_change', 'writes_per_node'))}, "
            f"{_fmt(_get(dra, 'slices', 'kubelet_restart_all', 'writes_per_node_mean'))} "
            f"| {_rss(dp)} ; {_rss(dra)} |")
    return "\n".join(rows)
