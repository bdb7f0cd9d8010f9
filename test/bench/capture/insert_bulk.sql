-- :rows rows per statement; pgbench -D tbl=... -D rows=1000
\set n random(1, 1000000000)
INSERT INTO :tbl (name, email, phone, amount, systemmodstamp, createddate, description)
SELECT 'New contact ' || (:n + g), 'new' || (:n + g) || '@example.com', '+1 555 0000', g / 100.0,
       now(), now(), 'Lead from web form ' || md5((:n + g)::text)
  FROM generate_series(1, :rows) g;
