"""What goes wrong in a run, and when.

Each run kills one process, chosen at random, at a random moment of the
changeover: the moment is a stage (below) drawn at random, plus a random
delay once the stage is seen (up to 20 ms for the plan's steps before
ready but pausing, which take 10 to 40 ms each; up to 0.3 s for the
others; anywhere in the load before the plan for "load"), so that every
step is hit, short ones too.  And it injects one to three API faults into
the simulator before the plan starts: HTTP 500, 409 or 503 answers, or a
request that hangs until the client's timeout, on the pause, the resume or
the deep GET; most are counted down within connect_guard's retries, a few
outlast them (4 = connect_guard.http_max_attempts), so that a request fails
and the DBA must step in.

Every choice comes from the run's own random generator, seeded from the
campaign's seed and the run number: BENCH_SEED replays the same faults (the
timing of the machine, not the choices, can differ).
"""

import dataclasses
import os
import signal
import threading
import time

import psycopg2

STAGES = ["load", "checking", "pausing", "fencing", "fencing_follower", "catching_up", "ready",
          "promoted", "completing", "completed", "resumed"]
PROMOTED = STAGES.index("promoted")
# each takes 10 to 40 ms: a kill meant for one of them must follow at once
SHORT_STAGES = ("checking", "fencing", "fencing_follower", "catching_up")
TARGETS = ["backend", "worker_old", "worker_new", "postmaster_old", "postmaster_new", "simulator"]

PAUSE = r"/api/v3/connections/[^/]+/actions/pause"
RESUME = r"/api/v3/connections/[^/]+/actions/resume"
STATE = r"/api/v3/connections/[^/]+"
API_FAULTS = [            # (mode, method, path pattern)
    ("500", "POST", PAUSE), ("409", "POST", PAUSE), ("503", "POST", PAUSE), ("hang", "POST", PAUSE),
    ("500", "POST", RESUME), ("409", "POST", RESUME), ("503", "POST", RESUME), ("hang", "POST", RESUME),
    ("500", "GET", STATE), ("409", "GET", STATE), ("hang", "GET", STATE),
]


@dataclasses.dataclass
class FaultPlan:
    target: str
    stage: str
    delay: float
    api: list

    def describe(self):
        return "kill %s at %s+%.2fs" % (self.target, self.stage, self.delay)


def choose(rng, load_seconds):
    target = rng.choice(TARGETS)
    # the new primary's worker exists once the follower is promoted
    stage = rng.choice(STAGES[PROMOTED:] if target == "worker_new" else STAGES)
    if stage == "load":
        delay = rng.uniform(0, load_seconds)
    elif stage in SHORT_STAGES:
        delay = rng.uniform(0, 0.02)
    else:
        delay = rng.uniform(0, 0.3)
    api = []
    for _ in range(rng.randint(1, 3)):
        mode, method, pattern = rng.choice(API_FAULTS)
        count = 1 if mode == "hang" else rng.choice([1, 1, 2, 3, 4])
        api.append({"mode": mode, "count": count, "method": method, "path_pattern": pattern})
    return FaultPlan(target, stage, delay, api)


