use std::collections::BTreeMap;

use openraft::storage::RaftStateMachine as _;
use openraft::CommittedLeaderId;
use openraft::EntryPayload;
use swarm_specs::spec::Driver;
use swarm_specs::spec::EndpointMode;
use swarm_specs::spec::FileRef;
use swarm_specs::spec::ServiceMode;
use swarm_specs::spec::ServiceSpec;
use swarm_specs::spec::TaskSpec;
use swarm_specs::spec::UpdateConfig;
use swarm_specs::task::TaskState;
use swarm_specs::task::TaskStatus;

use super::*;
use crate::store::typ;

fn secret(name: &str, stack: Option<&str>, data: &[u8]) -> SecretSpec {
    SecretSpec {
        name: name.into(),
        key: name.split('-').next().unwrap_or(name).into(),
        labels: stack
            .map(|s| BTreeMap::from([(STACK_NAMESPACE_LABEL.to_string(), s.to_string())]))
            .unwrap_or_default(),
        source: ContentSource::File,
        digest: crypto::digest_hex(data),
        data: SecretBytes(data.to_vec()),
    }
}

fn file_ref(source: &str) -> FileRef {
    FileRef {
        source: source.into(),
        target: format!("/run/secrets/{source}"),
        uid: "0".into(),
        gid: "0".into(),
        mode: 0o400,
    }
}

fn service(name: &str, secrets: &[&str]) -> Service {
    let mut task = TaskSpec::with_command(Driver::Process, None, vec!["true".into()]);
    task.secrets = secrets.iter().map(|s| file_ref(s)).collect();
    Service::new(
        format!("id-{name}"),
        ServiceSpec {
            name: name.into(),
            labels: BTreeMap::new(),
            mode: ServiceMode::Replicated { replicas: 1 },
            task,
            endpoint_mode: EndpointMode::Vip,
            ports: Vec::new(),
            update_config: UpdateConfig::default(),
            rollback_config: UpdateConfig::default(),
        },
        0,
    )
}

fn task(id: &str, secrets: &[&str], state: TaskState) -> Task {
    let mut spec = TaskSpec::with_command(Driver::Process, None, vec!["true".into()]);
    spec.secrets = secrets.iter().map(|s| file_ref(s)).collect();
    Task {
        id: id.into(),
        service: "s_web".into(),
        slot: Some(1),
        node_id: Some("n1".into()),
        spec_version: 1,
        spec,
        desired_state: TaskState::Running,
        status: TaskStatus::new(state, 0, ""),
        created_at: 0,
        ports: Vec::new(),
        networks: Vec::new(),
        started_at: None,
    }
}

fn stack_with(secrets: &[&SecretSpec]) -> Stack {
    Stack {
        name: "s".into(),
        revision: 2,
        spec: StackSpec {
            name: "s".into(),
            secrets: secrets.iter().map(|s| (s.name.clone(), (*s).clone())).collect(),
            ..StackSpec::default()
        },
        created_at: 0,
        updated_at: 0,
    }
}

fn deleted(request: &Request) -> Vec<String> {
    request
        .ops
        .iter()
        .filter_map(|op| match op {
            Op::Delete { table, key } => Some(format!("{table}/{key}")),
            _ => None,
        })
        .collect()
}

