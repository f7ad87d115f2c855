//! Test support shared by the agent's tests, the end-to-end tests and the benchmarks: the local test image.
//!
//! There is no registry on the machines this project runs on, so tests build their image: `docker import` of a
//! root filesystem holding Debian's static busybox (`apt-get install busybox-static`) and a `/VERSION` file.

use std::path::Path;
use std::path::PathBuf;
use std::process::Command;

/// The busybox applets the test image links.
const APPLETS: &[&str] = &[
    "sh", "sleep", "echo", "cat", "hostname", "httpd", "true", "false", "wget", "id", "ls", "stat", "mount",
];

fn docker(args: &[&str]) -> Result<std::process::Output, String> {
    Command::new("docker")
        .args(args)
        .output()
        .map_err(|e| format!("docker {}: {e}", args.join(" ")))
}

/// Makes sure image `tag` exists, building it with `/VERSION` = `version` when it does not.
///
/// Tests of one binary run on parallel threads and may ask for the same image at once: one builds it, the others
/// wait and find it.
pub fn ensure_busybox_image(tag: &str, version: &str) -> Result<(), String> {
    static BUILDING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = BUILDING.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if docker(&["image", "inspect", tag])?.status.success() {
        return Ok(());
    }
    let busybox = static_busybox().ok_or("no static busybox found (apt-get install -y busybox-static)")?;
    let dir = std::env::temp_dir().join(format!("swarm-test-image-{}-{version}", std::process::id()));
    let built = build(&dir, &busybox, tag, version);
    let _ = std::fs::remove_dir_all(&dir);
    built
}

fn build(dir: &Path, busybox: &Path, tag: &str, version: &str) -> Result<(), String> {
    let root = dir.join("rootfs");
    let bin = root.join("bin");
    std::fs::create_dir_all(&bin).map_err(|e| e.to_string())?;
    std::fs::copy(busybox, bin.join("busybox")).map_err(|e| e.to_string())?;
    for applet in APPLETS {
        std::os::unix::fs::symlink("busybox", bin.join(applet)).map_err(|e| e.to_string())?;
    }
    std::fs::write(root.join("VERSION"), format!("{version}\n")).map_err(|e| e.to_string())?;
    let tar = dir.join("rootfs.tar");
    let tarred = Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .map_err(|e| format!("tar: {e}"))?;
    if !tarred.success() {
        return Err("tar failed to pack the test rootfs".into());
    }
    let tar = tar.to_str().ok_or("temp path is not UTF-8")?;
    let imported = docker(&["import", "--change", "ENV PATH=/bin", tar, tag])?;
    if !imported.status.success() {
        return Err(format!(
            "docker import {tag}: {}",
            String::from_utf8_lossy(&imported.stderr)
        ));
    }
    Ok(())
}

/// A busybox binary that needs no dynamic loader (the image has none).
fn static_busybox() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/bin", "/usr/bin", "/usr/sbin"].map(PathBuf::from))
        .map(|dir| dir.join("busybox"))
        .find(|candidate| std::fs::read(candidate).is_ok_and(|elf| is_static_elf(&elf)))
}

/// A 64-bit little-endian ELF without a PT_INTERP program header.
fn is_static_elf(elf: &[u8]) -> bool {
    let (Some(b"\x7fELF"), Some(2), Some(1)) = (elf.get(..4), elf.get(4), elf.get(5)) else {
        return false;
    };
    let word = |at: usize, n: usize| -> Option<usize> {
        let bytes = elf.get(at..at + n)?;
        Some(bytes.iter().rev().fold(0usize, |v, b| (v << 8) | usize::from(*b)))
    };
    let (Some(phoff), Some(phentsize), Some(phnum)) = (word(0x20, 8), word(0x36, 2), word(0x38, 2)) else {
        return false;
    };
    (0..phnum).all(|i| word(phoff + i * phentsize, 4).is_some_and(|kind| kind != 3))
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_static_elf_binaries_qualify() {
        assert!(!super::is_static_elf(b"#!/bin/sh\n"));
        assert!(!super::is_static_elf(&[0x7f, b'E', b'L', b'F', 1, 1]));
    }
}
