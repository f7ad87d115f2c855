//! Stack files as they are in a git commit: a [`Files`] that reads blobs from the commit's tree, with no checkout.
//!
//! Two ways to address a file: by the path it has in a working tree (`swarm plan --base-git REV`, where the
//! user names files as they see them), or by its path inside the repository (a GitOps source, whose repository is
//! a bare clone the manager fetched). Either way only blobs of the commit are read: an absolute path, or one that
//! climbs out of the repository with `..`, is refused, so a stack file in git can never make the manager read its
//! own file system.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io;
use std::path::Component;
use std::path::Path;
use std::path::PathBuf;

use swarm_specs::loader::Files;

/// Why a commit's files cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum GitFilesError {
    #[error("cannot find the directory of {path}: {reason}")]
    NoDirectory { path: String, reason: String },
    #[error("{path} is not inside a git repository; run the command in a checkout or drop --base-git")]
    NotARepository { path: String },
    #[error("the git repository at {path} has no working tree; run the command in a checkout")]
    Bare { path: String },
    #[error("cannot resolve git revision {rev:?}: {reason}; name a branch, tag or commit (`git log --oneline`)")]
    Revision { rev: String, reason: String },
    #[error("cannot read commit {commit}: {reason}")]
    Commit { commit: String, reason: String },
}

/// How the paths the loader asks for map to paths in the commit's tree.
enum Root {
    /// Paths as the user sees them (relative to the current directory, or absolute) inside this working tree.
    Workdir(PathBuf),
    /// Paths relative to the repository's root (`stacks/web/docker-stack.yml`).
    Repository,
}

/// The files of one commit.
pub struct GitTree {
    repo: git2::Repository,
    commit: git2::Oid,
    tree: git2::Oid,
    root: Root,
}

impl GitTree {
    /// Opens the repository whose working tree holds `near` (a stack file) and resolves `rev` in it; files are then
    /// addressed by their working-tree paths (`swarm plan --base-git REV`).
    pub fn open(near: &Path, rev: &str) -> Result<GitTree, GitFilesError> {
        let dir = near
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let start = std::fs::canonicalize(dir).map_err(|e| GitFilesError::NoDirectory {
            path: near.display().to_string(),
            reason: e.to_string(),
        })?;
        let repo = git2::Repository::discover(&start).map_err(|_| GitFilesError::NotARepository {
            path: start.display().to_string(),
        })?;
        let workdir = repo
            .workdir()
            .ok_or_else(|| GitFilesError::Bare {
                path: repo.path().display().to_string(),
            })?
            .to_path_buf();
        let workdir = std::fs::canonicalize(&workdir).unwrap_or(workdir);
        let commit = repo
            .revparse_single(rev)
            .and_then(|o| o.peel_to_commit())
            .map_err(|e| GitFilesError::Revision {
                rev: rev.to_string(),
                reason: e.message().to_string(),
            })?
            .id();
        GitTree::new(repo, commit, Root::Workdir(workdir))
    }

    /// The files of `commit` in `repo` (bare or not), addressed by their paths inside the repository.
    pub fn at_commit(repo: git2::Repository, commit: git2::Oid) -> Result<GitTree, GitFilesError> {
        GitTree::new(repo, commit, Root::Repository)
    }

    fn new(repo: git2::Repository, commit: git2::Oid, root: Root) -> Result<GitTree, GitFilesError> {
        let tree = repo
            .find_commit(commit)
            .and_then(|c| c.tree())
            .map_err(|e| GitFilesError::Commit {
                commit: commit.to_string(),
                reason: e.message().to_string(),
            })?
            .id();
        Ok(GitTree {
            repo,
            commit,
            tree,
            root,
        })
    }

    pub fn repo(&self) -> &git2::Repository {
        &self.repo
    }

    pub fn commit(&self) -> git2::Oid {
        self.commit
    }