#[test]
fn a_rotated_secret_goes_only_once_nothing_uses_it() {
    let key = Key::generate().unwrap();
    // As a stack file defines them: no stack label; their sealed contents say which stack made them.
    let old = secret("s_db-1", None, b"v1");
    let new = secret("s_db-2", None, b"v2");
    let created = secret("by_hand", None, b"x");
    let secrets = vec![(old.clone(), 5), (new.clone(), 9), (created.clone(), 3)];
    let sealed = vec![
        (SealedSecret::seal(&key, "s_db-1", b"v1", Some("s"), 0).unwrap(), 5),
        (SealedSecret::seal(&key, "s_db-2", b"v2", Some("s"), 0).unwrap(), 9),
        (SealedSecret::seal(&key, "by_hand", b"x", None, 0).unwrap(), 3),
        // Content whose secret is gone.
        (SealedSecret::seal(&key, "s_gone-3", b"x", Some("s"), 0).unwrap(), 4),
    ];
    let stacks = vec![stack_with(&[&new])];
    let mut web = service("s_web", &["s_db-2"]);
    let old_tasks = vec![task("t1", &["s_db-1"], TaskState::Running)];
    let inventory = |services: &[Service], tasks: &[Task]| {
        orphans(&Inventory {
            secrets: &secrets,
            sealed: &sealed,
            configs: &[],
            config_meta: &[],
            stacks: &stacks,
            services,
            tasks,
            keep_unused: 0,
        })
    };
    // An old task still runs with the old secret: it stays (only the stray content goes).
    let request = inventory(std::slice::from_ref(&web), &old_tasks);
    assert_eq!(deleted(&request), vec!["secret_data/s_gone-3"]);
    // The service's previous spec still names it (a rollback would need it): it stays.
    web.previous_spec = Some(service("s_web", &["s_db-1"]).spec);
    let finished = vec![task("t1", &["s_db-1"], TaskState::Shutdown)];
    assert_eq!(
        deleted(&inventory(std::slice::from_ref(&web), &finished)),
        vec!["secret_data/s_gone-3"]
    );
    // Nothing uses it any more: the secret and its content go, guarded; a secret made by hand never does.
    web.previous_spec = None;
    let request = inventory(std::slice::from_ref(&web), &finished);
    assert_eq!(
        deleted(&request),
        vec!["secrets/s_db-1", "secret_data/s_db-1", "secret_data/s_gone-3"]
    );
    assert!(request.guards.contains(&Guard::Revision {
        table: "secrets".into(),
        key: "s_db-1".into(),
        revision: 5
    }));
    // The stray content is deleted only while its secret is still absent.
    assert!(request.guards.contains(&Guard::Revision {
        table: "secrets".into(),
        key: "s_gone-3".into(),
        revision: 0
    }));
}

#[test]
fn the_newest_unused_versions_of_each_stack_secret_are_kept_for_rollback() {
    let key = Key::generate().unwrap();
    // Four versions of `db` made one after the other (v4 in use), two of `api` (v2 in use), one made by hand.
    let versions = [
        ("s_db-1", 10),
        ("s_db-2", 20),
        ("s_db-3", 30),
        ("s_db-4", 40),
        ("s_api-1", 15),
        ("s_api-2", 25),
    ];
    let mut secrets: Vec<(SecretSpec, u64)> = versions
        .iter()
        .map(|(n, _)| (secret(n, None, n.as_bytes()), 1))
        .collect();
    secrets.push((secret("by_hand", None, b"x"), 1));
    let sealed: Vec<(SealedSecret, u64)> = versions
        .iter()
        .map(|(n, at)| (SealedSecret::seal(&key, n, n.as_bytes(), Some("s"), *at).unwrap(), 1))
        .chain([(SealedSecret::seal(&key, "by_hand", b"x", None, 5).unwrap(), 1)])
        .collect();
    let in_use = [&secrets[3].0, &secrets[5].0];
    let stacks = vec![stack_with(&in_use)];
    let removed = |keep_unused: usize| {
        deleted(&orphans(&Inventory {
            secrets: &secrets,
            sealed: &sealed,
            configs: &[],
            config_meta: &[],
            stacks: &stacks,
            services: &[],
            tasks: &[],
            keep_unused,
        }))
    };
    // Keep 2: of db's unused v1-v3 the newest two stay; api's one unused version stays.
    assert_eq!(removed(2), ["secrets/s_db-1", "secret_data/s_db-1"]);
    assert_eq!(
        removed(1),
        [
            "secrets/s_db-1",
            "secrets/s_db-2",
            "secret_data/s_db-1",
            "secret_data/s_db-2"
        ]
    );
    let none = removed(0);
    assert_eq!(none.len(), 8, "{none:?}");
    assert!(none
        .iter()
        .all(|d| !d.contains("s_db-4") && !d.contains("s_api-2") && !d.contains("by_hand")));
}

