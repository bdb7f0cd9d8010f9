"""connect_config: Heroku Connect's export file, as the simulator serves and
checks it (GET/POST /api/v3/connections/{id}/actions/export|import).

The file's shape is public (Heroku's articles and the CLI's export command):

    {"version": 1,
     "connection": {"app_name", "organization_id", "exported_at", "features",
                    "api_version", "name", "logplex_log_enabled"},
     "mappings": [{"object_name": "Account",
                   "config": {"access": "read_only" | "read_write",
                              "sf_notify_enabled": bool,
                              "sf_polling_seconds": int,
                              "sf_max_daily_api_calls": int,
                              "fields": {"Name": {}, ...},
                              "indexes": {"Id": {"unique": true}, ...},
                              "upsert_field": "External__c"   (optional)}}]}

Connect checks an import against Salesforce too (objects and fields that
exist); the simulator cannot, so it checks the file's structure and its own
consistency, strictly: an unknown key is refused, and every error names the
key, so that a client's error handling is tested against precise messages.
"""

import re

# Salesforce API names: a letter, then letters, digits and underscores
# (custom objects and fields end in __c, relationship names in __r).
API_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,79}$")

CONNECTION_KEYS = {"app_name": str, "organization_id": str, "exported_at": str, "features": dict,
                   "api_version": str, "name": str, "logplex_log_enabled": bool}
CONFIG_KEYS = {"access", "sf_notify_enabled", "sf_polling_seconds", "sf_max_daily_api_calls",
               "fields", "indexes", "upsert_field"}
REQUIRED_CONFIG_KEYS = ("access", "fields")
ACCESS = ("read_only", "read_write")

# Columns Connect adds to every mapped table that are no Salesforce field.
NOT_FIELDS = {"id", "_hc_lastop", "_hc_err"}
# Standard fields whose case a column name lost (Connect lower-cases them).
KNOWN_FIELDS = {name.lower(): name for name in (
    "Id", "Name", "SystemModstamp", "IsDeleted", "CreatedDate", "LastModifiedDate", "OwnerId",
    "CreatedById", "LastModifiedById", "AccountId", "ContactId", "FirstName", "LastName", "Email",
    "Phone", "Title", "Description", "Industry", "Type", "Status", "Amount", "StageName", "CloseDate")}


class ConfigError(ValueError):
    """A malformed or inconsistent export file; the message starts with the
    key at fault, e.g. 'mappings[0].config.access: ...'."""


def field_name(column):
    """The Salesforce field name of a Connect column (sfid is Id)."""
    if column == "sfid":
        return "Id"
    if column in KNOWN_FIELDS:
        return KNOWN_FIELDS[column]
    if column.endswith("__c") or column.endswith("__r"):
        return column[:1].upper() + column[1:]
    return column[:1].upper() + column[1:]


def default_mapping_config(columns=None):
    """The config of a mapping that was never imported: read_write, polling
    every 10 minutes, and the fields of its table's columns (or Connect's
    standard ones when the table is not known)."""
    if columns:
        fields = {field_name(c): {} for c in columns if c not in NOT_FIELDS}
    else:
        fields = {name: {} for name in ("Id", "Name", "SystemModstamp", "IsDeleted", "CreatedDate")}
    indexes = {"Id": {"unique": True}}
    if "SystemModstamp" in fields:
        indexes["SystemModstamp"] = {"unique": False}
    return {"access": "read_write", "sf_notify_enabled": False, "sf_polling_seconds": 600,
            "sf_max_daily_api_calls": 30000, "fields": fields, "indexes": indexes}


