-- :rows consecutive rows per statement; pgbench -D tbl=... -D nrows=... -D rows=1000
\set start random(1, :nrows - :rows + 1)
UPDATE :tbl SET v = v + 1, systemmodstamp = now() WHERE id BETWEEN :start AND :start + :rows - 1;
