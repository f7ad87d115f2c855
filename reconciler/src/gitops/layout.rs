//! Which stacks a source's directory holds: every stack file (`*.yml`, `*.yaml`) directly under the source's path
//! is one stack named by its stem, and every folder holding a `docker-stack.yml` (or `compose.yaml`,
//! `docker-compose.yml`, `stack.yml`, ...) is one stack named by the folder, whose `.env` and other files go with
//! it. Anything else (a README, hidden files, folders without a stack file) is not a stack.

use std::collections::BTreeMap;

/// The file names that make a folder a stack, in the order they are looked for.
pub const FOLDER_FILES: [&str; 8] = [
    "docker-stack.yml",
    "docker-stack.yaml",
    "compose.yaml",
    "compose.yml",
    "docker-compose.yaml",
    "docker-compose.yml",
    "stack.yml",
    "stack.yaml",
];

/// One entry directly under the source's path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A file (`link`: a symbolic link, which is never read).
    File { name: String, link: bool },
    /// A folder and the names of the files directly in it.
    Dir { name: String, files: Vec<String> },
}

/// A stack found in the source: its name and its stack file, both inside the repository; or why the name cannot
/// be a stack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StackLayout {
    pub name: String,
    /// The stack file, as a path inside the repository (`stacks/web/docker-stack.yml`).
    pub file: String,
    /// Why this cannot be deployed as it is (an invalid name, two files claiming one name).
    pub problem: Option<String>,
}

/// The stacks of a directory (`base`: its path inside the repository, `""` for the root), sorted by name.
pub fn discover(base: &str, entries: &[Entry]) -> Vec<StackLayout> {
    let join = |parts: &[&str]| {
        std::iter::once(base)
            .chain(parts.iter().copied())
            .filter(|p| !p.is_empty())
            .collect::<Vec<_>>()
            .join("/")
    };
    let mut found: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for entry in entries {
        match entry {
            Entry::File { name, link: false } if !name.starts_with('.') => {
                let stem = name.strip_suffix(".yml").or_else(|| name.strip_suffix(".yaml"));
                if let Some(stem) = stem {
                    found.entry(stem.to_string()).or_default().push(join(&[name]));
                }
            }
            Entry::Dir { name, files } if !name.starts_with('.') => {
                if let Some(file) = FOLDER_FILES.iter().find(|f| files.iter().any(|x| x == *f)) {
                    found.entry(name.clone()).or_default().push(join(&[name, file]));
                }
            }
            _ => {}
        }
    }
    found
        .into_iter()
        .map(|(name, files)| {
            let problem = if let Err(e) = swarm_specs::loader::check_stack_name(&name) {
                Some(format!(
                    "{e} (from {}): a stack is named by its file or folder; rename it to letters, digits, `_` and `-`",
                    files[0]
                ))
            } else if files.len() > 1 {
                Some(format!(
                    "{} all define stack {name}; keep one of them",
                    files.join(", ")
                ))
            } else {
                None
            };
            StackLayout {
                name,
                file: files[0].clone(),
                problem,
            }
        })
        .collect()
}

/// Why a source's directory cannot be listed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LayoutError {
    #[error("path {path:?} does not exist at commit {commit:.10}; check the source's --path")]
    NoPath { path: String, commit: String },
    #[error("path {path:?} is not a directory at commit {commit:.10}; --path names the folder that holds the stacks")]
    NotADirectory { path: String, commit: String },
    #[error("cannot read the tree of commit {commit:.10}: {reason}")]
    Git { commit: String, reason: String },
}

