"""The DBA of a run: drives the follower changeover with connect_guard's
calls and recovers from whatever the injector broke, as the README tells a
DBA to:

  - a postmaster that died is started again, and so is the simulator
    (killed backends and workers need nothing: the postmaster restarts);
  - a plan that is ready is promoted (connect_promote_follower), again if
    the call failed and the follower is still a standby;
  - a plan that failed is aborted (connect_abort_upgrade) and, once the
    connection runs again, prepared anew, up to MAX_PLANS times;
  - a connection left PAUSING or RESUMING by a request that failed (its
    retries ran out) is resumed again (connect_resume);
  - a promoted follower's worker completes the plan by itself; if the plan
    fails there, the DBA cannot fix it: the run ends "stuck", with the
    reason.

Every call is retried on the next turn of the loop when a server is
unreachable.  `actions` counts what the DBA had to do.
"""

import threading
import time
from collections import Counter

import psycopg2

MAX_PLANS = 3
RUNNING = ("IDLE", "POLLING_DB_CHANGES")


class DBA:
    def __init__(self, old, new, sim, follower_conninfo, plan_timeout, log):
        self.old, self.new, self.sim = old, new, sim
        self.follower_conninfo = follower_conninfo
        self.plan_timeout = plan_timeout
        self.log = log
        self.actions = Counter()
        self.conns = {}
        self.plan = None
        self.plans = 0
        self.plan_prepared = threading.Event()
        self.last_errors = []
        self.retired = set()

    # -- sessions ----------------------------------------------------------------

    def sql(self, server, query, args=None, timeout_s=30):
        """One statement on a kept session (reopened after errors); rows."""
        key = server.name
        conn = self.conns.get(key)
        try:
            if conn is None or conn.closed:
                conn = self.conns[key] = server.connect(application_name="faults dba")
                with conn.cursor() as cur:
                    cur.execute("SET statement_timeout = %s", ("%ds" % timeout_s,))
            with conn.cursor() as cur:
                cur.execute(query, args)
                return cur.fetchall() if cur.description else []
        except psycopg2.Error:
            self.conns.pop(key, None)
            if conn is not None:
                try:
                    conn.close()
                except psycopg2.Error:
                    pass
            raise

    def try_sql(self, server, query, args=None, what=None):
        try:
            return self.sql(server, query, args)
        except psycopg2.Error as e:
            if what:
                self.note("%s failed: %s" % (what, " ".join(str(e).split())[:300]))
            return None

    def note(self, text):
        self.last_errors = (self.last_errors + [text])[-5:]
        self.log(text)

    def close(self):
        for conn in self.conns.values():
            try:
                conn.close()
            except psycopg2.Error:
                pass
        self.conns.clear()

    # -- what the DBA does on every turn ----------------------------------------------

    def retire(self, server):
        """Stops a server for good (the old primary after a changeover)."""
        self.retired.add(server.name)
        server.stop()

    def heal(self):
        for server in (self.old, self.new):
            if server.name in self.retired:
                continue
            try:
                if server.heal():
                    self.actions["start %s" % server.name] += 1
            except RuntimeError as e:
                self.note(str(e))
        if self.sim.heal():
            self.actions["start simulator"] += 1

    def connection_state(self, server):
        """(state, last pause/resume request failed?, fences) or None."""
        rows = self.try_sql(server, """
            SELECT c.state,
                   coalesce((SELECT r.status = 'failed' FROM connect_guard.request r
                              WHERE r.connection_id = c.connection_id AND r.action IN ('pause', 'resume')
                              ORDER BY r.request_id DESC LIMIT 1), false),
                   (SELECT count(*) FROM connect_fences)
              FROM connect_guard.connection c WHERE c.name = 'sync'""")
        return rows[0] if rows else None

    def running_again(self, server):
        """True once the connection runs and nothing is fenced; resumes a
        connection that a failed request left stuck."""
        st = self.connection_state(server)
        if st is None:
            return False
        state, failed, fences = st
        active = self.try_sql(server, "SELECT count(*) FROM connect_guard.upgrade_plan WHERE status IN ('running', 'ready')")
        if active is None or active[0][0] > 0:
            return False
        if state in ("RESUMING", "PAUSING") and failed or state == "PAUSED":
            if self.try_sql(server, "SELECT connect_resume('sync')", what="connect_resume on %s" % server.name) is not None:
                self.actions["resume again"] += 1
            return False
        return state in RUNNING and fences == 0

    def promoted(self):
        rows = self.try_sql(self.new, "SELECT pg_is_in_recovery()")
        return rows is not None and not rows[0][0]

    # -- the changeover ----------------------------------------------------------

    def changeover(self, deadline):
        """Returns 'changed over', 'kept (N plans failed)' or 'stuck: why'."""
        while time.monotonic() < deadline:
            self.heal()
            outcome = self.turn()
            if outcome:
                return outcome
            time.sleep(0.1)
        return "stuck: %s" % ("; ".join(self.last_errors[-2:]) or "no progress within the deadline")

    def turn(self):
        if self.promoted():
            return self.after_promotion()
        if self.plan is None:
            if self.plans >= MAX_PLANS:
                return "kept (%d plans failed)" % self.plans if self.running_again(self.old) else None
            if self.plans > 0 and not self.running_again(self.old):
                return None
            rows = self.try_sql(self.old, """
                SELECT connect_prepare_upgrade('follower', follower => %s, max_lag_bytes => 64 * 1024 * 1024,
                                               timeout => %s)""",
                                (self.follower_conninfo, self.plan_timeout), what="connect_prepare_upgrade")
            if rows:
                self.plan = rows[0][0]
                self.plans += 1
                self.plan_prepared.set()
                self.actions["prepare"] += 1
            return None
        rows = self.try_sql(self.old, "SELECT status, step, last_error FROM connect_guard.upgrade_plan WHERE plan_id = %s",
                            (self.plan,))
        if not rows:
            return None
        status, step, last_error = rows[0]
        if status == "ready":
            if self.try_sql(self.old, "SELECT connect_promote_follower(%s)", (self.plan,),
                            what="connect_promote_follower") is not None:
                self.actions["promote"] += 1
        elif status == "failed":
            self.note("plan %s failed at %s: %s" % (self.plan, step, last_error))
            if self.try_sql(self.old, "SELECT connect_abort_upgrade(%s, %s)",
                            (self.plan, "faults campaign: " + (last_error or "")[:200]),
                            what="connect_abort_upgrade") is not None:
                self.actions["abort"] += 1
                self.plan = None
        elif status == "aborted":
            self.plan = None
        return None

    def after_promotion(self):
        rows = self.try_sql(self.new, "SELECT status, step, last_error FROM connect_guard.upgrade_plan WHERE plan_id = %s",
                            (self.plan,))
        if not rows:
            return None
        status, step, last_error = rows[0]
        if status == "failed":
            return "stuck: the new primary failed plan %s at %s: %s" % (self.plan, step, last_error)
        if status != "completed":
            return None
        return "changed over" if self.running_again(self.new) else None

    def settle(self, server, deadline):
        """After the kill: the final primary runs again and nothing is fenced."""
        while time.monotonic() < deadline:
            self.heal()
            if self.running_again(server):
                return True
            time.sleep(0.1)
        return False
