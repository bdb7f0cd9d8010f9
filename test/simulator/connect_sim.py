#!/usr/bin/python3
"""connect_sim: a stand-in for Heroku Connect, for tests and the demo.

It plays two roles, in one process, each switched on by its flags:

* An HTTP server that speaks the subset of the Heroku Connect API v3 that
  connect_guard calls (pause, resume, reload, the deep connection GET), a
  signed-webhook receiver, and a control API under /_sim/ with which a test
  reads what was called and injects failures.

* A sync consumer that takes batches from connect_guard on a source database
  (connect_next_batch / connect_batch_events / connect_finish_batch) and
  applies them to a mirror database, exactly once, across restarts of
  either database and of itself.

One-shot modes --drain and --verify consume everything and compare source
and mirror.  See README.md beside this file.

Only the standard library and psycopg2 are used, so that it runs on the
distribution's /usr/bin/python3 with python3-psycopg2 and nothing else.
"""

import argparse
import dataclasses
import datetime
import hashlib
import hmac
import json
import logging
import os
import re
import select
import signal
import socket
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import connect_config
from sim_worker import SourceMirrorWorker, one_line, open_db

try:
    import psycopg2
    import psycopg2.extensions
    import psycopg2.extras
    from psycopg2 import sql

    import connect_log
except ImportError:  # the HTTP server alone does not need a database driver
    psycopg2 = None
    connect_log = None

log = logging.getLogger("connect_sim")

# Stable ids for connections and mappings that were declared without one, so
# that restarting the simulator with the same config gives the same ids.
ID_NAMESPACE = uuid.UUID("6f1c3b52-5d0e-4a8e-9a57-2f1c0d3c9e11")

STATE_NAME = re.compile(r"^[A-Z][A-Z_]{0,62}$")
SIGNATURE_HEADER = "X-Connect-Guard-Signature"
# Fault modes: any HTTP error status ("500", "409", "503", ...) answers it;
# the rest are described in set_fault.
FAULT_MODES = ("timeout", "hang", "slow", "echo_token", "none")
FAULT_STATUS = re.compile(r"^[45][0-9][0-9]$")

# Entries fetched from the source per round trip, and applied to the mirror
# per duplicate check.
CHUNK = 500


def utc_now(timespec="milliseconds"):
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec=timespec)


class ClientError(Exception):
    """A request the simulator refuses; carries the HTTP status."""

    def __init__(self, status, message, error_id="bad_request"):
        super().__init__(message)
        self.status = status
        self.error_id = error_id


# ---------------------------------------------------------------------------
# Simulated Connect state: connections, mappings, recorded requests, faults
# ---------------------------------------------------------------------------

@dataclasses.dataclass
class Mapping:
    id: str
    object_name: str
    table_schema: str
    table_name: str
    state: str = "DATA_SYNCED"
    initial_state: str = "DATA_SYNCED"
    origin: str = "config"          # config | consumer | control: what /_sim/reset keeps
    counts: dict = dataclasses.field(default_factory=lambda: {
        "inserts": 0, "updates": 0, "deletes": 0, "truncates": 0, "applied": 0, "errors": 0})
    # bumped on every state change, and on every reload request, so that a
    # reload thread started before a later change does not overwrite it
    generation: int = 0
    # the export file's config of this mapping; None until imported or set
    # (then the export derives it from the table)
    config: object = None
    initial_config: object = None
    # when its last reload started and finished (UTC, ISO 8601), as the deep
    # GET shows them: a client proves a reload started after its request by
    # a reload_started_at later than the one it saw before (README)
    reload_started_at: object = None
    reload_finished_at: object = None

    @property
    def access(self):
        return (self.config or {}).get("access", "read_write")

    def to_json(self):
        return {"id": self.id, "object_name": self.object_name, "state": self.state,
                "table_schema": self.table_schema, "table_name": self.table_name,
                "access": self.access, "counts": dict(self.counts),
                "reload_started_at": self.reload_started_at, "reload_finished_at": self.reload_finished_at}


@dataclasses.dataclass
class Connection:
    id: str
    name: str
    state: str = "IDLE"
    initial_state: str = "IDLE"
    db_key: str = "DATABASE_URL"
    schema_name: str = "salesforce"
    high_water_mark: int = 0
    origin: str = "config"
    mappings: list = dataclasses.field(default_factory=list)
    # "connect_guard": the consumer takes connect_guard's batches;
    # "connect": the connection's log is Connect's own SCHEMA._trigger_log
    log_mode: str = "connect_guard"
    # what the export file tells about the connection
    app_name: str = "connect-sim-app"
    organization_id: str = "00D000000000001EAA"
    api_version: str = "52.0"
    features: dict = dataclasses.field(default_factory=dict)
    logplex_log_enabled: bool = False

    def to_json(self, deep):
        out = {"id": self.id, "name": self.name, "state": self.state, "db_key": self.db_key,
               "schema_name": self.schema_name, "high_water_mark": self.high_water_mark,
               "app_name": self.app_name, "organization_id": self.organization_id,
               "log_mode": self.log_mode}
        if deep:
            out["mappings"] = [m.to_json() for m in self.mappings]
        return out


@dataclasses.dataclass
class FaultRule:
    mode: str
    remaining: object               # int, or None for every matching request
    path_prefix: object             # str, or None for every request outside /_sim/
    method: object = None           # "GET", "POST", or None for any
    path_pattern: object = None     # a regex the whole path must match, or None
    status: object = None           # echo_token: the status to answer with
    seconds: object = None          # slow: the delay before the real answer

    def matches(self, method, path):
        if path.startswith("/_sim/"):
            return False            # the control API must stay usable to undo a fault
        if self.method is not None and self.method != method:
            return False
        if self.path_pattern is not None and re.fullmatch(self.path_pattern, path) is None:
            return False
        return self.path_prefix is None or path.startswith(self.path_prefix)

    def to_json(self):
        return dataclasses.asdict(self)


@dataclasses.dataclass
class ConsumerStats:
    connection: str
    status: str = "starting"        # starting | idle | applying | paused | backoff | stopped
    batches: int = 0
    entries_applied: int = 0
    duplicates_skipped: int = 0
    missing_rows: int = 0           # UPDATE/DELETE that found no row on the mirror
    high_water_mark: int = 0
    last_batch_id: object = None
    last_batch_at: object = None
    errors: int = 0
    last_error: object = None
    reconnects: dict = dataclasses.field(default_factory=lambda: {"source": 0, "mirror": 0})

    def to_json(self):
        out = dataclasses.asdict(self)
        out["in_batch"] = self.status == "applying"
        return out


