//! The contracts as a product: `buf lint` clean and no breaking change against the previous
//! commit, so clients generated from an older proto/ keep working.

use std::{path::Path, process::Command};

fn buf(args: &[&str]) -> (bool, String) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let program = root.join("tools/node_modules/.bin/buf");
    let output = Command::new(&program)
        .args(args)
        .current_dir(root)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "running {} (scripts/infra.sh installs it): {e}",
                program.display()
            )
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[test]
fn buf_lint_is_clean() {
    let (ok, out) = buf(&["lint"]);
    assert!(ok, "buf lint:\n{out}");
}

/// Runs this tree's scripts/buf-breaking.sh on the repository `dir` (a clone, or this one).
fn breaking(dir: &Path) -> (bool, String) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let output = Command::new(root.join("scripts/buf-breaking.sh"))
        .arg(dir)
        .env_remove("ORDERMESH_BREAKING_AGAINST")
        .output()
        .expect("run scripts/buf-breaking.sh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

fn git(dir: &Path, args: &[&str]) {
    let status = Command::new("git")
        .args(args)
        .current_dir(dir)
        .status()
        .expect("run git");
    assert!(status.success(), "git {args:?}");
}

#[test]
fn no_breaking_change_against_the_merge_base_with_main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (ok, out) = breaking(root);
    assert!(ok, "wire-incompatible change to proto/:\n{out}");
    assert!(out.contains("proto/ against"), "{out}");
}

/// A one-commit clone has nothing to compare with: the check deepens it from its origin, and
/// where the origin is gone it fails and says why, instead of passing without looking.
#[test]
fn a_shallow_clone_is_deepened_or_fails_never_skipped() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().expect("temp dir");
    let origin = format!("file://{}", root.display());
    let shallow = |name: &str| {
        let clone = dir.path().join(name);
        let clone_text = clone.to_string_lossy().to_string();
        git(
            dir.path(),
            &[
                "clone",
                "--quiet",
                "--depth",
                "1",
                "--branch",
                "main",
                &origin,
                &clone_text,
            ],
        );
        clone
    };

    let deepened = shallow("reachable");
    let (ok, out) = breaking(&deepened);
    assert!(
        ok,
        "a shallow clone with its origin is deepened and checked:\n{out}"
    );
    assert!(out.contains("proto/ against"), "{out}");

    let orphan = shallow("orphan");
    git(&orphan, &["remote", "remove", "origin"]);
    let (ok, out) = breaking(&orphan);
    assert!(!ok, "no baseline must fail the check:\n{out}");
    assert!(out.contains("git fetch --unshallow"), "{out}");
}
