"""The data of bench/incident_list.py: incidents loaded straight into the incident schema of a migrated scratch
database with INSERT ... SELECT generate_series (indexes dropped during the load and rebuilt from their own
definitions afterwards, then VACUUM ANALYZE), two SLA clocks per incident.

Seeded so every run is the same: created_at spread over two years; the last 14 days mostly open, older incidents
mostly closed with a 4 % backlog still open; impact/urgency skewed to low, priority from the matrix; 40
components x 20 symptoms x 10 sites in title and description (full-text), 12 categories, 5,000 callers, 20
groups, 300 agents; response and resolution clocks running, paused or stopped according to the status.
"""

from __future__ import annotations

import time
from typing import Any

COMPONENTS = [
    "VPN", "email", "printer", "laptop", "Wi-Fi", "Outlook", "SAP", "payroll", "CRM", "database",
    "network share", "desk phone", "monitor", "docking station", "SSO", "Teams", "SharePoint", "Jira",
    "badge reader", "firewall", "backup", "Citrix", "Excel", "browser", "antivirus", "scanner", "projector",
    "keyboard", "headset", "webcam", "intranet", "DNS", "DHCP", "load balancer", "Kubernetes", "storage",
    "mailbox", "calendar", "license server", "ERP",
]  # fmt: skip
SYMPTOMS = [
    "is not working", "is very slow", "keeps crashing", "times out", "shows an error", "cannot connect",
    "login fails", "freezes", "disconnects repeatedly", "returns server errors", "is unreachable",
    "has missing data", "fails to sync", "denies permission", "certificate expired", "is out of disk space",
    "uses too much CPU", "hangs on startup", "shows a blue screen", "gives wrong results",
]  # fmt: skip
SITES = ["Berlin", "London", "New York", "Paris", "Madrid", "Tokyo", "Sydney", "Toronto", "Mumbai", "Singapore"]
CATEGORIES = [
    "hardware", "software", "network", "database", "access", "email", "telephony", "security", "storage",
    "printing", "inquiry", "facilities",
]  # fmt: skip


def _array(values: list[str]) -> str:
    return "ARRAY[" + ", ".join("'" + v.replace("'", "''") + "'" for v in values) + "]"


