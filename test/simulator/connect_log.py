"""connect_log: the simulator's Heroku Connect side for a Connect-managed
schema (connect_sim.py --connect-log SCHEMA).

Connect keeps its own trigger log, SCHEMA._trigger_log, written by the
hc_<table>_logtrigger triggers (see test/fixtures/connect_schema.sql).  This
module drains it the way Connect does:

1. In a source transaction of its own, pick NEW entries oldest first and
   mark them PENDING (FOR UPDATE SKIP LOCKED, by state, never by an id
   cursor: ids commit out of order, and an open transaction's entries are
   simply not visible yet).
2. Send them to "Salesforce", the mirror database: apply each entry (its
   values are hstore text, turned into JSON on the source), record the
   delivery in _sim_connect_deliveries, commit the mirror.
3. In a second source transaction, write back what Connect writes back
   (sfid of a new row, _hc_lastop SYNCED or FAILED, _hc_err) and mark the
   entries SUCCESS (processed_at, processed_tx = txid_current()) or FAILED
   (sf_result, sf_message); READONLY for a read-only mapping, IGNORED for a
   table with no mapping.
4. Move processed entries older than --archive-after to _trigger_log_archive
   (at most once a second, 5,000 at a time).

Every source session runs with SET xmlbinary = 'hex', Connect's own trick:
the logger triggers' WHEN (get_xmlbinary() = 'base64') skips our writes, and
the status triggers leave _hc_lastop alone.

A mapping reload rewrites the table's rows from the mirror (Salesforce wins),
with the same kind of session.

Locking: one drainer thread per process; reloads run in timer threads with
connections of their own.  SimState.lock guards the shared counters; no
database work is done while holding it.
"""

import contextlib
import dataclasses
import json
import logging
import os
import time

import psycopg2
import psycopg2.extensions
import psycopg2.extras
from psycopg2 import sql

from sim_worker import SourceMirrorWorker, is_connection_error, one_line, open_db

log = logging.getLogger("connect_sim")

FINAL_STATES = ("SUCCESS", "FAILED", "IGNORED", "MERGED", "READONLY", "REQUEUED")
# Columns of a mapped table that are Connect's bookkeeping, not Salesforce data.
STATUS_COLUMNS = ("_hc_lastop", "_hc_err")

# The tables of the schema that carry a Connect logger trigger.
LOGGED_TABLES_SQL = """
    SELECT c.relname
      FROM pg_trigger t
      JOIN pg_class c ON c.oid = t.tgrelid
      JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE n.nspname = %s AND NOT t.tgisinternal
       AND t.tgname = 'hc_' || c.relname || '_logtrigger'
     ORDER BY c.relname
"""

COLUMNS_SQL = """
    SELECT a.attname, format_type(a.atttypid, a.atttypmod)
      FROM pg_attribute a
      JOIN pg_class c ON c.oid = a.attrelid
      JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped
     ORDER BY a.attnum
"""

DELIVERIES_DDL = """
    CREATE TABLE IF NOT EXISTS _sim_connect_deliveries (
        connection   text NOT NULL,
        entry_id     integer NOT NULL,
        entry_txid   bigint,
        table_name   text NOT NULL,
        action       text NOT NULL,
        record_id    integer,
        outcome      text NOT NULL,
        delivered_at timestamptz NOT NULL DEFAULT clock_timestamp()
    );
    CREATE INDEX IF NOT EXISTS _sim_connect_deliveries_entry
        ON _sim_connect_deliveries (connection, entry_id)
"""


@dataclasses.dataclass
class ConnectLogStats:
    connection: str
    schema: str
    status: str = "starting"        # starting | idle | sending | paused | backoff | stopped
    passes: int = 0
    sent: int = 0                   # entries taken NEW -> PENDING and sent
    success: int = 0
    failed: int = 0
    readonly: int = 0
    ignored: int = 0
    requeued: int = 0               # PENDING entries set back to NEW at start
    archived: int = 0
    writeback_errors: int = 0       # write-backs refused (e.g. a fence); entries marked anyway
    high_water_mark: int = 0
    reloads: int = 0
    reload_rows: int = 0
    reload_errors: int = 0
    errors: int = 0
    last_error: object = None
    reconnects: dict = dataclasses.field(default_factory=lambda: {"source": 0, "mirror": 0})

    def to_json(self):
        out = dataclasses.asdict(self)
        out["mode"] = "connect_log"
        return out


