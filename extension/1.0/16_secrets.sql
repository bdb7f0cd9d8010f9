/* ------------------------------------------------------------------------
 * Secrets: a token or webhook key given inline is kept in
 * connect_guard.connection_secret (superusers only) and replaced in the
 * connection's options by "********"; token_file/secret_file name a file the
 * worker reads before every attempt (so a rotated token is picked up), and
 * keep the secret out of SQL text and so out of statement logs.  Neither
 * the events, the views, nor last_error ever hold a secret.
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

