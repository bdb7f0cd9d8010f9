"""sim_worker: what the simulator's two database workers share.

connect_sim.Consumer takes connect_guard's batches; connect_log.ConnectLogDrainer
drains a Connect-managed schema's own trigger log as Connect does.  Both
read a source database and write a mirror, and both must survive either
database going away: the sessions they open, the retries with backoff, the
loop that runs until stopped and the drain that runs until nothing is left
are the same, and live here.  What a pass does (step()) is each worker's own.

Locking: a worker runs in one thread; SimState.lock guards the stats it
shares with the HTTP server, and no database work is done while holding it.

psycopg2 is imported when present: connect_sim's HTTP server alone runs
without a database driver, and imports this module all the same.
"""

import logging
import random
import time

try:
    import psycopg2
    import psycopg2.extensions
except ImportError:  # the HTTP server alone does not need a database driver
    psycopg2 = None

log = logging.getLogger("connect_sim")


def open_db(dsn, role):
    """A psycopg2 connection in READ COMMITTED with autocommit off (the
    isolation connect_next_batch insists on, and Connect's sessions have),
    a connect timeout and an application_name saying who it is, unless the
    dsn says otherwise."""
    params = psycopg2.extensions.parse_dsn(dsn)
    extra = {}
    if "connect_timeout" not in params:
        extra["connect_timeout"] = 5
    if "application_name" not in params:
        extra["application_name"] = "connect_sim " + role
    conn = psycopg2.connect(dsn, **extra)
    conn.set_session(isolation_level=psycopg2.extensions.ISOLATION_LEVEL_READ_COMMITTED,
                     autocommit=False)
    return conn


def is_connection_error(error):
    return isinstance(error, (psycopg2.OperationalError, psycopg2.InterfaceError))


def one_line(error):
    return " ".join(str(error).split())


class Backoff:
    """Exponential delay between retries, with jitter so that two workers
    do not retry in step."""

    def __init__(self, first=0.2, cap=5.0):
        self.first, self.cap = first, cap
        self.delay = first

    def next(self):
        delay = self.delay
        self.delay = min(self.cap, self.delay * 2)
        return delay * random.uniform(0.8, 1.2)

    def reset(self):
        self.delay = self.first


class SourceMirrorWorker:
    """A worker between a source and a mirror database.

    A subclass sets, before using these methods: self.state (SimState),
    self.stop (a threading.Event), self.stats (its stats object, with
    errors, last_error, status and reconnects), self.name (the connection),
    self.poll (seconds between passes that found nothing), self.source and
    self.mirror (None until connected); and defines step(), one pass
    returning 'empty', 'paused' or what it did, raising on database errors,
    and state_json(), its part of the simulator's state.  label names it
    in the log."""

    label = "worker"

    def init_worker(self):
        self.source = None
        self.mirror = None
        self.backoff = Backoff()
        self.last_exception = None

    # -- connections ---------------------------------------------------------------

    def drop_broken(self, error):
        """After an error: roll back what is open, and forget a connection
        that is gone so that the next step reconnects."""
        for role in ("source", "mirror"):
            conn = getattr(self, role)
            if conn is None:
                continue
            try:
                if conn.closed:
                    raise psycopg2.InterfaceError("connection closed")
                conn.rollback()
            except psycopg2.Error:
                try:
                    conn.close()
                except psycopg2.Error:
                    pass
                setattr(self, role, None)
                with self.state.lock:
                    self.stats.reconnects[role] += 1
                log.warning("%s: %s connection lost (%s); will reconnect", self.label, role, one_line(error))

    def close(self):
        for conn in (self.source, self.mirror):
            if conn is not None and not conn.closed:
                conn.close()
        self.source = self.mirror = None

    # -- the two ways to run ---------------------------------------------------------

    def step_safely(self):
        """step(), turning errors into a logged 'error' result and a
        backoff wait; stopping interrupts the wait."""
        try:
            outcome = self.step()
            self.backoff.reset()
            return outcome
        # database errors, a missing mirror table, an unknown action: all
        # may be fixed from outside while we wait.  Anything else is a bug
        # in the simulator and is left to end the thread loudly.
        except (psycopg2.Error, LookupError, ValueError) as error:
            self.drop_broken(error)
            delay = self.backoff.next()
            with self.state.lock:
                self.stats.errors += 1
                self.stats.last_error = one_line(error)
                self.stats.status = "backoff"
            log.warning("%s error: %s; retrying in %.1fs", self.label, one_line(error), delay)
            self.last_exception = error
            self.stop.wait(delay)
            return "error"

    def run_forever(self):
        """Passes until stopped; a pass in progress is finished first, since
        stop is only looked at between passes."""
        while not self.stop.is_set():
            outcome = self.step_safely()
            if outcome in ("empty", "paused"):
                with self.state.lock:
                    self.stats.status = "paused" if outcome == "paused" else "idle"
                self.stop.wait(self.poll)
        self.close()
        with self.state.lock:
            self.stats.status = "stopped"
        log.info("%s stopped", self.label)

    def drain(self, give_up_after):
        """Passes until two in a row find nothing.  Connection errors are
        retried for give_up_after seconds; any other error ends the drain at
        once, since nobody is there to fix it.  Returns the summary."""
        empties, failing_since, error = 0, None, None
        while empties < 2 and not self.stop.is_set():
            outcome = self.step_safely()
            if outcome == "error":
                error = self.last_exception
                failing_since = failing_since or time.monotonic()
                if not is_connection_error(error) or time.monotonic() - failing_since > give_up_after:
                    break
                continue
            failing_since, error = None, None
            empties = empties + 1 if outcome in ("empty", "paused") else 0
        self.close()
        summary = dict(self.state_json(), mode="drain", complete=empties >= 2,
                       paused=self.state.is_paused(self.name), status="stopped", running=False)
        if error is not None:
            summary["error"] = one_line(error)
        return summary