/// The entries directly under `path` in `tree` (a commit's root tree).
pub fn list(
    repo: &git2::Repository,
    tree: &git2::Tree<'_>,
    path: &str,
    commit: &str,
) -> Result<Vec<Entry>, LayoutError> {
    let git = |e: git2::Error| LayoutError::Git {
        commit: commit.to_string(),
        reason: e.message().to_string(),
    };
    let dir = if path.is_empty() {
        tree.clone()
    } else {
        let entry = tree
            .get_path(std::path::Path::new(path))
            .map_err(|_| LayoutError::NoPath {
                path: path.to_string(),
                commit: commit.to_string(),
            })?;
        entry
            .to_object(repo)
            .map_err(git)?
            .into_tree()
            .map_err(|_| LayoutError::NotADirectory {
                path: path.to_string(),
                commit: commit.to_string(),
            })?
    };
    let mut entries = Vec::new();
    for entry in dir.iter() {
        let Ok(name) = entry.name().map(str::to_string) else {
            continue;
        };
        match entry.kind() {
            Some(git2::ObjectType::Blob) => entries.push(Entry::File {
                name,
                link: entry.filemode() == i32::from(git2::FileMode::Link),
            }),
            Some(git2::ObjectType::Tree) => {
                let sub = entry.to_object(repo).map_err(git)?.peel_to_tree().map_err(git)?;
                let files = sub
                    .iter()
                    .filter(|e| e.kind() == Some(git2::ObjectType::Blob))
                    .filter(|e| e.filemode() != i32::from(git2::FileMode::Link))
                    .filter_map(|e| e.name().ok().map(str::to_string))
                    .collect();
                entries.push(Entry::Dir { name, files });
            }
            // Submodules (commits) are not followed.
            _ => {}
        }
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str) -> Entry {
        Entry::File {
            name: name.into(),
            link: false,
        }
    }

    fn dir(name: &str, files: &[&str]) -> Entry {
        Entry::Dir {
            name: name.into(),
            files: files.iter().map(|f| f.to_string()).collect(),
        }
    }

    fn names(stacks: &[StackLayout]) -> Vec<(&str, &str)> {
        stacks.iter().map(|s| (s.name.as_str(), s.file.as_str())).collect()
    }

    #[test]
    fn files_and_folders_with_a_stack_file_are_stacks() {
        let entries = [
            file("web.yml"),
            file("api.yaml"),
            file("README.md"),
            file(".env"),
            file(".hidden.yml"),
            Entry::File {
                name: "link.yml".into(),
                link: true,
            },
            dir("shop", &["docker-stack.yml", ".env", "db_password.txt"]),
            dir("blog", &["compose.yaml", "docker-compose.yml"]),
            dir("docs", &["index.md"]),
            dir(".github", &["stack.yml"]),
        ];
        let stacks = discover("stacks", &entries);
        assert_eq!(
            names(&stacks),
            [
                ("api", "stacks/api.yaml"),
                ("blog", "stacks/blog/compose.yaml"),
                ("shop", "stacks/shop/docker-stack.yml"),
                ("web", "stacks/web.yml"),
            ]
        );
        assert!(stacks.iter().all(|s| s.problem.is_none()));
        // At the repository's root there is no prefix.
        assert_eq!(names(&discover("", &[file("web.yml")])), [("web", "web.yml")]);
    }

    #[test]
    fn a_name_claimed_twice_or_invalid_is_a_problem_not_a_guess() {
        let stacks = discover("", &[file("web.yml"), dir("web", &["stack.yml"]), file("bad name.yml")]);
        let web = stacks.iter().find(|s| s.name == "web").unwrap();
        assert_eq!(
            web.problem.as_deref(),
            Some("web.yml, web/stack.yml all define stack web; keep one of them")
        );
        let bad = stacks.iter().find(|s| s.name == "bad name").unwrap();
        assert!(
            bad.problem
                .as_deref()
                .unwrap()
                .starts_with("invalid stack name \"bad name\" (from bad name.yml)"),
            "{bad:?}"
        );
    }

    #[test]
    fn listing_a_commit_reads_the_tree_without_a_checkout() {
        let (_dir, repo, commit) = crate::gitops::testing::repo_with(&[
            ("stacks/web.yml", "services: {}"),
            ("stacks/shop/docker-stack.yml", "services: {}"),
            ("stacks/shop/.env", "A=1"),
            ("README.md", "hi"),
        ]);
        let tree = repo.find_commit(commit).unwrap().tree().unwrap();
        let c = commit.to_string();
        let entries = list(&repo, &tree, "stacks", &c).unwrap();
        assert_eq!(
            names(&discover("stacks", &entries)),
            [("shop", "stacks/shop/docker-stack.yml"), ("web", "stacks/web.yml")]
        );
        assert!(matches!(
            list(&repo, &tree, "nope", &c),
            Err(LayoutError::NoPath { .. })
        ));
        assert!(matches!(
            list(&repo, &tree, "README.md", &c),
            Err(LayoutError::NotADirectory { .. })
        ));
    }
}
