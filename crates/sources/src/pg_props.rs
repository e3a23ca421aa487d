//! What a logical dump of one database leaves out, or restores only where
//! its roles exist: who owns its objects, and the database's own owner,
//! privileges and settings (`pg_dump` writes those only with `--create`,
//! which a restore under another name cannot use). Recorded with the
//! snapshot, given back after the restore: without them every object
//! came back owned by the restoring user, and a database whose CONNECT
//! was revoked from PUBLIC let everyone connect again.

use serde_json::Value;

use crate::Result;
use crate::postgres::Postgres;

/// The roles that own objects of the current database or hold privileges
/// in it (`pg_shdepend`), and the bootstrap superuser, whose ownership
/// `pg_shdepend` does not record; then the database's owner, ACL and
/// settings.
const RECORD: &str = "SELECT json_build_object(\
    'roles', (SELECT coalesce(json_agg(rolname ORDER BY rolname), '[]') FROM pg_roles WHERE oid = 10 OR oid IN \
        (SELECT refobjid FROM pg_shdepend WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) \
         AND refclassid = 'pg_authid'::regclass)), \
    'owner', pg_get_userbyid(d.datdba), \
    'acl', d.datacl::text, \
    'settings', (SELECT to_json(setconfig) FROM pg_db_role_setting WHERE setdatabase = d.oid AND setrole = 0)) \
    FROM pg_database d WHERE d.datname = current_database()";

/// Settings whose value is a list of identifiers: `SET x TO 'a, b'` would
/// make one quoted name of it, so they are given as stored.
const LISTS: [&str; 5] =
    ["search_path", "temp_tablespaces", "session_preload_libraries", "local_preload_libraries", "shared_preload_libraries"];

/// The database's properties as the snapshot records them (`database`).
pub(crate) fn record(pg: &Postgres) -> Result<Value> {
    let text = pg.query(&pg.db, RECORD)?;
    serde_json::from_str(&text).map_err(|e| pg.fail(format!("cannot read the database's owners and settings: {e}")))
}

/// The recorded roles the target cluster lacks; none recorded (a snapshot
/// from before they were) is every role lacking.
pub(crate) fn missing_roles(pg: &Postgres, recorded: &Value) -> Result<Option<Vec<String>>> {
    let Some(roles) = recorded["roles"].as_array() else { return Ok(None) };
    let have = pg.query("postgres", "SELECT coalesce(json_agg(rolname), '[]') FROM pg_roles")?;
    let have: Vec<String> = serde_json::from_str(&have).unwrap_or_default();
    Ok(Some(roles.iter().filter_map(Value::as_str).filter(|r| !have.iter().any(|h| h == r)).map(String::from).collect()))
}

/// The statements that give database `db` the recorded privileges and
/// settings, for the roles in `have`, and its owner when `owner_too` (that
/// takes a superuser; the privileges and settings only the database's
/// owner, which its creator is).
pub(crate) fn statements(db: &str, recorded: &Value, have: &dyn Fn(&str) -> bool, owner_too: bool) -> Vec<String> {
    let db = ident(db);
    let mut out = Vec::new();
    if let Some(owner) = recorded["owner"].as_str().filter(|o| owner_too && have(o)) {
        out.push(format!("ALTER DATABASE {db} OWNER TO {}", ident(owner)));
    }
    if let Some(acl) = recorded["acl"].as_str() {
        out.push(format!("REVOKE ALL ON DATABASE {db} FROM PUBLIC"));
        for (grantee, privileges) in acl_items(acl).into_iter().filter(|(g, _)| g.is_empty() || have(g)) {
            let to = if grantee.is_empty() { "PUBLIC".into() } else { ident(&grantee) };
            for (grantable, with) in [(false, ""), (true, " WITH GRANT OPTION")] {
                let these: Vec<&str> = privileges.iter().filter(|(_, g)| *g == grantable).map(|(p, _)| *p).collect();
                if !these.is_empty() {
                    out.push(format!("GRANT {} ON DATABASE {db} TO {to}{with}", these.join(", ")));
                }
            }
        }
    }
    for setting in recorded["settings"].as_array().into_iter().flatten().filter_map(Value::as_str) {
        let Some((name, value)) = setting.split_once('=') else { continue };
        let value = if LISTS.contains(&name) { value.to_string() } else { format!("'{}'", value.replace('\'', "''")) };
        out.push(format!("ALTER DATABASE {db} SET {} TO {value}", ident(name)));
    }
    out
}

