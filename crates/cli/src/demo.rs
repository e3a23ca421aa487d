//! `tresor demo`: the first thing a newcomer runs. It sets up a local
//! repository with a generated password file, backs up a folder twice,
//! lists the snapshots, restores the latest one and proves it identical.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use tresor_engine::backup::{BackupOptions, backup};
use tresor_engine::cache::Cache;
use tresor_engine::crypto::Aead;
use tresor_engine::restore::{RestoreOptions, restore};
use tresor_engine::{InitOptions, KdfParams, OpenOptions, Password, Repository};
use tresor_storage::{Location, StorageOptions};

use crate::commands::human;
use crate::opts::DemoArgs;

fn sample_data(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir.join("docs"))?;
    std::fs::create_dir_all(dir.join("config"))?;
    for i in 0..20 {
        std::fs::write(dir.join("docs").join(format!("report-{i:02}.txt")), format!("quarterly report {i}\n").repeat(2000))?;
    }
    std::fs::write(dir.join("config/app.yaml"), "replicas: 3\nlog_level: info\n")?;
    let mut big = vec![0u8; 3 << 20];
    blake3::Hasher::new().update(b"demo").finalize_xof().fill(&mut big);
    std::fs::write(dir.join("data.bin"), &big)?;
    Ok(())
}

fn password(dir: &Path) -> Result<Password> {
    let file = dir.join("password");
    if !file.exists() {
        let mut raw = [0u8; 24];
        rand::fill(&mut raw);
        let pw: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        std::fs::write(&file, &pw)?;
        std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        say!("generated password file {}", file.display());
    }
    Ok(Password::new(std::fs::read_to_string(&file)?.trim_end()))
}

pub async fn demo(a: DemoArgs) -> Result<u8> {
    std::fs::create_dir_all(&a.dir).with_context(|| format!("cannot create {}", a.dir.display()))?;
    let dir = std::path::absolute(&a.dir)?;
    let source = match a.source {
        Some(s) => std::path::absolute(s)?,
        None => {
            let s = dir.join("sample");
            sample_data(&s)?;
            s
        }
    };
    let repo_path = dir.join("repository");
    let loc = Location::Fs(repo_path.clone());
    let open = OpenOptions { password: password(&dir)?, cache_root: Cache::default_root(), storage: StorageOptions::default() };
    let repo = if repo_path.join("config").exists() {
        Repository::open(&loc, &open).await?
    } else {
        crate::commands::private_root(&repo_path)?;
        let init = InitOptions {
            open: open.clone(),
            aead: Aead::Aes256Gcm,
            compression: 3,
            kdf: KdfParams::default(),
            pack_size: None,
            settings: Default::default(),
        };
        let r = Repository::init(&loc, &init).await?;
        say!("initialised repository {} at {}", r.config().id.short(), repo_path.display());
        r
    };
    let repo = Arc::new(repo);
    for round in 1..=2 {
        let parent = repo.snapshots().await?.pop();
        let snap =
            backup(repo.clone(), BackupOptions { paths: vec![source.clone()], tags: vec!["demo".into()], parent, ..Default::default() })
                .await?;
        let s = snap.summary.unwrap_or_default();
        say!(
            "backup {round}: snapshot {} — {} files, {} new, {} unchanged, {} added in {:.2}s",
            snap.id.short(),
            s.total_files_processed,
            s.files_new,
            s.files_unmodified,
            human(s.data_added_packed),
            s.total_duration
        );
    }
    say!("snapshots:");
    for s in repo.snapshots().await? {
        say!("  {}  {}  {}", s.id.short(), s.time.format("%Y-%m-%d %H:%M:%S"), s.paths.join(" "));
    }
    let latest = repo.find_snapshot("latest").await?;
    let target = dir.join("restored");
    let _ = std::fs::remove_dir_all(&target);
    let summary = restore(repo.clone(), &latest, &RestoreOptions { target: target.clone(), ..Default::default() }).await?;
    let restored = target.join(source.strip_prefix("/").unwrap_or(&source));
    let differences = compare(&source, &restored)?;
    say!("restored {} files ({}) to {}", summary.files_restored, human(summary.bytes_restored), restored.display());
    if differences > 0 {
        bail!("{differences} files differ after restore");
    }
    say!("every restored file is byte-identical to its original");
    say!("try: TRESOR_REPOSITORY={} TRESOR_PASSWORD_FILE={} tresor snapshots", repo_path.display(), dir.join("password").display());
    Ok(0)
}

fn compare(a: &Path, b: &Path) -> Result<usize> {
    let mut differences = 0;
    let mut stack: Vec<PathBuf> = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in std::fs::read_dir(a.join(&rel))? {
            let e = e?;
            let r = rel.join(e.file_name());
            if e.file_type()?.is_dir() {
                stack.push(r);
            } else if e.file_type()?.is_file() && std::fs::read(a.join(&r))? != std::fs::read(b.join(&r)).unwrap_or_default() {
                differences += 1;
            }
        }
    }
    Ok(differences)
}
