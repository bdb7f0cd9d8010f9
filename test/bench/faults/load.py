"""The write load of a run: a few writers inserting into the mapped table
`item`, each transaction 1 to 3 new rows and, every other time, an update
of the first of them.  A writer records what it got an OK for: the ids of
the rows whose COMMIT succeeded, and which of them it updated.  A COMMIT
that failed without an answer (the server died under it) may have
committed or not: its ids are "in doubt" and count as committed only if the
row is found at the end.

A writer does not know which server is the primary: it writes where it is
connected and, on any error (a fence's 25006, a standby's read-only
transaction, a crash), reconnects to the other server.  So it follows the
changeover by itself, as an application behind a DATABASE_URL would.
"""

import threading
import time

import psycopg2

ID_BASE = 10 ** 9               # writer n's ids are n * ID_BASE + seq


class Writer(threading.Thread):
    def __init__(self, number, dsns, stop):
        super().__init__(name="writer %d" % number, daemon=True)
        self.number = number
        self.dsns = dsns
        self.stop = stop
        self.committed = {}         # id -> updates (0 or 1), COMMIT answered OK
        self.in_doubt = {}          # id -> updates, COMMIT gave no answer
        self.failed = 0             # transactions refused or broken before COMMIT
        self.target = 0

    def run(self):
        conn = None
        seq = 0
        while not self.stop.is_set():
            try:
                if conn is None:
                    conn = psycopg2.connect(self.dsns[self.target], connect_timeout=2,
                                            application_name="faults writer %d" % self.number)
                    with conn.cursor() as cur:
                        # a server whose postmaster died must not hold a writer forever
                        cur.execute("SET statement_timeout = '5s'")
                    conn.commit()
                rows = 1 + seq % 3
                ids = [self.number * ID_BASE + seq + i for i in range(rows)]
                update = seq % 2
                seq += rows
                with conn.cursor() as cur:
                    cur.execute("INSERT INTO item (id, writer, note) SELECT x, %s, 'new' FROM unnest(%s::bigint[]) x",
                                (self.number, ids))
                    if update:
                        cur.execute("UPDATE item SET note = 'updated' WHERE id = %s", (ids[0],))
                outcome = {i: (update if i == ids[0] else 0) for i in ids}
                try:
                    conn.commit()
                except psycopg2.Error:
                    self.in_doubt.update(outcome)
                    raise
                self.committed.update(outcome)
                time.sleep(0.01)
            except psycopg2.Error:
                self.failed += 1
                if conn is not None:
                    try:
                        conn.close()
                    except psycopg2.Error:
                        pass
                conn = None
                self.target = (self.target + 1) % len(self.dsns)
                self.stop.wait(0.02)
        if conn is not None:
            conn.close()


class Load:
    def __init__(self, dsns, writers=2):
        self.stop = threading.Event()
        self.writers = [Writer(n + 1, dsns, self.stop) for n in range(writers)]

    def start(self):
        for w in self.writers:
            w.start()

    def finish(self):
        self.stop.set()
        for w in self.writers:
            w.join(timeout=30)
        committed, in_doubt = {}, {}
        for w in self.writers:
            committed.update(w.committed)
            in_doubt.update(w.in_doubt)
        return committed, in_doubt
