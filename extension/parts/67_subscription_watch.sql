/* ------------------------------------------------------------------------
 * The subscription watch: logical replication into a mapped table.  Its
 * apply and table-sync workers write with session_replication_role =
 * replica, where a trigger enabled in the origin role (the capture trigger
 * as connect_map_table() installs it, Connect's logger trigger) does not
 * fire: every row they apply would reach the table and never the log.
 *
 * CREATE SUBSCRIPTION, and ALTER SUBSCRIPTION ... REFRESH PUBLICATION /
 * ADD PUBLICATION / SET PUBLICATION / ENABLE, are refused when one of the
 * subscription's tables (pg_subscription_rel, as the command left it) is a
 * mapped table, or a partition of one, whose capture trigger or truncate
 * watch would stay silent (subscription_watch.c; the slot CREATE
 * SUBSCRIPTION made on the publisher is dropped again).  A table whose
 * triggers are ENABLE ALWAYS is accepted: the rows applied are logged, once
 * each, as any other write.  What the command cannot show (a subscription
 * made before its table was mapped, a catalog changed by hand) is reported
 * by the schema watch as subscription_target (19_table_shape_changes.sql),
 * and connect_save_mapping() enables connect_guard's own triggers ALWAYS
 * for such a table.
 * ------------------------------------------------------------------------ */

/*
 * connect_guard.subscription_unlogged: the triggers of the mapped tables
 * subscription p_subid writes into that would not fire for its rows, as
 * "trigger on table" separated by commas ('' for none).  SECURITY DEFINER:
 * the subscription's owner need not read connect_guard's catalog.  A
 * failure of the check itself is a WARNING (the worker's cycle looks
 * again), never the failure of the command.
 */
CREATE FUNCTION connect_guard.subscription_unlogged(p_subid oid)
RETURNS text
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_unlogged text;
    v_message text;
BEGIN
    IF to_regclass('connect_guard.mapping') IS NULL THEN
        RETURN '';
    END IF;
    BEGIN
        SELECT string_agg(DISTINCT f.object, ', ') INTO v_unlogged
          FROM connect_guard.mapping m
         CROSS JOIN LATERAL connect_guard.mapping_findings(m, false) f
         WHERE m.mapping_id = ANY (connect_guard.mappings_of_relations(
                   ARRAY(SELECT sr.srrelid FROM pg_subscription_rel sr WHERE sr.srsubid = p_subid)))
           AND f.kind IN ('subscription_target', 'trigger_disabled', 'trigger_missing');
    EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS v_message = MESSAGE_TEXT;
        RAISE WARNING USING
            MESSAGE = format('connect_guard could not check the tables of subscription %s: %s', p_subid, v_message),
            HINT = 'The command went through; the connect_guard worker checks the mapped tables on its next cycle.';
        RETURN '';
    END;
    RETURN coalesce(v_unlogged, '');
END;
$$;

-- the event trigger's function (subscription_watch.c)
CREATE FUNCTION connect_guard.on_subscription_change()
RETURNS event_trigger
LANGUAGE C
AS 'MODULE_PATHNAME', 'connect_guard_subscription_watch';

CREATE EVENT TRIGGER connect_guard_subscription_watch ON ddl_command_end
    WHEN TAG IN ('CREATE SUBSCRIPTION', 'ALTER SUBSCRIPTION')
    EXECUTE FUNCTION connect_guard.on_subscription_change();
-- also in sessions with session_replication_role = replica
ALTER EVENT TRIGGER connect_guard_subscription_watch ENABLE ALWAYS;