class SimState:
    """Everything the HTTP side and the consumer share, behind one lock."""

    def __init__(self, config, reload_seconds=1.0, request_log=None, record_control=False,
                 reload_delay=0.0, source_dsn=None, reload_rewriter=None):
        self.lock = threading.RLock()
        self.config = config or {}
        self.reload_seconds = reload_seconds
        self.reload_delay = reload_delay
        self.request_log = request_log
        self.record_control = record_control
        self.connections = []
        self.requests = []
        self.webhooks = []
        self.imports = []           # accepted POST .../actions/import files
        self.faults = []            # FaultRules, the first matching one applies
        self.consumer = None        # ConsumerStats when this process consumes
        # --connect-log: the drainer's progress, the entry faults it takes
        # (dicts, see set_entry_fault) and its stall
        self.connect_log = None
        self.entry_faults = []
        self.stall_seconds = 0.0
        # where the export reads table columns from, and what rewrites a
        # table on a reload (--connect-log only)
        self.source_dsn = source_dsn
        self.reload_rewriter = reload_rewriter
        # hung requests watch this; a reset bumps it to let them go
        self.hang_generation = 0
        self.shutting_down = threading.Event()
        for spec in self.config.get("connections", []):
            self._upsert_connection(spec, origin="config")
        for conn in self.connections:
            conn.initial_state = conn.state
            for m in conn.mappings:
                m.initial_state = m.state
                m.initial_config = m.config

    # -- lookups ----------------------------------------------------------

    def _connection_by(self, conn_id=None, name=None):
        for conn in self.connections:
            if (conn_id is not None and conn.id == conn_id) or \
               (conn_id is None and name is not None and conn.name == name):
                return conn
        return None

    def _mapping_by_id(self, mapping_id):
        for conn in self.connections:
            for m in conn.mappings:
                if m.id == mapping_id:
                    return conn, m
        return None, None

    def mapping_or_404(self, mapping_id):
        _, mapping = self._mapping_by_id(mapping_id)
        if mapping is None:
            raise ClientError(404, "mapping %s not found" % mapping_id, "not_found")
        return mapping

    def connection_or_404(self, conn_id):
        conn = self._connection_by(conn_id=conn_id)
        if conn is None:
            raise ClientError(404, "connection %s not found" % conn_id, "not_found")
        return conn

    # -- creation and updates ---------------------------------------------

    def _upsert_connection(self, spec, origin):
        """Finds the connection spec names (by id, else name), creating it if
        needed, and applies the fields spec gives."""
        if not isinstance(spec, dict) or not (spec.get("id") or spec.get("name")):
            raise ClientError(400, "a connection needs an id or a name")
        conn = self._connection_by(conn_id=spec.get("id")) if spec.get("id") else None
        if conn is None and spec.get("name"):
            conn = self._connection_by(name=spec["name"])
        if conn is None:
            name = spec.get("name") or spec["id"]
            conn = Connection(id=spec.get("id") or str(uuid.uuid5(ID_NAMESPACE, "connection/" + name)),
                              name=name, origin=origin)
            self.connections.append(conn)
        for key in ("db_key", "schema_name", "app_name", "organization_id", "api_version"):
            if key in spec:
                setattr(conn, key, str(spec[key]))
        if "features" in spec:
            if not isinstance(spec["features"], dict):
                raise ClientError(400, "features must be an object")
            conn.features = dict(spec["features"])
        if "logplex_log_enabled" in spec:
            conn.logplex_log_enabled = bool(spec["logplex_log_enabled"])
        if "state" in spec:
            conn.state = check_state_name(spec["state"])
        if "high_water_mark" in spec:
            conn.high_water_mark = int(spec["high_water_mark"])
        for mspec in spec.get("mappings", []):
            self._upsert_mapping(conn, mspec, origin)
        return conn

    def _upsert_mapping(self, conn, spec, origin):
        if not isinstance(spec, dict) or not (spec.get("id") or spec.get("object_name")):
            raise ClientError(400, "a mapping needs an id or an object_name")
        mapping = next((m for m in conn.mappings
                        if (spec.get("id") and m.id == spec["id"]) or
                        (not spec.get("id") and m.object_name == spec["object_name"])), None)
        if mapping is None:
            object_name = spec.get("object_name") or spec["id"]
            # Connect names a mapped table after the object, lower case, in
            # the connection's schema
            mapping = Mapping(
                id=spec.get("id") or str(uuid.uuid5(ID_NAMESPACE, "mapping/%s/%s" % (conn.id, object_name))),
                object_name=object_name,
                table_schema=spec.get("table_schema") or conn.schema_name,
                table_name=spec.get("table_name") or object_name.lower(),
                origin=origin)
            conn.mappings.append(mapping)
        if "state" in spec:
            self._set_mapping_state(mapping, check_state_name(spec["state"]))
        self._set_mapping_config(mapping, spec)
        return mapping

    def _set_mapping_config(self, mapping, spec):
        """A mapping's export config ("config", checked as an import would
        check it) or just its "access"."""
        if "config" in spec:
            if spec["config"] is None:
                mapping.config = None
            else:
                try:
                    mapping.config = connect_config.validate_import(
                        {"version": 1, "mappings": [{"object_name": mapping.object_name,
                                                     "config": spec["config"]}]})[0][1]
                except connect_config.ConfigError as e:
                    raise ClientError(400, str(e).replace("mappings[0].", "", 1))
        if "access" in spec:
            if spec["access"] not in connect_config.ACCESS:
                raise ClientError(400, "access must be read_only or read_write")
            mapping.config = dict(mapping.config or connect_config.default_mapping_config(),
                                  access=spec["access"])

    def _set_mapping_state(self, mapping, state):
        mapping.state = state
        mapping.generation += 1

    def _start_reload(self, mapping):
        self._set_mapping_state(mapping, "RELOAD_TABLE")
        mapping.reload_started_at = utc_now("microseconds")
        mapping.reload_finished_at = None

    def apply_patch(self, body):
        """POST /_sim/state: creates or changes connections and mappings."""
        if not isinstance(body, dict):
            raise ClientError(400, "expected a JSON object")
        with self.lock:
            for spec in body.get("connections", []):
                self._upsert_connection(spec, origin="control")
            for spec in body.get("mappings", []):
                mapping = self.mapping_or_404(spec.get("id"))
                if "state" in spec:
                    self._set_mapping_state(mapping, check_state_name(spec["state"]))
                self._set_mapping_config(mapping, spec)
            return self.snapshot()

    def snapshot(self):
        with self.lock:
            return {"connections": [c.to_json(deep=True) for c in self.connections]}

    def reset(self):
        """Back to the configured states, forgetting what tests added and
        what was recorded.  The consumer's progress stays: it describes the
        mirror, which a reset does not touch."""
        with self.lock:
            self.connections = [c for c in self.connections if c.origin != "control"]
            for conn in self.connections:
                conn.state = conn.initial_state
                conn.mappings = [m for m in conn.mappings if m.origin != "control"]
                for m in conn.mappings:
                    self._set_mapping_state(m, m.initial_state)
                    m.config = m.initial_config
                    m.reload_started_at = m.reload_finished_at = None
            self.requests.clear()
            self.webhooks.clear()
            self.imports.clear()
            self.faults = []
            self.entry_faults = []
            self.stall_seconds = 0.0
            self.hang_generation += 1

    # -- Connect actions ---------------------------------------------------

    def set_connection_state(self, conn_id, state):
        with self.lock:
            self.connection_or_404(conn_id).state = state

    def reload_mapping(self, mapping_id):
        """Answers at once; the reload starts reload_delay seconds later, as
        Connect's does: until then the mapping keeps the state it had (a
        client must not take that DATA_SYNCED for the end of its reload).
        Then RELOAD_TABLE; in --connect-log mode the table is rewritten from
        the mirror; DATA_SYNCED once reload_seconds have passed since the
        start and the rewrite is done."""
        with self.lock:
            conn, mapping = self._mapping_by_id(mapping_id)
            if mapping is None:
                raise ClientError(404, "mapping %s not found" % mapping_id, "not_found")
            if self.reload_delay <= 0:
                self._start_reload(mapping)
            else:
                mapping.generation += 1     # a reload still running for it gives way
            generation = mapping.generation
            rewrite = self.reload_rewriter is not None and conn.log_mode == "connect"
        thread = threading.Thread(target=self._run_reload, args=(mapping, generation, rewrite),
                                  name="reload", daemon=True)
        thread.start()

    def _run_reload(self, mapping, generation, rewrite):
        if self.reload_delay > 0:
            self.shutting_down.wait(self.reload_delay)
            with self.lock:
                if mapping.generation != generation:
                    return
                self._start_reload(mapping)
                generation = mapping.generation
        started = time.monotonic()
        while rewrite and not self.shutting_down.is_set():
            with self.lock:
                if mapping.generation != generation:
                    return
            try:
                rows = self.reload_rewriter.rewrite(mapping.table_schema, mapping.table_name)
                with self.lock:
                    if self.connect_log is not None:
                        self.connect_log.reloads += 1
                        self.connect_log.reload_rows += rows
                log.info("reload of %s.%s: %d rows rewritten from the mirror",
                         mapping.table_schema, mapping.table_name, rows)
                break
            except (psycopg2.Error, LookupError) as error:
                # e.g. refused by a fence: Connect keeps trying, and the
                # mapping stays RELOAD_TABLE meanwhile
                with self.lock:
                    if self.connect_log is not None:
                        self.connect_log.reload_errors += 1
                        self.connect_log.last_error = one_line(error)
                log.warning("reload of %s.%s failed: %s; retrying", mapping.table_schema,
                            mapping.table_name, one_line(error))
                self.shutting_down.wait(0.5)
        self.shutting_down.wait(max(0.0, self.reload_seconds - (time.monotonic() - started)))
        with self.lock:
            if mapping.generation == generation:
                self._set_mapping_state(mapping, "DATA_SYNCED")
                mapping.reload_finished_at = utc_now("microseconds")

    # -- export and import ---------------------------------------------------

    def source_columns(self, schema, table):
        """The table's columns on the source, or None when there is no
        source to ask."""
        if self.source_dsn is None or psycopg2 is None:
            return None
        try:
            conn = psycopg2.connect(self.source_dsn, connect_timeout=5,
                                    application_name="connect_sim export")
            try:
                with conn.cursor() as cur:
                    cur.execute(connect_log.COLUMNS_SQL, (schema, table))
                    return [name for name, _ in cur.fetchall()] or None
            finally:
                conn.close()
        except psycopg2.Error as error:
            log.warning("export: cannot read %s.%s from the source: %s", schema, table, one_line(error))
            return None

    def export_config(self, conn_id):
        with self.lock:
            conn = self.connection_or_404(conn_id)
            mappings = [(m.object_name, m.table_schema, m.table_name, m.config) for m in conn.mappings]
        configs = []
        for object_name, schema, table, config in mappings:
            if config is None:
                config = connect_config.default_mapping_config(self.source_columns(schema, table))
            configs.append((object_name, json.loads(json.dumps(config))))
        return connect_config.export_file(conn, configs, utc_now())

    def import_config(self, conn_id, doc):
        """Checks the file (400 naming the bad key) and applies it: the
        mappings it names get its config, those it adds are created; those
        it does not name stay, as with Connect's import."""
        try:
            mappings = connect_config.validate_import(doc)
        except connect_config.ConfigError as e:
            raise ClientError(400, "invalid import file: %s" % e, "invalid_params")
        with self.lock:
            conn = self.connection_or_404(conn_id)
            created, updated = [], []
            for object_name, config in mappings:
                mapping = next((m for m in conn.mappings if m.object_name.lower() == object_name.lower()), None)
                if mapping is None:
                    mapping = self._upsert_mapping(conn, {"object_name": object_name}, origin="control")
                    created.append(object_name)
                else:
                    updated.append(mapping.object_name)
                mapping.config = json.loads(json.dumps(config))
            record = {"seq": len(self.imports) + 1, "time": utc_now(), "connection": conn.id,
                      "created": created, "updated": updated, "file": doc}
            self.imports.append(record)
            return {"imported": len(mappings), "created": created, "updated": updated}

    # -- faults -------------------------------------------------------------

    def set_fault(self, body):
        """POST /_sim/fail.  mode: an HTTP error status ("500", "409", ...)
        answers it; "timeout" waits --hang-seconds and answers 504; "hang"
        never answers; "slow" answers normally after "seconds"; "echo_token"
        answers "status" (400) with the request's bearer token in the error
        message, JSON-escaped as \\uXXXX, as a careless service might;
        "none" clears every rule and releases hung requests.  The rule
        matches path_prefix, path_pattern (a regex for the whole path) and
        method, each when given.  It replaces the rules so far, or is added
        after them with "add": true."""
        if not isinstance(body, dict):
            raise ClientError(400, "expected a JSON object")
        mode = str(body.get("mode"))
        if mode not in FAULT_MODES and not FAULT_STATUS.match(mode):
            raise ClientError(400, "mode must be an HTTP error status (400-599) or one of %s"
                              % ", ".join(FAULT_MODES))
        count = body.get("count")
        if count is not None and (not isinstance(count, int) or count < 1):
            raise ClientError(400, "count must be a positive integer or null")
        method = body.get("method")
        if method is not None and method not in ("GET", "POST", "PUT", "PATCH", "DELETE"):
            raise ClientError(400, "method must be GET, POST, PUT, PATCH or DELETE")
        pattern = body.get("path_pattern")
        if pattern is not None:
            try:
                re.compile(pattern)
            except (re.error, TypeError):
                raise ClientError(400, "path_pattern is not a valid regular expression")
        status = body.get("status", 400 if mode == "echo_token" else None)
        if status is not None and (not isinstance(status, int) or not 400 <= status <= 599):
            raise ClientError(400, "status must be an HTTP error status (400-599)")
        seconds = body.get("seconds")
        if seconds is not None and (not isinstance(seconds, (int, float)) or seconds < 0):
            raise ClientError(400, "seconds must be a number >= 0")
        with self.lock:
            if mode == "none":
                self.faults = []
                self.hang_generation += 1   # let requests hung so far go
            else:
                rule = FaultRule(mode, count, body.get("path_prefix"), method, pattern, status, seconds)
                self.faults = (self.faults if body.get("add") else []) + [rule]
            return self.faults_json()

    def faults_json(self):
        with self.lock:
            rules = [r.to_json() for r in self.faults]
            # "fault": the first rule, as this API answered before rules were a list
            return {"fault": rules[0] if rules else None, "faults": rules}

    def take_fault(self, method, path):
        """The fault rule to inject into this request, if any, counting it
        down (a copy: the rule may be gone by the time it is used)."""
        with self.lock:
            for rule in self.faults:
                if not rule.matches(method, path):
                    continue
                if rule.remaining is not None:
                    rule.remaining -= 1
                    if rule.remaining <= 0:
                        self.faults.remove(rule)
                return dataclasses.replace(rule)
            return None

    # -- Connect's side of an adopted log (--connect-log) -------------------

    def set_entry_fault(self, body):
        """POST /_sim/connect_log/fail: the next "count" entries (null: all)
        matching "table", "action" and "record_id" (each when given) are
        FAILED with sf_result (400) and "message", as Salesforce refusing
        them.  {"clear": true} drops the rules."""
        if not isinstance(body, dict):
            raise ClientError(400, "expected a JSON object")
        with self.lock:
            if body.get("clear"):
                self.entry_faults = []
                return {"entry_faults": []}
            count = body.get("count", 1)
            if count is not None and (not isinstance(count, int) or count < 1):
                raise ClientError(400, "count must be a positive integer or null")
            action = body.get("action")
            if action is not None and action not in ("INSERT", "UPDATE", "DELETE"):
                raise ClientError(400, "action must be INSERT, UPDATE or DELETE")
            record_id = body.get("record_id")
            if record_id is not None and not isinstance(record_id, int):
                raise ClientError(400, "record_id must be an integer")
            sf_result = body.get("sf_result", 400)
            if not isinstance(sf_result, int):
                raise ClientError(400, "sf_result must be an integer")
            self.entry_faults.append({
                "count": count, "table": body.get("table"), "action": action, "record_id": record_id,
                "sf_result": sf_result,
                "message": str(body.get("message") or "REQUIRED_FIELD_MISSING: injected by the simulator")})
            return {"entry_faults": list(self.entry_faults)}

    def take_entry_fault(self, entry):
        with self.lock:
            for rule in self.entry_faults:
                if (rule["table"] is None or rule["table"] == entry.table) and \
                   (rule["action"] is None or rule["action"] == entry.action) and \
                   (rule["record_id"] is None or rule["record_id"] == entry.record_id):
                    if rule["count"] is not None:
                        rule["count"] -= 1
                        if rule["count"] <= 0:
                            self.entry_faults.remove(rule)
                    return rule["sf_result"], rule["message"]
            return None

    def set_stall(self, body):
        if not isinstance(body, dict) or not isinstance(body.get("seconds"), (int, float)) \
                or body["seconds"] < 0:
            raise ClientError(400, "expected {\"seconds\": a number >= 0}")
        with self.lock:
            self.stall_seconds = float(body["seconds"])
            return {"stall_seconds": self.stall_seconds}

    def connect_log_stall(self):
        with self.lock:
            return self.stall_seconds

    def ensure_connect_log(self, name, schema):
        with self.lock:
            conn = self._connection_by(name=name)
            if conn is None:
                conn = self._upsert_connection({"name": name, "schema_name": schema}, origin="consumer")
            elif conn.origin == "control":
                conn.origin = "consumer"
            conn.schema_name = schema
            conn.log_mode = "connect"
            self.connect_log = connect_log.ConnectLogStats(connection=name, schema=schema)
            return self.connect_log

    def adopt_connect_tables(self, name, schema, tables):
        """Maps the logged tables that no mapping names yet."""
        with self.lock:
            conn = self._connection_by(name=name)
            for table in tables:
                if any(m.table_schema == schema and m.table_name == table for m in conn.mappings):
                    continue
                object_name = connect_log.object_name_of(table)
                conn.mappings.append(Mapping(
                    id=str(uuid.uuid5(ID_NAMESPACE, "mapping/%s/%s.%s" % (conn.id, schema, table))),
                    object_name=object_name, table_schema=schema, table_name=table, origin="consumer"))

    def mapping_access(self, name, schema, table):
        """read_write or read_only, or None when no mapping names the table."""
        with self.lock:
            conn = self._connection_by(name=name)
            mapping = next((m for m in conn.mappings if m.table_schema == schema and m.table_name == table),
                           None) if conn else None
            return mapping.access if mapping else None

    def connect_log_sending(self, name, sending):
        with self.lock:
            conn = self._connection_by(name=name)
            if sending:
                if conn is not None and conn.state == "IDLE":
                    conn.state = "POLLING_DB_CHANGES"
                self.connect_log.status = "sending"
            else:
                if conn is not None and conn.state == "POLLING_DB_CHANGES":
                    conn.state = "IDLE"
                self.connect_log.status = "idle"

    def count_connect_entries(self, name, schema, entries):
        keys = {"INSERT": "inserts", "UPDATE": "updates", "DELETE": "deletes"}
        with self.lock:
            conn = self._connection_by(name=name)
            for entry in entries:
                mapping = next((m for m in conn.mappings
                                if m.table_schema == schema and m.table_name == entry.table), None)
                if mapping is None:
                    continue
                if entry.state == "SUCCESS":
                    mapping.counts[keys.get(entry.action, "applied")] += 1
                    mapping.counts["applied"] += 1
                elif entry.state == "FAILED":
                    mapping.counts["errors"] += 1

    def set_connect_high_water_mark(self, name, mark):
        """Not max(): Connect's mark is what it sees now (see connect_log)."""
        with self.lock:
            self.connect_log.high_water_mark = mark
            conn = self._connection_by(name=name)
            if conn is not None:
                conn.high_water_mark = mark

    def connect_log_json(self):
        with self.lock:
            if self.connect_log is None:
                return {"running": False}
            return dict(self.connect_log.to_json(), running=self.connect_log.status != "stopped",
                        stall_seconds=self.stall_seconds, entry_faults=list(self.entry_faults))

    # -- recording ----------------------------------------------------------

    def should_record(self, path):
        return self.record_control or not path.startswith("/_sim/")

    def record_request(self, record):
        with self.lock:
            record["seq"] = len(self.requests) + 1
            self.requests.append(record)
            if self.request_log:
                with open(self.request_log, "a", encoding="utf-8") as f:
                    f.write(json.dumps(record, sort_keys=True) + "\n")

    def record_webhook(self, event):
        with self.lock:
            event["seq"] = len(self.webhooks) + 1
            self.webhooks.append(event)
            return event["seq"]

    # -- what the consumer tells and asks ----------------------------------

    def ensure_consumer_connection(self, name):
        with self.lock:
            conn = self._connection_by(name=name)
            if conn is None:
                conn = self._upsert_connection({"name": name}, origin="consumer")
            elif conn.origin == "control":
                conn.origin = "consumer"    # a reset must not drop the consumer's connection
            self.consumer = ConsumerStats(connection=name)
            return conn

    def adopt_mappings(self, name, rows):
        """Adds the tables the source maps for this connection as mappings
        (rows of connect_mappings: schema, table, object name, remote id),
        so that the deep GET lists what is really synced."""
        with self.lock:
            conn = self._connection_by(name=name)
            for schema, table, object_name, remote_id in rows:
                if any(m.table_schema == schema and m.table_name == table for m in conn.mappings):
                    continue
                # the source's remote_id is Connect's mapping id, when it has one
                mapping_id = remote_id or str(uuid.uuid5(ID_NAMESPACE, "mapping/%s/%s.%s" % (conn.id, schema, table)))
                conn.mappings.append(Mapping(id=mapping_id, object_name=object_name, table_schema=schema,
                                             table_name=table, origin="consumer"))

    def raise_high_water_mark(self, name, entry_id):
        with self.lock:
            self.consumer.high_water_mark = max(self.consumer.high_water_mark, entry_id)
            conn = self._connection_by(name=name)
            if conn is not None:
                conn.high_water_mark = max(conn.high_water_mark, entry_id)

    def is_paused(self, name):
        with self.lock:
            conn = self._connection_by(name=name)
            return conn is not None and conn.state == "PAUSED"

    def batch_started(self, name):
        with self.lock:
            conn = self._connection_by(name=name)
            if conn is not None and conn.state == "IDLE":
                conn.state = "POLLING_DB_CHANGES"
            self.consumer.status = "applying"

    def batch_ended(self, name, status):
        # a pause that came during the batch stays: only our own state is undone
        with self.lock:
            conn = self._connection_by(name=name)
            if conn is not None and conn.state == "POLLING_DB_CHANGES":
                conn.state = "IDLE"
            self.consumer.status = status

    def record_progress(self, name, tally):
        """Called once the mirror has committed what tally counts."""
        with self.lock:
            stats = self.consumer
            stats.entries_applied += tally.applied
            stats.duplicates_skipped += tally.duplicates
            stats.missing_rows += tally.missing
            self.raise_high_water_mark(name, tally.max_id)
            conn = self._connection_by(name=name)
            if conn is None:
                return
            for (schema, table), counts in tally.tables.items():
                mapping = next((m for m in conn.mappings
                                if m.table_schema == schema and m.table_name == table), None)
                if mapping is not None:
                    for key, n in counts.items():
                        mapping.counts[key] += n

    def consumer_json(self):
        with self.lock:
            if self.consumer is None:
                return {"running": False}
            return dict(self.consumer.to_json(), running=self.consumer.status != "stopped")


