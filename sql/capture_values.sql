-- What the trigger log holds for values that jsonb cannot hold as they are,
-- or whose text depends on the session: every value json and the other types
-- accept is captured (never a refused write) and read back exactly by
-- (values->>'col')::type, under other settings than those it was written with.
CREATE EXTENSION connect_guard;
\set SHOW_CONTEXT never

CREATE TABLE thing (
    id      int PRIMARY KEY,
    raw     json,
    doc     jsonb,
    amount  numeric,
    ratio   float8,
    small   real,
    price   money,
    born    date,
    seen    timestamptz,
    span    interval,
    days    date[],
    spans   interval[],
    ratios  float8[],
    pair    point
);
SELECT connect_create_connection('sync') AS connection_id;
SELECT connect_map_table('sync', 'thing') AS mapping_id;

-- written with settings that change text forms
SET DateStyle = 'SQL, DMY';
SET IntervalStyle = 'sql_standard';
SET extra_float_digits = -3;
SET lc_monetary = 'C';
INSERT INTO thing (id, raw) VALUES
    (1, '{"a": "\u0000"}'),          -- jsonb refuses \u0000 (22P05)
    (2, '1e1000000'),                -- beyond numeric (22003)
    (3, '[1e-1000000, 2]'),
    (4, '{"k": 0.000001e-16383}'),
    (5, '"just a string"'),          -- a top-level string
    (6, 'null'),                     -- a top-level JSON null, not SQL NULL
    (7, '  {"b": [1, 2.50],   "a": {"c": null}}  '),
    (8, '12.50'),
    (9, 'true'),
    (10, NULL),
    (11, '"\u00e9\ud83d\ude00"'),
    (12, '{}'),
    (13, '{"k": "\ud83dX", "l": "\ude00"}');   -- unpaired surrogates: json takes them, jsonb does not
INSERT INTO thing (id, doc) VALUES
    (21, '"a string"'), (22, 'null'), (23, '5.0'), (24, 'false'),
    (25, '{"n": 1.10, "deep": [{"x": 12345678901234567890.5}]}');
INSERT INTO thing (id, amount, ratio, small) VALUES
    (31, 'NaN', 'NaN', 'NaN'),
    (32, 'Infinity', 'Infinity', '-Infinity'),
    (33, '-Infinity', 0.1, 0.1),
    (34, 1e-20, 1.0 / 3, 1.0 / 3),
    (35, 123456789012345678901234567890.123456789, 1.5e20, 3.4e38),
    (36, 1, 1e308, 1e-45);
INSERT INTO thing (id, price, born, seen, span, days, spans, ratios, pair) VALUES
    (41, 1234.56, '2024-03-01', '2024-03-01 12:34:56.789+02', '-1 year -2 months +3 days -04:05:06',
     ARRAY['2024-03-01'::date, '2024-12-31'], ARRAY['1 day'::interval, '-1 mons +2 days'],
     ARRAY[0.1, 1.0 / 3], '(0.1, 0.2)'),
    (42, -0.01, '0044-03-15 BC', 'infinity', '1 mon -1 day', ARRAY['infinity'::date], NULL, NULL, NULL),
    (43, NULL, '5874897-12-31', '-infinity', '0', '{}', '{}', '{}', NULL);
UPDATE thing SET raw = '{"a": "\u0000", "b": 1}' WHERE id = 12;
DELETE FROM thing WHERE id = 2;
RESET DateStyle;
RESET IntervalStyle;
RESET extra_float_digits;
RESET lc_monetary;

-- what the log holds
SELECT record_id, action, jsonb_typeof("values"->'raw') AS raw_type, "values"->'raw' AS raw
  FROM connect_guard.trigger_log WHERE "values" ? 'raw' ORDER BY id;
SELECT record_id, old->'raw' AS old_raw FROM connect_guard.trigger_log WHERE action = 'DELETE';
SELECT record_id, jsonb_typeof("values"->'doc') AS doc_type, "values"->'doc' AS doc
  FROM connect_guard.trigger_log WHERE "values"->'doc' <> 'null' ORDER BY id;
