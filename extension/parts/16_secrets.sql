/* ------------------------------------------------------------------------
 * Secrets: a token or webhook key given inline is kept in
 * connect_guard.connection_secret (superusers only) and replaced in the
 * connection's options by "********"; but the SQL text that gave it shows
 * in statement logs (log_statement = all, log_min_error_statement) and in
 * pg_stat_activity while it runs.  token_file/secret_file name a file the
 * worker reads before every attempt (so a rotated token is picked up), and
 * keep the secret out of SQL text altogether: prefer them.
 *
 * A sync service may echo the secret in an answer, in any encoding: the
 * worker scrubs every form of it (scrub.c has the rule) from the answers
 * it hands to SQL, and the trigger scrub_stored scrubs again every value
 * written to a column that can hold an answer's words, whoever writes it:
 * connection.state_reason and event.detail here, request.last_error and
 * remote_state in 50_requests.sql.
 * ------------------------------------------------------------------------ */

CREATE TABLE connect_guard.connection_secret (
    connection_id   integer PRIMARY KEY REFERENCES connect_guard.connection ON DELETE CASCADE,
    -- the Connect API token (heroku) or the HMAC key (webhook)
    secret          text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT clock_timestamp()
);
REVOKE ALL ON connect_guard.connection_secret FROM PUBLIC;
COMMENT ON TABLE connect_guard.connection_secret IS
    'connect_guard: secrets given inline to connect_create_connection(); readable by superusers only';
SELECT pg_catalog.pg_extension_config_dump('connect_guard.connection_secret', '');

/*
 * connect_guard.secret_file_problem says why the worker could not use path
 * as a token or key file (NULL when it can), without its content.  Naming
 * a file the server reads needs the rights of pg_read_server_files: the
 * worker sends the file's line to the sync service's URL.
 */
CREATE FUNCTION connect_guard.secret_file_problem(path text)
RETURNS text LANGUAGE C STRICT
AS 'MODULE_PATHNAME', 'connect_guard_secret_file_problem';


/*
 * connect_guard.scrub returns its text with every form of the secrets the
 * worker holds right now taken out (in any other backend: unchanged).
 */
CREATE FUNCTION connect_guard.scrub(text)
RETURNS text LANGUAGE C STRICT VOLATILE
AS 'MODULE_PATHNAME', 'connect_guard_scrub';

-- for the regression tests: hold secrets in this backend as the worker does, and forget them
CREATE FUNCTION connect_guard.scrub_hold(secrets text[])
RETURNS void LANGUAGE C STRICT VOLATILE
AS 'MODULE_PATHNAME', 'connect_guard_scrub_hold';
CREATE FUNCTION connect_guard.scrub_release()
RETURNS void LANGUAGE C VOLATILE
AS 'MODULE_PATHNAME', 'connect_guard_scrub_release';

/*
 * connect_guard.scrub_stored(column, ...) is a BEFORE INSERT OR UPDATE row
 * trigger that scrubs the named text and jsonb columns (a jsonb's strings,
 * not its keys) the same way.  It costs nothing where no secret is held.
 */
CREATE FUNCTION connect_guard.scrub_stored()
RETURNS trigger LANGUAGE C
AS 'MODULE_PATHNAME', 'connect_guard_scrub_stored';

CREATE TRIGGER scrub_stored BEFORE INSERT OR UPDATE OF state_reason ON connect_guard.connection
    FOR EACH ROW WHEN (NEW.state_reason IS NOT NULL)
    EXECUTE FUNCTION connect_guard.scrub_stored('state_reason');
CREATE TRIGGER scrub_stored BEFORE INSERT OR UPDATE ON connect_guard.event
    FOR EACH ROW EXECUTE FUNCTION connect_guard.scrub_stored('detail');