def check_state_name(state):
    if not isinstance(state, str) or not STATE_NAME.match(state):
        raise ClientError(400, "invalid state %r: use upper-case letters and _" % (state,))
    return state


# ---------------------------------------------------------------------------
# HTTP server
# ---------------------------------------------------------------------------

class Response:
    def __init__(self, status, body=None, raw=None):
        self.status = status
        self.body = body
        self.raw = raw              # bytes sent as they are (JSON a test wrote by hand)


HANG = object()                     # a handler's answer meaning: do not answer


class SimServer(ThreadingHTTPServer):
    daemon_threads = True           # a hung request must not keep the process alive

    def __init__(self, address, state, token, webhook_secret, hang_seconds, lenient_headers=False):
        self.state = state
        self.token = token
        self.webhook_secret = webhook_secret
        self.hang_seconds = hang_seconds
        self.lenient_headers = lenient_headers
        super().__init__(address, Handler)


class Handler(BaseHTTPRequestHandler):
    server_version = "connect-sim/1.0"
    # one request per TCP connection: a hung request then ends when its
    # client closes, and no keep-alive state is left to reason about
    protocol_version = "HTTP/1.0"

    ROUTES = [
        ("GET", r"/api/v3/connections", "api_list_connections"),
        ("GET", r"/api/v3/connections/(?P<cid>[^/]+)", "api_get_connection"),
        ("POST", r"/api/v3/connections/(?P<cid>[^/]+)/actions/pause", "api_pause"),
        ("POST", r"/api/v3/connections/(?P<cid>[^/]+)/actions/resume", "api_resume"),
        ("GET", r"/api/v3/connections/(?P<cid>[^/]+)/actions/export", "api_export"),
        ("POST", r"/api/v3/connections/(?P<cid>[^/]+)/actions/import", "api_import"),
        ("GET", r"/api/v3/connections/(?P<cid>[^/]+)/errors", "api_connection_errors"),
        ("GET", r"/api/v3/mappings/(?P<mid>[^/]+)", "api_get_mapping"),
        ("POST", r"/api/v3/mappings/(?P<mid>[^/]+)/actions/reload", "api_reload"),
        ("GET", r"/api/v3/mappings/(?P<mid>[^/]+)/errors", "api_mapping_errors"),
        ("POST", r"/webhook", "webhook"),
        ("GET", r"/_sim/requests", "sim_requests"),
        ("GET", r"/_sim/webhooks", "sim_webhooks"),
        ("GET", r"/_sim/fail", "sim_get_fail"),
        ("POST", r"/_sim/fail", "sim_fail"),
        ("GET", r"/_sim/imports", "sim_imports"),
        ("GET", r"/_sim/connect_log", "sim_connect_log"),
        ("POST", r"/_sim/connect_log/fail", "sim_connect_log_fail"),
        ("POST", r"/_sim/connect_log/stall", "sim_connect_log_stall"),
        ("GET", r"/_sim/state", "sim_get_state"),
        ("POST", r"/_sim/state", "sim_post_state"),
        ("POST", r"/_sim/reset", "sim_reset"),
        ("GET", r"/_sim/consumer", "sim_consumer"),
        ("GET", r"/_sim/health", "sim_health"),
    ]

    def do_GET(self):
        self.handle_request("GET")

    def do_POST(self):
        self.handle_request("POST")

    def do_PUT(self):
        self.handle_request("PUT")

    def do_PATCH(self):
        self.handle_request("PATCH")

    def do_DELETE(self):
        self.handle_request("DELETE")

    def log_message(self, fmt, *args):
        log.debug("http %s " + fmt, self.client_address[0], *args)

    # -- the request's life -------------------------------------------------

    def handle_request(self, method):
        started = time.monotonic()
        url = urlsplit(self.path)
        self.query = parse_qs(url.query)
        self.raw_body = self.read_body()
        state = self.server.state
        fault = state.take_fault(method, url.path)
        try:
            result = self.injected(fault) if fault else None
            if result is None:
                result = self.dispatch(method, url.path)
        except ClientError as e:
            result = Response(e.status, {"id": e.error_id, "message": str(e)})
        if result is HANG:
            outcome = self.hang_until_client_leaves()
            status = None
        else:
            self.send_json(result)
            outcome, status = "answered", result.status
        if state.should_record(url.path):
            state.record_request({
                "time": utc_now(), "method": method, "path": self.path,
                "headers": redact_headers(self.headers), "body": self.raw_body.decode("utf-8", "replace"),
                "status": status, "outcome": outcome, "fault": fault.mode if fault else None,
                "duration_ms": round((time.monotonic() - started) * 1000, 1)})

    def read_body(self):
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def dispatch(self, method, path):
        # the token first, as Connect does: without it nothing about the API
        # is told, not even which ids exist
        if path.startswith("/api/"):
            self.check_token()
            if not self.server.lenient_headers:
                self.check_client_headers()
        allowed = False
        for route_method, pattern, handler_name in self.ROUTES:
            match = re.fullmatch(pattern, path)
            if match is None:
                continue
            if route_method != method:
                allowed = True
                continue
            return getattr(self, handler_name)(**match.groupdict())
        if allowed:
            raise ClientError(405, "%s not allowed on %s" % (method, path), "method_not_allowed")
        raise ClientError(404, "no such endpoint: %s" % path, "not_found")

    def check_token(self):
        expected = "Bearer " + self.server.token
        given = self.headers.get("Authorization") or ""
        if not hmac.compare_digest(given.encode(), expected.encode()):
            raise ClientError(401, "invalid or missing bearer token", "unauthorized")

    def check_client_headers(self):
        """What the Heroku CLI's connect plugin sends on every request: a
        client header naming the caller, JSON accepted, JSON sent.  A
        client that forgets them is refused, so the omission is caught here
        and not by Connect."""
        if not (self.headers.get("Heroku-Client") or "").strip():
            raise ClientError(400, "missing Heroku-Client header", "bad_request")
        accept = self.headers.get("Accept")
        if not accept:
            raise ClientError(400, "missing Accept header", "bad_request")
        accepted = [part.split(";")[0].strip().lower() for part in accept.split(",")]
        if not any(a in ("application/json", "application/*", "*/*") for a in accepted):
            raise ClientError(406, "Accept must allow application/json, not %s" % accept, "not_acceptable")
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if content_type != "application/json":
            raise ClientError(415, "Content-Type must be application/json, not %s"
                              % (self.headers.get("Content-Type") or "missing"), "unsupported_media_type")

    def injected(self, rule):
        """The injected answer, HANG, or None to answer normally."""
        mode = rule.mode
        if FAULT_STATUS.match(mode):
            status = int(mode)
            error_id = {401: "unauthorized", 403: "forbidden", 404: "not_found", 409: "conflict",
                        429: "rate_limited", 503: "service_unavailable"}.get(status, "internal_error")
            return Response(status, {"id": error_id, "message": "injected failure"})
        if mode == "timeout":
            self.server.state.shutting_down.wait(self.server.hang_seconds)
            return Response(504, {"id": "gateway_timeout", "message": "injected timeout"})
        if mode == "slow":
            self.server.state.shutting_down.wait(
                rule.seconds if rule.seconds is not None else self.server.hang_seconds)
            return None
        if mode == "echo_token":
            return Response(rule.status, raw=echo_token_body(self.headers.get("Authorization") or ""))
        return HANG

    def hang_until_client_leaves(self):
        """Holds the request without answering until the client closes its
        side (its timeout), a reset or fault 'none' releases it, or the
        simulator stops."""
        state = self.server.state
        generation = state.hang_generation
        sock = self.connection
        while not state.shutting_down.is_set() and state.hang_generation == generation:
            readable, _, _ = select.select([sock], [], [], 0.2)
            if not readable:
                continue
            try:
                if not sock.recv(1, socket.MSG_PEEK):
                    return "client_gone"
            except OSError:
                return "client_gone"
            time.sleep(0.2)         # the client sent more bytes; keep ignoring it
        self.close_connection = True
        return "released"

    def send_json(self, response):
        if response.raw is not None:
            payload = response.raw
        else:
            payload = b"" if response.body is None else json.dumps(response.body).encode()
        try:
            self.send_response(response.status)
            if response.body is not None or response.raw is not None:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except OSError:
            pass                    # the client is gone; its record says what we meant to send

    def json_body(self):
        try:
            return json.loads(self.raw_body or b"{}")
        except ValueError:
            raise ClientError(400, "the body is not valid JSON")

    # -- Connect API v3 -----------------------------------------------------

    def api_list_connections(self):
        state = self.server.state
        with state.lock:
            return Response(200, {"results": [c.to_json(deep=self.deep()) for c in state.connections]})

    def api_get_connection(self, cid):
        state = self.server.state
        with state.lock:
            conn = state.connection_or_404(cid)
            body = conn.to_json(deep=self.deep())
            if state.consumer is not None and state.consumer.connection == conn.name:
                body["consumer"] = state.consumer.to_json()
            if state.connect_log is not None and state.connect_log.connection == conn.name:
                body["consumer"] = state.connect_log.to_json()
            return Response(200, body)

    def deep(self):
        return self.query.get("deep", ["false"])[-1].lower() in ("true", "1", "yes")

    def api_pause(self, cid):
        self.server.state.set_connection_state(cid, "PAUSED")
        return Response(202)

    def api_resume(self, cid):
        self.server.state.set_connection_state(cid, "IDLE")
        return Response(202)

    def api_get_mapping(self, mid):
        state = self.server.state
        with state.lock:
            return Response(200, state.mapping_or_404(mid).to_json())

    def api_reload(self, mid):
        self.server.state.reload_mapping(mid)
        return Response(202)

    def api_export(self, cid):
        return Response(200, self.server.state.export_config(cid))

    def api_import(self, cid):
        try:
            doc = json.loads(self.raw_body or b"null")
        except ValueError:
            raise ClientError(400, "invalid import file: the body is not valid JSON", "invalid_params")
        return Response(202, self.server.state.import_config(cid, doc))

    def api_connection_errors(self, cid):
        state = self.server.state
        with state.lock:
            conn = state.connection_or_404(cid)
            schema, mode = conn.schema_name, conn.log_mode
        return Response(200, self.errors_of(mode, schema, None))

    def api_mapping_errors(self, mid):
        state = self.server.state
        with state.lock:
            conn, mapping = state._mapping_by_id(mid)
            if mapping is None:
                raise ClientError(404, "mapping %s not found" % mid, "not_found")
            schema, mode, table = mapping.table_schema, conn.log_mode, mapping.table_name
        return Response(200, self.errors_of(mode, schema, table))

    def errors_of(self, mode, schema, table):
        """Write errors of the last 24 hours, as the CLI shows them; only a
        connect-log connection has a log the simulator can read them from."""
        state = self.server.state
        if mode != "connect" or state.source_dsn is None:
            return {"count": 0, "results": []}
        try:
            results = connect_log.write_errors(state.source_dsn, schema, table)
        except psycopg2.Error as error:
            raise ClientError(503, "cannot read the trigger log: %s" % one_line(error), "service_unavailable")
        return {"count": len(results), "results": results}

    # -- webhook receiver -----------------------------------------------------

    def webhook(self):
        secret = self.server.webhook_secret
        if not secret:
            raise ClientError(401, "the simulator has no --webhook-secret to check signatures with",
                              "unauthorized")
        expected = "sha256=" + hmac.new(secret.encode(), self.raw_body, hashlib.sha256).hexdigest()
        given = self.headers.get(SIGNATURE_HEADER) or ""
        if not hmac.compare_digest(given.encode(), expected.encode()):
            raise ClientError(401, "bad or missing %s" % SIGNATURE_HEADER, "unauthorized")
        event = self.json_body()
        seq = self.server.state.record_webhook({"time": utc_now(), "event": event})
        return Response(200, {"received": seq})

    # -- control API -----------------------------------------------------------

    def sim_requests(self):
        state = self.server.state
        since = int(self.query.get("since", ["0"])[-1])
        with state.lock:
            return Response(200, {"requests": [r for r in state.requests if r["seq"] > since]})

    def sim_webhooks(self):
        state = self.server.state
        with state.lock:
            return Response(200, {"webhooks": list(state.webhooks)})

    def sim_fail(self):
        return Response(200, self.server.state.set_fault(self.json_body()))

    def sim_get_fail(self):
        return Response(200, self.server.state.faults_json())

    def sim_imports(self):
        state = self.server.state
        with state.lock:
            return Response(200, {"imports": list(state.imports)})

    def sim_connect_log(self):
        return Response(200, self.server.state.connect_log_json())

    def sim_connect_log_fail(self):
        return Response(200, self.server.state.set_entry_fault(self.json_body()))

    def sim_connect_log_stall(self):
        return Response(200, self.server.state.set_stall(self.json_body()))

    def sim_get_state(self):
        return Response(200, self.server.state.snapshot())

    def sim_post_state(self):
        return Response(200, self.server.state.apply_patch(self.json_body()))

    def sim_reset(self):
        self.server.state.reset()
        return Response(200, {"reset": True})

    def sim_consumer(self):
        return Response(200, self.server.state.consumer_json())

    def sim_health(self):
        return Response(200, {"ok": True})


