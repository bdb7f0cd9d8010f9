#!/usr/bin/python3
"""The randomized fault campaign (test/bench/faults/run.sh runs it): N runs
of a follower changeover under write load, with the Connect simulator as
the heroku adapter's API and as the consumer, each run killing one random
process at a random moment and injecting API faults, recovering as a DBA
would, and counting committed writes = log entries = distinct deliveries.

Each run starts from copies of one template cluster (the extension, the
mapped table `item`, a heroku connection `sync` whose region_url is the
simulator): the old primary, and the follower, a copy started as its
standby (a cold copy of a cleanly stopped cluster is a valid base backup).
One mirror cluster serves every run, a database per run.

Arguments come from the environment (run.sh documents them).
"""

import os
import random
import shutil
import socket
import subprocess
import sys
import time
from collections import Counter

import psycopg2

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from cluster import Server                      # noqa: E402
from count import log_entries, tally            # noqa: E402
from dba import DBA                             # noqa: E402
from faults import Injector, choose             # noqa: E402
from load import Load                           # noqa: E402
from sim import CONNECTION_ID, MAPPING_ID, Simulator   # noqa: E402

LOAD_SECONDS = 1.0          # writes before the plan starts
AFTER_SECONDS = 0.5         # writes on the final primary once it runs again
RUN_DEADLINE = 120          # seconds for the changeover and the DBA's recovery
DRAIN_SECONDS = 30
PLAN_TIMEOUT = "10 s"       # a step that cannot proceed fails the plan this soon

SETTINGS = [
    "shared_preload_libraries = 'connect_guard'",
    "listen_addresses = ''",
    "wal_level = replica", "max_wal_senders = 10", "wal_keep_size = '256MB'", "hot_standby = on",
    # the OS never crashes here; kill -9 loses nothing fsync would keep
    "fsync = off", "synchronous_commit = on",
    "restart_after_crash = on", "wal_retrieve_retry_interval = '200ms'",
    "shared_buffers = '16MB'", "max_connections = 40",
    "connect_guard.naptime = '100ms'",
    "connect_guard.http_timeout = 1000",
    "connect_guard.http_max_attempts = 4",
    "connect_guard.http_allow_insecure_loopback = on",     # the simulator speaks plain http on 127.0.0.1
    "connect_guard.witness_directory = ''",
    "log_line_prefix = '%m [%p] %b '",
]


