//! Import cycles between a crate's modules, found in the source text: the
//! crates' layers stay a tree (the controller's model at the bottom and its
//! daemon above; the engine's object layout below the repository handle).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Each top-level module of the crate whose sources are in `src` and the
/// modules of the crate it names (`crate::NAME`, `crate::{A, b::C}`, doc
/// comments too; a name `lib.rs` re-exports, such as `crate::Repository`,
/// counts as the module it comes from). A module's submodules
/// (`src/NAME/**.rs`) count as the module; its tests (from a line
/// `#[cfg(test)]` on) do not: a test may reach up a layer.
pub fn imports(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let reexported = reexports(src);
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, path) in sources(src) {
        let text = std::fs::read_to_string(&path).expect("a readable source");
        let code = text.split("\n#[cfg(test)]\n").next().unwrap_or_default();
        let names = code
            .split("crate::")
            .skip(1)
            .flat_map(named)
            .filter_map(|name| match name.chars().next() {
                Some(c) if c.is_ascii_lowercase() => Some(name),
                _ => reexported.get(name).map(String::as_str),
            })
            .filter(|name| *name != module)
            .map(String::from)
            .collect::<Vec<_>>();
        out.entry(module).or_default().extend(names);
    }
    out
}

/// The first path segment of each item named after a `crate::`: one, or
/// each of a `{...}` group's.
fn named(rest: &str) -> Vec<&str> {
    let Some(group) = rest.strip_prefix('{') else { return vec![ident(rest)] };
    let (mut depth, mut items, mut start) = (0, Vec::new(), 0);
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                items.push(ident(&group[start..i]));
                break;
            }
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(ident(&group[start..i]));
                start = i + 1;
            }
            _ => {}
        }
    }
    items.into_iter().filter(|name| !name.is_empty()).collect()
}

/// The identifier `s` begins with, after any spaces.
fn ident(s: &str) -> &str {
    s.trim_start().split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).next().unwrap_or_default()
}

/// The names `lib.rs` re-exports (`pub use MODULE::NAME;` or
/// `pub use MODULE::{A, B};`) and the module each comes from.
fn reexports(src: &Path) -> BTreeMap<String, String> {
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap_or_default();
    let mut out = BTreeMap::new();
    for line in lib.lines() {
        let Some(path) = line.trim().strip_prefix("pub use ").and_then(|p| p.strip_suffix(';')) else { continue };
        let Some((module, rest)) = path.split_once("::") else { continue };
        for name in named(rest) {
            out.insert(name.to_string(), module.to_string());
        }
    }
    out
}

/// Every `.rs` file below `src` with the top-level module it belongs to.
fn sources(src: &Path) -> Vec<(String, std::path::PathBuf)> {
    let mut out = Vec::new();
    let mut dirs = vec![(None, src.to_path_buf())];
    while let Some((module, dir)) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("the crate's sources") {
            let path = entry.expect("a source file").path();
            let Some(stem) = path.file_stem().and_then(|s| s.to_str()).map(String::from) else { continue };
            let owner = module.clone().unwrap_or_else(|| stem.clone());
            if path.is_dir() {
                dirs.push((Some(owner), path));
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push((owner, path));
            }
        }
    }
    out
}

/// The first import cycle among the modules of the crate in `src`, as
/// `a -> b -> a`; `None` when the modules form layers.
pub fn import_cycle(src: &Path) -> Option<String> {
    let graph = imports(src);
    for start in graph.keys().filter(|m| *m != "lib") {
        let mut stack: Vec<Vec<&String>> = vec![vec![start]];
        while let Some(path) = stack.pop() {
            for next in graph.get(*path.last().expect("non-empty")).into_iter().flatten() {
                if next == start {
                    let names: Vec<&str> = path.iter().map(|s| s.as_str()).collect();
                    return Some(format!("{} -> {start}", names.join(" -> ")));
                }
                if !path.contains(&next) && graph.contains_key(next) {
                    stack.push([path.clone(), vec![next]].concat());
                }
            }
        }
    }
    None
}

/// Fail when the crate at `manifest_dir` (its `CARGO_MANIFEST_DIR`) has
/// an import cycle, naming it.
pub fn assert_layered(manifest_dir: &str) {
    let src = Path::new(manifest_dir).join("src");
    if let Some(cycle) = import_cycle(&src) {
        panic!("an import cycle: {cycle}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cycle_through_a_submodule_is_named_and_tests_do_not_count() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path();
        std::fs::create_dir(src.join("repo")).unwrap();
        std::fs::write(src.join("lib.rs"), "pub mod repo; pub mod keys;").unwrap();
        std::fs::write(src.join("keys.rs"), "use crate::objects::Kind;\n#[cfg(test)]\nmod tests { use crate::repo::x; }").unwrap();
        std::fs::write(src.join("objects.rs"), "").unwrap();
        std::fs::write(src.join("repo.rs"), "mod open;").unwrap();
        std::fs::write(src.join("repo/open.rs"), "/// Unlocks with [`crate::keys::unlock`].").unwrap();
        assert_eq!(import_cycle(src), None);
        assert_eq!(imports(src)["repo"], BTreeSet::from(["keys".to_string()]));
        std::fs::write(src.join("objects.rs"), "use crate::repo::Repository;").unwrap();
        std::fs::write(src.join("keys.rs"), "use crate::objects::Kind;").unwrap();
        assert_eq!(import_cycle(src).as_deref(), Some("keys -> objects -> repo -> keys"));
    }

    #[test]
    fn a_cycle_through_a_name_lib_re_exports_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path();
        std::fs::write(src.join("lib.rs"), "pub mod repo; pub mod keys;\npub use repo::{Options, Repository};\n").unwrap();
        std::fs::write(src.join("keys.rs"), "use crate::{Error, objects::{Kind, list}};").unwrap();
        std::fs::write(src.join("objects.rs"), "").unwrap();
        std::fs::write(src.join("repo.rs"), "use crate::keys::unlock;").unwrap();
        assert_eq!(imports(src)["keys"], BTreeSet::from(["objects".to_string()]));
        assert_eq!(import_cycle(src), None);
        std::fs::write(src.join("keys.rs"), "use crate::{Error, Repository, objects::{Kind, list}};").unwrap();
        assert_eq!(imports(src)["keys"], BTreeSet::from(["objects".to_string(), "repo".to_string()]));
        assert_eq!(import_cycle(src).as_deref(), Some("keys -> repo -> keys"));
    }
}