def echo_token_body(authorization):
    """An error body that quotes the bearer token back, every character but
    letters and digits escaped as JSON \\uXXXX: valid JSON whose decoded
    message holds the token, while the raw body does not hold it verbatim."""
    token = authorization.split(" ", 1)[1] if " " in authorization else authorization
    escaped = "".join(c if c.isascii() and c.isalnum() else "\\u%04x" % ord(c) for c in token)
    return ('{"id": "unauthorized", "message": "token %s is not valid for this connection"}'
            % escaped).encode()


def redact_headers(headers):
    """The request's headers, with the bearer token hidden: request logs end
    up in CI artifacts."""
    out = {}
    for key, value in headers.items():
        if key.lower() == "authorization":
            scheme = value.split(" ", 1)[0] if " " in value else ""
            value = (scheme + " ***").strip()
        out[key] = value
    return out


# ---------------------------------------------------------------------------
# Sync consumer: source batches -> mirror, exactly once
# ---------------------------------------------------------------------------

# Explicit columns, jsonb as text: psycopg2 would parse jsonb into Python
# floats and lose numeric precision; as text it goes back to the mirror as is.
EVENTS_SQL = """
    SELECT id, action, table_schema, table_name, old::text, "values"::text
      FROM connect_batch_events(%s)
     ORDER BY id
"""