LOAD_INCIDENTS = f"""
INSERT INTO incident.incident (
    id, number, title, description, caller_id, category, configuration_item, impact, urgency, priority, status,
    hold_reason, assignment_group, assignee_id, resolution_code, resolution_notes, reopen_count, sla_breached,
    created_by, created_at, updated_at, resolved_at, closed_at, version)
WITH base AS (
    SELECT g.i,
           now() - random() * interval '730 days' AS created,
           random() AS r_status, random() AS r_impact, random() AS r_urgency, random() AS r_took,
           1 + floor(random() * 40)::int AS c, 1 + floor(random() * 20)::int AS sy, 1 + floor(random() * 10)::int AS st,
           floor(random() * 5000)::int AS caller_n, 1 + floor(random() * 12)::int AS cat,
           floor(random() * 20)::int AS grp_n, floor(random() * 300)::int AS agent_n,
           floor(random() * 20000)::int AS err, floor(random() * 4)::int AS hold_n
    FROM generate_series(1, $1::int) AS g(i)
), shaped AS (
    SELECT b.*,
           CASE WHEN r_impact < 0.15 THEN 1 WHEN r_impact < 0.5 THEN 2 ELSE 3 END AS impact,
           CASE WHEN r_urgency < 0.15 THEN 1 WHEN r_urgency < 0.5 THEN 2 ELSE 3 END AS urgency,
           CASE WHEN created > now() - interval '14 days' THEN
                CASE WHEN r_status < 0.25 THEN 'new' WHEN r_status < 0.60 THEN 'in_progress'
                     WHEN r_status < 0.70 THEN 'on_hold' WHEN r_status < 0.85 THEN 'resolved'
                     WHEN r_status < 0.97 THEN 'closed' ELSE 'cancelled' END
           ELSE
                CASE WHEN r_status < 0.010 THEN 'new' WHEN r_status < 0.025 THEN 'in_progress'
                     WHEN r_status < 0.040 THEN 'on_hold' WHEN r_status < 0.940 THEN 'closed' ELSE 'cancelled' END
           END AS status,
           ({_array(COMPONENTS)})[c] AS comp, ({_array(SYMPTOMS)})[sy] AS symp, ({_array(SITES)})[st] AS site
    FROM base b
), timed AS (
    SELECT s.*,
           (ARRAY[1, 2, 3, 2, 3, 4, 3, 4, 5])[(impact - 1) * 3 + urgency] AS priority,
           CASE WHEN status IN ('resolved', 'closed')
                THEN least(created + r_took * interval '5 days', now()) END AS resolved,
           CASE WHEN status = 'closed' THEN least(created + r_took * interval '5 days' + interval '7 days', now())
                WHEN status = 'cancelled' THEN least(created + r_took * interval '2 days', now()) END AS closed
    FROM shaped s
)
SELECT gen_random_uuid(),
       'INC' || lpad(i::text, 7, '0'),
       comp || ' ' || symp || ' (' || site || ')',
       'User reports that the ' || comp || ' ' || symp || ' at the ' || site || ' office since '
           || to_char(created, 'FMDay HH24:MI') || '. Error code ERR-' || err
           || '. Restarting did not help; colleagues nearby see the same. Please investigate.',
       md5('caller' || caller_n)::uuid,
       ({_array(CATEGORIES)})[cat],
       'CI-' || lpad((caller_n % 900)::text, 4, '0'),
       impact, urgency, priority, status,
       CASE WHEN status = 'on_hold'
            THEN (ARRAY['awaiting_caller', 'awaiting_change', 'awaiting_problem', 'awaiting_vendor'])[1 + hold_n] END,
       'group-' || grp_n,
       CASE WHEN status <> 'new' THEN md5('agent' || agent_n)::uuid END,
       CASE WHEN resolved IS NOT NULL THEN 'solved' END,
       CASE WHEN resolved IS NOT NULL THEN 'Fixed the ' || comp || '; confirmed with the caller.' END,
       0,
       status IN ('new', 'in_progress', 'on_hold') AND created < now() - interval '3 days',
       md5('caller' || caller_n)::uuid,
       created,
       greatest(created, resolved, closed),
       resolved,
       closed,
       CASE WHEN status = 'new' THEN 1 ELSE 3 END
FROM timed
"""

# Two clocks per incident, from its policy. Running clocks past due are marked warned and breached with nothing
# left to fire (the state the SLA scheduler leaves them in); due moments use wall-clock time (approximate for
# business-hours calendars, and only read back by the list, never recomputed there).
LOAD_CLOCKS = """
INSERT INTO incident.sla_clock (
    id, incident_id, kind, target_seconds, calendar, state, started_at, pauses, due_at, warning_at, stopped_at,
    warned, breached, next_fire_at)
WITH c AS (
    SELECT i.id AS incident_id, k.kind,
           CASE WHEN k.kind = 'response' THEN p.response_minutes ELSE p.resolution_minutes END * 60.0 AS target,
           p.calendar, i.created_at AS started,
           CASE WHEN k.kind = 'response' THEN CASE WHEN i.status = 'new' THEN 'running' ELSE 'stopped' END
                WHEN i.status IN ('new', 'in_progress') THEN 'running'
                WHEN i.status = 'on_hold' THEN 'paused'
                ELSE 'stopped' END AS state,
           CASE WHEN k.kind = 'response'
                THEN least(i.created_at + random() * interval '2 hours', now())
                ELSE coalesce(i.resolved_at, i.closed_at, now()) END AS stop_at,
           least(i.created_at + interval '2 hours', now()) AS paused_from
    FROM incident.incident i
    JOIN incident.sla_policy p ON p.priority = i.priority
    CROSS JOIN (VALUES ('response'), ('resolution')) AS k(kind)
), d AS (
    SELECT c.*, started + target * interval '1 second' AS due,
           started + 0.75 * target * interval '1 second' AS warning
    FROM c
)
SELECT gen_random_uuid(), incident_id, kind, target, calendar, state, started,
       CASE WHEN state = 'paused' THEN jsonb_build_array(jsonb_build_array(to_jsonb(paused_from), NULL))
            ELSE '[]'::jsonb END,
       due,
       CASE WHEN state = 'paused' THEN NULL ELSE warning END,
       CASE WHEN state = 'stopped' THEN stop_at END,
       CASE WHEN state = 'stopped' THEN stop_at > warning ELSE now() >= warning END,
       CASE WHEN state = 'stopped' THEN stop_at > due ELSE now() >= due END,
       CASE WHEN state = 'running' AND now() < warning THEN warning
            WHEN state = 'running' AND now() < due THEN due END
FROM d
"""

