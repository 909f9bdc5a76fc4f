"""The figures of bench/incident_create.py: what each run measured (`Run`), runs pooled by kind and target
(`Pooled`), the details printed after the runs, and the summary table: the figures of issue 10 against the bare
baseline and their targets, with the CPU, WAL and broker deliveries per create a capacity plan needs."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from benchlib.consumers import CONSUMERS, ConsumerFigures
from benchlib.cpu import INTERRUPTS, MACHINE, NOT_OURS, OTHER, POSTGRES, RABBITMQ, is_ours
from benchlib.figures import fmt_ratio, ms, percentile, ratio
from benchlib.machine import CPUS
from benchlib.table import Summary
from benchlib.wrk import WrkResult, wrk_version

# The targets of issue 10.
TARGET_CREATE_RATIO = 0.2
TARGET_CREATE_P99 = 0.150
TARGET_LAG_P99_SATURATED = 0.100
TARGET_LAG_P99_HALF = 0.025
TARGET_LIST_RATIO = 0.3
TARGET_LIST_P99 = 0.100
TARGET_INCIDENT_CPU_MS = 1.5

WRK = "wrk (load generator)"
LOAD_SIDE = {WRK, "outside subscriber", "bench (this process)"}  # ours, but not the system under test


@dataclass
class Run:
    kind: str  # create, list
    target: str  # gateway, direct, bare
    label: str
    wrk: WrkResult
    cpu: dict[str, float]  # CPU seconds per group over the run's window
    cores: str
    rate_asked: float = 0.0
    lags: list[float] = field(default_factory=list)
    created: int = 0  # incidents the run created (rows)
    consumers: dict[str, ConsumerFigures] = field(default_factory=dict)
    caught_up: float = math.nan  # seconds after the load until the subscriber and every consumer had all
    relay_caught_up: float = math.nan  # seconds after the load until the subscriber had every event
    wal_bytes: int | None = None  # PostgreSQL WAL written over the CPU window (the whole server's)
    delivered: int | None = None  # messages the broker delivered around that window (the whole node's)

    @property
    def completed(self) -> int:
        """Requests the server completed in the CPU window: for a create on the stack, the incidents it created
        (wrk does not count the up to `connections` requests still in flight when it stops, but their rows,
        events and consumers' work are in the window); otherwise wrk's successful responses."""
        return self.created or self.wrk.ok

    def line(self) -> str:
        w = self.wrk
        paced = f" (paced at {self.rate_asked:.0f}/s)" if self.rate_asked else ""
        return (
            f"  {self.label:<34} {w.rate:8.1f} req/s{paced}  p50 {ms(w.latency('p50')):>9}"
            f"  p99 {ms(w.latency('p99')):>9}  ok {w.ok:>6}  errors: {w.error_text()}"
        )


@dataclass
class Pooled:
    runs: list[Run]

    @property
    def ok(self) -> int:
        return sum(r.wrk.ok for r in self.runs)

    @property
    def rate(self) -> float:
        seconds = sum(r.wrk.seconds for r in self.runs)
        return self.ok / seconds if seconds else math.nan

    def worst(self, name: str) -> float:
        return max((r.wrk.latency(name) for r in self.runs), default=math.nan)

    @property
    def errors(self) -> int:
        return sum(r.wrk.errors for r in self.runs)

    def error_text(self) -> str:
        return "; ".join(r.wrk.error_text() for r in self.runs)

    @property
    def lags(self) -> list[float]:
        return [lag for r in self.runs for lag in r.lags]

    def cpu_ms(self, group: str) -> float:
        completed = sum(r.completed for r in self.runs)
        return 1000 * sum(r.cpu.get(group, 0.0) for r in self.runs) / completed if completed else math.nan

    def wal_bytes(self) -> float:
        """PostgreSQL WAL bytes per completed request, over the runs that read it."""
        runs = [r for r in self.runs if r.wal_bytes is not None]
        completed = sum(r.completed for r in runs)
        return sum(r.wal_bytes or 0 for r in runs) / completed if completed else math.nan

    def delivered(self) -> float:
        """Broker messages delivered per completed request, over the runs that read them."""
        runs = [r for r in self.runs if r.delivered is not None]
        completed = sum(r.completed for r in runs)
        return sum(r.delivered or 0 for r in runs) / completed if completed else math.nan

    def groups(self) -> list[str]:
        """Our groups, busiest first."""
        names = {g for run in self.runs for g in run.cpu if is_ours(g)}
        return sorted(names, key=self.cpu_ms, reverse=True)

    def others(self, top: int = 4) -> list[str]:
        names = {g for run in self.runs for g in run.cpu if g.startswith(OTHER)}
        return sorted(names, key=self.cpu_ms, reverse=True)[:top]


def report(
    runs: list[Run], args: Any, unread: dict[str, str], summary: Summary, *, rate_limit: int, max_inflight: int
) -> None:
    """Print the details of `runs` (made with the command line `args`; `unread`: what could not be read, and
    why), then fill in `summary`. `rate_limit` and `max_inflight`: the gateway's, as the stack ran."""

    def pooled(kind: str, target: str, paced: bool = False) -> Pooled:
        return Pooled([r for r in runs if r.kind == kind and r.target == target and bool(r.rate_asked) == paced])

    create_bare, create_gw, create_direct = (
        pooled("create", "bare"),
        pooled("create", "gateway"),
        pooled("create", "direct"),
    )
    list_bare, list_gw = pooled("list", "bare"), pooled("list", "gateway")
    half = pooled("create", "gateway", paced=True)

    print()
    print("== every run ==")
    for run in runs:
        print(run.line())
        print(f"  {'':<34} {run.cores} (load window)")
    print()
    print("== event lag, event time -> incident.created at the outside subscriber ==")
    for name, p in (
        ("saturated, gateway", create_gw),
        ("saturated, direct", create_direct),
        ("half rate, gateway", half),
    ):
        lags = p.lags
        created = sum(r.created for r in p.runs)
        print(
            f"  {name:<22} p50 {ms(percentile(lags, 50)):>9}  p99 {ms(percentile(lags, 99)):>9}"
            f"  max {ms(max(lags, default=math.nan)):>9}  events {len(lags)} of {created} incidents created"
        )
    print()
    print("== consumers during each create load and after it ==")
    print("   published: incident.created/s at the outside subscriber; consumed: events stored/s; ready: messages")
    print("   not yet delivered (passive declare); backlog: published minus stored; caught up: after the load")
    print("   (a consumer holds up to its prefetch unacknowledged: in the backlog, not in ready)")
    for run in runs:
        if not run.consumers:
            continue
        print(f"  {run.label}:")
        for name, c in run.consumers.items():
            print(
                f"    {name:<8} published {c.published_rate:7.1f}/s  consumed {c.consumed_rate:7.1f}/s"
                f"  ready max {c.ready_max} end {c.ready_end}  backlog {c.backlog_start:.0f} -> {c.backlog_end:.0f}"
                f" ({c.slope:+.1f}/s, {'GROWING' if c.growing else 'steady'})  caught up {ms(c.caught_up)}"
            )
            print(f"    {'':<8} backlog/ready every second, during the load | after: {c.series}")
    print()
    # The measured profiles, in the order both per-request tables below list them.
    profiles = (
        ("create gateway", create_gw),
        ("create direct", create_direct),
        ("create half rate", half),
        ("create bare", create_bare),
        ("list gateway", list_gw),
        ("list bare", list_bare),
    )
    print("== CPU ms per successful request (stack: load + catching up; bare: load) ==")
    for name, p in profiles:
        parts = [f"{g} {p.cpu_ms(g):.2f}" for g in p.groups() if p.cpu_ms(g) >= 0.005]
        others = [f"{g[len(OTHER) :]} {p.cpu_ms(g):.2f}" for g in p.others() if p.cpu_ms(g) >= 0.05]
        print(
            f"  {name:<17} "
            + ", ".join(parts)
            + f"; kernel interrupts {p.cpu_ms(INTERRUPTS):.2f}; not ours {p.cpu_ms(NOT_OURS):.2f}"
            + (f" ({', '.join(others)})" if others else "")
        )
    print()
    print("== PostgreSQL WAL and broker deliveries per successful request (the whole server's and node's) ==")
    for name, p in profiles:
        delivered = p.delivered()
        print(
            f"  {name:<17} WAL {p.wal_bytes():,.0f} bytes"
            + ("" if math.isnan(delivered) else f"; broker messages delivered {delivered:.2f}")
        )
    if unread:
        print()
        for what, error in unread.items():
            print(f"  note: could not read {what}: {error}")

    # -- the summary table -------------------------------------------------------------------------
    table(
        args,
        summary,
        create_bare,
        create_gw,
        create_direct,
        list_bare,
        list_gw,
        half,
        rate_limit=rate_limit,
        max_inflight=max_inflight,
    )


def table(
    args: Any,
    summary: Summary,
    create_bare: Pooled,
    create_gw: Pooled,
    create_direct: Pooled,
    list_bare: Pooled,
    list_gw: Pooled,
    half: Pooled,
    *,
    rate_limit: int,
    max_inflight: int,
) -> None:
    """The rows of the summary: the figures of issue 10, each with its baseline, ratio and target."""

    def lat(p: Pooled) -> str:
        return f"p50 {ms(p.worst('p50'))}, p99 {ms(p.worst('p99'))}"

    def times(value: float, baseline: float) -> str:
        """How many times the baseline's (for latencies and CPU, where more is worse)."""
        r = ratio(value, baseline)
        return "n/a" if math.isnan(r) else f"{r:.1f}x the bare"

    conn = args.connections
    r = ratio(create_gw.rate, create_bare.rate)
    summary.add(
        f"POST /api/v1/incidents via gateway, req/s ({conn} conn.)",
        f"{create_gw.rate:.1f}",
        f"{create_bare.rate:.1f}",
        fmt_ratio(r),
        f"≥ {TARGET_CREATE_RATIO}x",
        r >= TARGET_CREATE_RATIO,
    )
    p99 = create_gw.worst("p99")
    summary.add(
        "POST via gateway, latency",
        lat(create_gw),
        lat(create_bare),
        "p99 " + times(p99, create_bare.worst("p99")),
        f"p99 ≤ {ms(TARGET_CREATE_P99)}",
        p99 <= TARGET_CREATE_P99,
    )
    summary.add(
        "POST via gateway, errors (non-2xx + socket)",
        str(create_gw.errors),
        str(create_bare.errors),
        target="0",
        met=create_gw.errors == 0,
    )
    summary.add(
        "POST direct on the incident port, req/s",
        f"{create_direct.rate:.1f}",
        f"{create_bare.rate:.1f}",
        fmt_ratio(ratio(create_direct.rate, create_bare.rate)),
    )
    summary.add(
        "POST direct, latency; errors",
        f"{lat(create_direct)}; errors {create_direct.errors}",
        f"{lat(create_bare)}; errors {create_bare.errors}",
        "p99 " + times(create_direct.worst("p99"), create_bare.worst("p99")),
    )
    lag99 = percentile(create_gw.lags, 99)
    summary.add(
        "event lag while saturated (via gateway): event time → subscriber",
        f"p50 {ms(percentile(create_gw.lags, 50))}, p99 {ms(lag99)}",
        "n/a (no events)",
        target=f"p99 ≤ {ms(TARGET_LAG_P99_SATURATED)}",
        met=lag99 <= TARGET_LAG_P99_SATURATED,
    )
    half99 = percentile(half.lags, 99)
    asked = half.runs[0].rate_asked if half.runs else math.nan
    summary.add(
        f"event lag at half rate ({asked:.0f} req/s asked, {half.rate:.0f} done)",
        f"p50 {ms(percentile(half.lags, 50))}, p99 {ms(half99)}",
        "n/a (no events)",
        target=f"p99 ≤ {ms(TARGET_LAG_P99_HALF)}",
        met=half99 <= TARGET_LAG_P99_HALF,
    )
    for name in CONSUMERS:
        for label, p in (("saturated", create_gw), ("half rate", half)):
            figures = [run.consumers[name] for run in p.runs if name in run.consumers]
            if not figures:
                continue
            grew = any(c.growing for c in figures)
            consumed = sum(c.consumed_rate for c in figures) / len(figures)
            published = sum(c.published_rate for c in figures) / len(figures)
            text = (
                f"stored {consumed:.0f}/s of {published:.0f}/s published; backlog trend"
                f" {max(c.slope for c in figures):+.0f}/s, {max(c.backlog_end for c in figures):.0f} at the end;"
                f" caught up {ms(max(c.caught_up for c in figures))} after"
            )
            summary.add(f"{name} consumer, {label} load", text, target="backlog not growing", met=not grew)
    summary.add(
        "after the saturated load: every event out / both consumers drained",
        f"{ms(max((r.relay_caught_up for r in create_gw.runs), default=math.nan))}"
        f" / {ms(max((r.caught_up for r in create_gw.runs), default=math.nan))}",
    )
    r = ratio(list_gw.rate, list_bare.rate)
    summary.add(
        "GET /api/v1/incidents?limit=50 via gateway, req/s",
        f"{list_gw.rate:.1f}",
        f"{list_bare.rate:.1f}",
        fmt_ratio(r),
        f"≥ {TARGET_LIST_RATIO}x",
        r >= TARGET_LIST_RATIO,
    )
    p99 = list_gw.worst("p99")
    summary.add(
        "list of 50 via gateway, latency",
        lat(list_gw) + (f"; errors {list_gw.errors}" if list_gw.errors else ""),
        lat(list_bare),
        "p99 " + times(p99, list_bare.worst("p99")),
        f"p99 ≤ {ms(TARGET_LIST_P99)}",
        p99 <= TARGET_LIST_P99 and list_gw.errors == 0,
    )
    incident, bare_app = create_gw.cpu_ms("incident"), create_bare.cpu_ms("bare app")
    summary.add(
        "CPU ms per create: incident (baseline: the bare app)",
        f"{incident:.2f}",
        f"{bare_app:.2f}",
        times(incident, bare_app),
        f"≤ {TARGET_INCIDENT_CPU_MS}",
        incident <= TARGET_INCIDENT_CPU_MS,
    )
    # Every other process of the stack (services, Traefik, PostgreSQL, RabbitMQ), busiest first.
    for group in [g for g in create_gw.groups() if g not in {"incident", "bare app", *LOAD_SIDE}]:
        value = create_gw.cpu_ms(group)
        if group == POSTGRES:
            base = create_bare.cpu_ms(group)
            summary.add(f"CPU ms per create: {group}", f"{value:.2f}", f"{base:.2f}", times(value, base))
        else:
            summary.add(f"CPU ms per create: {group}", f"{value:.2f}", "—" if group != RABBITMQ else "0 (none)")
    stack_total = sum(create_gw.cpu_ms(g) for g in create_gw.groups() if g not in LOAD_SIDE | {"bare app"})
    bare_total = create_bare.cpu_ms(POSTGRES) + bare_app
    summary.add(
        "CPU ms per create, all of the above (bare: app + PostgreSQL)",
        f"{stack_total:.2f}",
        f"{bare_total:.2f}",
        times(stack_total, bare_total),
    )
    ceiling(summary, create_gw, create_bare)
    summary.add(
        "CPU ms per create: load generator (wrk) / kernel interrupts / not ours",
        f"{create_gw.cpu_ms(WRK):.2f} / {create_gw.cpu_ms(INTERRUPTS):.2f} / {create_gw.cpu_ms(NOT_OURS):.2f}",
        f"{create_bare.cpu_ms(WRK):.2f} / {create_bare.cpu_ms(INTERRUPTS):.2f} / {create_bare.cpu_ms(NOT_OURS):.2f}",
    )
    wal, bare_wal = create_gw.wal_bytes(), create_bare.wal_bytes()
    summary.add(
        "PostgreSQL WAL bytes per create (whole server; bare: the bare app's inserts)",
        f"{wal:,.0f}",
        f"{bare_wal:,.0f}",
        times(wal, bare_wal),
    )
    delivered = create_gw.delivered()
    summary.add(
        "broker messages delivered per create (whole node)",
        "n/a (not read)" if math.isnan(delivered) else f"{delivered:.2f}",
        "0 (none)",
    )
    summary.notes += [
        "",
        f"Stack as `make run` starts it, every service, problem and audit consuming; gateway API rate limit lifted"
        f" to {rate_limit} req/s (ITSM_API_RATE_LIMIT) and in-flight cap to {max_inflight} (ITSM_API_MAX_INFLIGHT).",
        f"Load: {wrk_version()}, -t{args.threads} -c{conn} -d{args.duration:g}s, {args.rounds}"
        " rounds alternating bare/stack; rates pooled over the rounds, p50/p99 the worst round's (wrk's"
        " percentiles), lags pooled over every event. Half rate: the same wrk, open loop on a fixed schedule."
        " CPU per create: stack over the load plus catching up, bare over the load; PostgreSQL is the run's"
        " database backends plus the server's own processes; RabbitMQ is shared with the rest of the machine;"
        " kernel interrupts (irq + softirq, the network stack outside any process) are the whole machine's;"
        " 'not ours' is the rest of its busy time (other processes, and processes that began and ended between"
        " two samples).",
        "WAL per create: pg_wal_lsn_diff(pg_current_wal_lsn(), <at the start>) over the same windows as the CPU,"
        " divided by the same incidents; it is the whole server's WAL, so whatever else writes on this PostgreSQL"
        " counts too. Broker messages delivered per create: RabbitMQ's global counters (messages_delivered_total,"
        " every queue type; rabbitmqctl eval, no management plugin) read before each create load and after its"
        " catching up, divided by the incidents created; the whole node's, so other users of this broker count"
        " too.",
    ]


def ceiling(summary: Summary, create_gw: Pooled, create_bare: Pooled) -> None:
    """What the cores allow: the machine's busy CPU per create (every process, the load side and the kernel's
    interrupts) spent on all its cores at once, and the same with the incident process at the bare app's CPU per
    create. Their ratio to the bare rate is the best the create's ratio could be at that CPU, measured in the same
    runs: a target above the second is out of reach whatever the incident service does."""
    busy, bare_busy = create_gw.cpu_ms(MACHINE), create_bare.cpu_ms(MACHINE)
    if not busy > 0 or not bare_busy > 0:
        return
    cap, bare_cap = 1000 * CPUS / busy, 1000 * CPUS / bare_busy
    summary.add(
        f"create ceiling: {CPUS} cores / the machine's busy CPU ms per create, req/s",
        f"{cap:.0f} ({busy:.2f} ms; done {create_gw.rate / cap:.0%} of it)",
        f"{bare_cap:.0f} ({bare_busy:.2f} ms; done {create_bare.rate / bare_cap:.0%} of it)",
        fmt_ratio(ratio(cap, create_bare.rate)),
    )
    lean = busy - create_gw.cpu_ms("incident") + create_bare.cpu_ms("bare app")
    summary.add(
        "create ceiling with the incident process at the bare app's CPU per create, req/s",
        f"{1000 * CPUS / lean:.0f} ({lean:.2f} ms)",
        ratio=fmt_ratio(ratio(1000 * CPUS / lean, create_bare.rate)),
    )
