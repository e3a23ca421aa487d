use super::*;
use crate::index::IndexFile;

#[test]
fn a_tree_pack_pushed_out_is_remembered_so_it_is_not_read_whole_again() {
    let mut held = TreePacks::default();
    let ids: Vec<Id> = (0u8..3).map(|n| Id([n; 32])).collect();
    for id in &ids {
        held.insert(*id, Arc::new(vec![0; TREE_PACK_BYTES_IN_MEMORY / 2]));
    }
    assert!(held.get(&ids[0]).is_none(), "three halves of the cap hold two");
    assert_eq!(held.let_go.iter().copied().collect::<Vec<_>>(), [ids[0]]);
    assert!(held.get(&ids[1]).is_some() && held.get(&ids[2]).is_some());
    held.remove(&ids[1]);
    assert!(!held.let_go.contains(&ids[1]), "a copy dropped as damaged may be read whole again");
}

pub(crate) async fn repository(dir: &std::path::Path) -> Repository {
    let open = repo_opts();
    let kdf = KdfParams { memory_kib: 64, iterations: 1, parallelism: 1 };
    let opts = InitOptions { open, aead: Aead::Aes256Gcm, compression: 3, kdf, pack_size: None, settings: Settings::default() };
    Repository::init(&Location::Fs(dir.to_path_buf()), &opts).await.unwrap()
}

fn listing(pack: u8, blob: u8) -> IndexFile {
    let entry = PackEntry { kind: BlobKind::Data, flags: 0, id: Id([blob; 32]), offset: 0, length: 1, raw_length: 1 };
    IndexFile { supersedes: Vec::new(), packs: vec![IndexedPack { id: Id([pack; 32]), size: 1, entries: vec![entry] }] }
}

/// With no pack marked, a writer's index is the reading index, loaded
/// once; with one marked, the writer's leaves the marked pack out and the
/// reading index is loaded apart, with it.
#[tokio::test]
async fn a_writer_shares_the_reading_index_unless_a_pack_is_marked() {
    let dir = tempfile::tempdir().unwrap();
    let repo = repository(dir.path()).await;
    repo.save_index(&listing(1, 10)).await.unwrap();
    let writer = repo.writer_index().await.unwrap();
    assert!(Arc::ptr_eq(&writer, &repo.index().await.unwrap()));
    assert!(writer.contains(&Id([10; 32])));

    let marked = Repository::open(&Location::Fs(dir.path().to_path_buf()), &repo_opts()).await.unwrap();
    marked.save_file(Kind::Mark, &listing(2, 20).encode()).await.unwrap();
    let writer = marked.writer_index().await.unwrap();
    let reading = marked.index().await.unwrap();
    assert!(!Arc::ptr_eq(&writer, &reading));
    assert!(writer.contains(&Id([10; 32])) && !writer.contains(&Id([20; 32])));
    assert!(reading.contains(&Id([10; 32])) && reading.contains(&Id([20; 32])));
}

/// A damaged slot (here one another password opened, made to ask for no
/// memory, as anyone who can write to the storage could) is skipped: the
/// other slots still open, and a password that opens none is wrong, with
/// the skipped slot named.
#[tokio::test]
async fn a_damaged_slot_is_skipped_and_named_when_no_slot_opens() {
    let dir = tempfile::tempdir().unwrap();
    let repo = repository(dir.path()).await;
    let other = repo.add_key(&Password::new("pw2"), KdfParams { memory_kib: 64, iterations: 1, parallelism: 1 }, "").await.unwrap();
    let path = dir.path().join(crate::slots::slot_path(&other));
    let mut slot: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    slot["memory_kib"] = 0.into();
    std::fs::write(&path, serde_json::to_vec(&slot).unwrap()).unwrap();
    let location = Location::Fs(dir.path().to_path_buf());
    assert_eq!(Repository::open(&location, &repo_opts()).await.unwrap().key_id(), repo.key_id());
    let holder = OpenOptions { password: Password::new("pw2"), ..repo_opts() };
    let e = Repository::open(&location, &holder).await.err().unwrap();
    assert_eq!(
        e.to_string(),
        format!("wrong password: no key of this repository opens with it (damaged key files, not tried: keys/{})", other.to_hex())
    );
    let mut listed = vec![repo.key_id(), other];
    listed.sort();
    assert!(matches!(e, Error::WrongPassword { slots, .. } if slots == listed), "the listing tried, damaged slot and all");
}

/// Loading the index drops cached packs it no longer lists (deleted by a
/// prune elsewhere) and keeps those it does.
#[tokio::test]
async fn loading_the_index_drops_cached_packs_it_no_longer_lists() {
    let dir = tempfile::tempdir().unwrap();
    let repo = repository(&dir.path().join("repo")).await;
    repo.save_index(&listing(1, 10)).await.unwrap();
    let cache = dir.path().join("cache");
    let cached = |pack: u8| cache.join(repo.config().id.to_hex()).join(Kind::Pack.path(&Id([pack; 32])));
    for pack in [1, 2] {
        std::fs::create_dir_all(cached(pack).parent().unwrap()).unwrap();
        std::fs::write(cached(pack), b"sealed pack").unwrap();
    }
    let opts = OpenOptions { cache_root: Some(cache.clone()), ..repo_opts() };
    let reopened = Repository::open(&Location::Fs(dir.path().join("repo")), &opts).await.unwrap();
    reopened.index().await.unwrap();
    assert!(cached(1).exists(), "a listed pack stays cached");
    assert!(!cached(2).exists(), "a pack no index file lists is dropped");
}

pub(crate) fn repo_opts() -> OpenOptions {
    OpenOptions { password: Password::new("pw"), cache_root: None, storage: StorageOptions::default() }
}

/// `n` bytes no other seed gives, the same at every run.
pub(crate) fn content(seed: &str, n: usize) -> Vec<u8> {
    let mut out = vec![0; n];
    blake3::Hasher::new().update(seed.as_bytes()).finalize_xof().fill(&mut out);
    out
}

/// Flip a byte inside the stored blob `id` of the repository at `dir`, and
/// open it afresh (no cache holds the blob whole): reading it then fails
/// authentication.
pub(crate) async fn damaged(repo: &Repository, dir: &std::path::Path, id: &Id) -> Repository {
    let (pack, e) = repo.index().await.unwrap().get(id).unwrap();
    let stored = dir.join(Kind::Pack.path(&pack));
    let mut bytes = std::fs::read(&stored).unwrap();
    bytes[(e.offset + e.length / 2) as usize] ^= 0x40;
    std::fs::write(&stored, bytes).unwrap();
    Repository::open(&Location::Fs(dir.to_path_buf()), &repo_opts()).await.unwrap()
}
