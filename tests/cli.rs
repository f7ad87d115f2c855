//! End-to-end tests of the stack-file commands: the real `swarm` binary on files in a temporary directory.

use std::path::Path;
use std::path::PathBuf;
use std::process::Command;
use std::process::Output;

/// A temporary directory holding stack files, and the `swarm` binary run inside it.
struct Dir {
    dir: tempfile::TempDir,
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Dir {
    fn new() -> Dir {
        Dir {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn write(&self, name: &str, text: &str) -> &Dir {
        let path = self.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
        self
    }

    fn swarm(&self, args: &[&str]) -> Run {
        let output: Output = Command::new(env!("CARGO_BIN_EXE_swarm"))
            .args(args)
            .current_dir(self.path())
            .env_remove("WEB_TAG")
            .env_remove("LOG_LEVEL")
            .output()
            .expect("run swarm");
        Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

impl Run {
    #[track_caller]
    fn expect_code(&self, code: i32) -> &Run {
        assert_eq!(
            self.code, code,
            "exit code\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout, self.stderr
        );
        self
    }
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

const WEB_V1: &str = "services:\n  web:\n    image: nginx:1.25\n    deploy:\n      replicas: 2\n";
const WEB_V2: &str = "services:\n  web:\n    image: nginx:1.27\n    deploy:\n      replicas: 2\n";

#[test]
fn validate_accepts_the_example_stacks() {
    let dir = Dir::new();
    for example in [
        "examples/web/docker-stack.yml",
        "examples/hello-process/docker-stack.yml",
    ] {
        let file = repo_root().join(example);
        let run = dir.swarm(&["validate", "-f", file.to_str().unwrap()]);
        run.expect_code(0);
        assert!(run.stdout.contains(": valid (stack"), "{}", run.stdout);
    }
}

#[test]
fn validate_reports_every_error_with_file_line_and_column_and_exits_1() {
    let dir = Dir::new();
    dir.write(
        "docker-stack.yml",
        "services:\n  web:\n    imgae: nginx\n    deploy:\n      replicas: three\n",
    );
    let run = dir.swarm(&["validate", "-f", "docker-stack.yml"]);
    run.expect_code(1);
    assert!(
        run.stderr.contains(
            "docker-stack.yml:3:5: error: services.web.imgae: unknown key \"imgae\"\n  hint: did you mean \"image\"?"
        ),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains(
            "docker-stack.yml:5:17: error: services.web.deploy.replicas: expected a non-negative integer, found \"three\""
        ),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("the stack is invalid: 2 errors"), "{}", run.stderr);
}

#[test]
fn validate_warns_about_keys_swarm_ignores_on_stderr() {
    let dir = Dir::new();
    dir.write(
        "docker-stack.yml",
        "services:\n  web:\n    image: nginx\n    build: .\n    container_name: web\n",
    );
    let run = dir.swarm(&["validate", "-f", "docker-stack.yml"]);
    run.expect_code(0);
    assert!(
        run.stderr
            .contains("warning: services.web: Ignoring unsupported options: build, container_name"),
        "{}",
        run.stderr
    );
}

#[test]
fn committed_schema_is_up_to_date() {
    let run = Dir::new().swarm(&["schema"]);
    run.expect_code(0);
    let committed = std::fs::read_to_string(repo_root().join("schemas/stack.schema.json")).unwrap_or_default();
    assert!(
        committed == run.stdout,
        "schemas/stack.schema.json is stale: run `cargo run -- schema > schemas/stack.schema.json` and commit it"
    );
}

#[test]
fn schema_lets_numbers_be_written_as_strings() {
    let run = Dir::new().swarm(&["schema"]);
    let schema: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let replicas = &schema["$defs"]["Deploy"]["properties"]["replicas"]["type"];
    assert!(replicas.as_array().unwrap().contains(&"string".into()), "{replicas}");
}

#[test]
fn config_output_round_trips_through_validate() {
    let dir = Dir::new();
    let example = repo_root().join("examples/web/docker-stack.yml");
    let run = dir.swarm(&["config", "-f", example.to_str().unwrap(), "--stack", "demo"]);
    run.expect_code(0);
    dir.write("examples/web/printed.yml", &run.stdout);
    // The printed file lives elsewhere, so relative config/secret paths must have been made absolute.
    let printed = dir.path().join("examples/web/printed.yml");
    dir.swarm(&["validate", "-f", printed.to_str().unwrap(), "--stack", "demo"])
        .expect_code(0);
    let a = dir.swarm(&[
        "config",
        "--normalized",
        "-f",
        example.to_str().unwrap(),
        "--stack",
        "demo",
    ]);
    let b = dir.swarm(&[
        "config",
        "--normalized",
        "-f",
        printed.to_str().unwrap(),
        "--stack",
        "demo",
    ]);
    assert_eq!(a.expect_code(0).stdout, b.expect_code(0).stdout);
}

#[test]
fn plan_of_a_stack_against_itself_has_no_changes() {
    let dir = Dir::new();
    dir.write("a.yml", WEB_V1);
    dir.write(
        "b.yml",
        "services:\n  web:\n    deploy: {replicas: 2}\n    image: nginx:1.25\n",
    );
    let run = dir.swarm(&[
        "plan",
        "-f",
        "b.yml",
        "--base",
        "a.yml",
        "--stack",
        "s",
        "--detailed-exitcode",
    ]);
    run.expect_code(0);
    assert!(run.stdout.contains("No changes."), "{}", run.stdout);
}

#[test]
fn plan_shows_a_semantic_change_and_exits_2_with_detailed_exitcode() {
    let dir = Dir::new();
    dir.write("old.yml", WEB_V1).write("new.yml", WEB_V2);
    let run = dir.swarm(&[
        "plan",
        "-f",
        "new.yml",
        "--base",
        "old.yml",
        "--stack",
        "s",
        "--detailed-exitcode",
    ]);
    run.expect_code(2);
    assert!(run.stdout.contains("service.web"), "{}", run.stdout);
    assert!(
        run.stdout.contains("nginx:1.25") && run.stdout.contains("nginx:1.27"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("Plan: 0 to create, 1 to update, 0 to remove"),
        "{}",
        run.stdout
    );
    // Without the flag, changes are not an error.
    dir.swarm(&["plan", "-f", "new.yml", "--base", "old.yml", "--stack", "s"])
        .expect_code(0);
}

#[test]
fn plan_json_is_versioned_and_lists_changes() {
    let dir = Dir::new();
    dir.write("old.yml", WEB_V1).write("new.yml", WEB_V2);
    let run = dir.swarm(&[
        "plan", "-f", "new.yml", "--base", "old.yml", "--stack", "s", "--format", "json",
    ]);
    run.expect_code(0);
    let plan: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(plan["format_version"], "1");
    assert_eq!(plan["changes"][0]["address"], "service.web");
    assert_eq!(plan["changes"][0]["actions"], serde_json::json!(["update"]));
}

#[test]
fn plan_error_exits_1() {
    let dir = Dir::new();
    dir.write("new.yml", "services: [oops]\n").write("old.yml", WEB_V1);
    dir.swarm(&["plan", "-f", "new.yml", "--base", "old.yml", "--detailed-exitcode"])
        .expect_code(1);
}

#[test]
fn plan_never_prints_a_secret_value() {
    let dir = Dir::new();
    let stack = "services:\n  db:\n    image: postgres\n    secrets: [pw]\nsecrets:\n  pw:\n    file: ./pw.txt\n";
    dir.write("v1/docker-stack.yml", stack)
        .write("v1/pw.txt", "hunter2-old");
    dir.write("v2/docker-stack.yml", stack)
        .write("v2/pw.txt", "hunter2-new");
    for format in ["human", "json"] {
        let run = dir.swarm(&[
            "plan",
            "-f",
            "v2/docker-stack.yml",
            "--base",
            "v1/docker-stack.yml",
            "--stack",
            "s",
            "--format",
            format,
        ]);
        run.expect_code(0);
        assert!(run.stdout.contains("pw"), "{}", run.stdout);
        for output in [&run.stdout, &run.stderr] {
            assert!(!output.contains("hunter2"), "secret value leaked:\n{output}");
        }
    }
}

fn git(dir: &Path, args: &[&str]) {
    let status = Command::new("git")
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@example.invalid",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .current_dir(dir)
        .status()
        .expect("run git");
    assert!(status.success(), "git {args:?}");
}

#[test]
fn plan_against_a_git_revision_reads_the_same_paths_at_that_commit() {
    let dir = Dir::new();
    dir.write("stacks/web/docker-stack.yml", WEB_V1);
    git(dir.path(), &["init", "-q"]);
    git(dir.path(), &["add", "."]);
    git(dir.path(), &["commit", "-q", "-m", "v1"]);
    dir.write("stacks/web/docker-stack.yml", WEB_V2);
    let run = dir.swarm(&[
        "plan",
        "-f",
        "stacks/web/docker-stack.yml",
        "--base-git",
        "HEAD",
        "--detailed-exitcode",
    ]);
    run.expect_code(2);
    assert!(
        run.stdout.contains("nginx:1.25") && run.stdout.contains("nginx:1.27"),
        "{}",
        run.stdout
    );
    // A stack file that the revision does not have yet is planned as all new.
    dir.write("stacks/api/docker-stack.yml", WEB_V1);
    let run = dir.swarm(&["plan", "-f", "stacks/api/docker-stack.yml", "--base-git", "HEAD"]);
    run.expect_code(0);
    assert!(run.stdout.contains("Plan: 2 to create"), "{}", run.stdout);
    // An unknown revision is an error that names it.
    let run = dir.swarm(&["plan", "-f", "stacks/web/docker-stack.yml", "--base-git", "nope"]);
    run.expect_code(1);
    assert!(run.stderr.contains("nope"), "{}", run.stderr);
}

/// Every real stack file in the shared corpus: `swarm config` of it validates again and means the same, and
/// `swarm plan` of it against itself has nothing to do. Files it names that the corpus lacks (secret files, env
/// files) are created with placeholder content, found from the loader's own "cannot read" errors.
#[test]
fn every_corpus_file_round_trips_through_config_and_plans_no_changes_against_itself() {
    let corpus = repo_root().join("../shared/corpus/compose");
    let Ok(entries) = std::fs::read_dir(&corpus) else {
        eprintln!("skipped: {} is absent", corpus.display());
        return;
    };
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no stack files in {}", corpus.display());
    for original in files {
        let name = original.file_name().unwrap().to_string_lossy().into_owned();
        let dir = Dir::new();
        dir.write(&format!("stack/{name}"), &std::fs::read_to_string(&original).unwrap());
        let file = format!("stack/{name}");
        // Create the files the stack refers to, as the loader names them.
        for _ in 0..20 {
            let run = dir.swarm(&["validate", "-q", "-f", &file, "--stack", "corpus"]);
            let missing: Vec<String> = run
                .stderr
                .lines()
                .filter_map(|l| l.split("cannot read ").nth(1))
                .filter_map(|rest| rest.split(": ").next())
                .map(str::to_string)
                .collect();
            if missing.is_empty() {
                run.expect_code(0);
                break;
            }
            for path in missing {
                // Relative paths are relative to where swarm ran: the test's directory.
                let path = dir.path().join(path);
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(&path, "placeholder\n").unwrap();
            }
        }
        let printed = dir.swarm(&["config", "-f", &file, "--stack", "corpus"]);
        printed.expect_code(0);
        dir.write("stack/printed.yml", &printed.stdout);
        let again = dir.swarm(&["validate", "-q", "-f", "stack/printed.yml", "--stack", "corpus"]);
        assert_eq!(
            again.code, 0,
            "{name}: the printed config does not validate:\n{}",
            again.stderr
        );
        let a = dir.swarm(&["config", "--normalized", "-f", &file, "--stack", "corpus"]);
        let b = dir.swarm(&["config", "--normalized", "-f", "stack/printed.yml", "--stack", "corpus"]);
        assert_eq!(a.stdout, b.stdout, "{name}: the printed config means something else");
        let plan = dir.swarm(&[
            "plan",
            "-f",
            &file,
            "--base",
            &file,
            "--stack",
            "corpus",
            "--detailed-exitcode",
        ]);
        assert_eq!(
            plan.code, 0,
            "{name}: plan against itself:\n{}{}",
            plan.stdout, plan.stderr
        );
        assert!(plan.stdout.contains("No changes."), "{name}: {}", plan.stdout);
    }
}
