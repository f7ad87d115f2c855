//! Git repositories made in tests, with git2 (no `git` binary needed).

/// A bare repository with one commit of `files` (path, content) on branch `main`.
pub fn repo_with(files: &[(&str, &str)]) -> (tempfile::TempDir, git2::Repository, git2::Oid) {
    let dir = tempfile::tempdir().unwrap();
    let repo = git2::Repository::init_bare(dir.path()).unwrap();
    let commit = commit(&repo, files);
    (dir, repo, commit)
}

/// Commits exactly `files` on `main` (on top of its current commit, if any).
pub fn commit(repo: &git2::Repository, files: &[(&str, &str)]) -> git2::Oid {
    let mut index = git2::Index::new().unwrap();
    for (path, content) in files {
        let blob = repo.blob(content.as_bytes()).unwrap();
        let entry = git2::IndexEntry {
            ctime: git2::IndexTime::new(0, 0),
            mtime: git2::IndexTime::new(0, 0),
            dev: 0,
            ino: 0,
            mode: 0o100644,
            uid: 0,
            gid: 0,
            file_size: content.len() as u32,
            id: blob,
            flags: 0,
            flags_extended: 0,
            path: path.as_bytes().to_vec(),
        };
        index.add(&entry).unwrap();
    }
    let tree = index.write_tree_to(repo).unwrap();
    let tree = repo.find_tree(tree).unwrap();
    let who = git2::Signature::new("t", "t@example.com", &git2::Time::new(0, 0)).unwrap();
    let parent = repo
        .find_reference("refs/heads/main")
        .ok()
        .and_then(|r| r.peel_to_commit().ok());
    let parents: Vec<&git2::Commit> = parent.iter().collect();
    repo.commit(Some("refs/heads/main"), &who, &who, "test", &tree, &parents)
        .unwrap()
}