@dataclasses.dataclass
class LogEntry:
    id: int
    txid: int
    action: str
    table: str
    record_id: int
    sfid: object
    old: object                     # dict (from hstore) or None
    values: object
    # set while processing
    state: str = "PENDING"
    sf_result: object = None
    sf_message: object = None
    new_sfid: object = None


def object_name_of(table):
    """Connect names the table after the object in lower case: account is
    Account, my_thing__c is My_thing__c."""
    return table[:1].upper() + table[1:]


def fake_sfid(table, record_id):
    """A stable 18-character Salesforce id for a row Salesforce created."""
    prefix = (table.replace("_", "") + "xxx")[:3].upper()
    return "%s%015d" % (prefix, record_id)


def hex_session(conn):
    """Makes a session (open_db's: READ COMMITTED) one as Connect has
    them: xmlbinary hex, so that the logger triggers skip its writes."""
    with conn.cursor() as cur:
        cur.execute("SET xmlbinary = 'hex'")
    conn.commit()


def logged_tables(cur, schema):
    cur.execute(LOGGED_TABLES_SQL, (schema,))
    return [row[0] for row in cur.fetchall()]


def hstore_schema(cur):
    cur.execute("SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
                "WHERE e.extname = 'hstore'")
    row = cur.fetchone()
    if row is None:
        raise LookupError("the source has no hstore extension: is this a Connect-managed database?")
    return row[0]


def table_columns(cur, schema, table):
    cur.execute(COLUMNS_SQL, (schema, table))
    return cur.fetchall()


