/* ------------------------------------------------------------------------
 * Connection options: what each adapter needs to reach its sync service,
 * validated when the connection is created.
 * ------------------------------------------------------------------------ */

/*
 * connect_guard.check_url refuses what is not an http(s) URL, URLs with
 * credentials in them (they would show in the views and the event log),
 * and plain http:// (every request of the heroku and webhook adapters
 * carries the token or a signature), unless it goes to a loopback address
 * and connect_guard.http_allow_insecure_loopback is on, for tests.  The
 * worker checks again before every request (signals.c).
 */
CREATE FUNCTION connect_guard.url_transport_problem(url text)
RETURNS text LANGUAGE C STRICT
AS 'MODULE_PATHNAME', 'connect_guard_url_transport_problem';

CREATE FUNCTION connect_guard.check_url(p_adapter text, p_key text, p_url text, p_example text)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_problem text;
BEGIN
    IF p_url IS NULL THEN
        RAISE EXCEPTION USING
            ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('a %s connection needs the option "%s"', p_adapter, p_key),
            HINT = format('For example: %s.', p_example);
    END IF;
    IF p_url !~ '^https?://[^/\s?#@]+(/[^\s?#@]*)?$' THEN
        RAISE EXCEPTION USING
            ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('option "%s" is not an http:// or https:// URL: %s', p_key, p_url),
            DETAIL = 'The URL must start with http:// or https://, hold no spaces, no query string and no user name or password.',
            HINT = format('For example: %s.', p_example);
    END IF;
    v_problem := connect_guard.url_transport_problem(p_url);
    IF v_problem IS NOT NULL THEN
        RAISE EXCEPTION USING
            ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('option "%s" must be an https:// URL: %s', p_key, p_url),
            DETAIL = v_problem || '.',
            HINT = 'Use https://. For tests against a simulator on this machine, connect_guard.http_allow_insecure_loopback = on '
                   '(postgresql.conf) allows http:// to 127.0.0.1, ::1 or localhost.';
    END IF;
    RETURN rtrim(p_url, '/');
END;
$$;

/*
 * connect_guard.prepare_options validates a connection's options for its
 * adapter and splits off an inline secret, which the caller stores in
 * connect_guard.connection_secret.
 */
CREATE FUNCTION connect_guard.prepare_options(p_adapter text, p_options jsonb,
                                              OUT options jsonb, OUT secret text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_allowed text[];
    v_inline text;
    v_file text;
    v_what text;
    v_example text;
    v_problem text;
    k text;
BEGIN
    options := p_options;
    IF p_adapter = 'local' THEN
        RETURN;
    ELSIF p_adapter = 'heroku' THEN
        v_allowed := ARRAY['region_url', 'connection_id', 'token_file', 'token', 'note'];
        v_inline := 'token';
        v_file := 'token_file';
        v_what := 'API token';
        v_example := '{"region_url": "https://connect.example.com", "connection_id": "<the id heroku connect:info shows>", '
                     '"token_file": "/etc/connect_guard/connect.token"}';
    ELSE
        v_allowed := ARRAY['url', 'secret_file', 'secret', 'note'];
        v_inline := 'secret';
        v_file := 'secret_file';
        v_what := 'webhook key';
        v_example := '{"url": "https://hooks.example.com/connect", "secret_file": "/etc/connect_guard/hook.key"}';
    END IF;

    FOR k IN SELECT jsonb_object_keys(p_options) LOOP
        IF NOT k = ANY (v_allowed) THEN
            RAISE EXCEPTION USING
                ERRCODE = 'invalid_parameter_value',
                MESSAGE = format('unknown option "%s" for a %s connection', k, p_adapter),
                HINT = format('The options of a %s connection are %s.', p_adapter, array_to_string(v_allowed, ', '));
        END IF;
        IF jsonb_typeof(p_options -> k) <> 'string' THEN
            RAISE EXCEPTION USING
                ERRCODE = 'invalid_parameter_value',
                MESSAGE = format('option "%s" must be a JSON string', k),
                HINT = format('For example: %s.', v_example);
        END IF;
    END LOOP;

    IF p_adapter = 'heroku' THEN
        options := jsonb_set(options, '{region_url}',
                             to_jsonb(connect_guard.check_url(p_adapter, 'region_url', p_options ->> 'region_url', v_example)));
        IF coalesce(p_options ->> 'connection_id', '') !~ '^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$' THEN
            RAISE EXCEPTION USING
                ERRCODE = 'invalid_parameter_value',
                MESSAGE = CASE WHEN p_options ? 'connection_id'
                               THEN format('option "connection_id" is not a Connect connection id: %s', p_options ->> 'connection_id')
                               ELSE 'a heroku connection needs the option "connection_id"' END,
                DETAIL = 'It is the id of the connection in Heroku Connect (a UUID), not its name.',
                HINT = format('For example: %s.', v_example);
        END IF;
    ELSE
        options := jsonb_set(options, '{url}',
                             to_jsonb(connect_guard.check_url(p_adapter, 'url', p_options ->> 'url', v_example)));
    END IF;

    IF (p_options ? v_inline) = (p_options ? v_file) THEN
        RAISE EXCEPTION USING
            ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('a %s connection needs exactly one of the options "%s" and "%s"', p_adapter, v_file, v_inline),
            DETAIL = format('"%s" names a file the server reads the %s from; "%s" gives it inline, and it is then kept where only superusers can read it.',
                            v_file, v_what, v_inline),
            HINT = format('Prefer "%s": a secret written in SQL text shows up in statement logs.', v_file);
    END IF;
    IF p_options ? v_inline THEN
        secret := p_options ->> v_inline;
        IF secret !~ '^[!-~]+$' OR length(secret) > 4096 THEN
            RAISE EXCEPTION USING
                ERRCODE = 'invalid_parameter_value',
                MESSAGE = format('option "%s" is not a valid %s', v_inline, v_what),
                DETAIL = 'It must be 1 to 4096 printable ASCII characters, without spaces.',
                HINT = format('Check the value, or use "%s".', v_file);
        END IF;
        options := jsonb_set(options, ARRAY[v_inline], '"********"');
        RAISE WARNING USING
            MESSAGE = format('the %s given inline (option "%s") is in the text of this statement', v_what, v_inline),
            DETAIL = 'It is stored where only superusers can read it, but the statement''s text reaches the server log '
                     'with log_statement = all, or when the statement fails or runs slow (log_min_error_statement, '
                     'log_min_duration_statement), and shows in pg_stat_activity while it runs.',
            HINT = format('Write it to a file that only the server can read (chmod 600) and give "%s" instead.', v_file);
    ELSE
        v_problem := connect_guard.secret_file_problem(p_options ->> v_file);
        IF v_problem IS NOT NULL THEN
            RAISE EXCEPTION USING
                ERRCODE = 'invalid_parameter_value',
                MESSAGE = format('cannot use "%s" as the %s file', p_options ->> v_file, v_what),
                DETAIL = v_problem || '.',
                HINT = format('Give the absolute path of a file that the server''s operating system user can read and other users cannot (chmod 600), holding the %s on one line.', v_what);
        END IF;
    END IF;
END;
$$;

