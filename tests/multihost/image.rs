//! The node image: a rootfs holding the `swarm` binary under test, the shared libraries it links and Debian's
//! static busybox (with its applets as symlinks, so process-driver tasks can run `sh -c ...`), imported with
//! `docker import` — no registry, no Dockerfile, no base image.
//!
//! It also holds the system's CA bundle, which the daemon's HTTP client loads at start.
//!
//! The tag is derived from the binary's size and modification time, so a rebuilt binary gets a new image and an
//! unchanged one reuses the image already built (the build takes a few seconds: the binary is copied without its
//! debug sections). Older tags of the repository are removed when a new one is built.

use std::path::Path;
use std::path::PathBuf;
use std::process::Command;
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::UNIX_EPOCH;

/// The repository of the node images.
pub const REPOSITORY: &str = "swarm-multihost/node";

/// The label every image, container and network of these tests carries.
pub const LABEL: &str = "io.swarm.test";

const BUSYBOX: &str = "/usr/bin/busybox";

/// Bumped when the image's recipe changes, so that the tag changes with it.
const RECIPE: u32 = 3;

/// The tag of the node image for `binary`, built on first use (once per test process).
pub fn node_image(binary: &str) -> String {
    static IMAGE: OnceLock<Result<String, String>> = OnceLock::new();
    IMAGE
        .get_or_init(|| build(Path::new(binary)))
        .clone()
        .unwrap_or_else(|e| panic!("cannot build the node image: {e}"))
}

fn tag_for(binary: &Path) -> Result<String, String> {
    let meta = std::fs::metadata(binary).map_err(|e| format!("{}: {e}", binary.display()))?;
    let mtime = meta
        .modified()
        .map_err(|e| e.to_string())?
        .duration_since(UNIX_EPOCH)
        .map_err(|e| e.to_string())?;
    Ok(format!(
        "{REPOSITORY}:r{RECIPE}-{:x}-{:x}{:08x}",
        meta.len(),
        mtime.as_secs(),
        mtime.subsec_nanos()
    ))
}

fn run(command: &mut Command) -> Result<String, String> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {command:?}: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "{command:?} failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The libraries `ldd` lists for `binary` (absolute paths, the dynamic loader included).
fn libraries(binary: &Path) -> Result<Vec<PathBuf>, String> {
    let text = run(Command::new("ldd").arg(binary))?;
    let mut out = Vec::new();
    for line in text.lines() {
        // "libssl.so.3 => /lib/x86_64-linux-gnu/libssl.so.3 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
        let path = match line.split_once("=>") {
            Some((_, right)) => right.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(path) = path.filter(|p| p.starts_with('/')) {
            out.push(PathBuf::from(path));
        }
    }
    if out.is_empty() {
        return Err(format!("ldd listed no library for {}: {text}", binary.display()));
    }
    Ok(out)
}

/// Copies `from` (following symlinks) to the same absolute path under `root`.
fn copy_into(root: &Path, from: &Path) -> Result<(), String> {
    let to = root.join(from.strip_prefix("/").map_err(|e| e.to_string())?);
    std::fs::create_dir_all(to.parent().expect("a parent")).map_err(|e| e.to_string())?;
    std::fs::copy(from, &to).map_err(|e| format!("copy {} to {}: {e}", from.display(), to.display()))?;
    Ok(())
}

fn build(binary: &Path) -> Result<String, String> {
    let tag = tag_for(binary)?;
    if run(Command::new("docker").args(["image", "inspect", "--format", "{{.Id}}", &tag])).is_ok() {
        return Ok(tag);
    }
    if !Path::new(BUSYBOX).exists() {
        return Err(format!(
            "{BUSYBOX} is missing: install Debian's busybox-static (`apt-get install busybox-static`)"
        ));
    }
    let started = std::time::Instant::now();
    let dir = tempfile::Builder::new()
        .prefix("swarm-node-image-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let root = dir.path().join("rootfs");
    for sub in [
        "bin",
        "usr/local/bin",
        "tmp",
        "run/swarm",
        "var/lib/swarm",
        "etc",
        "proc",
        "sys",
        "dev",
    ] {
        std::fs::create_dir_all(root.join(sub)).map_err(|e| e.to_string())?;
    }
    // The binary without its debug sections (a quarter of the size, so the import is quick).
    let target = root.join("usr/local/bin/swarm");
    if run(Command::new("objcopy").arg("--strip-debug").arg(binary).arg(&target)).is_err() {
        std::fs::copy(binary, &target).map_err(|e| e.to_string())?;
    }
    for library in libraries(binary)? {
        copy_into(&root, &library)?;
    }
    std::fs::copy(BUSYBOX, root.join("bin/busybox")).map_err(|e| e.to_string())?;
    let applets = run(Command::new(BUSYBOX).arg("--list"))?;
    for applet in applets
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && *a != "busybox")
    {
        let link = root.join("bin").join(applet);
        if !link.exists() {
            std::os::unix::fs::symlink("busybox", &link).map_err(|e| e.to_string())?;
        }
    }
    // No CA bundle: the daemon trusts only its cluster's CA and must start on a host without a system CA store.
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").map_err(|e| e.to_string())?;
    std::fs::write(root.join("etc/group"), "root:x:0:\n").map_err(|e| e.to_string())?;
    let tar = dir.path().join("rootfs.tar");
    run(Command::new("tar").arg("-C").arg(&root).arg("-cf").arg(&tar).arg("."))?;
    run(Command::new("docker")
        .args(["import", "--change", &format!("LABEL {LABEL}=image")])
        .args(["--change", "ENV PATH=/usr/local/bin:/bin"])
        .arg(&tar)
        .arg(&tag))?;
    eprintln!("built the node image {tag} in {:?}", started.elapsed());
    // Older node images (of earlier binaries) go; one still used by a container stays (rmi refuses).
    if let Ok(listed) = run(Command::new("docker").args(["images", "--format", "{{.Repository}}:{{.Tag}}", REPOSITORY]))
    {
        for old in listed.lines().filter(|t| *t != tag && !t.is_empty()) {
            let _ = Command::new("docker")
                .args(["rmi", old])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
    Ok(tag)
}
