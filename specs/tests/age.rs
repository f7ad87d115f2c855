//! swarm's age decryption against the reference implementation: files made by Debian's `age` (committed
//! fixtures, always) and, when the `age` binary is installed (`.ci/run` installs it), fresh files both ways.

use std::path::Path;
use std::path::PathBuf;
use std::process::Command;

use ring::rand::SystemRandom;
use swarm_specs::age;
use swarm_specs::age::AgeError;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/age")
        .join(name)
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).unwrap()
}

fn key(name: &str) -> Vec<age::Identity> {
    age::parse_identities(&String::from_utf8(read(name)).unwrap()).unwrap()
}

#[test]
fn files_made_by_age_decrypt_binary_and_armored() {
    let ids = key("key.txt");
    let plain = read("plain.txt");
    assert_eq!(age::decrypt(&ids, &read("secret.age")).unwrap(), plain);
    assert_eq!(age::decrypt(&ids, &read("secret.armored.age")).unwrap(), plain);
    assert!(age::is_age(&read("secret.age")) && age::is_age(&read("secret.armored.age")));
    assert!(!age::is_age(&plain));
}

#[test]
fn a_file_for_another_key_names_the_keys_that_were_tried() {
    let ids = key("key.txt");
    let err = age::decrypt(&ids, &read("other.age")).unwrap_err();
    let AgeError::NoMatchingKey(tried) = &err else {
        panic!("{err}")
    };
    assert_eq!(tried, &ids[0].recipient());
    let text = String::from_utf8(read("key.txt")).unwrap();
    assert!(
        text.contains(&format!("# public key: {}", ids[0].recipient())),
        "our recipient encoding differs from age-keygen's"
    );
    assert!(!err.to_string().contains("AGE-SECRET-KEY"));
}

fn age_binary() -> bool {
    let found = Command::new("age")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("skipping: the age binary is not installed (apt-get install age)");
    }
    found
}

#[test]
fn multi_chunk_files_interoperate_with_the_age_binary_both_ways() {
    if !age_binary() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let rng = SystemRandom::new();
    let ours = age::Identity::generate(&rng);
    let key_file = dir.path().join("key.txt");
    std::fs::write(&key_file, format!("# test key\n{}\n", ours.to_secret_string())).unwrap();
    for len in [0usize, 5, 65_536, 65_537, 200_000] {
        let plain: Vec<u8> = (0..len).map(|i| (i * 7 % 256) as u8).collect();
        let plain_file = dir.path().join("plain");
        std::fs::write(&plain_file, &plain).unwrap();

        // age encrypts, swarm decrypts (binary and armored).
        for armor in [false, true] {
            let out = dir.path().join("by-age.age");
            let mut cmd = Command::new("age");
            cmd.arg("-r").arg(ours.recipient()).arg("-o").arg(&out);
            if armor {
                cmd.arg("-a");
            }
            let status = cmd.arg(&plain_file).status().unwrap();
            assert!(status.success());
            let decrypted = age::decrypt(std::slice::from_ref(&ours), &std::fs::read(&out).unwrap()).unwrap();
            assert!(decrypted == plain, "len {len} armor {armor}");
        }

        // swarm encrypts, age decrypts.
        let recipient = age::parse_recipient(&ours.recipient()).unwrap();
        let ours_file = dir.path().join("by-swarm.age");
        std::fs::write(&ours_file, age::encrypt(&[recipient], &plain, &rng)).unwrap();
        let output = Command::new("age")
            .arg("-d")
            .arg("-i")
            .arg(&key_file)
            .arg(&ours_file)
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        assert!(output.stdout == plain, "len {len}: age decrypted something else");
    }
}

const STACK: &str = "services:
  app:
    image: app:1
    secrets: [db]
    configs: [conf]
secrets:
  db:
    file: ./db.age
configs:
  conf:
    file: ./conf.bin
    x-swarm: {encrypted: age}
";

fn load_stack(dir: &Path, identities: Vec<age::Identity>) -> Result<swarm_specs::Loaded, swarm_specs::Diagnostics> {
    let options = swarm_specs::LoadOptions {
        files: vec![dir.join("docker-stack.yml")],
        stack: Some("s".into()),
        age_identities: identities,
        ..swarm_specs::LoadOptions::default()
    };
    swarm_specs::load(&options, &swarm_specs::loader::LocalFiles)
}

#[test]
fn a_stack_decrypts_age_files_by_name_or_by_x_swarm_and_names_them_by_their_plaintext() {
    let rng = SystemRandom::new();
    let id = age::Identity::generate(&rng);
    let recipient = age::parse_recipient(&id.recipient()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("docker-stack.yml"), STACK).unwrap();
    std::fs::write(dir.path().join("db.age"), age::encrypt(&[recipient], b"s3cret", &rng)).unwrap();
    std::fs::write(
        dir.path().join("conf.bin"),
        age::encrypt(&[recipient], b"listen 80\n", &rng),
    )
    .unwrap();

    let loaded = load_stack(dir.path(), vec![id.clone()]).unwrap();
    let db = |l: &swarm_specs::Loaded| l.stack.secrets.values().find(|s| s.key == "db").cloned().unwrap();
    assert_eq!(db(&loaded).data.0, b"s3cret");
    assert_eq!(loaded.stack.configs.values().next().unwrap().data, b"listen 80\n");

    // Encrypted again, the same value keeps its stored name: nothing would rotate.
    std::fs::write(dir.path().join("db.age"), age::encrypt(&[recipient], b"s3cret", &rng)).unwrap();
    let again = load_stack(dir.path(), vec![id.clone()]).unwrap();
    assert_eq!(db(&again).name, db(&loaded).name);

    // Without a key, or with the wrong one: an error at the `file:` line, saying what to pass.
    let err = load_stack(dir.path(), Vec::new()).unwrap_err().to_string();
    assert!(err.contains("docker-stack.yml:8:11: error: secrets.db.file: "), "{err}");
    assert!(
        err.contains("no age key was given") && err.contains("--age-key-file"),
        "{err}"
    );
    let err = load_stack(dir.path(), vec![age::Identity::generate(&rng)])
        .unwrap_err()
        .to_string();
    assert!(err.contains("not encrypted to any of the given age keys"), "{err}");
    assert!(!err.contains("s3cret"));

    // A `.age` file that is not one says so.
    std::fs::write(dir.path().join("db.age"), "plain text").unwrap();
    let err = load_stack(dir.path(), vec![id]).unwrap_err().to_string();
    assert!(err.contains("not an age file"), "{err}");
}
