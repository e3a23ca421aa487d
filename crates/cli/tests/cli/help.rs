//! The help, the shell completions and the man pages: all three come from
//! the one clap definition, and every argument of every command says what
//! it does.

use std::process::Command;

use super::BIN;

/// One argument or subcommand line of a help page, under its section.
#[derive(Debug)]
struct Entry {
    section: String,
    spec: String,
    help: String,
}

/// The entries of a help page, in either of clap's layouts: help on the
/// argument's line, or (long help) on the lines below it, indented deeper.
/// An entry starts at column 2 (at 6 for a long option without a short one).
/// Bracketed annotations (`[default: …]`, `[env: …]`, `[possible values: …]`)
/// are not help.
fn entries(page: &str) -> Vec<Entry> {
    let mut out: Vec<Entry> = Vec::new();
    let mut section = String::new();
    for line in page.lines() {
        let indent = line.len() - line.trim_start().len();
        if indent == 0 && line.ends_with(':') {
            section = line.trim_end_matches(':').to_string();
        } else if (2..=6).contains(&indent) && !section.is_empty() {
            let body = line.trim_start();
            let (spec, rest) = body.split_once("  ").unwrap_or((body, ""));
            out.push(Entry { section: section.clone(), spec: spec.to_string(), help: rest.trim().to_string() });
        } else if indent > 6
            && let Some(last) = out.last_mut()
        {
            last.help.push(' ');
            last.help.push_str(line.trim());
        } else if line.is_empty() {
            continue;
        } else {
            section.clear();
        }
    }
    for e in &mut out {
        e.help = without_annotations(&e.help);
    }
    out
}

fn without_annotations(text: &str) -> String {
    let mut out = text.to_string();
    for tag in ["[default:", "[env:", "[possible values:", "[aliases:"] {
        while let Some(at) = out.find(tag) {
            let end = out[at..].find(']').map_or(out.len(), |e| at + e + 1);
            out.replace_range(at..end, "");
        }
    }
    out.trim().to_string()
}

