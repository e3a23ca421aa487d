//! Where a drill restores from: the source's own repository (the primary
//! copy) or another one, usually its class's off-site repository, which
//! `copy` fills. A drill from the off-site copy proves what a lost site
//! leaves: that copy, and its password.

use std::path::{Path, PathBuf};

use crate::model::BackupCopy;
use crate::plan::{Plan, Repository, SourceSpec};

/// A repository a drill restores from, and which copy of the source it holds.
#[derive(Debug, Clone)]
pub struct Origin {
    pub copy: BackupCopy,
    /// Its name in the plan, or its URL (redacted) when the plan does not name it.
    pub name: String,
    pub repo: Repository,
}

impl Origin {
    /// The copy the class's `drill.from` names (the source's own repository by default).
    pub fn of_plan(plan: &Plan, source: &SourceSpec) -> Result<Origin, String> {
        let from = plan.classes.get(&source.class).and_then(|c| c.drill.as_ref()).map(|d| d.from).unwrap_or_default();
        Origin::copy(plan, source, from)
    }

    /// What `drill --from` names: a repository of the plan, `primary` or
    /// `offsite` (the source's own, its class's off-site one), or any
    /// repository's URL, opened with `password_file` (default: the
    /// source's repository's).
    pub fn resolve(plan: &Plan, source: &SourceSpec, from: &str, password_file: Option<&Path>) -> Result<Origin, String> {
        if plan.repositories.contains_key(from) {
            return Origin::named(plan, source, from);
        }
        match from {
            "primary" => Origin::copy(plan, source, BackupCopy::Primary),
            "offsite" => Origin::copy(plan, source, BackupCopy::Offsite),
            url => {
                let (_, own) = plan.repository_of(source).ok_or("the source's repository is not in the plan")?;
                let password_file = password_file.map_or_else(|| own.password_file.clone(), PathBuf::from);
                let repo = Repository::new(url.into(), password_file);
                let copy = if own.url == url.into() { BackupCopy::Primary } else { BackupCopy::Offsite };
                // Named in messages and drill reports: redacted.
                Ok(Origin { copy, name: crate::secret_url::redact(url), repo })
            }
        }
    }

    fn copy(plan: &Plan, source: &SourceSpec, copy: BackupCopy) -> Result<Origin, String> {
        let name = match copy {
            BackupCopy::Primary => plan.repository_of(source).map(|(n, _)| n).ok_or("the source's repository is not in the plan")?,
            BackupCopy::Offsite => plan
                .classes
                .get(&source.class)
                .and_then(|c| c.offsite.as_deref())
                .ok_or_else(|| format!("class {} has no off-site repository (offsite: REPOSITORY)", source.class))?,
        };
        Origin::named(plan, source, name)
    }

    fn named(plan: &Plan, source: &SourceSpec, name: &str) -> Result<Origin, String> {
        let repo = plan.repositories.get(name).ok_or_else(|| format!("no repository {name} in the plan"))?;
        let own = plan.repository_of(source).map(|(_, r)| &r.url);
        let copy = if own == Some(&repo.url) { BackupCopy::Primary } else { BackupCopy::Offsite };
        Ok(Origin { copy, name: name.into(), repo: repo.clone() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repository_given_by_url_is_named_without_its_password() {
        let text = "repositories:\n  main:\n    url: /srv/repo\n    password_file: /pw\nclasses:\n  c:\n    rpo: 1h\n    rto: 1h\n\
            sources:\n  - name: db\n    class: c\n    url: /data\n    schedule: \"@hourly\"\n";
        let plan = Plan::parse(text, Path::new("plan.yaml")).unwrap();
        let o = Origin::resolve(&plan, &plan.sources[0], "sftp://backup:repo-secret@vault/x", None).unwrap();
        assert_eq!(o.name, "sftp://backup:***@vault/x");
        assert_eq!(o.repo.url.expose(), "sftp://backup:repo-secret@vault/x");
        assert!(o.copy == BackupCopy::Offsite && o.repo.password_file == Path::new("/pw"));
    }
}