class ConnectLogDrainer(SourceMirrorWorker):
    """Drains SCHEMA._trigger_log on the source into the mirror, as Connect."""

    label = "connect-log"

    def __init__(self, args, state, stop):
        self.source_dsn = args.source
        self.mirror_dsn = args.mirror
        self.name = args.connection
        self.schema = args.connect_log
        self.batch_size = args.connect_batch
        self.archive_after = args.archive_after
        self.writeback = not args.no_writeback
        self.poll = args.poll_ms / 1000.0
        self.crash_after_mirror_commit = args.crash_after_mirror_commit
        self.state = state
        self.stop = stop
        self.init_worker()
        self.hstore = None
        self.tables = {}            # table -> (source columns, mirror columns)
        self.to_send = []           # taken (PENDING), not yet applied to the mirror
        self.to_mark = []           # applied, not yet marked final on the source
        self.started = False
        self.archived_at = float("-inf")
        self.stats = state.ensure_connect_log(self.name, self.schema)

    # -- connections -----------------------------------------------------------------

    def connect(self):
        if self.source is None:
            self.source = open_db(self.source_dsn, "connect-log")
            hex_session(self.source)
            with self.source.cursor() as cur:
                self.hstore = hstore_schema(cur)
            self.source.commit()
            log.info("connect-log: connected to source, draining %s._trigger_log", self.schema)
        if self.mirror is None:
            self.mirror = open_db(self.mirror_dsn, "salesforce")
            with self.mirror.cursor() as cur:
                cur.execute(DELIVERIES_DDL)
            self.mirror.commit()
        if not self.started:
            self.requeue_pending()
            self.started = True
        self.refresh_tables()

    def requeue_pending(self):
        """Entries a previous run left PENDING (it died between sending and
        marking) go back to NEW and are sent again, as Connect requeues
        them: that is a resend, and the deliveries table shows it."""
        with self.source.cursor() as cur:
            cur.execute(sql.SQL("UPDATE {} SET state = 'NEW', updated_at = now() WHERE state = 'PENDING'")
                        .format(sql.Identifier(self.schema, "_trigger_log")))
            n = cur.rowcount
        self.source.commit()
        if n:
            log.warning("connect-log: %d entries left PENDING by an earlier run set back to NEW", n)
        with self.state.lock:
            self.stats.requeued += n

    def refresh_tables(self):
        """Finds the logged tables, maps new ones, and creates the mirror
        ("Salesforce") tables that do not exist yet."""
        with self.source.cursor() as cur:
            tables = logged_tables(cur, self.schema)
            new = [t for t in tables if t not in self.tables]
            columns = {t: table_columns(cur, self.schema, t) for t in new}
        self.source.commit()
        if not new:
            return
        self.state.adopt_connect_tables(self.name, self.schema, tables)
        with self.mirror.cursor() as cur:
            cur.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self.schema)))
            for table in new:
                src_cols = [(n, t) for n, t in columns[table] if n not in STATUS_COLUMNS]
                cur.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} ({}, PRIMARY KEY (id))").format(
                    sql.Identifier(self.schema, table),
                    sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(n), sql.SQL(t))
                                       for n, t in src_cols)))
                mirror_cols = [n for n, _ in table_columns(cur, self.schema, table)]
                self.tables[table] = ([n for n, _ in columns[table]], mirror_cols)
        self.mirror.commit()

    def state_json(self):
        return self.state.connect_log_json()

    # -- one pass ------------------------------------------------------------------------

    def step(self):
        """One pass: returns 'sent', 'empty' or 'paused'.  Raises on
        database errors.  Entries taken but not yet sent, or sent but not
        yet marked, are kept and finished first on the next pass: a lost
        connection must not leave them PENDING for ever."""
        self.connect()
        if self.to_send or self.to_mark:
            with self.sending():
                self.finish(self.to_send or self.to_mark)
            return "sent"
        if self.state.is_paused(self.name):
            self.archive()
            return "paused"
        entries = self.take()
        if not entries:
            self.archive()
            self.update_high_water_mark()
            return "empty"
        self.to_send = entries
        with self.sending():
            stall = self.state.connect_log_stall()
            if stall > 0:
                log.info("connect-log: holding %d entries PENDING for %.1fs (stall)", len(entries), stall)
                self.stop.wait(stall)
            self.finish(entries)
        return "sent"

    @contextlib.contextmanager
    def sending(self):
        """The connection shows POLLING_DB_CHANGES while entries are PENDING."""
        self.state.connect_log_sending(self.name, True)
        try:
            yield
        finally:
            self.state.connect_log_sending(self.name, False)

    def finish(self, entries):
        if self.to_send:
            self.send(entries)
            self.to_send, self.to_mark = [], entries
            if self.crash_after_mirror_commit:
                log.warning("connect-log test hook: exiting between the mirror commit and marking")
                os._exit(3)
        self.mark(entries)
        self.to_mark = []
        self.archive()
        self.update_high_water_mark()

    def take(self):
        """NEW -> PENDING, oldest first, in a transaction of its own.  The
        values are turned from hstore text into JSON here, where hstore is."""
        log_table = sql.Identifier(self.schema, "_trigger_log")
        to_json = sql.SQL("{}.hstore_to_json({}::{}.hstore)::text")
        hs = sql.Identifier(self.hstore)
        query = sql.SQL("""
            UPDATE {log} AS l SET state = 'PENDING', updated_at = now()
             WHERE l.id IN (SELECT id FROM {log} WHERE state = 'NEW' ORDER BY id
                            LIMIT %s FOR UPDATE SKIP LOCKED)
            RETURNING l.id, l.txid, l.action, l.table_name, l.record_id, l.sfid, {old}, {values}
        """).format(log=log_table,
                    old=to_json.format(hs, sql.SQL("l.old"), hs),
                    values=to_json.format(hs, sql.SQL('l."values"'), hs))
        with self.source.cursor() as cur:
            cur.execute(query, (self.batch_size,))
            rows = cur.fetchall()
        self.source.commit()
        entries = [LogEntry(id=r[0], txid=r[1], action=r[2], table=r[3], record_id=r[4], sfid=r[5],
                            old=json.loads(r[6]) if r[6] else None,
                            values=json.loads(r[7]) if r[7] else None) for r in rows]
        entries.sort(key=lambda e: e.id)
        with self.state.lock:
            self.stats.sent += len(entries)
        return entries

    def send(self, entries):
        """Applies the entries to the mirror, one savepoint each: an entry
        the mirror refuses is FAILED with the mirror's message, as Salesforce
        refuses a record.  One mirror commit for all."""
        with self.mirror.cursor() as cur:
            for entry in entries:
                access = self.state.mapping_access(self.name, self.schema, entry.table)
                fault = self.state.take_entry_fault(entry)
                if access is None or entry.table not in self.tables:
                    entry.state = "IGNORED"
                elif access == "read_only":
                    entry.state = "READONLY"
                elif fault is not None:
                    entry.state, entry.sf_result, entry.sf_message = "FAILED", fault[0], fault[1]
                else:
                    cur.execute("SAVEPOINT entry")
                    try:
                        self.apply(cur, entry)
                        entry.state = "SUCCESS"
                        cur.execute("RELEASE SAVEPOINT entry")
                    except (psycopg2.DataError, psycopg2.IntegrityError, psycopg2.ProgrammingError) as error:
                        cur.execute("ROLLBACK TO SAVEPOINT entry")
                        entry.state, entry.sf_result = "FAILED", 400
                        entry.sf_message = one_line(error)
                if entry.state in ("SUCCESS", "FAILED"):
                    cur.execute("INSERT INTO _sim_connect_deliveries "
                                "(connection, entry_id, entry_txid, table_name, action, record_id, outcome) "
                                "VALUES (%s, %s, %s, %s, %s, %s, %s)",
                                (self.name, entry.id, entry.txid, entry.table, entry.action, entry.record_id,
                                 entry.state))
        self.mirror.commit()

    def apply(self, cur, entry):
        _, mirror_cols = self.tables[entry.table]
        ident = sql.Identifier(self.schema, entry.table)
        if entry.action == "INSERT":
            values = dict(entry.values or {})
            if "sfid" in mirror_cols and not values.get("sfid"):
                values["sfid"] = entry.new_sfid = fake_sfid(entry.table, entry.record_id)
            cols = [c for c in mirror_cols if c in values]
            updates = [c for c in cols if c != "id"]
            on_conflict = sql.SQL("DO UPDATE SET ") + sql.SQL(", ").join(
                sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c)) for c in updates) \
                if updates else sql.SQL("DO NOTHING")
            cur.execute(sql.SQL("INSERT INTO {t} ({cols}) SELECT {cols} FROM jsonb_populate_record(NULL::{t}, %s) "
                                "ON CONFLICT (id) {oc}").format(
                t=ident, cols=sql.SQL(", ").join(map(sql.Identifier, cols)), oc=on_conflict),
                (json.dumps(values),))
        elif entry.action == "UPDATE":
            changed = [c for c in mirror_cols if c in (entry.values or {}) and c != "id"]
            if changed:
                cur.execute(sql.SQL("UPDATE {t} AS t SET {sets} FROM jsonb_populate_record(NULL::{t}, %s) AS n "
                                    "WHERE t.id = %s").format(
                    t=ident, sets=sql.SQL(", ").join(sql.SQL("{0} = n.{0}").format(sql.Identifier(c))
                                                     for c in changed)),
                    (json.dumps(entry.values), entry.record_id))
        elif entry.action == "DELETE":
            cur.execute(sql.SQL("DELETE FROM {} WHERE id = %s").format(ident), (entry.record_id,))
        else:
            raise psycopg2.DataError("unknown action %r" % entry.action)

    def mark(self, entries):
        """Writes back and marks the entries final, in one source
        transaction.  A refused write-back (a fence, a lock timeout) must not
        keep the entries PENDING for ever: they are marked without it."""
        try:
            with self.source.cursor() as cur:
                if self.writeback:
                    self.write_back(cur, entries)
                self.mark_entries(cur, entries)
            self.source.commit()
        except psycopg2.Error as error:
            if is_connection_error(error) or not self.writeback:
                raise
            self.source.rollback()
            log.warning("connect-log: write-back refused (%s); marking without it", one_line(error))
            with self.state.lock:
                self.stats.writeback_errors += 1
                self.stats.last_error = one_line(error)
            with self.source.cursor() as cur:
                self.mark_entries(cur, entries)
            self.source.commit()
        counts = {}
        for entry in entries:
            counts[entry.state] = counts.get(entry.state, 0) + 1
        with self.state.lock:
            self.stats.passes += 1
            self.stats.success += counts.get("SUCCESS", 0)
            self.stats.failed += counts.get("FAILED", 0)
            self.stats.readonly += counts.get("READONLY", 0)
            self.stats.ignored += counts.get("IGNORED", 0)
        self.state.count_connect_entries(self.name, self.schema, entries)
        log.info("connect-log: %d entries marked %s", len(entries),
                 ", ".join("%s %d" % kv for kv in sorted(counts.items())))

    def write_back(self, cur, entries):
        for entry in entries:
            src_cols, _ = self.tables.get(entry.table, ([], []))
            if entry.action == "DELETE" or entry.state not in ("SUCCESS", "FAILED") or \
                    "_hc_lastop" not in src_cols:
                continue
            ident = sql.Identifier(self.schema, entry.table)
            if entry.state == "SUCCESS":
                cur.execute(sql.SQL("UPDATE {} SET _hc_lastop = 'SYNCED', _hc_err = NULL, "
                                    "sfid = coalesce(sfid, %s) WHERE id = %s").format(ident),
                            (entry.new_sfid, entry.record_id))
            else:
                cur.execute(sql.SQL("UPDATE {} SET _hc_lastop = 'FAILED', _hc_err = %s WHERE id = %s")
                            .format(ident), (entry.sf_message, entry.record_id))

    def mark_entries(self, cur, entries):
        rows = [(e.id, e.state, e.sf_result, e.sf_message, e.new_sfid) for e in entries]
        psycopg2.extras.execute_values(cur, sql.SQL("""
            UPDATE {log} AS l
               SET state = v.state, processed_at = now(), processed_tx = txid_current(), updated_at = now(),
                   sf_result = v.sf_result::int, sf_message = v.sf_message, sfid = coalesce(l.sfid, v.sfid)
              FROM (VALUES %s) AS v (id, state, sf_result, sf_message, sfid)
             WHERE l.id = v.id AND l.state = 'PENDING'
        """).format(log=sql.Identifier(self.schema, "_trigger_log")).as_string(cur), rows)

    def archive(self):
        """Moves processed entries older than archive_after seconds (Connect:
        about a day) to the archive, a slice at a time."""
        # at most once a second: an idle drainer polls every --poll-ms
        if self.archive_after < 0 or time.monotonic() - self.archived_at < 1.0:
            return
        self.archived_at = time.monotonic()
        query = sql.SQL("""
            WITH moved AS (
                DELETE FROM {log} WHERE id IN (
                    SELECT id FROM {log}
                     WHERE created_at <= now() - make_interval(secs => %s)
                       AND processed_at <= now() - make_interval(secs => %s)
                       AND state IN %s
                     ORDER BY id LIMIT 5000)
                RETURNING *)
            INSERT INTO {archive} SELECT * FROM moved ON CONFLICT (id) DO NOTHING
        """).format(log=sql.Identifier(self.schema, "_trigger_log"),
                    archive=sql.Identifier(self.schema, "_trigger_log_archive"))
        with self.source.cursor() as cur:
            cur.execute(query, (self.archive_after, self.archive_after, FINAL_STATES))
            n = cur.rowcount
        self.source.commit()
        if n:
            with self.state.lock:
                self.stats.archived += n

    def update_high_water_mark(self):
        """The highest id processed with every visible entry at or below it
        final (or archived).  It can go down: an entry committed late below
        it shows up NEW, which is why a log consumer's "max id seen" is no
        safe mark."""
        query = sql.SQL("""
            WITH open_ AS (
                SELECT least((SELECT min(id) FROM {log} WHERE state = 'NEW'),
                             (SELECT min(id) FROM {log} WHERE state = 'PENDING')) AS lowest)
            SELECT greatest(
                     (SELECT max(id) FROM {log}, open_ WHERE id < coalesce(open_.lowest, 2147483647)
                         AND state <> ALL (ARRAY['NEW', 'PENDING'])),
                     (SELECT max(id) FROM {archive}, open_ WHERE id < coalesce(open_.lowest, 2147483647)))
        """).format(log=sql.Identifier(self.schema, "_trigger_log"),
                    archive=sql.Identifier(self.schema, "_trigger_log_archive"))
        with self.source.cursor() as cur:
            cur.execute(query)
            mark = cur.fetchone()[0] or 0
        self.source.commit()
        self.state.set_connect_high_water_mark(self.name, mark)


