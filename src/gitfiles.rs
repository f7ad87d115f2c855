//! Reading stack files as they were at a git revision (for `swarm plan --base-git REV`).

use std::path::Path;
use std::path::PathBuf;

use anyhow::Context as _;
use swarm_specs::loader::Files;

/// The files of one commit, addressed by the paths they have in the working tree.
pub struct GitTree {
    repo: git2::Repository,
    workdir: PathBuf,
    commit: git2::Oid,
}

impl GitTree {
    /// Opens the repository that holds `near` and resolves `rev` in it.
    pub fn open(near: &Path, rev: &str) -> anyhow::Result<GitTree> {
        let start = std::fs::canonicalize(
            near.parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new(".")),
        )
        .with_context(|| format!("cannot find the directory of {}", near.display()))?;
        let repo = git2::Repository::discover(&start)
            .with_context(|| format!("{} is not inside a git repository", start.display()))?;
        let workdir = repo
            .workdir()
            .context("the git repository has no working tree")?
            .to_path_buf();
        let workdir = std::fs::canonicalize(&workdir).unwrap_or(workdir);
        let commit = repo
            .revparse_single(rev)
            .and_then(|o| o.peel_to_commit())
            .with_context(|| format!("cannot resolve git revision {rev:?}"))?
            .id();
        Ok(GitTree { repo, workdir, commit })
    }

    fn relative(&self, path: &Path) -> std::io::Result<PathBuf> {
        let absolute = if path.is_absolute() {
            path.to_path_buf()
        } else {
            std::env::current_dir()?.join(path)
        };
        let mut tidy = PathBuf::new();
        for part in absolute.components() {
            match part {
                std::path::Component::CurDir => {}
                std::path::Component::ParentDir => {
                    tidy.pop();
                }
                other => tidy.push(other),
            }
        }
        // The working tree may be reached through a symlink; compare canonical parents where they exist.
        let tidy = match (
            tidy.parent().and_then(|p| std::fs::canonicalize(p).ok()),
            tidy.file_name(),
        ) {
            (Some(parent), Some(name)) => parent.join(name),
            _ => tidy,
        };
        tidy.strip_prefix(&self.workdir).map(Path::to_path_buf).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{} is outside the git repository", path.display()),
            )
        })
    }
}

impl Files for GitTree {
    fn read(&self, path: &Path) -> std::io::Result<Vec<u8>> {
        let relative = self.relative(path)?;
        let not_found = |what: String| std::io::Error::new(std::io::ErrorKind::NotFound, what);
        let commit = self
            .repo
            .find_commit(self.commit)
            .map_err(|e| not_found(e.to_string()))?;
        let tree = commit.tree().map_err(|e| not_found(e.to_string()))?;
        let entry = tree.get_path(&relative).map_err(|_| {
            not_found(format!(
                "{} does not exist at commit {:.10}",
                relative.display(),
                self.commit
            ))
        })?;
        let blob = entry
            .to_object(&self.repo)
            .and_then(|o| o.peel_to_blob())
            .map_err(|_| {
                not_found(format!(
                    "{} is not a file at commit {:.10}",
                    relative.display(),
                    self.commit
                ))
            })?;
        Ok(blob.content().to_vec())
    }
}