class Watcher:
    """Which stage the changeover is in, read from both servers on
    connections of its own (reopened after every error)."""

    def __init__(self, old, new):
        self.servers = {"old": old, "new": new}
        self.conns = {}

    def query(self, which, sql):
        try:
            conn = self.conns.get(which)
            if conn is None or conn.closed:
                conn = self.conns[which] = self.servers[which].connect(application_name="faults watcher", timeout=1)
            with conn.cursor() as cur:
                cur.execute(sql)
                return cur.fetchall()
        except psycopg2.Error:
            self.close(which)
            return None

    def close(self, which=None):
        for w in ([which] if which else list(self.conns)):
            conn = self.conns.pop(w, None)
            if conn is not None:
                try:
                    conn.close()
                except psycopg2.Error:
                    pass

    def stage(self, plan_seen, old_only=False):
        """The furthest stage either server shows; plan_seen: whether the
        DBA has prepared a plan yet (before that it is "load"); old_only:
        look at the old primary alone (quicker, for the plan's short steps)."""
        best = 0
        if plan_seen:
            rows = self.query("old", "SELECT step, status FROM connect_guard.upgrade_plan ORDER BY plan_id DESC LIMIT 1")
            if rows:
                step, status = rows[0]
                if status == "handed_over":
                    best = PROMOTED
                elif step in STAGES:
                    best = STAGES.index(step)
        if old_only:
            return best
        rows = self.query("new", """
            SELECT pg_is_in_recovery(),
                   (SELECT status FROM connect_guard.upgrade_plan ORDER BY plan_id DESC LIMIT 1),
                   (SELECT step FROM connect_guard.upgrade_plan ORDER BY plan_id DESC LIMIT 1),
                   (SELECT state FROM connect_guard.connection WHERE name = 'sync')""")
        if rows and not rows[0][0]:
            _, status, step, state = rows[0]
            best = max(best, PROMOTED)
            if step == "completing":
                best = max(best, STAGES.index("completing"))
            if status == "completed":
                best = max(best, STAGES.index("resumed" if state in ("IDLE", "POLLING_DB_CHANGES") else "completed"))
        return best


class Injector(threading.Thread):
    """Waits for the plan's stage, then kills its target once."""

    def __init__(self, plan, rng, old, new, sim, dba):
        super().__init__(name="injector", daemon=True)
        self.plan = plan
        self.rng = rng
        self.old, self.new, self.sim, self.dba = old, new, sim, dba
        self.watcher = Watcher(old, new)
        self.stop = threading.Event()
        self.fired = None           # what was killed, at which stage
        self.error = None

    def run(self):
        try:
            self.fire_when_due()
        except Exception as e:      # reported, not hidden: the run says the kill did not happen
            self.error = "%s: %s" % (type(e).__name__, e)
        finally:
            self.watcher.close()

    def fire_when_due(self):
        want = STAGES.index(self.plan.stage)
        # the plan's steps up to ready take tens of milliseconds each: poll without pause
        old_only = want < PROMOTED
        if want > 0:
            while not self.stop.is_set() and self.watcher.stage(self.dba.plan_prepared.is_set(), old_only) < want:
                time.sleep(0.001 if old_only else 0.01)
        if self.stop.wait(self.plan.delay):
            return
        seen = STAGES[self.watcher.stage(self.dba.plan_prepared.is_set())]
        deadline = time.monotonic() + 10
        while not self.stop.is_set() and time.monotonic() < deadline:
            what = self.kill()
            if what:
                self.fired = "%s at %s" % (what, seen)
                return
            time.sleep(0.05)

    def primary_now(self):
        rows = self.watcher.query("new", "SELECT pg_is_in_recovery()")
        return "new" if rows and not rows[0][0] else "old"

    def kill(self):
        """Kills the target; returns a description, or None to try again."""
        t = self.plan.target
        if t == "simulator":
            pid = self.sim.kill9()
            return pid and "simulator (pid %d)" % pid
        if t.startswith("postmaster_"):
            server = self.old if t.endswith("old") else self.new
            pid = server.kill9()
            return pid and "%s postmaster (pid %d)" % (t[len("postmaster_"):], pid)
        if t.startswith("worker_"):
            which = t[len("worker_"):]
            rows = self.watcher.query(which, "SELECT connect_guard.worker_pid()")
            if not rows or rows[0][0] is None:
                return None
            pid = rows[0][0]
            self.watcher.close(which)
            os.kill(pid, signal.SIGKILL)
            return "%s worker (pid %d)" % (which, pid)
        # a client backend of the primary (now and then of the other server)
        which = self.primary_now()
        if self.rng.random() < 0.25:
            which = "new" if which == "old" else "old"
        rows = self.watcher.query(which, """
            SELECT pid, application_name FROM pg_stat_activity
             WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() ORDER BY pid""")
        if not rows:
            return None
        pid, name = self.rng.choice(rows)
        self.watcher.close(which)
        os.kill(pid, signal.SIGKILL)
        return "%s backend '%s' (pid %d)" % (which, name, pid)
