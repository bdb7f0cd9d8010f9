-- one row per transaction; pgbench -D tbl=... -D rows=1
\set n random(1, 1000000000)
INSERT INTO :tbl (name, email, phone, amount, systemmodstamp, createddate, description)
VALUES ('New contact ' || :n, 'new' || :n || '@example.com', '+1 555 0000', :n % 100000 / 100.0,
        now(), now(), 'Lead from web form ' || md5(:n::text));
