"""The Connect simulator of one run: one process that is both Connect's API
(the heroku adapter's pauses and resumes go through it) and the sync
consumer that drains the trigger log into the mirror.

Connect keeps its state across its own restarts; the simulator keeps it in
memory.  So when the campaign kills it, the restart gives it back what
Connect would remember: the connection's state after the last pause or
resume it answered with 202, read from its request log (a record is written
right after the answer, so a kill in the few microseconds between the two
could lose one; the README of the campaign says so).  Fault rules are not
carried over: they were the outage that the kill ended.
"""

import json
import os
import re
import signal
import subprocess
import time
import urllib.request

from cluster import alive

CONNECTION_ID = "6a1b0f3e-0000-4000-8000-00000000fa17"
MAPPING_ID = "map-item"
BATCH_LINE = re.compile(r"batch \d+: (\d+) applied, (\d+) duplicates skipped")


class Simulator:
    def __init__(self, script, directory, port, token, source_dsn, mirror_dsn):
        self.script = script
        self.dir = directory
        self.port = port
        self.token = token
        self.source_dsn = source_dsn
        self.mirror_dsn = mirror_dsn
        self.request_log = os.path.join(directory, "requests.jsonl")
        self.log_path = os.path.join(directory, "simulator.log")
        self.proc = None
        self.starts = 0

    # -- the process -----------------------------------------------------------

    def remembered_state(self):
        """IDLE, or PAUSED if the last pause/resume it accepted was a pause."""
        state = "IDLE"
        if os.path.exists(self.request_log):
            with open(self.request_log) as f:
                for line in f:
                    try:
                        r = json.loads(line)
                    except ValueError:
                        continue    # a line torn by the kill
                    if r.get("method") == "POST" and r.get("status") == 202:
                        if r["path"].endswith("/actions/pause"):
                            state = "PAUSED"
                        elif r["path"].endswith("/actions/resume"):
                            state = "IDLE"
        return state

    def start(self):
        config = os.path.join(self.dir, "connect.json")
        with open(config, "w") as f:
            json.dump({"connections": [{
                "id": CONNECTION_ID, "name": "sync", "schema_name": "public",
                "state": self.remembered_state(),
                "mappings": [{"id": MAPPING_ID, "object_name": "Item"}]}]}, f)
        log = open(self.log_path, "a")
        env = dict(os.environ, CONNECT_SIM_TOKEN=self.token, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            ["/usr/bin/python3", self.script, "--port", str(self.port), "--config", config,
             "--request-log", self.request_log, "--hang-seconds", "2",
             "--consume", "--source", self.source_dsn, "--mirror", self.mirror_dsn,
             "--connection", "sync", "--poll-ms", "50"],
            stdout=subprocess.PIPE, stderr=log, env=env, text=True)
        log.close()
        line = self.proc.stdout.readline()
        if not line.startswith("LISTENING"):
            raise RuntimeError("the simulator did not start; see %s" % self.log_path)
        self.starts += 1

    def is_up(self):
        return self.proc is not None and self.proc.poll() is None

    def kill9(self):
        if not self.is_up():
            return None
        pid = self.proc.pid
        os.kill(pid, signal.SIGKILL)
        self.proc.wait()
        return pid

    def heal(self):
        if self.is_up():
            return False
        if self.proc is not None:
            self.proc.wait()
        self.start()
        return True

    def stop(self):
        """SIGTERM: it finishes the batch in hand and exits."""
        if self.is_up():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    # -- the API -----------------------------------------------------------------

    def call(self, method, path, body=None, timeout=5):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request("http://127.0.0.1:%d%s" % (self.port, path), data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read() or b"null")

    def add_fault(self, rule):
        self.call("POST", "/_sim/fail", dict(rule, add=True))

    # -- what it did, over every incarnation ---------------------------------------

    def fired_faults(self):
        """{mode: n} of the injected faults that requests met, from the request log."""
        fired = {}
        if os.path.exists(self.request_log):
            with open(self.request_log) as f:
                for line in f:
                    try:
                        r = json.loads(line)
                    except ValueError:
                        continue
                    if r.get("fault"):
                        fired[r["fault"]] = fired.get(r["fault"], 0) + 1
        return fired

    def redelivered(self):
        """Entries the consumer was handed again after it had applied them
        (skipped as duplicates), summed over its batch log lines."""
        total = 0
        if os.path.exists(self.log_path):
            with open(self.log_path, errors="replace") as f:
                for line in f:
                    m = BATCH_LINE.search(line)
                    if m:
                        total += int(m.group(2))
        return total


def wait_gone(pid, seconds=10):
    deadline = time.monotonic() + seconds
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