MAPPINGS_SQL = """
    SELECT table_schema, table_relname, object_name, remote_id
      FROM connect_mappings WHERE connection = %s
     ORDER BY table_schema, table_relname
"""

APPLIED_DDL = """
    CREATE TABLE IF NOT EXISTS _sim_applied (
        connection  text NOT NULL,
        entry_id    bigint NOT NULL,
        applied_at  timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (connection, entry_id)
    )
"""


class BatchTally:
    """What one batch did to the mirror, counted before the mirror commits
    and reported only after it did."""

    def __init__(self):
        self.applied = 0
        self.duplicates = 0
        self.missing = 0
        self.max_id = 0
        self.tables = {}

    def count(self, entry, what):
        table = self.tables.setdefault((entry.schema, entry.table),
                                       {"inserts": 0, "updates": 0, "deletes": 0,
                                        "truncates": 0, "applied": 0})
        table[what] += 1
        table["applied"] += 1
        self.applied += 1
        self.max_id = max(self.max_id, entry.id)


@dataclasses.dataclass
class Entry:
    id: int
    action: str
    schema: str
    table: str
    old: object                     # jsonb text or None
    values: object


@dataclasses.dataclass
class TablePlan:
    """What the mirror's catalog says about one table, and the statements
    built from it (composed once: composing costs as much as running)."""
    ident: object                   # sql.Identifier(schema, table)
    columns: list                   # writable columns (not generated), in table order
    keys: list                      # primary key columns
    statements: dict = dataclasses.field(default_factory=dict)

    def statement(self, cur, key, build):
        if key not in self.statements:
            self.statements[key] = build().as_string(cur)
        return self.statements[key]