class ReloadRewriter:
    """A mapping reload in connect-log mode: Connect reads the object back
    from Salesforce and rewrites the table.  Here the mirror's rows replace
    the source table's rows, in one source transaction with xmlbinary hex,
    so that nothing is logged and _hc_lastop reads SYNCED."""

    def __init__(self, source_dsn, mirror_dsn):
        self.source_dsn = source_dsn
        self.mirror_dsn = mirror_dsn

    def rewrite(self, schema, table):
        """Returns the number of rows written; raises on database errors."""
        mirror = open_db(self.mirror_dsn, "salesforce reload")
        try:
            with mirror.cursor() as cur:
                cur.execute(sql.SQL("SELECT coalesce(jsonb_agg(to_jsonb(t) ORDER BY t.id), '[]')::text FROM {} t")
                            .format(sql.Identifier(schema, table)))
                rows_json = cur.fetchone()[0]
            mirror.commit()
        finally:
            mirror.close()
        rows = json.loads(rows_json)
        source = open_db(self.source_dsn, "connect reload")
        try:
            hex_session(source)
            with source.cursor() as cur:
                src_cols = [n for n, _ in table_columns(cur, schema, table)]
                if not src_cols:
                    raise LookupError("table %s.%s does not exist on the source" % (schema, table))
                for row in rows:
                    if "_hc_lastop" in src_cols:
                        row["_hc_lastop"] = "SYNCED"
                cols = [c for c in src_cols if c == "_hc_lastop" or (rows and c in rows[0])]
                ident = sql.Identifier(schema, table)
                cur.execute(sql.SQL("DELETE FROM {}").format(ident))
                if rows:
                    cur.execute(sql.SQL("INSERT INTO {t} ({cols}) SELECT {cols} "
                                        "FROM jsonb_populate_recordset(NULL::{t}, %s)").format(
                        t=ident, cols=sql.SQL(", ").join(map(sql.Identifier, cols))), (json.dumps(rows),))
            source.commit()
        finally:
            source.close()
        return len(rows)