SELECT record_id, "values"->'amount' AS amount, "values"->'ratio' AS ratio, "values"->'small' AS small
  FROM connect_guard.trigger_log WHERE record_id::int BETWEEN 31 AND 35 ORDER BY id;
SELECT record_id, "values" - '{id,raw,doc,amount,ratio,small}'::text[] AS other
  FROM connect_guard.trigger_log WHERE record_id::int BETWEEN 41 AND 43 ORDER BY id;

-- read back under yet other settings: every value comes back exactly (json
-- values embedded as jsonb lose their formatting, as a jsonb column would)
SET DateStyle = 'German, MDY';
SET IntervalStyle = 'postgres_verbose';
SET extra_float_digits = 0;
SELECT t.id,
       CASE jsonb_typeof(l."values"->'raw')
           WHEN 'string' THEN (l."values"->>'raw')::json::text = t.raw::text
           ELSE (l."values"->>'raw')::json::jsonb IS NOT DISTINCT FROM t.raw::jsonb
       END AS raw,
       (l."values"->>'doc')::jsonb IS NOT DISTINCT FROM t.doc AS doc,
       (l."values"->>'amount')::numeric IS NOT DISTINCT FROM t.amount AS amount,
       (l."values"->>'ratio')::float8 IS NOT DISTINCT FROM t.ratio AS ratio,
       (l."values"->>'small')::real IS NOT DISTINCT FROM t.small AS small,
       (l."values"->>'price')::money IS NOT DISTINCT FROM t.price AS price,
       (l."values"->>'born')::date IS NOT DISTINCT FROM t.born AS born,
       (l."values"->>'seen')::timestamptz IS NOT DISTINCT FROM t.seen AS seen,
       (l."values"->>'span')::interval IS NOT DISTINCT FROM t.span
           AND ((l."values"->>'span')::interval)::text IS NOT DISTINCT FROM t.span::text AS span,
       (l."values"->>'days')::date[] IS NOT DISTINCT FROM t.days AS days,
       ((l."values"->>'spans')::interval[])::text IS NOT DISTINCT FROM t.spans::text AS spans,
       (l."values"->>'ratios')::float8[] IS NOT DISTINCT FROM t.ratios AS ratios,
       (l."values"->>'pair')::point ~= t.pair IS NOT FALSE AS pair
  FROM thing t
  JOIN LATERAL (SELECT * FROM connect_guard.trigger_log l
                 WHERE l.record_id = t.id::text AND l.action = 'INSERT') l ON true
 WHERE t.id <> 12    -- updated since: below
 ORDER BY t.id;
-- json text that jsonb cannot hold comes back character for character
SELECT t.id, (l."values"->>'raw') = t.raw::text AS same_text
  FROM thing t JOIN connect_guard.trigger_log l ON l.record_id = t.id::text AND l.action = 'INSERT'
 WHERE t.id IN (1, 3, 4, 5, 6, 11, 13) ORDER BY t.id;
-- an UPDATE's changed json column and the old row of a DELETE too
SELECT (l."values"->>'raw')::json::text = t.raw::text AS updated_raw
  FROM thing t JOIN connect_guard.trigger_log l ON l.record_id = t.id::text AND l.action = 'UPDATE';
SELECT (old->>'raw')::json::text = '1e1000000' AS deleted_raw
  FROM connect_guard.trigger_log WHERE action = 'DELETE';
RESET DateStyle;
RESET IntervalStyle;
RESET extra_float_digits;

-- json inside arrays and composites is text, which never fails
CREATE TYPE wrapped AS (j json, n numeric);
CREATE TABLE holder (id int PRIMARY KEY, w wrapped, js json[]);
SELECT connect_map_table('sync', 'holder') AS mapping_id;
INSERT INTO holder VALUES (1, ROW('{"x": "\u0000"}', 'NaN'), ARRAY['1e1000000'::json, '"\u0000"']);
SELECT (l."values"->>'w')::wrapped::text = h.w::text AS w, (l."values"->>'js')::json[]::text = h.js::text AS js
  FROM holder h JOIN connect_guard.trigger_log l ON l.table_name = 'holder' AND l.record_id = h.id::text;