def export_file(connection, mapping_configs, exported_at):
    """The export of one connection; mapping_configs is a list of
    (object_name, config) in mapping order."""
    return {
        "version": 1,
        "connection": {
            "app_name": connection.app_name,
            "organization_id": connection.organization_id,
            "exported_at": exported_at,
            "features": dict(connection.features),
            "api_version": connection.api_version,
            "name": connection.name,
            "logplex_log_enabled": connection.logplex_log_enabled,
        },
        "mappings": [{"object_name": name, "config": config} for name, config in mapping_configs],
    }


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def validate_import(doc):
    """Checks an export file for import; returns [(object_name, config)].
    Raises ConfigError naming the first bad key."""
    if not isinstance(doc, dict):
        raise ConfigError("(top level): expected a JSON object")
    unknown = sorted(set(doc) - {"version", "connection", "mappings"})
    if unknown:
        raise ConfigError("%s: unknown key" % unknown[0])
    if "version" not in doc:
        raise ConfigError("version: missing")
    if not _is_int(doc["version"]) or doc["version"] != 1:
        raise ConfigError("version: must be 1, not %r" % (doc["version"],))
    if "connection" in doc:
        _validate_connection(doc["connection"])
    if "mappings" not in doc:
        raise ConfigError("mappings: missing")
    mappings = doc["mappings"]
    if not isinstance(mappings, list):
        raise ConfigError("mappings: expected a list")
    seen = {}
    out = []
    for i, mapping in enumerate(mappings):
        where = "mappings[%d]" % i
        if not isinstance(mapping, dict):
            raise ConfigError("%s: expected an object" % where)
        unknown = sorted(set(mapping) - {"object_name", "config"})
        if unknown:
            raise ConfigError("%s.%s: unknown key" % (where, unknown[0]))
        name = mapping.get("object_name")
        if not isinstance(name, str) or not API_NAME.match(name):
            raise ConfigError("%s.object_name: expected a Salesforce object name, not %r" % (where, name))
        if name.lower() in seen:
            raise ConfigError("%s.object_name: %s is mapped twice (also mappings[%d])"
                              % (where, name, seen[name.lower()]))
        seen[name.lower()] = i
        if "config" not in mapping:
            raise ConfigError("%s.config: missing" % where)
        out.append((name, _validate_config(mapping["config"], where + ".config")))
    return out


def _validate_connection(conn):
    if not isinstance(conn, dict):
        raise ConfigError("connection: expected an object")
    for key in sorted(conn):
        if key not in CONNECTION_KEYS:
            raise ConfigError("connection.%s: unknown key" % key)
        expected = CONNECTION_KEYS[key]
        value = conn[key]
        if value is not None and not isinstance(value, expected):
            raise ConfigError("connection.%s: expected %s" % (key, expected.__name__))


def _validate_config(config, where):
    if not isinstance(config, dict):
        raise ConfigError("%s: expected an object" % where)
    unknown = sorted(set(config) - CONFIG_KEYS)
    if unknown:
        raise ConfigError("%s.%s: unknown key" % (where, unknown[0]))
    for key in REQUIRED_CONFIG_KEYS:
        if key not in config:
            raise ConfigError("%s.%s: missing" % (where, key))
    if config["access"] not in ACCESS:
        raise ConfigError("%s.access: must be read_only or read_write, not %r" % (where, config["access"]))
    if "sf_notify_enabled" in config and not isinstance(config["sf_notify_enabled"], bool):
        raise ConfigError("%s.sf_notify_enabled: expected true or false" % where)
    if "sf_polling_seconds" in config and \
            (not _is_int(config["sf_polling_seconds"]) or config["sf_polling_seconds"] < 1):
        raise ConfigError("%s.sf_polling_seconds: expected a positive integer" % where)
    if "sf_max_daily_api_calls" in config and \
            (not _is_int(config["sf_max_daily_api_calls"]) or config["sf_max_daily_api_calls"] < 0):
        raise ConfigError("%s.sf_max_daily_api_calls: expected an integer >= 0" % where)
    fields = config["fields"]
    if not isinstance(fields, dict) or not fields:
        raise ConfigError("%s.fields: expected a non-empty object of field names" % where)
    lower_fields = {}
    for name, spec in fields.items():
        if not API_NAME.match(name):
            raise ConfigError("%s.fields.%s: not a Salesforce field name" % (where, name))
        if not isinstance(spec, dict):
            raise ConfigError("%s.fields.%s: expected an object" % (where, name))
        if name.lower() in lower_fields:
            raise ConfigError("%s.fields.%s: the same field as %s (field names ignore case)"
                              % (where, name, lower_fields[name.lower()]))
        lower_fields[name.lower()] = name
    indexes = config.get("indexes", {})
    if not isinstance(indexes, dict):
        raise ConfigError("%s.indexes: expected an object" % where)
    for name, spec in indexes.items():
        # Id is always there: Connect indexes sfid whatever the fields say
        if name.lower() not in lower_fields and name != "Id":
            raise ConfigError("%s.indexes.%s: not one of the mapping's fields" % (where, name))
        if not isinstance(spec, dict) or set(spec) - {"unique"} or \
                not isinstance(spec.get("unique", False), bool):
            raise ConfigError("%s.indexes.%s: expected {\"unique\": true|false}" % (where, name))
    if "upsert_field" in config:
        upsert = config["upsert_field"]
        if not isinstance(upsert, str) or upsert.lower() not in lower_fields:
            raise ConfigError("%s.upsert_field: not one of the mapping's fields" % where)
        if config["access"] != "read_write":
            raise ConfigError("%s.upsert_field: only a read_write mapping writes to Salesforce" % where)
    return config
