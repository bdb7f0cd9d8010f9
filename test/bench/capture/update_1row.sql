-- one row per transaction; pgbench -D tbl=... -D nrows=... -D rows=1
\set id random(1, :nrows)
UPDATE :tbl SET v = v + 1, systemmodstamp = now() WHERE id = :id;