class MirrorApplier:
    """Applies trigger log entries to mirror tables.  It never commits: the
    consumer commits the entries together with their _sim_applied rows."""

    def __init__(self, connection):
        self.connection = connection
        self.plans = {}

    def forget_plans(self):
        # after any error: the table may have been created or altered since
        self.plans.clear()

    def plan(self, cur, schema, table):
        if (schema, table) not in self.plans:
            cur.execute("""
                SELECT a.attname, a.attgenerated <> '',
                       coalesce(a.attnum = ANY (i.indkey::int2[]), false)
                  FROM pg_attribute a
                  JOIN pg_class c ON c.oid = a.attrelid
                  JOIN pg_namespace n ON n.oid = c.relnamespace
                  LEFT JOIN pg_index i ON i.indrelid = c.oid AND i.indisprimary
                 WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped
                 ORDER BY a.attnum""", (schema, table))
            rows = cur.fetchall()
            if not rows:
                raise LookupError("mirror table %s.%s does not exist" % (schema, table))
            keys = [name for name, _, is_key in rows if is_key]
            if not keys:
                raise LookupError("mirror table %s.%s has no primary key" % (schema, table))
            self.plans[(schema, table)] = TablePlan(
                ident=sql.Identifier(schema, table),
                columns=[name for name, generated, _ in rows if not generated],
                keys=keys)
        return self.plans[(schema, table)]

    def apply_chunk(self, cur, entries, tally):
        """Applies the entries not applied before and records them.  The
        entries come sorted by id, so one index range finds those applied
        before, whatever the planner knows of a freshly filled table."""
        cur.execute("SELECT entry_id FROM _sim_applied "
                    "WHERE connection = %s AND entry_id BETWEEN %s AND %s",
                    (self.connection, entries[0].id, entries[-1].id))
        done = {row[0] for row in cur.fetchall()}
        fresh = []
        for entry in entries:
            if entry.id in done:
                tally.duplicates += 1
                continue
            self.apply_entry(cur, entry, tally)
            fresh.append((self.connection, entry.id))
        if fresh:
            psycopg2.extras.execute_values(
                cur, "INSERT INTO _sim_applied (connection, entry_id) VALUES %s", fresh)

    def apply_entry(self, cur, entry, tally):
        plan = self.plan(cur, entry.schema, entry.table)
        if entry.action == "INSERT":
            self.upsert(cur, plan, entry.values)
            tally.count(entry, "inserts")
        elif entry.action == "UPDATE":
            if not self.update(cur, plan, entry.old, entry.values):
                self.note_missing(entry, tally)
            tally.count(entry, "updates")
        elif entry.action == "DELETE":
            if not self.delete(cur, plan, entry.old):
                self.note_missing(entry, tally)
            tally.count(entry, "deletes")
        elif entry.action == "TRUNCATE":
            # CASCADE: the source could only truncate a referenced table
            # together with the tables referencing it, so the mirror may too
            cur.execute(sql.SQL("TRUNCATE {} CASCADE").format(plan.ident))
            tally.count(entry, "truncates")
        else:
            raise ValueError("entry %d has unknown action %r" % (entry.id, entry.action))

    def note_missing(self, entry, tally):
        # the mirror lacks a row the source had: a lost entry or rows that
        # existed before the table was mapped; counted, never hidden
        tally.missing += 1
        log.warning("entry %d (%s %s.%s): no mirror row with that primary key",
                    entry.id, entry.action, entry.schema, entry.table)

    def upsert(self, cur, plan, values):
        cur.execute(plan.statement(cur, "upsert", lambda: upsert_sql(plan)), (values,))

    def update(self, cur, plan, old, values):
        """Sets the changed columns (values holds only those) on the row the
        old primary key names; returns whether there was such a row."""
        changed = tuple(c for c in plan.columns if c in json.loads(values or "{}"))
        if not changed:
            return True             # only generated or unknown columns changed
        cur.execute(plan.statement(cur, ("update",) + changed, lambda: update_sql(plan, changed)),
                    (values, old))
        return cur.rowcount > 0

    def delete(self, cur, plan, old):
        cur.execute(plan.statement(cur, "delete", lambda: delete_sql(plan)), (old,))
        return cur.rowcount > 0


def upsert_sql(plan):
    cols = sql.SQL(", ").join(map(sql.Identifier, plan.columns))
    updates = [c for c in plan.columns if c not in plan.keys]
    if updates:
        on_conflict = sql.SQL("DO UPDATE SET ") + sql.SQL(", ").join(
            sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c)) for c in updates)
    else:
        on_conflict = sql.SQL("DO NOTHING")
    # OVERRIDING SYSTEM VALUE: identity columns keep the source's values
    return sql.SQL(
        "INSERT INTO {t} ({cols}) OVERRIDING SYSTEM VALUE "
        "SELECT {cols} FROM jsonb_populate_record(NULL::{t}, %s::jsonb) "
        "ON CONFLICT ({keys}) {on_conflict}").format(
            t=plan.ident, cols=cols, on_conflict=on_conflict,
            keys=sql.SQL(", ").join(map(sql.Identifier, plan.keys)))


def update_sql(plan, changed):
    return sql.SQL(
        "UPDATE {t} AS t SET {sets} "
        "FROM jsonb_populate_record(NULL::{t}, %s::jsonb) AS n, "
        "     jsonb_populate_record(NULL::{t}, %s::jsonb) AS o "
        "WHERE {match}").format(
            t=plan.ident,
            sets=sql.SQL(", ").join(sql.SQL("{0} = n.{0}").format(sql.Identifier(c)) for c in changed),
            match=key_match(plan))


def delete_sql(plan):
    return sql.SQL(
        "DELETE FROM {t} AS t USING jsonb_populate_record(NULL::{t}, %s::jsonb) AS o "
        "WHERE {match}").format(t=plan.ident, match=key_match(plan))


def key_match(plan):
    return sql.SQL(" AND ").join(sql.SQL("t.{0} = o.{0}").format(sql.Identifier(k)) for k in plan.keys)


