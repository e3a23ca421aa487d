//! `tresor key`: password rotation without touching data.

use anyhow::{Result, bail};
use serde_json::json;
use tresor_engine::Id;

use crate::commands::{kdf, new_password, open, print_json};
use crate::opts::{Global, KeyArgs, KeyCommand};

pub async fn key(g: &Global, a: KeyArgs) -> Result<u8> {
    // Refused before the unlock, whatever the command.
    let kdf = kdf(g)?;
    let repo = open(g).await?;
    match a.command {
        KeyCommand::List => {
            let keys = repo.keys().await?;
            if g.json {
                let v: Vec<_> = keys.iter().map(|(id, k)| json!({"id": id, "current": *id == repo.key_id(), "created": k.created, "hostname": k.hostname, "username": k.username, "label": k.label})).collect();
                return print_json(&v).map(|_| 0);
            }
            say!(" {:<10} {:<20} {:<12} {:<25} label", "ID", "Host", "User", "Created");
            for (id, k) in keys {
                let mark = if id == repo.key_id() { '*' } else { ' ' };
                say!(
                    "{mark}{:<10} {:<20} {:<12} {:<25} {}",
                    id.short(),
                    k.hostname,
                    k.username,
                    k.created.format("%Y-%m-%d %H:%M:%S"),
                    k.label
                );
            }
        }
        KeyCommand::Add(n) => {
            let id = repo.add_key(&new_password(&n.new_password_file)?, kdf, &n.label).await?;
            report(g, "added", &id)?;
        }
        KeyCommand::Passwd(n) => {
            let id = repo.change_password(&new_password(&n.new_password_file)?, kdf, &n.label).await?;
            report(g, "changed password, new key", &id)?;
        }
        KeyCommand::Remove { id } => {
            let keys = repo.key_ids().await?;
            let matches: Vec<Id> = keys.into_iter().filter(|k| k.to_hex().starts_with(&id.to_ascii_lowercase())).collect();
            let [target] = matches.as_slice() else {
                bail!("{} keys match {id:?}; give a unique id prefix", matches.len());
            };
            repo.remove_key(target).await?;
            report(g, "removed key", target)?;
        }
    }
    Ok(0)
}

fn report(g: &Global, what: &str, id: &Id) -> Result<()> {
    if g.json {
        return print_json(&json!({"message_type": what, "id": id}));
    }
    say!("{what} {}", id.short());
    Ok(())
}