    /// The commit's root tree.
    pub fn tree(&self) -> Result<git2::Tree<'_>, git2::Error> {
        self.repo.find_tree(self.tree)
    }

    /// The path of `path` inside the repository, `/`-separated.
    fn repo_path(&self, path: &Path) -> io::Result<String> {
        let inside = match &self.root {
            Root::Repository => {
                if path.is_absolute() {
                    return Err(outside(path));
                }
                path.to_path_buf()
            }
            Root::Workdir(workdir) => workdir_relative(workdir, path)?,
        };
        let mut parts: Vec<String> = Vec::new();
        for part in inside.components() {
            match part {
                Component::CurDir => {}
                Component::ParentDir => {
                    if parts.pop().is_none() {
                        return Err(outside(path));
                    }
                }
                Component::Normal(name) => parts.push(name.to_string_lossy().into_owned()),
                Component::RootDir | Component::Prefix(_) => return Err(outside(path)),
            }
        }
        Ok(parts.join("/"))
    }

    /// The blob at `path` (as the loader names it) and its id.
    pub fn read_blob(&self, path: &Path) -> io::Result<(git2::Oid, Vec<u8>)> {
        let relative = self.repo_path(path)?;
        let not_found = |what: String| io::Error::new(io::ErrorKind::NotFound, what);
        let tree = self.tree().map_err(|e| not_found(e.message().to_string()))?;
        let entry = tree.get_path(Path::new(&relative)).map_err(|_| {
            not_found(format!(
                "{relative} does not exist at commit {:.10}",
                self.commit.to_string()
            ))
        })?;
        if entry.filemode() == i32::from(git2::FileMode::Link) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{relative} is a symbolic link at commit {:.10}; commit the file itself",
                    self.commit.to_string()
                ),
            ));
        }
        let blob = entry
            .to_object(&self.repo)
            .and_then(|o| o.peel_to_blob())
            .map_err(|_| {
                not_found(format!(
                    "{relative} is not a file at commit {:.10}",
                    self.commit.to_string()
                ))
            })?;
        Ok((blob.id(), blob.content().to_vec()))
    }
}

impl Files for GitTree {
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.read_blob(path).map(|(_, content)| content)
    }
}

fn outside(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!(
            "{} is outside the git repository; refer to files inside it with relative paths",
            path.display()
        ),
    )
}

/// `path` (relative to the current directory, or absolute) relative to the working tree.
fn workdir_relative(workdir: &Path, path: &Path) -> io::Result<PathBuf> {
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()?.join(path)
    };
    let mut tidy = PathBuf::new();
    for part in absolute.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir => {
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
    tidy.strip_prefix(workdir)
        .map(Path::to_path_buf)
        .map_err(|_| outside(path))
}

/// A [`Files`] over a [`GitTree`] that remembers every path read and the blob it found (or that there was none),
/// so that a stack's inputs at two commits can be compared without comparing the specs.
pub struct Recording<'a> {
    tree: &'a GitTree,
    reads: RefCell<BTreeMap<String, Option<String>>>,
}

impl<'a> Recording<'a> {
    pub fn new(tree: &'a GitTree) -> Recording<'a> {
        Recording {
            tree,
            reads: RefCell::new(BTreeMap::new()),
        }
    }

    /// Every path read, with the blob id found there (`None`: absent or unreadable).
    pub fn reads(&self) -> BTreeMap<String, Option<String>> {
        self.reads.borrow().clone()
    }
}

impl Files for Recording<'_> {
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let key = self.tree.repo_path(path).unwrap_or_else(|_| path.display().to_string());
        let result = self.tree.read_blob(path);
        self.reads
            .borrow_mut()
            .insert(key, result.as_ref().ok().map(|(id, _)| id.to_string()));
        result.map(|(_, content)| content)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gitops::testing::repo_with;

    #[test]
    fn reads_blobs_by_repository_path_and_refuses_to_leave_the_repository() {
        let (_dir, repo, commit) = repo_with(&[("stacks/web/docker-stack.yml", "services: {}\n"), ("top.txt", "x")]);
        let tree = GitTree::at_commit(repo, commit).unwrap();
        assert_eq!(
            tree.read(Path::new("stacks/web/docker-stack.yml")).unwrap(),
            b"services: {}\n"
        );
        assert_eq!(tree.read(Path::new("stacks/web/../../top.txt")).unwrap(), b"x");
        let err = tree.read(Path::new("stacks/../../etc/passwd")).unwrap_err();
        assert!(err.to_string().contains("outside the git repository"), "{err}");
        let err = tree.read(Path::new("/etc/passwd")).unwrap_err();
        assert!(err.to_string().contains("outside the git repository"), "{err}");
        let err = tree.read(Path::new("stacks/web/.env")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(
            err.to_string().contains("stacks/web/.env does not exist at commit"),
            "{err}"
        );
    }

    #[test]
    fn a_recording_remembers_what_was_read_and_what_was_missing() {
        let (_dir, repo, commit) = repo_with(&[("a.yml", "a")]);
        let tree = GitTree::at_commit(repo, commit).unwrap();
        let recording = Recording::new(&tree);
        recording.read(Path::new("./a.yml")).unwrap();
        let _ = recording.read(Path::new(".env"));
        let reads = recording.reads();
        assert_eq!(reads.len(), 2);
        assert!(reads["a.yml"].is_some());
        assert_eq!(reads[".env"], None);
    }
}