SECONDARY_INDEXES = """
SELECT i.relname AS name, pg_get_indexdef(i.oid) AS definition
FROM pg_index x
JOIN pg_class i ON i.oid = x.indexrelid
JOIN pg_class t ON t.oid = x.indrelid
JOIN pg_namespace n ON n.oid = t.relnamespace
WHERE n.nspname = 'incident' AND t.relname IN ('incident', 'sla_clock')
  AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = x.indexrelid)
ORDER BY i.relname
"""


async def load(admin_dsn: str, rows: int) -> None:
    import asyncpg

    connection = await asyncpg.connect(admin_dsn)
    try:
        await connection.execute(
            "SET TIME ZONE 'UTC'; SET maintenance_work_mem = '512MB'; SET session_replication_role = replica"
        )
        await connection.execute("SELECT setseed(0.42)")
        indexes = await connection.fetch(SECONDARY_INDEXES)
        for index in indexes:
            await connection.execute(f'DROP INDEX incident."{index["name"]}"')
        steps: list[tuple[str, str, tuple[Any, ...]]] = [
            (f"{rows:,} incidents", LOAD_INCIDENTS, (rows,)),
            (f"{2 * rows:,} SLA clocks", LOAD_CLOCKS, ()),
            ("number sequence", "SELECT setval('incident.incident_number_seq', $1::bigint)", (rows,)),
        ]
        steps += [(f"index {i['name']}", i["definition"], ()) for i in indexes]
        steps += [
            ("VACUUM ANALYZE incident", "VACUUM (ANALYZE) incident.incident", ()),
            ("VACUUM ANALYZE sla_clock", "VACUUM (ANALYZE) incident.sla_clock", ()),
        ]
        for what, sql, params in steps:
            started = time.monotonic()
            await connection.execute(sql, *params)
            print(f"  {what}: {time.monotonic() - started:.1f} s", flush=True)
        sizes = await connection.fetch(
            "SELECT c.relname, pg_size_pretty(pg_table_size(c.oid)) AS heap, "
            "pg_size_pretty(pg_indexes_size(c.oid)) AS indexes FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'incident' AND c.relname IN ('incident', 'sla_clock') ORDER BY 1"
        )
        for size in sizes:
            print(f"  size of {size['relname']}: table {size['heap']}, indexes {size['indexes']}")
        counts = await connection.fetch(
            "SELECT status, count(*) AS n FROM incident.incident GROUP BY status ORDER BY count(*) DESC"
        )
        print("  by status: " + ", ".join(f"{c['status']} {c['n']:,}" for c in counts))
        settings = await connection.fetch(
            "SELECT name, current_setting(name) AS value FROM pg_settings WHERE name IN "
            "('shared_buffers', 'work_mem', 'effective_cache_size', 'random_page_cost', 'jit')"
        )
        print("  server: " + ", ".join(f"{s['name']}={s['value']}" for s in settings))
    finally:
        await connection.close()
