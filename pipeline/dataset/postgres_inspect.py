"""``pipeline inspect CONFIG`` for a Postgres sink: its tables, commits, tokens and failures.

The table's rows are counted and checked against the commits' accounting
(rows written, less those replaced or removed), as the file dataset's shards
are checked against its manifest.
"""

from __future__ import annotations

from typing import Any

from psycopg import errors, sql
from psycopg.rows import dict_row

from pipeline.config import SinkConfig
from pipeline.dataset.postgres_schema import Names
from pipeline.errors import SinkError
from pipeline.logs import redact_url

SHOWN_COMMITS = 20
SUFFIXES = ("", "_errors", "_commits", "_state", "_runs", "_meta")


def summarize_postgres(cfg: SinkConfig) -> dict[str, Any]:
    """The sink's tables as ``pipeline inspect`` shows them; ``SinkError`` when there are none."""
    from pipeline.dataset.postgres import connect

    n = Names(cfg.table)
    where = f"{redact_url(cfg.path)} table {cfg.table}"
    with connect(cfg.path) as conn:
        cur = conn.cursor(row_factory=dict_row)
        try:
            meta = cur.execute(sql.SQL("SELECT * FROM {m}").format(m=n.meta)).fetchone()
        except errors.UndefinedTable as exc:
            raise SinkError(f"no Postgres sink at {where}: `pipeline run` creates it") from exc
        tables = {}
        for suffix in SUFFIXES:
            name = cfg.table + suffix
            exists = conn.execute("SELECT to_regclass(%s)", (sql.Identifier(name).as_string(conn),)).fetchone()
            if exists and exists[0]:
                count = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(name))).fetchone()
                tables[name] = int(count[0]) if count else 0
        commits = cur.execute(sql.SQL("SELECT * FROM {c} ORDER BY n DESC LIMIT %s").format(c=n.commits),
                              (SHOWN_COMMITS,)).fetchall()[::-1]
        totals = cur.execute(sql.SQL(
            "SELECT count(*) AS commits, coalesce(sum(records), 0) AS records_read, coalesce(sum(rows), 0) AS rows,"
            " coalesce(sum(rows - replaced - removed), 0) AS rows_kept, coalesce(sum(rows_reused), 0) AS rows_reused,"
            " coalesce(sum(errors - errors_removed), 0) AS errors_kept, coalesce(sum(requests), 0) AS requests,"
            " coalesce(sum(retries), 0) AS retries, coalesce(sum(prompt_tokens), 0) AS prompt_tokens,"
            " coalesce(sum(total_tokens), 0) AS total_tokens FROM {c}").format(c=n.commits)).fetchone() or {}
        failures = dict(conn.execute(sql.SQL(
            "SELECT error_type, count(*) FROM {e} GROUP BY error_type ORDER BY error_type").format(e=n.errors)).fetchall())
        runs = cur.execute(sql.SQL("SELECT rank, started_at, finished_at, status FROM {r} ORDER BY n").format(
            r=n.runs)).fetchall()
        index = conn.execute("SELECT indexdef FROM pg_indexes WHERE schemaname = current_schema() AND indexname = %s",
                             (f"{cfg.table}_embedding_idx",)).fetchone()
    problems = []
    if cfg.table in tables and tables[cfg.table] != totals.get("rows_kept"):
        problems.append(f"{cfg.table} holds {tables[cfg.table]:,} rows; its commits account for {totals.get('rows_kept'):,}")
    if tables.get(f"{cfg.table}_errors", 0) != totals.get("errors_kept"):
        problems.append(f"{cfg.table}_errors holds {tables.get(cfg.table + '_errors', 0):,} rows; "
                        f"its commits account for {totals.get('errors_kept'):,}")
    return {"where": where, "meta": meta or {}, "tables": tables, "commits": commits, "totals": dict(totals),
            "failures": failures, "runs": runs, "index": index[0] if index else None, "problems": problems,
            "ok": not problems}


def render_postgres(summary: dict[str, Any]) -> str:
    """The text ``pipeline inspect`` prints for a Postgres sink."""
    from pipeline.dataset.inspect import text_table

    m, t = summary["meta"], summary["totals"]
    shown = summary["commits"]
    out = [
        f"postgres: {summary['where']}",
        f"model: {m.get('model')}  input_type: {m.get('input_type')}  embedding_type: {m.get('embedding_type')}  "
        f"dimensions: {m.get('dimensions')}",
        "tables: " + ", ".join(f"{name} ({rows:,} rows)" for name, rows in summary["tables"].items()),
        f"index: {summary['index'] or 'none yet (built at the end of the first completed run)'}",
        "",
        text_table(["commit", "rank", "rows", "replaced", "removed", "errors", "requests", "retries", "prompt_tokens",
                "total_tokens", "finished_at"],
               [[c["n"], c["rank"], f"{c['rows']:,}", c["replaced"], c["removed"], c["errors"], f"{c['requests']:,}",
                 c["retries"], f"{c['prompt_tokens']:,}", f"{c['total_tokens']:,}", c["finished_at"] or ""]
                for c in shown]),
    ]
    if t.get("commits", 0) > len(shown):
        out.append(f"(the last {len(shown)} of {t['commits']:,} commits)")
    out += [
        "",
        f"records read: {t.get('records_read', 0):,}   rows written: {t.get('rows', 0):,} "
        f"(in the table {t.get('rows_kept', 0):,}, reused {t.get('rows_reused', 0):,})   "
        f"rows failed: {t.get('errors_kept', 0):,}",
        f"requests: {t.get('requests', 0):,} (retries {t.get('retries', 0):,})   "
        f"prompt tokens: {t.get('prompt_tokens', 0):,}   total tokens: {t.get('total_tokens', 0):,}",
    ]
    if summary["failures"]:
        out.append("failures: " + ", ".join(f"{k} {v:,}" for k, v in sorted(summary["failures"].items())))
    if summary["runs"]:
        out += ["", text_table(["rank", "run started", "finished", "status"],
                           [[r["rank"], r["started_at"] or "", r["finished_at"] or "", r["status"] or ""]
                            for r in summary["runs"]])]
    out.append("")
    out += [f"PROBLEM: {p}" for p in summary["problems"]] or ["the table's rows match its commits' accounting"]
    return "\n".join(out)