#[test]
fn key_info_checks_keys_and_carries_the_unlock_key_sealed() {
    let key = Key::generate().unwrap();
    let unlock = UnlockKey::generate().unwrap();
    let info = KeyInfo::new(&key, Some(&unlock), 3).unwrap();
    assert!(info.verifies(&key));
    assert!(!info.verifies(&Key::generate().unwrap()));
    assert_eq!(info.unlock_key(&key).unwrap(), Some(unlock.clone()));
    let json = serde_json::to_string(&info).unwrap();
    assert!(!json.contains(&unlock.reveal()[9..]), "{json}");
    assert!(matches!(info.protection(&key).unwrap(), Protection::UnlockKey(_)));
    let plain = KeyInfo::new(&key, None, 4).unwrap();
    assert!(matches!(plain.protection(&key).unwrap(), Protection::Local));
    assert!(!plain.autolock);
}

#[test]
fn secret_payloads_round_trip_as_base64_and_never_print_or_quote_their_content() {
    let payloads = SecretPayloads(BTreeMap::from([(
        "s_db-1".to_string(),
        SecretBytes(b"hunter2".to_vec()),
    )]));
    assert!(!format!("{payloads:?}").contains("hunter2"));
    let json = serde_json::to_string(&payloads).unwrap();
    assert!(!json.contains("hunter2"));
    assert_eq!(serde_json::from_str::<SecretPayloads>(&json).unwrap(), payloads);
    for bad in [r#""hunter2""#, r#"{"x": "hunter2!"}"#, r#"{"x": ["hunter2"]}"#] {
        let err = serde_json::from_str::<SecretPayloads>(bad).unwrap_err().to_string();
        assert!(!err.contains("hunter2"), "{err}");
    }
}

#[test]
fn payloads_must_match_a_secret_of_the_stack_and_its_digest() {
    let mut spec = StackSpec {
        name: "s".into(),
        ..StackSpec::default()
    };
    let mut db = secret("s_db-1", Some("s"), b"hunter2");
    db.data = SecretBytes::default();
    spec.secrets.insert(db.name.clone(), db);
    let ok = SecretPayloads(BTreeMap::from([(
        "s_db-1".to_string(),
        SecretBytes(b"hunter2".to_vec()),
    )]));
    assert_eq!(with_payloads(&spec, &ok).unwrap().secrets["s_db-1"].data.0, b"hunter2");
    let wrong = SecretPayloads(BTreeMap::from([(
        "s_db-1".to_string(),
        SecretBytes(b"hunter3".to_vec()),
    )]));
    let err = with_payloads(&spec, &wrong).unwrap_err();
    assert!(
        err.contains("does not match its digest") && !err.contains("hunter"),
        "{err}"
    );
    let stray = SecretPayloads(BTreeMap::from([("other".to_string(), SecretBytes(b"x".to_vec()))]));
    assert!(with_payloads(&spec, &stray).unwrap_err().contains("does not define"));
}

async fn store_with(dir: &std::path::Path, ops: Vec<Op>) -> StateMachineStore {
    let mut stores = store::open(dir).unwrap();
    let entry = typ::Entry {
        log_id: typ::LogId::new(CommittedLeaderId::new(1, 1), 1),
        payload: EntryPayload::Normal(Request { guards: vec![], ops }.into()),
    };
    stores.state_machine.apply(vec![entry]).await.unwrap();
    stores.state_machine
}