fn help_page(path: &[String]) -> String {
    let out = Command::new(BIN).args(path).arg("--help").env("COLUMNS", "120").output().unwrap();
    assert!(out.status.success(), "tresor {path:?} --help: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Every command path below `path`, depth first, with the arguments that
/// have no help.
fn walk(path: Vec<String>, visited: &mut Vec<String>, missing: &mut Vec<String>) {
    let page = help_page(&path);
    visited.push(path.join(" "));
    for e in entries(&page) {
        if e.section == "Commands" && e.spec.starts_with("help") {
            continue;
        }
        if e.help.is_empty() {
            missing.push(format!("tresor {} [{}] {}", path.join(" "), e.section, e.spec));
        }
        if e.section == "Commands" {
            let mut sub = path.clone();
            sub.push(e.spec.split_whitespace().next().unwrap().to_string());
            walk(sub, visited, missing);
        }
    }
}

#[test]
fn the_parser_finds_an_argument_without_help_in_both_layouts() {
    let short =
        "Usage: x\n\nOptions:\n  -a, --alpha <A>  does a [default: 1]\n      --beta <B>   [default: 5min]\n  -h, --help       Print help\n";
    let long =
        "Usage: x\n\nArguments:\n  <SNAPSHOT>\n          The snapshot\n\n  [PATH]\n\nTarget:\n      --to <TO>\n          [env: X=]\n";
    let missing = |page: &str| entries(page).into_iter().filter(|e| e.help.is_empty()).map(|e| e.spec).collect::<Vec<_>>();
    assert_eq!(missing(short), ["--beta <B>"]);
    assert_eq!(missing(long), ["[PATH]", "--to <TO>"]);
    assert_eq!(entries(long).iter().map(|e| e.section.as_str()).collect::<Vec<_>>(), ["Arguments", "Arguments", "Target"]);
}

#[test]
fn every_argument_of_every_command_has_help() {
    let (mut visited, mut missing) = (Vec::new(), Vec::new());
    walk(Vec::new(), &mut visited, &mut missing);
    assert_eq!(missing, Vec::<String>::new(), "arguments without help");
    for path in ["", "restore", "pg wal-fetch", "volume restore", "repair snapshots", "key remove", "plan check", "completion", "man"] {
        assert!(visited.iter().any(|v| v == path), "the walk did not reach `tresor {path}`: {visited:?}");
    }
}

fn sections(page: &str) -> Vec<&str> {
    page.lines().filter(|l| !l.starts_with(' ') && l.ends_with(':')).collect()
}

#[test]
fn restore_help_reads_in_sections_and_lists_every_target() {
    let page = help_page(&["restore".to_string()]);
    assert_eq!(
        sections(&page),
        ["Arguments:", "Options:", "Snapshot selection:", "Target:", "Filters:", "Services:", "Kubernetes:", "Repository:", "Output:"],
        "{page}"
    );
    let to = entries(&page).into_iter().find(|e| e.spec == "--to <TO>").expect("restore has --to");
    for form in ["redis://", "postgres://USER@HOST[:PORT]/DB", "postgres://USER@HOST[:PORT] ", "etcd-data:DIR", "k8s://", "command:"] {
        assert!(to.help.contains(form), "--to does not list {form}: {}", to.help);
    }
    let specs = |section: &str| entries(&page).into_iter().filter(|e| e.section == section).map(|e| e.spec).collect::<Vec<_>>();
    assert_eq!(specs("Snapshot selection"), ["--host <HOSTS>", "--tag <TAGS>", "--path <PATHS>"]);
    assert_eq!(specs("Filters"), ["-i, --include <INCLUDES>", "-e, --exclude <EXCLUDES>"]);
    assert_eq!(
        specs("Target"),
        ["-t, --target <TARGET>", "--to <TO>", "--verify", "--verify-only", "--overwrite <OVERWRITE>", "--delete", "--preview"]
    );
}

/// What bash offers for `tresor WORD<TAB>`: Debian's bash-completion and
/// the generated script, the completion function called as readline would.
fn bash_offers(word: &str) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN).args(["completion", "bash"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let script = dir.path().join("tresor.bash");
    std::fs::write(&script, &out.stdout).unwrap();
    let program = r#"
        source /usr/share/bash-completion/bash_completion
        source "$SCRIPT"
        COMP_WORDS=(tresor "$WORD"); COMP_CWORD=1; COMP_LINE="tresor $WORD"; COMP_POINT=${#COMP_LINE}
        spec=$(complete -p tresor)
        fn=${spec##*-F }; fn=${fn%% *}
        "$fn" tresor "$WORD" tresor
        printf '%s\n' "${COMPREPLY[@]}"
    "#;
    let out = Command::new("bash").args(["--norc", "-c", program]).env("SCRIPT", &script).env("WORD", word).output().unwrap();
    assert!(out.status.success(), "bash: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().map(|l| l.trim().to_string()).filter(|l| !l.is_empty()).collect()
}

#[test]
fn bash_completes_subcommands() {
    assert_eq!(bash_offers("res"), ["restore", "restore-app"]);
    assert_eq!(bash_offers("re"), ["restore", "restore-app", "repair", "release", "report"]);
}

#[test]
fn every_shell_gets_a_script_that_names_tresor() {
    for shell in ["bash", "zsh", "fish", "powershell", "elvish"] {
        let out = Command::new(BIN).args(["completion", shell]).output().unwrap();
        assert!(out.status.success(), "completion {shell}: {}", String::from_utf8_lossy(&out.stderr));
        let script = String::from_utf8(out.stdout).unwrap();
        assert!(script.contains("restore") && script.contains("tresor"), "completion {shell} lacks the commands");
    }
    let out = Command::new(BIN).args(["completion", "tcsh"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid value 'tcsh'"));
}

#[test]
fn man_pages_cover_every_command_with_its_help() {
    let dir = tempfile::tempdir().unwrap();
    let man = dir.path().join("man1");
    let out = Command::new(BIN).args(["man", "--dir"]).arg(&man).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut pages: Vec<String> = std::fs::read_dir(&man).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    pages.sort();
    let (mut visited, mut missing) = (Vec::new(), Vec::new());
    walk(Vec::new(), &mut visited, &mut missing);
    let mut expected: Vec<String> =
        visited.iter().map(|v| if v.is_empty() { "tresor.1".to_string() } else { format!("tresor-{}.1", v.replace(' ', "-")) }).collect();
    expected.sort();
    assert_eq!(pages, expected);
    let restore = std::fs::read_to_string(man.join("tresor-restore.1")).unwrap();
    for text in [".SH TARGET", ".SH FILTERS", ".SH KUBERNETES", "Directory to restore into, e.g. /tmp/restore", "pg_restore \\-\\-jobs"] {
        assert!(restore.contains(text), "tresor-restore.1 lacks {text:?}");
    }
}

/// clap shows an argument's environment value in the help unless told not
/// to; a repository URL or a password file's path is not for a help page.
#[test]
fn help_names_the_variables_of_secrets_without_their_values() {
    let vars = [
        ("TRESOR_REPOSITORY", "s3://key:hunter2@bucket/prod"),
        ("TRESOR_PASSWORD_FILE", "/run/hunter2/password"),
        ("TRESOR_NEW_PASSWORD_FILE", "/run/hunter2/new"),
        ("TRESOR_TO_PASSWORD_FILE", "/run/hunter2/to"),
        ("TRESOR_CONFIRM_PASSWORD_FILE", "/run/hunter2/confirm"),
    ];
    let pages: [(&[&str], &[&str]); 4] = [
        (&[], &["TRESOR_REPOSITORY", "TRESOR_PASSWORD_FILE"]),
        (&["copy"], &["TRESOR_REPOSITORY", "TRESOR_TO_PASSWORD_FILE"]),
        (&["key", "add"], &["TRESOR_NEW_PASSWORD_FILE"]),
        (&["append-only"], &["TRESOR_CONFIRM_PASSWORD_FILE"]),
    ];
    for (path, names) in pages {
        let out = Command::new(BIN).args(path).arg("--help").env("COLUMNS", "120").envs(vars).output().unwrap();
        assert!(out.status.success(), "tresor {path:?} --help: {}", String::from_utf8_lossy(&out.stderr));
        let page = String::from_utf8(out.stdout).unwrap();
        assert!(!page.contains("hunter2"), "tresor {path:?} --help shows a secret:\n{page}");
        for name in names {
            assert!(page.contains(&format!("[env: {name}]")), "tresor {path:?} --help does not name {name}:\n{page}");
        }
    }
}