/// `{=T/app,app=C*c/app}`: each grantee (empty for PUBLIC) and its
/// privileges, each with whether it may grant it on (`*`).
fn acl_items(acl: &str) -> Vec<(String, Vec<(&'static str, bool)>)> {
    let inner = acl.trim_start_matches('{').trim_end_matches('}');
    array_items(inner)
        .into_iter()
        .filter_map(|item| {
            let (grant, _grantor) = item.rsplit_once('/')?;
            let (grantee, letters) = grant.rsplit_once('=')?;
            let grantee =
                grantee.strip_prefix('"').and_then(|g| g.strip_suffix('"')).map_or(grantee.to_string(), |g| g.replace("\"\"", "\""));
            let privileges: Vec<(&str, bool)> = [('C', "CREATE"), ('c', "CONNECT"), ('T', "TEMPORARY")]
                .into_iter()
                .filter_map(|(l, name)| letters.find(l).map(|i| (name, letters[i + 1..].starts_with('*'))))
                .collect();
            (!privileges.is_empty()).then_some((grantee, privileges))
        })
        .collect()
}

/// An array literal's items, split at commas outside double quotes, the
/// array's own quotes and backslashes taken off.
fn array_items(inner: &str) -> Vec<String> {
    let (mut items, mut cur, mut quoted, mut chars) = (Vec::new(), String::new(), false, inner.chars());
    while let Some(c) = chars.next() {
        match c {
            '\\' => cur.extend(chars.next()),
            '"' => quoted = !quoted,
            ',' if !quoted => items.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    if !cur.is_empty() {
        items.push(cur);
    }
    items
}

/// A name quoted as an SQL identifier.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_database_gets_its_owner_privileges_and_settings_back() {
        let recorded = json!({
            "roles": ["app", "postgres"], "owner": "app",
            "acl": "{=T/app,app=CTc/app,\"\\\"odd role\\\"=C*c/app\",gone=c/app}",
            "settings": ["work_mem=64MB", "search_path=\"$user\", public", "application_name=it's"],
        });
        let have = |r: &str| r != "gone";
        assert_eq!(
            statements("shop2", &recorded, &have, true),
            [
                "ALTER DATABASE \"shop2\" OWNER TO \"app\"",
                "REVOKE ALL ON DATABASE \"shop2\" FROM PUBLIC",
                "GRANT TEMPORARY ON DATABASE \"shop2\" TO PUBLIC",
                "GRANT CREATE, CONNECT, TEMPORARY ON DATABASE \"shop2\" TO \"app\"",
                "GRANT CONNECT ON DATABASE \"shop2\" TO \"odd role\"",
                "GRANT CREATE ON DATABASE \"shop2\" TO \"odd role\" WITH GRANT OPTION",
                "ALTER DATABASE \"shop2\" SET \"work_mem\" TO '64MB'",
                "ALTER DATABASE \"shop2\" SET \"search_path\" TO \"$user\", public",
                "ALTER DATABASE \"shop2\" SET \"application_name\" TO 'it''s'",
            ]
        );
        assert_eq!(statements("x", &json!({"acl": null, "settings": null, "owner": "gone"}), &have, true), Vec::<String>::new());
        let unowned = statements("shop2", &recorded, &have, false);
        assert_eq!((unowned.len(), unowned[0].as_str()), (8, "REVOKE ALL ON DATABASE \"shop2\" FROM PUBLIC"), "all but the owner");
    }
}