def write_errors(source_dsn, schema, table=None, hours=24):
    """FAILED entries of the log and its archive created in the last hours,
    newest first: GET .../errors, as the CLI's connect:diagnose shows."""
    conn = open_db(source_dsn, "connect errors")
    try:
        hex_session(conn)
        parts = []
        for rel in ("_trigger_log", "_trigger_log_archive"):
            parts.append(sql.SQL("SELECT id, table_name, record_id, sf_message, created_at FROM {} "
                                 "WHERE state = 'FAILED' AND created_at > now() - make_interval(hours => %s)"
                                 " AND (%s::text IS NULL OR table_name = %s)")
                         .format(sql.Identifier(schema, rel)))
        query = sql.SQL(" UNION ALL ").join(parts) + sql.SQL(" ORDER BY 1 DESC")
        with conn.cursor() as cur:
            cur.execute(query, (hours, table, table) * 2)
            rows = cur.fetchall()
        conn.commit()
    finally:
        conn.close()
    return [{"id": r[0], "table_name": r[1], "record_id": r[2], "message": r[3],
             "created_at": r[4].isoformat() if r[4] else None} for r in rows]


def verify_tables(source_cur, schema):
    """The tables --verify compares in connect-log mode, and the columns it
    leaves out (Connect's bookkeeping, which Salesforce does not have)."""
    return logged_tables(source_cur, schema), STATUS_COLUMNS
