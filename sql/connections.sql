-- Connections and mappings: every error is clear and changes nothing.
CREATE EXTENSION connect_guard;
\set SHOW_CONTEXT never
CREATE TABLE account (id int PRIMARY KEY, name text);
CREATE TABLE nokey (id int, name text);
CREATE TEMP TABLE scratch (id int PRIMARY KEY);
CREATE VIEW account_view AS SELECT * FROM account;
CREATE TABLE part (id int, k int, PRIMARY KEY (id, k)) PARTITION BY RANGE (k);
CREATE TABLE part_1 PARTITION OF part FOR VALUES FROM (0) TO (10);

SELECT connect_create_connection('sync', 'local', '{"note": "primary sync"}');
SELECT connect_create_connection('sync');
SELECT connect_create_connection('bad name');
SELECT connect_create_connection(NULL);
SELECT connect_create_connection('x', 'salesforce');
SELECT connect_create_connection('x', 'local', '[1,2]');
SELECT connect_create_connection('secret', 'webhook', '{"url": "https://hooks.example.com/hook", "secret": "s3cr3t"}');

SELECT connect_map_table('sync', 'account');
SELECT connect_map_table('sync', 'account');
SELECT connect_map_table('nope', 'account');
SELECT connect_map_table('sync', 'nokey');
SELECT connect_map_table('sync', 'scratch');
SELECT connect_map_table('sync', 'account_view');
SELECT connect_map_table('sync', 'part_1');
SELECT connect_map_table('sync', 'connect_guard.trigger_log');
SELECT connect_map_table('sync', NULL);
SELECT connect_map_table('sync', 'no_such_table');
SELECT connect_map_table('sync', 'part', 'Part__c');

SELECT connect_unmap_table('sync', 'nokey');
SELECT connect_unmap_table('nope', 'account');
SELECT connect_drop_connection('nope');

SELECT connection, adapter, state, mappings, options FROM connect_connections ORDER BY connection;
SELECT connection, table_name, object_name, state FROM connect_mappings ORDER BY 1, 2;

-- secrets in options never show in views or events
SELECT detail FROM connect_guard.event WHERE kind = 'connection_created' ORDER BY event_id;

SELECT connect_drop_connection('sync');
SELECT count(*) AS triggers_left FROM pg_trigger WHERE tgname LIKE '_connect_guard%';
SELECT connect_drop_connection('secret');

DROP VIEW account_view;
DROP TABLE account, nokey, part;
DROP EXTENSION connect_guard;
