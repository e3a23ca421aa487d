//! The command's report on standard output, written so that a reader that
//! went away (`| head -1`, a closed descriptor) is an error said once the
//! work is done, not a panic of `println!` halfway through it.

use std::fmt;
use std::io::{self, Write};
use std::sync::OnceLock;

static LOST: OnceLock<io::ErrorKind> = OnceLock::new();

/// Writes `args` to standard output; the first failure is kept for
/// [`lost`] and later writes are skipped, since none of them can arrive.
pub fn write(args: fmt::Arguments<'_>) {
    if LOST.get().is_some() {
        return;
    }
    let mut out = io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.flush()) {
        let _ = LOST.set(e.kind());
    }
}

/// Why the report did not reach standard output, when it did not.
pub fn lost() -> Option<io::Error> {
    LOST.get().map(|&kind| io::Error::from(kind))
}

/// `println!` for the command's report; see [`write`].
macro_rules! say {
    () => { $crate::out::write(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::out::write(format_args!("{}\n", format_args!($($arg)*))) };
}

/// `print!` for the command's report; see [`write`].
macro_rules! say_raw {
    ($($arg:tt)*) => { $crate::out::write(format_args!($($arg)*)) };
}
