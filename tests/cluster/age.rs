//! Secrets kept in git encrypted with age: the manager decrypts them with the key given to `swarm source add
//! --age-key-file` (sealed in the store like the source's other credentials), the task gets the plaintext, and
//! neither the plaintext nor the key is ever on a node's disk. Re-encrypting the same value rotates nothing; a
//! file for another key is refused with the loader's diagnostic and applies nothing. `swarm apply` decrypts
//! locally with `--age-key-file`.

use std::time::Duration;

use ring::rand::SystemRandom;
use swarm_specs::age;

use crate::gitops::inspect;
use crate::gitops::wait_synced;
use crate::gitops::Repo;
use crate::harness::wait_until;
use crate::harness::Cluster;
use crate::secrets::data_dir;
use crate::secrets::files_under;
use crate::secrets::find_any;
use crate::secrets::is_tmpfs;
use crate::secrets::needles;
use crate::secrets::node_dir;
use crate::secrets::secret_names;

/// A process-driver stack whose task prints `ok <SHA-256 of the secret> <config>` (the secret itself would land
/// in the task's log file).
fn stack(secret_file: &str) -> String {
    format!(
        r#"services:
  app:
    command: ["sh", "-c", "echo ok $$(sha256sum < $$SWARM_SECRETS_DIR/db | cut -c1-64) $$(cat $$SWARM_CONFIGS_DIR/app.conf); trap 'exit 0' TERM; while true; do sleep 0.2; done"]
    x-swarm: {{driver: process}}
    stop_grace_period: 2s
    secrets: [db]
    configs:
      - source: conf
        target: /app.conf
secrets:
  db:
    file: ./{secret_file}
configs:
  conf:
    file: ./conf.enc
    x-swarm: {{encrypted: age}}
"#
    )
}

fn encrypt_to(id: &age::Identity, plain: &str) -> Vec<u8> {
    let recipient = age::parse_recipient(&id.recipient()).expect("our own recipient parses");
    age::encrypt(&[recipient], plain.as_bytes(), &SystemRandom::new())
}