class Consumer(SourceMirrorWorker):
    """Takes batches of one connection from the source and applies them to
    the mirror.

    The two databases commit separately, so the order is what makes it
    exactly once: the mirror commits the entries together with their
    _sim_applied rows first, then the source finishes the batch.  A crash in
    between leaves the batch open; the source hands it out again and every
    entry in it is found in _sim_applied and skipped."""

    label = "consumer"

    def __init__(self, args, state, stop):
        self.source_dsn = args.source
        self.mirror_dsn = args.mirror
        self.name = args.connection
        self.poll = args.poll_ms / 1000.0
        self.crash_after_mirror_commit = args.crash_after_mirror_commit
        self.state = state
        self.stop = stop
        self.init_worker()
        self.applier = MirrorApplier(self.name)
        state.ensure_consumer_connection(self.name)
        self.stats = state.consumer

    # -- connections ----------------------------------------------------------

    def connect(self):
        if self.source is None:
            self.source = open_db(self.source_dsn, "source")
            log.info("connected to source")
            self.refresh_mappings()
        if self.mirror is None:
            self.mirror = open_db(self.mirror_dsn, "mirror")
            self.prepare_mirror()
            log.info("connected to mirror")

    def prepare_mirror(self):
        with self.mirror.cursor() as cur:
            cur.execute(APPLIED_DDL)
            cur.execute("SELECT coalesce(max(entry_id), 0) FROM _sim_applied WHERE connection = %s",
                        (self.name,))
            applied_so_far = cur.fetchone()[0]
        self.mirror.commit()
        # after a restart the high-water mark is what the mirror holds
        self.state.raise_high_water_mark(self.name, applied_so_far)

    def refresh_mappings(self):
        with self.source.cursor() as cur:
            cur.execute(MAPPINGS_SQL, (self.name,))
            rows = cur.fetchall()
        self.source.commit()
        self.state.adopt_mappings(self.name, rows)

    def drop_broken(self, error):
        # the mirror's prepared statements go with its session
        self.applier.forget_plans()
        super().drop_broken(error)

    def state_json(self):
        return self.state.consumer_json()

    # -- one batch ---------------------------------------------------------------

    def step(self):
        """Takes and applies at most one batch: returns 'batch', 'empty' or
        'paused'.  Raises on database errors."""
        if self.state.is_paused(self.name):
            return "paused"
        self.connect()
        batch_id = self.take_batch()
        if batch_id is None:
            return "empty"
        self.refresh_mappings()
        self.state.batch_started(self.name)
        try:
            self.apply_batch(batch_id)
        finally:
            self.state.batch_ended(self.name, "idle")
        return "batch"

    def take_batch(self):
        with self.source.cursor() as cur:
            cur.execute("SELECT connect_next_batch(%s)", (self.name,))
            batch_id = cur.fetchone()[0]
        # next_batch locks the connection row: commit at once so that a pause
        # or a DBA waiting on it is not held up by our apply
        self.source.commit()
        return batch_id

    def apply_batch(self, batch_id):
        tally = BatchTally()
        with self.mirror.cursor() as mirror_cur:
            # a server-side cursor, so a large batch is not held in memory whole
            with self.source.cursor(name="connect_sim_batch_%d" % batch_id) as events:
                events.execute(EVENTS_SQL, (batch_id,))
                while True:
                    rows = events.fetchmany(CHUNK)
                    if not rows:
                        break
                    self.applier.apply_chunk(mirror_cur, [Entry(*row) for row in rows], tally)
        self.source.commit()        # ends the read; the batch is still open
        self.mirror.commit()
        self.state.record_progress(self.name, tally)
        if self.crash_after_mirror_commit:
            log.warning("test hook: exiting between the mirror commit and finishing batch %d", batch_id)
            os._exit(3)
        with self.source.cursor() as cur:
            cur.execute("SELECT connect_finish_batch(%s)", (batch_id,))
        self.source.commit()
        with self.state.lock:
            self.stats.batches += 1
            self.stats.last_batch_id = batch_id
            self.stats.last_batch_at = utc_now()
        log.info("batch %d: %d applied, %d duplicates skipped, high-water mark %d",
                 batch_id, tally.applied, tally.duplicates, self.stats.high_water_mark)


# ---------------------------------------------------------------------------
# --verify: compare the mapped tables of source and mirror
# ---------------------------------------------------------------------------

# Both sides print values the same way whatever their server's defaults.
VERIFY_SETTINGS = """
    SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; SET IntervalStyle = 'postgres';
    SET extra_float_digits = 1; SET bytea_output = 'hex'
"""

# Per column of the source table: whether it is json (compared as jsonb,
# since the trigger log stores json as jsonb and loses its formatting),
# whether it is in the primary key (and where), and whether it collates.
VERIFY_COLUMNS_SQL = """
    SELECT a.attname,
           coalesce(nullif(t.typbasetype, 0), t.oid) = 'json'::regtype,
           array_position(i.indkey::int2[], a.attnum),
           a.attcollation <> 0
      FROM pg_attribute a
      JOIN pg_type t ON t.oid = a.atttypid
      LEFT JOIN pg_index i ON i.indrelid = a.attrelid AND i.indisprimary
     WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped
     ORDER BY a.attnum
"""


def digest_queries(table_ident, columns):
    """The count-and-md5 query, and the per-row query used to name the rows
    that differ.  Rows are ordered by the primary key; text keys in the "C"
    collation so that two servers with other collations agree."""
    row = sql.SQL("ROW({})").format(sql.SQL(", ").join(
        sql.SQL("{}::jsonb" if is_json else "{}").format(sql.Identifier(name))
        for name, is_json, _, _ in columns))
    # pos comes from an int2vector, whose subscripts start at 0: test for None
    keys = sorted((pos, name, collatable) for name, _, pos, collatable in columns if pos is not None)
    order = sql.SQL(", ").join(
        sql.SQL('{} COLLATE "C"' if collatable else "{}").format(sql.Identifier(name))
        for _, name, collatable in keys)
    if not keys:
        # the table lost its primary key after it was mapped: order by the row
        order = sql.SQL('{}::text COLLATE "C"').format(row)
    key_row = sql.SQL("ROW({})").format(sql.SQL(", ").join(sql.Identifier(name) for _, name, _ in keys)) \
        if keys else row
    digest = sql.SQL("SELECT count(*), md5(coalesce(string_agg({row}::text, E'\\n' ORDER BY {order}), '')) "
                     "FROM {t}").format(row=row, order=order, t=table_ident)
    rows = sql.SQL("SELECT {key}::text, md5({row}::text) FROM {t}").format(key=key_row, row=row, t=table_ident)
    return digest, rows


def first_differences(src_cur, mir_cur, rows_query, limit=10):
    src_cur.execute(rows_query)
    src = dict(src_cur.fetchall())
    mir_cur.execute(rows_query)
    mir = dict(mir_cur.fetchall())
    out = []
    for key in sorted(set(src) | set(mir)):
        if src.get(key) != mir.get(key):
            kind = "only_in_source" if key not in mir else "only_in_mirror" if key not in src else "differs"
            out.append({"key": key, "difference": kind})
            if len(out) >= limit:
                break
    return out


def verify_table(src, mir, schema, table, leave_out=()):
    ident = sql.Identifier(schema, table)
    result = {"table": "%s.%s" % (schema, table)}
    with src.cursor() as src_cur, mir.cursor() as mir_cur:
        src_cur.execute(VERIFY_COLUMNS_SQL, (ident.as_string(src),))
        columns = [c for c in src_cur.fetchall() if c[0] not in leave_out]
        digest, rows_query = digest_queries(ident, columns)
        src_cur.execute(digest)
        result["source_rows"], result["source_md5"] = src_cur.fetchone()
        try:
            mir_cur.execute(digest)
            result["mirror_rows"], result["mirror_md5"] = mir_cur.fetchone()
        except psycopg2.Error as error:
            mir.rollback()
            result.update(ok=False, error="mirror: " + one_line(error))
            return result
        result["ok"] = (result["source_rows"], result["source_md5"]) == \
                       (result["mirror_rows"], result["mirror_md5"])
        # naming the differing rows reads both tables into memory: only for
        # the table sizes tests use
        if not result["ok"] and max(result["source_rows"], result["mirror_rows"]) <= 200000:
            result["differences"] = first_differences(src_cur, mir_cur, rows_query)
    return result


