//! Records the git revision the binaries are built from, for `flashsale_build_info`.
//! Outside a git checkout (a container build without `.git`) it is `unknown`, or whatever
//! `FLASHSALE_REVISION` says.

fn main() {
    println!("cargo:rerun-if-env-changed=FLASHSALE_REVISION");
    println!("cargo:rerun-if-changed=../.git/HEAD");
    println!("cargo:rerun-if-changed=../.git/refs/heads");
    let revision = std::env::var("FLASHSALE_REVISION").ok().filter(|r| !r.is_empty()).or_else(|| {
        let out =
            std::process::Command::new("git").args(["rev-parse", "--short=12", "HEAD"]).output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    });
    println!("cargo:rustc-env=FLASHSALE_REVISION={}", revision.unwrap_or_else(|| "unknown".into()));
}