-- keys of any date type are printed the same whatever DateStyle says
CREATE TABLE daily (day date PRIMARY KEY, n int);
SELECT connect_map_table('sync', 'daily') AS mapping_id;
SET DateStyle = 'SQL, DMY';
INSERT INTO daily VALUES ('2024-03-01', 1);
RESET DateStyle;
SELECT record_id FROM connect_guard.trigger_log WHERE table_name = 'daily';

-- the jsonb is written directly (row_json.c): it equals its own text parsed
-- again, byte for byte in size, and every key is found, in a row wider than
-- jsonb's offset stride (32) with nested and aligned values
SELECT format('CREATE TABLE wide (id int PRIMARY KEY, %s, j jsonb, n numeric, t text, b bool)',
              string_agg(format('c%s int', g), ', ' ORDER BY g)) FROM generate_series(1, 40) g \gexec
SELECT connect_map_table('sync', 'wide') AS mapping_id;
INSERT INTO wide (id, c1, c17, c33, c40, j, n, t, b)
SELECT g, g, -g, g * 1000, NULL, jsonb_build_object('a', 1.5, 'b', jsonb_build_array(1, 2.25, 'x', null, true),
                                                   'c', jsonb_build_object('d', 12345678901234567890.5)),
       g / 7.0, repeat('t', g), g % 2 = 0
  FROM generate_series(1, 20) g;
UPDATE wide SET c33 = c33 + 1, j = j || '{"e": 3.75}' WHERE id <= 5;
DELETE FROM wide WHERE id = 20;
SELECT count(*) AS entries,
       count(*) FILTER (WHERE v::text::jsonb = v AND pg_column_size(v) = pg_column_size(v::text::jsonb)) AS well_formed
  FROM (SELECT coalesce("values", old) AS v FROM connect_guard.trigger_log WHERE table_name = 'wide'
        UNION ALL
        SELECT old FROM connect_guard.trigger_log WHERE table_name = 'wide' AND action = 'UPDATE') l;
SELECT count(*) AS keys, count(*) FILTER (WHERE l.v -> k IS NOT DISTINCT FROM l.v::text::jsonb -> k) AS found
  FROM (SELECT coalesce("values", old) AS v FROM connect_guard.trigger_log WHERE table_name = 'wide') l,
       jsonb_object_keys(l.v) k;
SELECT "values" FROM connect_guard.trigger_log WHERE table_name = 'wide' AND action = 'UPDATE' ORDER BY id LIMIT 1;
DROP TABLE wide;

DROP TABLE thing, holder, daily;
DROP TYPE wrapped;
DROP EXTENSION connect_guard;

-- in a database whose encoding is not UTF8, jsonb converts \u escapes above
-- 007F to that encoding and fails when it cannot; such json is kept as text
\set regress_db :DBNAME
CREATE DATABASE capture_latin1 ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0;
\c capture_latin1
CREATE EXTENSION connect_guard;
CREATE TABLE j (id int PRIMARY KEY, raw json);
SELECT connect_create_connection('sync') AS connection_id;
SELECT connect_map_table('sync', 'j') AS mapping_id;
INSERT INTO j VALUES (1, '{"a": "\u20ac"}'),   -- the euro sign: not in LATIN1
                     (2, '{"a": "\u00e9"}'),   -- in LATIN1, kept as text all the same
                     (3, '{"a": "\u0041", "b": "\\u20ac"}');   -- no escape above 007F
SELECT l.record_id, jsonb_typeof(l."values"->'raw') AS raw_type,
       CASE jsonb_typeof(l."values"->'raw')
           WHEN 'string' THEN (l."values"->>'raw') = j.raw::text
           ELSE l."values"->'raw' = j.raw::jsonb
       END AS same_value
  FROM connect_guard.trigger_log l JOIN j ON j.id::text = l.record_id ORDER BY l.id;
-- (FORCE: the worker a preloaded connect_guard started for this database)
\c :regress_db
DROP DATABASE capture_latin1 WITH (FORCE);
