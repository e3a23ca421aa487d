//! A job's failure reduced to the daemon's reason and whether it may heal,
//! from the typed errors where it arose (engine, storage, each source).

use tresor_engine::ErrorKind as Engine;
use tresor_sources::ErrorKind as Source;

use crate::model::Reason;

/// The reason and the temporary flag of a source's error.
pub fn of_source(e: &tresor_sources::Error) -> (Reason, bool) {
    let reason = match e.kind() {
        Source::Unreachable => Reason::SourceUnreachable,
        Source::Auth => Reason::SourceAuth,
        Source::Corrupt => Reason::SourceCorrupt,
        Source::Hook => Reason::HookFailed,
        Source::Other => Reason::Error,
    };
    (reason, e.is_temporary())
}

/// The reason and the temporary flag of an engine error (a stream's
/// failure is its source's).
pub fn of_engine(e: &tresor_engine::Error) -> (Reason, bool) {
    let reason = match e.kind() {
        Engine::NoRepository => Reason::RepositoryMissing,
        Engine::WrongPassword => Reason::WrongPassword,
        Engine::StorageFull => Reason::StorageFull,
        Engine::Storage | Engine::Repository => Reason::Repository,
        Engine::Damaged => Reason::RepositoryDamaged,
        Engine::Interrupted => Reason::Interrupted,
        Engine::Stream => match e {
            tresor_engine::Error::Stream(io) => return of_io(io).unwrap_or((Reason::Error, false)),
            _ => Reason::Error,
        },
        Engine::Other => Reason::Error,
    };
    (reason, e.is_temporary())
}

/// An I/O error that carries a source's error, or says the disk is full.
fn of_io(e: &std::io::Error) -> Option<(Reason, bool)> {
    if let Some(s) = tresor_sources::Error::in_io(e) {
        return Some(of_source(s));
    }
    matches!(e.kind(), std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded).then_some((Reason::StorageFull, false))
}

/// The first typed error along a chain of causes decides; an error no
/// typed cause explains is a permanent `error`.
pub fn classify(err: &(dyn std::error::Error + 'static)) -> (Reason, bool) {
    let mut cause = Some(err);
    while let Some(c) = cause {
        if let Some(e) = c.downcast_ref::<tresor_engine::Error>() {
            return of_engine(e);
        }
        if let Some(e) = c.downcast_ref::<tresor_sources::Error>() {
            return of_source(e);
        }
        if let Some(found) = c.downcast_ref::<std::io::Error>().and_then(of_io) {
            return found;
        }
        cause = c.source();
    }
    (Reason::Error, false)
}

#[cfg(test)]
mod tests {
    use tresor_engine::Error as E;
    use tresor_sources::{Error as S, ErrorKind as K};

    use super::classify;
    use crate::model::Reason;

    fn storage(kind: opendal::ErrorKind, temporary: bool) -> E {
        let e = opendal::Error::new(kind, "injected");
        E::storage("read", "config", if temporary { e.set_temporary() } else { e })
    }

    #[test]
    fn repository_errors_are_permanent_but_outages() {
        let missing = E::NoRepository { location: "/x".into(), reason: "nothing".into() };
        assert_eq!(classify(&missing), (Reason::RepositoryMissing, false));
        assert_eq!(classify(&E::WrongPassword { slots: vec![], damaged: vec![] }), (Reason::WrongPassword, false));
        assert_eq!(classify(&storage(opendal::ErrorKind::Unexpected, true)), (Reason::Repository, true));
        assert_eq!(classify(&storage(opendal::ErrorKind::PermissionDenied, false)), (Reason::Repository, false));
        assert_eq!(classify(&E::corrupt("pack", "ab", "bad MAC")), (Reason::RepositoryDamaged, false));
        assert_eq!(classify(&E::CheckFailed { problems: 2 }), (Reason::RepositoryDamaged, false));
        assert_eq!(classify(&E::Interrupted), (Reason::Interrupted, true));
    }

    #[test]
    fn a_retried_outage_stays_temporary_and_a_full_disk_is_named() {
        // The storage's retry layer marks a temporary error it gave up on persistent.
        let gave_up = E::storage("read", "config", opendal::Error::new(opendal::ErrorKind::Unexpected, "refused").set_persistent());
        assert_eq!(classify(&gave_up), (Reason::Repository, true));
        let full = opendal::Error::new(opendal::ErrorKind::Unexpected, "write")
            .set_source(std::io::Error::from(std::io::ErrorKind::StorageFull))
            .set_temporary();
        assert_eq!(classify(&E::storage("write", "data/ab", full)), (Reason::StorageFull, false));
    }

    #[test]
    fn source_errors_keep_the_kind_they_were_created_with() {
        assert_eq!(classify(&S::of(K::Unreachable, "redis://h:1", "cannot connect")), (Reason::SourceUnreachable, true));
        assert_eq!(classify(&S::of(K::Auth, "redis://h:1", "WRONGPASS")), (Reason::SourceAuth, false));
        assert_eq!(classify(&S::of(K::Hook, "pre hook", "failed")), (Reason::HookFailed, false));
        assert_eq!(classify(&S::failed("command:x", "no command given")), (Reason::Error, false));
    }

    #[test]
    fn a_failed_stream_is_its_sources_failure() {
        let crc = S::of(K::Corrupt, "redis://h:1", "the RDB fails its CRC64 check").into_io();
        assert_eq!(classify(&E::Stream(crc)), (Reason::SourceCorrupt, false));
        let untyped = E::Stream(std::io::Error::other("the program failed"));
        assert_eq!(classify(&untyped), (Reason::Error, false));
    }

    #[test]
    fn the_first_typed_cause_decides_whatever_wraps_it() {
        #[derive(Debug, thiserror::Error)]
        #[error("restore failed")]
        struct Context(#[source] E);
        assert_eq!(classify(&Context(E::WrongPassword { slots: vec![], damaged: vec![] })), (Reason::WrongPassword, false));
        assert_eq!(classify(&std::io::Error::other("plain")), (Reason::Error, false));
    }
}