#[test]
fn secrets_encrypted_with_age_in_git_reach_the_task_and_nothing_else() {
    let rng = SystemRandom::new();
    let key = age::Identity::generate(&rng);
    let stranger = age::Identity::generate(&rng);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let secret = format!("planted-age-{nanos:x}");
    let config = format!("conf-{nanos:x}");

    let mut c = Cluster::new();
    c.init("m1");
    c.wait_all_ready();
    let dir = tempfile::tempdir().expect("temp dir");
    let key_file = dir.path().join("key.txt");
    std::fs::write(
        &key_file,
        format!("# public key: {}\n{}\n", key.recipient(), key.to_secret_string()),
    )
    .unwrap();
    let key_file = key_file.to_str().unwrap().to_string();

    // Git holds only ciphertext.
    let repo = Repo::new();
    repo.write("stacks/app/docker-stack.yml", &stack("db.txt.age"));
    std::fs::write(repo.dir.path().join("stacks/app/db.txt.age"), encrypt_to(&key, &secret)).unwrap();
    std::fs::write(repo.dir.path().join("stacks/app/conf.enc"), encrypt_to(&key, &config)).unwrap();
    let first = repo.commit("app with encrypted secret and config");

    let added = c
        .swarm(
            "m1",
            &[
                "source",
                "add",
                "apps",
                "--repo",
                &repo.url(),
                "--path",
                "stacks",
                "--interval",
                "1h",
                "--age-key-file",
                &key_file,
            ],
        )
        .ok();
    assert!(
        added.stdout.contains(&key.recipient()),
        "the recipient to encrypt to is shown: {}",
        added.show()
    );
    wait_synced(&c, "m1", "apps", "app", &first, Duration::from_secs(30));
    let digest: String = ring::digest::digest(&ring::digest::SHA256, secret.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let expected = format!("ok {digest} {config}");
    wait_until("the task read the decrypted files", Duration::from_secs(20), || {
        let logs = c.swarm("m1", &["service", "logs", "app_app"]);
        logs.stdout.contains(&expected).then_some(()).ok_or_else(|| logs.show())
    });
    let names = secret_names(&c, "m1");
    assert_eq!(names.len(), 1, "{names:?}");

    // The same value encrypted again is a different file but not a new secret: nothing rotates.
    std::fs::write(repo.dir.path().join("stacks/app/db.txt.age"), encrypt_to(&key, &secret)).unwrap();
    let second = repo.commit("re-encrypt the same value");
    c.swarm("m1", &["source", "sync", "apps"]).ok();
    wait_synced(&c, "m1", "apps", "app", &second, Duration::from_secs(30));
    assert_eq!(
        secret_names(&c, "m1"),
        names,
        "re-encrypting the same value rotated the secret"
    );

    // A file encrypted to another key: OutOfSync with the reason; the running stack is left alone.
    std::fs::write(
        repo.dir.path().join("stacks/app/db.txt.age"),
        encrypt_to(&stranger, "other"),
    )
    .unwrap();
    repo.commit("encrypted to the wrong key");
    let sync = c.swarm("m1", &["source", "sync", "apps"]);
    assert_ne!(sync.code, 0, "{}", sync.show());
    let info = inspect(&c, "m1", "apps").expect("inspect");
    let error = info["status"]["stacks"]["app"]["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        error.contains("secrets.db.file") && error.contains("not encrypted to any of the given age keys"),
        "{info:#}"
    );
    assert!(
        error.contains(&key.recipient()),
        "the error names the key that was tried: {error}"
    );
    assert_eq!(
        info["status"]["stacks"]["app"]["applied_commit"],
        second.as_str(),
        "{info:#}"
    );
    assert_eq!(secret_names(&c, "m1"), names);

    // The CLI decrypts locally: without the key it says which flag is missing, with it the stack deploys.
    let local = dir.path().join("local");
    std::fs::create_dir_all(&local).unwrap();
    std::fs::write(local.join("docker-stack.yml"), stack("db.age")).unwrap();
    std::fs::write(local.join("db.age"), encrypt_to(&key, &secret)).unwrap();
    std::fs::write(local.join("conf.enc"), encrypt_to(&key, &config)).unwrap();
    let file = local.join("docker-stack.yml");
    let file = file.to_str().unwrap();
    c.swarm("m1", &["validate", "-f", file])
        .fails_with("secrets.db.file: ")
        .fails_with("is encrypted with age and no age key was given");
    c.swarm(
        "m1",
        &[
            "apply",
            "-f",
            file,
            "--stack",
            "local",
            "--yes",
            "--age-key-file",
            &key_file,
        ],
    )
    .ok();
    wait_until(
        "the locally applied task read its files",
        Duration::from_secs(20),
        || {
            let logs = c.swarm("m1", &["service", "logs", "local_app"]);
            logs.stdout.contains(&expected).then_some(()).ok_or_else(|| logs.show())
        },
    );

    // Neither the secret nor the key is in any file of the node (Raft log, snapshots, state, the git clone). The
    // config is not secret: the store keeps it, as Docker does. The running tasks' files are on their tmpfs.
    let task_files = data_dir(&c, "m1").join("task-files");
    assert!(is_tmpfs(&task_files), "the task files are not on a tmpfs");
    let mut needles = needles(&[secret]);
    needles.push(key.to_secret_string().into_bytes());
    let mut files = Vec::new();
    files_under(&node_dir(&c, "m1"), &mut files);
    assert!(
        files.iter().any(|f| f.ends_with("raft/raft.redb")) && files.iter().any(|f| f.ends_with("raft/state.redb")),
        "no Raft log or state file scanned: {files:?}"
    );
    for path in files.iter().filter(|f| !f.starts_with(&task_files)) {
        let Ok(bytes) = std::fs::read(path) else { continue };
        if let Some(i) = find_any(&bytes, &needles) {
            panic!(
                "needle {i} (the secret, its base64, the age key) found in {}",
                path.display()
            );
        }
    }
}