#[tokio::test]
async fn an_apply_seals_new_secrets_and_refuses_one_without_content() {
    let dir = tempfile::tempdir().unwrap();
    let key = Key::generate().unwrap();
    let existing = SealedSecret::seal(&key, "s_old-1", b"old", Some("s"), 0).unwrap();
    let sm = store_with(dir.path(), vec![store::put(&existing)]).await;
    let keyring = Keyring::new(dir.path().join("secrets"));
    keyring.install(key.clone(), &Protection::Local, 1).unwrap();

    let new = secret("s_db-2", Some("s"), b"hunter2");
    let old = secret("s_old-1", Some("s"), b"old");
    let mut desired = StackSpec {
        name: "s".into(),
        ..StackSpec::default()
    };
    desired.secrets.insert(new.name.clone(), new.clone());
    desired.secrets.insert(old.name.clone(), old.clone());
    let ops = vec![store::put(&new), store::put(&old)];
    let added = apply_ops(&sm, &keyring, &desired, &ops, 7).unwrap();
    assert_eq!(added.len(), 1, "the existing content is kept, the new one sealed");
    let Op::Put {
        table,
        key: name,
        value,
    } = &added[0]
    else {
        panic!()
    };
    assert_eq!((table.as_str(), name.as_str()), ("secret_data", "s_db-2"));
    assert!(!value.to_string().contains("hunter2"));
    let sealed: SealedSecret = value.decode().unwrap();
    assert_eq!(sealed.open(&key).unwrap().0, b"hunter2");

    // Without its content (a saved plan, a rollback to a version gone from the store): refused, saying why.
    let mut bare = desired.clone();
    bare.secrets.get_mut("s_db-2").unwrap().data = SecretBytes::default();
    let err = apply_ops(&sm, &keyring, &bare, &ops, 7).unwrap_err();
    assert!(
        err.contains("secret s_db-2 (`s_db` in stack s) is new, but its content was not sent"),
        "{err}"
    );

    // A locked manager cannot seal.
    let locked = Keyring::new(dir.path().join("none"));
    let err = apply_ops(&sm, &locked, &desired, &ops, 7).unwrap_err();
    assert!(err.contains("has not received") || err.contains("locked"), "{err}");
}

#[test]
fn only_the_current_specs_count_as_users_for_rm() {
    let services = vec![service("a", &["x"]), service("b", &["y"]), service("c", &["x", "y"])];
    assert_eq!(users(&services, "x", true), vec!["a", "c"]);
    assert!(users(&services, "x", false).is_empty());
}

#[tokio::test]
async fn a_node_gets_what_its_tasks_need_once_and_drops_it_when_they_are_done() {
    use swarm_agent::files::FileKind;
    let dir = tempfile::tempdir().unwrap();
    let key = Key::generate().unwrap();
    let sealed = SealedSecret::seal(&key, "s_db-1", b"hunter2", Some("s"), 0).unwrap();
    let sm = store_with(dir.path(), vec![store::put(&sealed)]).await;
    let keyring = Keyring::new(dir.path().join("secrets"));
    keyring.install(key, &Protection::Local, 1).unwrap();
    let mut delivery = delivery::Delivery::default();

    delivery.track(&task("t1", &["s_db-1"], TaskState::Assigned));
    let next = delivery.next(&sm, &keyring, "n1");
    assert_eq!(next.send.len(), 1);
    assert_eq!(
        (next.send[0].kind, next.send[0].data.0.as_slice()),
        (FileKind::Secret, b"hunter2".as_slice())
    );
    // A second task with the same secret, and status changes: nothing sent again.
    delivery.track(&task("t2", &["s_db-1"], TaskState::Assigned));
    delivery.track(&task("t1", &["s_db-1"], TaskState::Running));
    assert_eq!(delivery.next(&sm, &keyring, "n1"), delivery::Next::default());
    // One task finished, the other is gone: the node drops it.
    delivery.track(&task("t1", &["s_db-1"], TaskState::Complete));
    assert!(
        delivery.next(&sm, &keyring, "n1").forget.is_empty(),
        "t2 still needs it"
    );
    delivery.untrack("t2");
    let next = delivery.next(&sm, &keyring, "n1");
    assert!(next.send.is_empty());
    assert_eq!(next.forget.len(), 1);

    // Locked (or a secret gone): nothing sent, tried again with the next change.
    let locked = Keyring::new(dir.path().join("locked"));
    delivery.track(&task("t3", &["s_db-1", "s_missing-2"], TaskState::Assigned));
    assert!(delivery.next(&sm, &locked, "n1").send.is_empty());
    let next = delivery.next(&sm, &keyring, "n1");
    assert_eq!(next.send.len(), 1, "the readable one, now");
}
