//! Every stack of a source at one commit, loaded and validated by the same loader as `swarm validate`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use swarm_specs::age::Identity;
use swarm_specs::spec::StackSpec;
use swarm_specs::LoadOptions;

use super::files::GitTree;
use super::files::Recording;
use super::layout;
use super::layout::LayoutError;

/// One stack at a commit.
#[derive(Debug, Clone)]
pub struct LoadedStack {
    pub name: String,
    /// The stack file inside the repository.
    pub file: String,
    /// A digest of every file loading read (path and blob id, or absence): equal digests, equal inputs.
    pub inputs: String,
    /// The spec, or every diagnostic rendered as `swarm validate` prints them.
    pub spec: Result<StackSpec, String>,
    pub warnings: Vec<String>,
}

/// The stacks of a source's folder at `commit`.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// What the snapshot was made from: repository, ref and path (a source re-added elsewhere is loaded again).
    pub origin: (String, String, String),
    pub commit: String,
    pub stacks: Vec<LoadedStack>,
}

/// Loads every stack under `path` at the tree's commit. The manager's environment is never used for
/// interpolation: a stack in git sees only its `.env` (and the defaults written in the file). Files encrypted with
/// age are decrypted with `age` (the source's `--age-key-file`).
pub fn load(tree: &GitTree, path: &str, age: &[Identity]) -> Result<Vec<LoadedStack>, LayoutError> {
    let commit = tree.commit().to_string();
    let root = tree.tree().map_err(|e| LayoutError::Git {
        commit: commit.clone(),
        reason: e.message().to_string(),
    })?;
    let entries = layout::list(tree.repo(), &root, path, &commit)?;
    Ok(layout::discover(path, &entries)
        .into_iter()
        .map(|found| load_one(tree, found, age))
        .collect())
}

fn load_one(tree: &GitTree, found: layout::StackLayout, age: &[Identity]) -> LoadedStack {
    if let Some(problem) = found.problem {
        return LoadedStack {
            inputs: digest(&found.name, &BTreeMap::new()),
            name: found.name,
            file: found.file.clone(),
            spec: Err(format!("{}: error: {problem}", found.file)),
            warnings: Vec::new(),
        };
    }
    let recording = Recording::new(tree);
    let options = LoadOptions {
        files: vec![PathBuf::from(&found.file)],
        env_file: None,
        stack: Some(found.name.clone()),
        environment: BTreeMap::new(),
        age_identities: age.to_vec(),
    };
    let (spec, warnings) = match swarm_specs::load(&options, &recording) {
        Ok(loaded) => (
            Ok(loaded.stack),
            loaded.diagnostics.warnings().map(|w| w.to_string()).collect(),
        ),
        Err(diagnostics) => {
            let n = diagnostics.errors().count();
            (
                Err(format!(
                    "{diagnostics}\nerror: the stack is invalid: {n} error{} (fix {} and commit again)",
                    if n == 1 { "" } else { "s" },
                    found.file
                )),
                Vec::new(),
            )
        }
    };
    LoadedStack {
        inputs: digest(&found.name, &recording.reads()),
        name: found.name,
        file: found.file,
        spec,
        warnings,
    }
}

/// SHA-256 over the stack's name and every (path, blob id or absence) it read, in path order.
pub fn digest(name: &str, reads: &BTreeMap<String, Option<String>>) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(name.as_bytes());
    ctx.update(b"\n");
    for (path, blob) in reads {
        ctx.update(path.as_bytes());
        ctx.update(b"\0");
        ctx.update(blob.as_deref().unwrap_or("-").as_bytes());
        ctx.update(b"\n");
    }
    ctx.finish().as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gitops::testing::commit;
    use crate::gitops::testing::repo_with;

    const WEB: &str = "services:\n  web:\n    command: [\"sleep\", \"60\"]\n    x-swarm: {driver: process}\n";
    const API: &str =
        "services:\n  api:\n    command: [\"sleep\", \"${SECONDS_TO_SLEEP:-60}\"]\n    x-swarm: {driver: process}\n";

    fn by_name(stacks: &[LoadedStack]) -> BTreeMap<&str, &LoadedStack> {
        stacks.iter().map(|s| (s.name.as_str(), s)).collect()
    }

    #[test]
    fn only_the_stack_whose_files_changed_has_new_inputs() {
        let (_dir, repo, first) = repo_with(&[
            ("stacks/web.yml", WEB),
            ("stacks/api/docker-stack.yml", API),
            ("stacks/api/.env", "SECONDS_TO_SLEEP=30\n"),
            ("README.md", "x"),
        ]);
        let second = commit(
            &repo,
            &[
                ("stacks/web.yml", WEB),
                ("stacks/api/docker-stack.yml", API),
                ("stacks/api/.env", "SECONDS_TO_SLEEP=40\n"),
                ("README.md", "changed too"),
            ],
        );
        let repo_path = repo.path().to_path_buf();
        let load_at = |c| {
            load(
                &GitTree::at_commit(git2::Repository::open(&repo_path).unwrap(), c).unwrap(),
                "stacks",
                &[],
            )
            .unwrap()
        };
        let (a, b) = (load_at(first), load_at(second));
        let (a, b) = (by_name(&a), by_name(&b));
        assert_eq!(a["web"].inputs, b["web"].inputs, "web's files did not change");
        assert_ne!(a["api"].inputs, b["api"].inputs, "api's .env changed");
        let api = a["api"].spec.as_ref().unwrap();
        assert_eq!(api.name, "api");
        assert_eq!(
            api.services["api_api"].task.command,
            Some(vec!["sleep".to_string(), "30".to_string()])
        );
    }

    #[test]
    fn an_invalid_stack_carries_the_loaders_diagnostic_and_the_manager_environment_is_not_used() {
        std::env::set_var("SWARM_GITOPS_TEST_LEAK", "leaked");
        let (_dir, repo, c) = repo_with(&[
            ("web.yml", "services:\n  web:\n    imgae: nginx\n"),
            (
                "env.yml",
                "services:\n  e:\n    command: [\"echo\", \"${SWARM_GITOPS_TEST_LEAK:-safe}\"]\n    x-swarm: {driver: process}\n",
            ),
            (
                "steal.yml",
                "services:\n  s:\n    command: [\"true\"]\n    x-swarm: {driver: process}\n    secrets: [p]\nsecrets:\n  p:\n    file: /etc/passwd\n",
            ),
        ]);
        let stacks = load(&GitTree::at_commit(repo, c).unwrap(), "", &[]).unwrap();
        let stacks = by_name(&stacks);
        let web = stacks["web"].spec.as_ref().unwrap_err();
        assert!(
            web.contains("web.yml:3:5: error: services.web.imgae: unknown key \"imgae\""),
            "{web}"
        );
        assert!(web.contains("did you mean \"image\"?"), "{web}");
        let env = stacks["env"].spec.as_ref().unwrap();
        assert_eq!(
            env.services["env_e"].task.command,
            Some(vec!["echo".to_string(), "safe".to_string()])
        );
        let steal = stacks["steal"].spec.as_ref().unwrap_err();
        assert!(steal.contains("outside the git repository"), "{steal}");
    }
}
