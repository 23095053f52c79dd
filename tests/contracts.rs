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

#[test]
fn no_breaking_change_against_the_previous_commit() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let previous = Command::new("git")
        .args(["rev-parse", "--verify", "--quiet", "HEAD~1"])
        .current_dir(root)
        .output();
    match previous {
        Ok(out) if out.status.success() => {}
        _ => {
            // A source tarball or a one-commit shallow clone has nothing to compare with.
            eprintln!("no previous commit: buf breaking skipped");
            return;
        }
    }
    let (ok, out) = buf(&[
        "breaking",
        "proto",
        "--against",
        ".git#ref=HEAD~1,subdir=proto",
    ]);
    assert!(
        ok,
        "wire-incompatible change to proto/ against HEAD~1:\n{out}"
    );
}
