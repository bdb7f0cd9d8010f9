"""PostgreSQL servers of the fault campaign: start, stop, kill -9, and the
DBA's "start what died".

Servers listen on a Unix socket in their own directory only, so that runs
of other helpers on this machine never collide with them.  Every process
this module signals was started by the campaign (a postmaster it started,
or one of that postmaster's children), found by its pid.
"""

import os
import signal
import subprocess
import time

import psycopg2


def children_of(pid):
    """The pids whose parent is pid, from /proc (no psutil here)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry) as f:
                stat = f.read()
        except OSError:
            continue
        # the command may hold spaces and parentheses: fields start after the last ")"
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[1]) == pid:
            found.append(int(entry))
    return found


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie is dead for our purposes
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class Server:
    """One cluster: DIR/data, its socket and server.log in DIR."""

    def __init__(self, name, directory, port, pg_bin):
        self.name = name
        self.dir = directory
        self.data = os.path.join(directory, "data")
        self.port = port
        self.pg_bin = pg_bin
        self.orphans = []           # children of a postmaster killed with -9, until they exit

    def dsn(self, dbname="app", **extra):
        parts = ["host=%s" % self.dir, "port=%d" % self.port, "dbname=%s" % dbname, "user=postgres"]
        parts += ["%s=%s" % kv for kv in extra.items()]
        return " ".join(parts)

    def connect(self, dbname="app", application_name="faults dba", timeout=3):
        conn = psycopg2.connect(self.dsn(dbname), connect_timeout=timeout, application_name=application_name)
        conn.autocommit = True
        return conn

    def pg_ctl(self, *args, check=True):
        return subprocess.run([os.path.join(self.pg_bin, "pg_ctl"), "-D", self.data] + list(args),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=check)

    def configure(self, *lines):
        """Appends settings; later lines win over the template's."""
        with open(os.path.join(self.data, "postgresql.conf"), "a") as f:
            for line in lines:
                f.write(line + "\n")

    def postmaster_pid(self):
        try:
            with open(os.path.join(self.data, "postmaster.pid")) as f:
                pid = int(f.readline())
        except (OSError, ValueError):
            return None
        return pid if alive(pid) else None

    def is_up(self):
        return self.postmaster_pid() is not None

    def start(self, attempts=30):
        """pg_ctl start; after a kill -9 it waits for the old children to
        go first (they hold the shared memory the new postmaster checks)."""
        self.orphans = [p for p in self.orphans if alive(p)]
        deadline = time.monotonic() + 30
        while self.orphans and time.monotonic() < deadline:
            time.sleep(0.05)
            self.orphans = [p for p in self.orphans if alive(p)]
        last = None
        for _ in range(attempts):
            result = self.pg_ctl("-l", os.path.join(self.dir, "server.log"), "-w", "-t", "60", "start", check=False)
            if result.returncode == 0 or self.is_up():
                return
            last = result.stderr.strip()
            time.sleep(0.2)
        raise RuntimeError("%s does not start: %s" % (self.name, last))

    def stop(self, mode="fast"):
        if self.is_up():
            self.pg_ctl("-m", mode, "-w", "-t", "60", "stop", check=False)

    def kill9(self):
        """kill -9 of the postmaster; returns its pid (None if it was down)."""
        pid = self.postmaster_pid()
        if pid is None:
            return None
        self.orphans = children_of(pid)
        os.kill(pid, signal.SIGKILL)
        return pid

    def heal(self):
        """The DBA's part after a crash: start the server if its postmaster
        is gone.  Returns whether it had to.  (A killed backend or worker
        needs nothing: the postmaster restarts everything by itself.)"""
        if self.is_up():
            return False
        self.start()
        return True
