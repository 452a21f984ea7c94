//! Records the git commit the server is built from, for `GET /version` and `tongban --version`.
//! Outside a git checkout (a source tarball, `cargo install` from a registry) it is "unknown",
//! unless `TONGBAN_GIT_COMMIT` names it.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (out.status.success() && !text.is_empty()).then_some(text)
}

fn main() {
    println!("cargo:rerun-if-env-changed=TONGBAN_GIT_COMMIT");
    let commit = std::env::var("TONGBAN_GIT_COMMIT").ok().filter(|c| !c.is_empty());
    let commit = commit.or_else(|| git(&["rev-parse", "--short=12", "HEAD"])).unwrap_or_else(|| "unknown".into());
    // Rebuild when HEAD moves (a commit, a checkout): HEAD and the ref it points to, in the
    // worktree's own git folder and in the common one. Only files that exist are named: cargo
    // counts a missing one as changed, which would rebuild the crate at every command.
    let watch = |path: String| {
        if std::path::Path::new(&path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    };
    let head_ref = git(&["symbolic-ref", "-q", "HEAD"]);
    if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        watch(format!("{dir}/HEAD"));
        if let Some(r) = &head_ref {
            watch(format!("{dir}/{r}"));
        }
    }
    if let Some(common) = git(&["rev-parse", "--path-format=absolute", "--git-common-dir"]) {
        watch(format!("{common}/packed-refs"));
        if let Some(r) = &head_ref {
            watch(format!("{common}/{r}"));
        }
    }
    let dirty = git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    let commit = if dirty && commit != "unknown" { format!("{commit}-dirty") } else { commit };
    println!("cargo:rustc-env=TONGBAN_GIT_COMMIT={commit}");
}
