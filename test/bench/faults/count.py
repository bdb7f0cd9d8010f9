"""The end of a run, by counting: committed writes = log entries = distinct
deliveries.

  committed   every row a writer got a COMMIT OK for, and every row in doubt
              (COMMIT without an answer) that the final primary holds; each
              is one INSERT entry, plus one UPDATE entry if it was updated
  entries     the trigger log and its archive on the final primary, for item
  delivered   the entry ids the simulator applied to the mirror (_sim_applied,
              one row per entry however often it was handed out)

  lost        a committed write missing from the table (lost_commit) or
              without its log entry (lost_capture), or a log entry never
              delivered (undelivered)
  doubled     a committed write with more log entries than it made
  phantom     a delivered entry that the final log does not hold (it came
              from a history the final primary does not share)
  extra       log entries for rows no writer wrote
  mirror_diff rows that differ between the final primary and the mirror
  rollbacks   rollback_detected events on the final primary (a false alarm:
              nothing here is a rollback)
"""

from collections import Counter


def log_entries(cur):
    cur.execute("""
        SELECT id, action, record_id::bigint
          FROM (SELECT id, action, table_name, record_id FROM connect_guard.trigger_log
                UNION ALL
                SELECT id, action, table_name, record_id FROM connect_guard.trigger_log_archive) l
         WHERE table_name = 'item'""")
    return cur.fetchall()


def table_rows(cur):
    cur.execute("SELECT id, note FROM item")
    return dict(cur.fetchall())


def tally(committed, in_doubt, source_conn, mirror_conn):
    with source_conn.cursor() as cur:
        entries = log_entries(cur)
        rows = table_rows(cur)
        # a changeover is no rollback: the witness must not take it for one
        cur.execute("SELECT count(*) FROM connect_guard.event WHERE kind = 'rollback_detected'")
        rollbacks = cur.fetchone()[0]
    with mirror_conn.cursor() as cur:
        cur.execute("SELECT entry_id FROM _sim_applied WHERE connection = 'sync'")
        delivered = {r[0] for r in cur.fetchall()}
        mirror_rows = table_rows(cur)

    expected = dict(committed)
    for i, updates in in_doubt.items():
        if i in rows and i not in expected:
            expected[i] = updates
    per_write = Counter((record_id, action) for _, action, record_id in entries)
    entry_ids = {e[0] for e in entries}

    lost_commit = sum(1 for i in expected if i not in rows)
    lost_capture = doubled = 0
    for i, updates in expected.items():
        for action, want in (("INSERT", 1), ("UPDATE", updates)):
            have = per_write.get((i, action), 0)
            lost_capture += max(0, want - have)
            doubled += max(0, have - want)
    undelivered = len(entry_ids - delivered)
    written = {(i, a) for i, u in expected.items() for a in (("INSERT", "UPDATE") if u else ("INSERT",))}
    extra = sum(n for key, n in per_write.items() if key not in written)
    return {
        "committed": len(expected),
        "in_doubt": len(in_doubt),
        "in_doubt_committed": len([i for i in in_doubt if i in rows and i not in committed]),
        "entries": len(entries),
        "delivered": len(delivered & entry_ids),
        "lost_commit": lost_commit,
        "lost_capture": lost_capture,
        "undelivered": undelivered,
        "lost": lost_commit + lost_capture + undelivered,
        "doubled": doubled,
        "phantom": len(delivered - entry_ids),
        "extra": extra,
        "mirror_diff": sum(1 for i in set(rows) | set(mirror_rows) if rows.get(i) != mirror_rows.get(i)),
        "rollbacks": rollbacks,
        "undelivered_ids": sorted(entry_ids - delivered)[:10],
    }