def verify(source_dsn, mirror_dsn, connection, connect_schema=None):
    src = open_db(source_dsn, "verify")
    mir = open_db(mirror_dsn, "verify")
    try:
        for conn in (src, mir):
            with conn.cursor() as cur:
                cur.execute(VERIFY_SETTINGS)
        if connect_schema is not None:
            # Connect's log: the logged tables, without Connect's status
            # columns, which Salesforce does not have
            with src.cursor() as cur:
                tables, leave_out = connect_log.verify_tables(cur, connect_schema)
            if not tables:
                return {"mode": "verify", "connection": connection, "ok": False,
                        "error": "schema %s has no table with a Connect logger trigger" % connect_schema,
                        "tables": []}
            results = [verify_table(src, mir, connect_schema, t, leave_out) for t in tables]
            return {"mode": "verify", "connection": connection,
                    "ok": all(r["ok"] for r in results), "tables": results}
        with src.cursor() as cur:
            cur.execute("SELECT count(*) FROM connect_connections WHERE connection = %s", (connection,))
            if cur.fetchone()[0] == 0:
                return {"mode": "verify", "connection": connection, "ok": False,
                        "error": "connection %s does not exist on the source" % connection, "tables": []}
            cur.execute(MAPPINGS_SQL, (connection,))
            tables = [(schema, table) for schema, table, _, _ in cur.fetchall()]
        results = [verify_table(src, mir, schema, table) for schema, table in tables]
        return {"mode": "verify", "connection": connection,
                "ok": all(r["ok"] for r in results), "tables": results}
    finally:
        src.close()
        mir.close()


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------

def parse_args(argv):
    p = argparse.ArgumentParser(
        description="Heroku Connect simulator for connect_guard tests: API server, sync consumer, verifier.")
    http = p.add_argument_group("HTTP server (runs when --port is given)")
    http.add_argument("--port", type=int, help="port on 127.0.0.1; 0 picks a free one")
    http.add_argument("--token", default=os.environ.get("CONNECT_SIM_TOKEN"),
                      help="bearer token the API requires (default: $CONNECT_SIM_TOKEN)")
    http.add_argument("--config", help="JSON file declaring connections and mappings")
    http.add_argument("--reload-seconds", type=float, default=1.0,
                      help="how long a mapping stays RELOAD_TABLE (default 1)")
    http.add_argument("--reload-delay", type=float, default=0.0,
                      help="seconds between a reload's 202 and its start (RELOAD_TABLE); the mapping "
                           "keeps its state meanwhile, as with Connect (default 0)")
    http.add_argument("--lenient-headers", action="store_true",
                      help="accept API requests without the CLI's headers (Heroku-Client, Accept, "
                           "Content-Type); by default they get 400/406/415")
    http.add_argument("--hang-seconds", type=float, default=30.0,
                      help="delay of the injected 'timeout' fault before its 504 (default 30)")
    http.add_argument("--webhook-secret", default=os.environ.get("CONNECT_SIM_WEBHOOK_SECRET"),
                      help="HMAC key for POST /webhook (default: $CONNECT_SIM_WEBHOOK_SECRET)")
    http.add_argument("--request-log", help="append every recorded request to this file as a JSON line")
    http.add_argument("--record-control", action="store_true",
                      help="record /_sim/ requests too (they are left out by default)")
    db = p.add_argument_group("consumer")
    db.add_argument("--consume", action="store_true", help="run the sync consumer until SIGTERM")
    db.add_argument("--drain", action="store_true",
                    help="consume until no batch is left, print a JSON summary, exit")
    db.add_argument("--verify", action="store_true",
                    help="compare the mapped tables of source and mirror, print JSON, exit 1 on mismatch")
    db.add_argument("--source", help="libpq conninfo of the database with connect_guard")
    db.add_argument("--mirror", help="libpq conninfo of the mirror database")
    db.add_argument("--connection", help="connect_guard connection name")
    db.add_argument("--poll-ms", type=int, default=200, help="poll interval when idle (default 200)")
    db.add_argument("--timeout", type=float, default=30.0,
                    help="--drain: give up after this many seconds of connection errors (default 30)")
    db.add_argument("--crash-after-mirror-commit", action="store_true",
                    help="test hook: exit with status 3 between the mirror commit and finishing the batch")
    cl = p.add_argument_group("Connect's own log (with --consume, --drain or --verify)")
    cl.add_argument("--connect-log", metavar="SCHEMA",
                    help="play Connect on a Connect-managed schema: drain SCHEMA._trigger_log into the "
                         "mirror instead of taking connect_guard's batches")
    cl.add_argument("--connect-batch", type=int, default=200,
                    help="entries taken NEW -> PENDING per pass (default 200)")
    cl.add_argument("--archive-after", type=float, default=86400.0,
                    help="seconds after processing when entries move to _trigger_log_archive "
                         "(default 86400, Connect's day; negative: never)")
    cl.add_argument("--no-writeback", action="store_true",
                    help="do not write sfid, _hc_lastop and _hc_err back to the source rows")
    p.add_argument("-v", "--verbose", action="store_true", help="log every HTTP request to stderr")
    args = p.parse_args(argv)

    one_shot = args.drain or args.verify
    if args.drain and args.verify:
        p.error("--drain and --verify are separate runs")
    if one_shot and (args.port is not None or args.consume):
        p.error("--drain and --verify run alone, without --port or --consume")
    if not one_shot and args.port is None and not args.consume:
        p.error("nothing to do: give --port, --consume, --drain or --verify")
    if args.port is not None and not args.token:
        p.error("the API needs a token: --token or $CONNECT_SIM_TOKEN")
    if args.consume or one_shot:
        missing = [f for f in ("source", "mirror", "connection") if not getattr(args, f)]
        if missing:
            p.error("needs " + ", ".join("--" + f for f in missing))
        if psycopg2 is None:
            p.error("psycopg2 is not installed: run with /usr/bin/python3 (Debian's python3-psycopg2)")
    if args.connect_log is not None:
        if not (args.consume or one_shot):
            p.error("--connect-log needs --consume, --drain or --verify")
        if args.connect_batch < 1:
            p.error("--connect-batch must be at least 1")
    if args.reload_delay < 0 or args.reload_seconds < 0:
        p.error("--reload-delay and --reload-seconds must be >= 0")
    return args


def load_config(path):
    if not path:
        return {}
    with open(path, encoding="utf-8") as f:
        config = json.load(f)
    if not isinstance(config, dict) or not isinstance(config.get("connections", []), list):
        raise SystemExit("%s: expected {\"connections\": [...]}" % path)
    return config


def install_stop_handlers(stop):
    def handler(signum, frame):
        log.info("signal %d: stopping after the current batch", signum)
        stop.set()
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def run_one_shot(args, state, stop):
    if args.verify:
        try:
            result = verify(args.source, args.mirror, args.connection, args.connect_log)
        except psycopg2.Error as error:
            # not a mismatch: nothing could be compared
            print(json.dumps({"mode": "verify", "connection": args.connection, "ok": False,
                              "error": one_line(error), "tables": []}), flush=True)
            return 2
        print(json.dumps(result, default=str), flush=True)
        return 0 if result["ok"] else 1
    if args.connect_log is not None:
        summary = connect_log.ConnectLogDrainer(args, state, stop).drain(args.timeout)
    else:
        summary = Consumer(args, state, stop).drain(args.timeout)
    print(json.dumps(summary, default=str), flush=True)
    return 0 if summary["complete"] and "error" not in summary else 1


def run_service(args, state, stop):
    """The HTTP server and/or the consumer, until SIGTERM or SIGINT."""
    server = None
    threads = []
    if args.port is not None:
        server = SimServer(("127.0.0.1", args.port), state, args.token, args.webhook_secret,
                           args.hang_seconds, args.lenient_headers)
        print("LISTENING %d" % server.server_address[1], flush=True)
        threads.append(threading.Thread(target=server.serve_forever, args=(0.1,), name="http", daemon=True))
    consumer = None
    if args.consume:
        consumer = connect_log.ConnectLogDrainer(args, state, stop) if args.connect_log is not None \
            else Consumer(args, state, stop)
    if consumer is not None:
        threads.append(threading.Thread(target=consumer.run_forever, name="consumer"))
    for t in threads:
        t.start()
    stop.wait()                     # a signal handler sets it
    state.shutting_down.set()
    for t in threads:
        if t.name == "consumer":
            t.join()
    if server is not None:
        server.shutdown()
        server.server_close()
    return 0


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s connect_sim %(levelname)s %(message)s")
    try:
        connect_mode = args.connect_log is not None and args.consume
        state = SimState(load_config(args.config), args.reload_seconds, args.request_log,
                         args.record_control, reload_delay=args.reload_delay,
                         source_dsn=args.source,
                         reload_rewriter=connect_log.ReloadRewriter(args.source, args.mirror)
                         if connect_mode else None)
    except ClientError as e:
        raise SystemExit("%s: %s" % (args.config, e))
    stop = threading.Event()
    install_stop_handlers(stop)
    if args.drain or args.verify:
        return run_one_shot(args, state, stop)
    return run_service(args, state, stop)


if __name__ == "__main__":
    sys.exit(main())