def free_tcp_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def psql(server, dbname, script):
    subprocess.run([os.path.join(server.pg_bin, "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", server.dsn(dbname)],
                   input=script, text=True, check=True, stdout=subprocess.DEVNULL)


class Campaign:
    def __init__(self, env):
        self.pg_bin = env["PG_BIN"]
        self.work = env["BENCH_WORK"]
        self.runs = int(env.get("BENCH_RUNS") or 50)
        self.seed = int(env.get("BENCH_SEED") or random.SystemRandom().randrange(1, 10 ** 9))
        self.only = {int(x) for x in (env.get("BENCH_ONLY") or "").replace(",", " ").split()}
        self.keep = bool(env.get("BENCH_KEEP"))
        self.sabotage = bool(env.get("BENCH_SABOTAGE"))
        self.simulator = os.path.join(env["CG_ROOT"], "test", "simulator", "connect_sim.py")
        self.sim_port = free_tcp_port()
        self.token = "tok-%032x" % random.SystemRandom().getrandbits(128)
        self.token_file = os.path.join(self.work, "connect.token")
        self.template = Server("template", os.path.join(self.work, "template"), 6401, self.pg_bin)
        self.mirror = Server("mirror", os.path.join(self.work, "mirror"), 6403, self.pg_bin)
        self.totals = Counter()
        self.fault_totals = Counter()
        self.dba_totals = Counter()
        self.outcomes = Counter()
        self.bad_runs = []

    def say(self, text=""):
        print(text, flush=True)

    # -- once per campaign --------------------------------------------------------------

    def initdb(self, server, *settings):
        os.makedirs(server.dir, exist_ok=True)
        subprocess.run([os.path.join(self.pg_bin, "initdb"), "-D", server.data, "-A", "trust", "-U", "postgres",
                        "--no-sync"], check=True, stdout=subprocess.DEVNULL)
        server.configure("port = %d" % server.port, "unix_socket_directories = '%s'" % server.dir, *settings)

    def prepare(self):
        with open(self.token_file, "w") as f:
            f.write(self.token + "\n")
        os.chmod(self.token_file, 0o600)
        self.initdb(self.template, *SETTINGS)
        self.template.start()
        psql(self.template, "postgres", "CREATE DATABASE app")
        psql(self.template, "app", """
            CREATE EXTENSION connect_guard;
            CREATE TABLE item (id bigint PRIMARY KEY, writer int NOT NULL, note text);
            SELECT connect_create_connection('sync', 'heroku', jsonb_build_object(
                'region_url', 'http://127.0.0.1:%d', 'connection_id', '%s', 'token_file', '%s'));
            SELECT connect_map_table('sync', 'item', 'Item');
            SELECT connect_set_mapping_remote_id('sync', 'item', '%s');
        """ % (self.sim_port, CONNECTION_ID, self.token_file, MAPPING_ID))
        self.template.stop()
        self.initdb(self.mirror, "listen_addresses = ''", "fsync = off", "shared_buffers = '16MB'")
        self.mirror.start()
        psql(self.mirror, "postgres", "CREATE DATABASE mirror_template")
        psql(self.mirror, "mirror_template", "CREATE TABLE item (id bigint PRIMARY KEY, writer int NOT NULL, note text)")

    def finish(self):
        self.mirror.stop("immediate")
        if not self.keep and not self.bad_runs:
            shutil.rmtree(self.work, ignore_errors=True)

    # -- one run ------------------------------------------------------------------------

    def run(self, n):
        rng = random.Random("%d/%d" % (self.seed, n))
        started = time.monotonic()
        rdir = os.path.join(self.work, "r%d" % n)
        mirror_db = "mirror_r%d" % n
        old = Server("old primary", os.path.join(rdir, "old"), 6411, self.pg_bin)
        new = Server("follower", os.path.join(rdir, "new"), 6412, self.pg_bin)
        for server in (old, new):
            os.makedirs(server.dir)
            shutil.copytree(self.template.data, server.data, symlinks=True)
            server.configure("port = %d" % server.port, "unix_socket_directories = '%s'" % server.dir,
                             "connect_guard.witness_directory = '%s'" % os.path.join(rdir, "witness"))
        os.makedirs(os.path.join(rdir, "witness"))
        new.configure("primary_conninfo = '%s application_name=follower'" % old.dsn("postgres"))
        open(os.path.join(new.data, "standby.signal"), "w").close()
        psql(self.mirror, "postgres", "CREATE DATABASE %s TEMPLATE mirror_template" % mirror_db)
        # Connect follows the primary: of the two servers, the one that takes writes
        source = "host=%s,%s port=%d,%d dbname=app user=postgres target_session_attrs=read-write" % (
            old.dir, new.dir, old.port, new.port)
        sim = Simulator(self.simulator, rdir, self.sim_port, self.token, source, self.mirror.dsn(mirror_db))
        log_path = os.path.join(rdir, "dba.log")

        def log(text):
            with open(log_path, "a") as f:
                f.write("%.3f %s\n" % (time.monotonic() - started, text))

        plan = choose(rng, LOAD_SECONDS)
        dba = DBA(old, new, sim, new.dsn(connect_timeout=2), PLAN_TIMEOUT, log)
        load = Load([old.dsn(), new.dsn()])
        injector = Injector(plan, rng, old, new, sim, dba)
        try:
            old.start()
            new.start()
            sim.start()
            for rule in plan.api:
                sim.add_fault(rule)
            load.start()
            injector.start()
            time.sleep(LOAD_SECONDS)
            outcome = dba.changeover(time.monotonic() + RUN_DEADLINE)
            log("changeover: " + outcome)
            injector.join(timeout=15)
            injector.stop.set()
            final = new if outcome == "changed over" or dba.promoted() else old
            if not outcome.startswith("stuck") and not dba.settle(final, time.monotonic() + 60):
                outcome = "stuck: %s does not run again after the kill" % final.name
            time.sleep(AFTER_SECONDS)
            committed, in_doubt = load.finish()
            if final is new:
                dba.close()
                dba.retire(old)         # as after any changeover; the consumer moves on
            if self.sabotage:
                self.break_the_count(final, committed)
            result = self.drain_and_count(dba, final, mirror_db, committed, in_doubt)
        finally:
            # whatever failed, nothing of this run stays up
            injector.stop.set()
            load.stop.set()
            dba.close()
            sim.stop()
            for server in (old, new):
                server.stop("immediate")

        result["seconds"] = round(time.monotonic() - started, 1)
        result["redelivered"] = sim.redelivered()
        fired = sim.fired_faults()
        kill = injector.fired or "no kill (%s)" % (injector.error or "stage %s not reached" % plan.stage)
        self.report(n, plan, kill, fired, outcome, dba.actions, result)
        bad = result["lost"] or result["doubled"] or result["phantom"] or result["extra"] or result["mirror_diff"] \
            or result["rollbacks"] or outcome.startswith("stuck")
        if bad:
            self.bad_runs.append(n)
            self.say("     kept for inspection: %s (mirror database %s)" % (rdir, mirror_db))
        else:
            psql(self.mirror, "postgres", "DROP DATABASE %s" % mirror_db)
            if not self.keep:
                shutil.rmtree(rdir, ignore_errors=True)

    def break_the_count(self, final, committed):
        """BENCH_SABOTAGE: shows that the count sees what it is meant to
        see: one write the log does not capture, one write acknowledged but
        absent (so without an entry either), one entry logged twice.  The
        run then reports lost 3 (commit 1, capture 2), doubled 1 and
        mirror_diff 1 or 2 (the uncaptured row never reached the mirror;
        the doubled INSERT, applied again, may undo its row's update)."""
        psql(final, "app", """
            SET connect_guard.capture = off;
            INSERT INTO item VALUES (1, 0, 'not captured');
            RESET connect_guard.capture;
            INSERT INTO connect_guard.trigger_log (txid, action, table_schema, table_name, record_id, "values")
            SELECT txid, action, table_schema, table_name, record_id, "values" FROM connect_guard.trigger_log
             WHERE table_name = 'item' AND action = 'INSERT' ORDER BY id DESC LIMIT 1;
        """)
        committed[1] = 0
        committed[2] = 0

    def drain_and_count(self, dba, final, mirror_db, committed, in_doubt):
        """Waits until every log entry of the final primary is in the mirror
        (or DRAIN_SECONDS pass), healing what the kill left, then counts."""
        deadline = time.monotonic() + DRAIN_SECONDS
        while True:
            dba.heal()
            src = mir = None
            try:
                src = final.connect(application_name="faults count")
                mir = self.mirror.connect(mirror_db, application_name="faults count")
                with src.cursor() as cur:
                    ids = {e[0] for e in log_entries(cur)}
                with mir.cursor() as cur:
                    cur.execute("SELECT entry_id FROM _sim_applied WHERE connection = 'sync'")
                    done = {r[0] for r in cur.fetchall()}
                if ids <= done or time.monotonic() > deadline:
                    return tally(committed, in_doubt, src, mir)
            except psycopg2.Error:
                if time.monotonic() > deadline + 30:
                    raise
            finally:
                for conn in (src, mir):
                    if conn is not None:
                        conn.close()
            time.sleep(0.2)

    # -- output -------------------------------------------------------------------------

    HEADER = "%4s %7s %7s %9s %5s %7s %6s %11s %6s  %s" % (
        "run", "writes", "entries", "delivered", "lost", "doubled", "phantom", "redelivered", "secs", "outcome")

    def report(self, n, plan, kill, fired, outcome, actions, r):
        self.say("%4d %7d %7d %9d %5d %7d %6d %11d %6.1f  %s" % (
            n, r["committed"], r["entries"], r["delivered"], r["lost"], r["doubled"], r["phantom"],
            r["redelivered"], r["seconds"], outcome))
        api = ", ".join("%s %s" % (k, v) for k, v in sorted(fired.items())) or "none met"
        self.say("     %s: %s; API faults %s; DBA: %s" % (
            plan.describe(), kill, api, ", ".join("%s %d" % kv for kv in sorted(actions.items()))))
        if r["rollbacks"]:
            self.say("     ROLLBACK DETECTED on the final primary: %d time(s)" % r["rollbacks"])
        if r["lost"] or r["doubled"] or r["phantom"] or r["extra"] or r["mirror_diff"]:
            self.say("     LOSS: lost_commit %(lost_commit)d lost_capture %(lost_capture)d undelivered %(undelivered)d "
                     "(first ids %(undelivered_ids)s) doubled %(doubled)d phantom %(phantom)d extra %(extra)d "
                     "mirror_diff %(mirror_diff)d" % r)
        for key in ("committed", "in_doubt", "in_doubt_committed", "entries", "delivered", "lost", "lost_commit",
                    "lost_capture", "undelivered", "doubled", "phantom", "extra", "mirror_diff", "redelivered", "rollbacks"):
            self.totals[key] += r[key]
        self.totals["runs"] += 1
        self.totals["seconds"] += r["seconds"]
        self.fault_totals["kill " + plan.target + (" (not fired)" if kill.startswith("no kill") else "")] += 1
        for mode, count in fired.items():
            self.fault_totals["api " + mode] += count
        self.dba_totals.update(actions)
        self.outcomes[outcome if not outcome.startswith("kept") else "kept the old primary"] += 1

    def summary(self):
        t = self.totals
        self.say()
        self.say("runs %d, seed %d, %.0f s (%.1f s a run)" % (t["runs"], self.seed, t["seconds"],
                                                            t["seconds"] / max(1, t["runs"])))
        self.say("faults injected: %s" % ", ".join("%s %d" % kv for kv in sorted(self.fault_totals.items())))
        self.say("DBA actions: %s" % ", ".join("%s %d" % kv for kv in sorted(self.dba_totals.items())))
        self.say("outcomes: %s" % ", ".join("%s %d" % kv for kv in sorted(self.outcomes.items())))
        self.say("committed writes %d (%d in doubt, %d of them committed), log entries %d, delivered %d, "
                 "redelivered %d" % (t["committed"], t["in_doubt"], t["in_doubt_committed"], t["entries"],
                                     t["delivered"], t["redelivered"]))
        self.say("lost %d (commit %d, capture %d, undelivered %d), doubled %d, phantom %d, extra %d, mirror_diff %d, "
                 "rollbacks detected %d"
                 % (t["lost"], t["lost_commit"], t["lost_capture"], t["undelivered"], t["doubled"], t["phantom"],
                    t["extra"], t["mirror_diff"], t["rollbacks"]))
        self.say("target: 0 lost and 0 doubled: %s" % ("met" if not t["lost"] and not t["doubled"] else "NOT MET"))
        if self.bad_runs:
            self.say("runs to look at: %s (replay one with BENCH_SEED=%d BENCH_ONLY=N; kept in %s)"
                     % (" ".join(map(str, self.bad_runs)), self.seed, self.work))


def main():
    c = Campaign(os.environ)
    c.say("fault campaign: %d runs, BENCH_SEED=%d%s" % (c.runs, c.seed,
                                                       " BENCH_ONLY=%s" % " ".join(map(str, sorted(c.only)))
                                                       if c.only else ""))
    c.prepare()
    c.say()
    c.say(Campaign.HEADER)
    try:
        for n in range(1, c.runs + 1):
            if c.only and n not in c.only:
                continue
            try:
                c.run(n)
            except Exception:
                c.bad_runs.append(n)        # keeps the work directory
                c.say("run %d broke off (a fault of the campaign, not a finding):" % n)
                raise
    finally:
        c.summary()
        c.finish()
    return 1 if c.totals["lost"] or c.totals["doubled"] else 0


if __name__ == "__main__":
    sys.exit(main())
