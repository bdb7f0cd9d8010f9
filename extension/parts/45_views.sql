/* ------------------------------------------------------------------------
 * Views
 * ------------------------------------------------------------------------ */

CREATE VIEW connect_connections AS
SELECT c.name AS connection,
       c.adapter,
       c.state,
       c.state_since,
       (SELECT count(*) FROM connect_guard.mapping m WHERE m.connection_id = c.connection_id) AS mappings,
       connect_guard.redact(c.options) AS options,
       c.created_at
  FROM connect_guard.connection c;

CREATE VIEW connect_mappings AS
SELECT c.name AS connection,
       to_regclass(format('%I.%I', m.table_schema, m.table_name)) AS table_name,
       m.table_schema,
       m.table_name AS table_relname,
       m.object_name,
       m.state,
       m.state_since,
       m.remote_id
  FROM connect_guard.mapping m JOIN connect_guard.connection c USING (connection_id);

-- what each connection's log says, own or Connect's (15_log_sources.sql)
CREATE VIEW connect_high_water_marks AS
SELECT c.name AS connection,
       s.hwm_tick,
       s.hwm_id,
       s.hwm_txid,
       s.log_head,
       s.backlog,
       (SELECT b.batch_id FROM connect_guard.batch b
         WHERE b.connection_id = c.connection_id AND b.finished_at IS NULL) AS open_batch,
       c.last_batch_at,
       c.remote_hwm AS sync_service_hwm,
       c.remote_hwm_at AS sync_service_hwm_at,
       -- for monitoring: how long the oldest entry of the backlog has waited,
       -- and since when the mark has not moved (a consumer that stopped polling)
       s.oldest_pending_at,
       s.hwm_at,
       s.log_kind,
       s.log_table,
       s.failed,
       s.ids_left,
       s.ids_used_pct
  FROM connect_guard.connection c CROSS JOIN LATERAL connect_guard.log_status(c.connection_id) s;

CREATE VIEW connect_fences AS
SELECT f.fence_id,
       f.scope,
       f.connection,
       f.reason,
       f.since,
       f.raised_by,
       f.tables,
       (SELECT array_agg(r.relid::regclass ORDER BY r.relid::regclass::text)
          FROM connect_guard.fence_relations() r WHERE r.fence_id = f.fence_id) AS fenced_tables
  FROM connect_guard.fence_list() f;

CREATE VIEW connect_status AS
SELECT c.name AS connection,
       c.adapter,
       c.state,
       c.state_since,
       c.state IN ('PAUSING', 'PAUSED') AS paused,
       c.state_reason AS paused_because,
       f.fence_id IS NOT NULL OR m.fence_id IS NOT NULL AS fenced,
       coalesce(f.reason, m.reason) AS fenced_because,
       coalesce(f.since, m.since) AS fenced_since,
       h.hwm_id,
       h.log_head,
       h.backlog,
       h.open_batch,
       h.last_batch_at,
       h.log_table,
       h.oldest_pending_at,
       h.failed,
       h.ids_used_pct,
       -- open schema changes of its mappings: connect_schema_drift (19_table_shape_changes.sql) says what
       (SELECT count(*) FROM connect_guard.schema_change s JOIN connect_guard.mapping mp USING (mapping_id)
         WHERE mp.connection_id = c.connection_id AND s.resolved_at IS NULL) AS schema_changes
  FROM connect_guard.connection c
  JOIN connect_high_water_marks h ON h.connection = c.name
  LEFT JOIN connect_guard.fence_list() f ON f.fence_id = c.fence_id
  LEFT JOIN LATERAL (SELECT * FROM connect_guard.fence_list() l
                      WHERE l.scope IN ('mapped', 'database', 'reload') ORDER BY l.fence_id LIMIT 1) m ON true;
