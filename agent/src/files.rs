//! Secret and config files of the node's tasks.
//!
//! The managers deliver the content of the secrets and configs that this node's tasks use, over the node's mutual-TLS
//! session, and only while a task here needs them. The agent keeps that content in memory ([`TaskFiles::put`]) and
//! writes it only when a task is prepared, into `<data>/task-files/<task id>/{secrets,configs}/...` on a tmpfs
//! mounted there (never on disk; when tmpfs cannot be mounted, e.g. the agent is not root, it falls back to a plain
//! directory and says so). The files get the reference's mode, uid and gid; the docker driver bind-mounts each one
//! read-only at its target, and a process learns the directories from `SWARM_SECRETS_DIR` and `SWARM_CONFIGS_DIR`.
//! A task's files are removed once it stopped, and the tmpfs is unmounted when no task has files left.
//!
//! Content never reaches a log: [`FilePayload`]'s `Debug` is redacted, and errors name secrets, never their data.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::ffi::CString;
use std::io::Write as _;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::DirBuilderExt as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::PoisonError;

use serde::Deserialize;
use serde::Serialize;
use swarm_specs::spec::base64_bytes;
use swarm_specs::spec::FileRef;
use swarm_specs::spec::SecretBytes;
use swarm_specs::task::Task;
use swarm_specs::task::TaskState;

use crate::driver::DriverError;
use crate::driver::MountedFile;

/// The environment variable that gives a process task the directory of its secrets.
pub const SECRETS_DIR_ENV: &str = "SWARM_SECRETS_DIR";
/// The environment variable that gives a process task the directory of its configs.
pub const CONFIGS_DIR_ENV: &str = "SWARM_CONFIGS_DIR";
/// Size limit of the tmpfs (its pages are only used as files are written).
const TMPFS_SIZE: &str = "64m";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileKind {
    Secret,
    Config,
}

impl FileKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FileKind::Secret => "secret",
            FileKind::Config => "config",
        }
    }

    fn dir(self) -> &'static str {
        match self {
            FileKind::Secret => "secrets",
            FileKind::Config => "configs",
        }
    }
}

/// A secret or config by its stored name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FileKey {
    pub kind: FileKind,
    pub name: String,
}

/// The content of one secret or config, as a manager sends it to a node. `Debug` never shows the data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilePayload {
    pub kind: FileKind,
    pub name: String,
    #[serde(with = "payload_data")]
    pub data: SecretBytes,
}

/// Base64 in JSON; a decoding error never quotes the text.
mod payload_data {
    use serde::de::Error as _;
    use serde::Deserialize as _;
    use serde::Deserializer;
    use serde::Serializer;
    use swarm_specs::spec::base64_bytes;
    use swarm_specs::spec::SecretBytes;

    pub fn serialize<S: Serializer>(data: &SecretBytes, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64_bytes::encode(&data.0))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SecretBytes, D::Error> {
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::String(text) => base64_bytes::decode(&text)
                .map(SecretBytes)
                .ok_or_else(|| D::Error::custom("payload data is not valid base64")),
            _ => Err(D::Error::custom("payload data must be a base64 string")),
        }
    }
}

/// What a task needs delivered: the secrets and configs it references, while it may still run.
pub fn needed(task: &Task) -> Vec<FileKey> {
    if task.desired_state > TaskState::Running || task.status.state.is_terminal() {
        return Vec::new();
    }
    let mut keys: Vec<FileKey> = task
        .spec
        .secrets
        .iter()
        .map(|r| FileKey {
            kind: FileKind::Secret,
            name: r.source.clone(),
        })
        .chain(task.spec.configs.iter().map(|r| FileKey {
            kind: FileKind::Config,
            name: r.source.clone(),
        }))
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

/// Where a task's files were written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Written {
    /// One per secret or config: where it is on the host and where it goes in the task.
    pub files: Vec<MountedFile>,
    /// For process tasks: `SWARM_SECRETS_DIR` and `SWARM_CONFIGS_DIR`.
    pub env: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backing {
    /// A tmpfs mounted by this agent (or by an earlier run of it).
    Tmpfs,
    /// A plain directory: tmpfs could not be mounted.
    Directory,
}

#[derive(Default)]
struct State {
    payloads: BTreeMap<FileKey, SecretBytes>,
    /// Keys delivered since the start of a complete set (a new session): the others are dropped at its end.
    full: Option<BTreeSet<FileKey>>,
    backing: Option<Backing>,
}

/// The node's secret and config contents (in memory) and its tasks' files (on tmpfs).
pub struct TaskFiles {
    root: PathBuf,
    state: Mutex<State>,
}

impl TaskFiles {
    /// Files go under `root` (`<data>/task-files`), which is mounted as a tmpfs when the first task needs it.
    pub fn new(root: PathBuf) -> TaskFiles {
        TaskFiles {
            root,
            state: Mutex::new(State::default()),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Contents delivered by the managers.
    pub fn put(&self, payloads: Vec<FilePayload>) {
        let mut state = self.lock();
        for p in payloads {
            let key = FileKey {
                kind: p.kind,
                name: p.name,
            };
            if let Some(full) = state.full.as_mut() {
                full.insert(key.clone());
            }
            state.payloads.insert(key, p.data);
        }
    }

    /// No task of this node needs these any more.
    pub fn forget(&self, keys: &[FileKey]) {
        let mut state = self.lock();
        for key in keys {
            state.payloads.remove(key);
        }
    }

    /// A complete set of assignments starts: what it does not deliver again is dropped at [`TaskFiles::end_full`].
    pub fn begin_full(&self) {
        self.lock().full = Some(BTreeSet::new());
    }

    pub fn end_full(&self) {
        let mut state = self.lock();
        if let Some(full) = state.full.take() {
            state.payloads.retain(|k, _| full.contains(k));
        }
    }

    /// Which contents this node holds now (names only).
    pub fn held(&self) -> Vec<FileKey> {
        self.lock().payloads.keys().cloned().collect()
    }

    /// Writes `task`'s secrets and configs to its directory (again, if they are there already) and says where they
    /// are. A content the managers did not deliver rejects the task, naming it.
    pub fn write(&self, task: &Task, node_id: &str) -> Result<Written, DriverError> {
        let spec = &task.spec;
        if spec.secrets.is_empty() && spec.configs.is_empty() {
            return Ok(Written::default());
        }
        check_task_id(&task.id)?;
        let mut state = self.lock();
        let mut contents = Vec::new();
        for (kind, refs) in [(FileKind::Secret, &spec.secrets), (FileKind::Config, &spec.configs)] {
            for r in refs {
                let key = FileKey {
                    kind,
                    name: r.source.clone(),
                };
                let Some(data) = state.payloads.get(&key) else {
                    return Err(DriverError::Rejected(format!(
                        "{} {} was not delivered to node {node_id}: the managers send it only while a task there uses \
                         it (is the swarm locked? `swarm unlock` on the managers)",
                        kind.as_str(),
                        r.source
                    )));
                };
                contents.push((kind, r, data.clone()));
            }
        }
        self.ensure_backing(&mut state)?;
        let task_dir = self.root.join(&task.id);
        let mut written = Written::default();
        for kind in [FileKind::Secret, FileKind::Config] {
            if contents.iter().any(|(k, _, _)| *k == kind) {
                let dir = task_dir.join(kind.dir());
                make_dir(&dir)?;
                let var = match kind {
                    FileKind::Secret => SECRETS_DIR_ENV,
                    FileKind::Config => CONFIGS_DIR_ENV,
                };
                written.env.insert(var.to_string(), dir.display().to_string());
            }
        }
        for (kind, r, data) in contents {
            let relative = relative_path(kind, r).map_err(|why| {
                DriverError::Rejected(format!(
                    "task {}: {} {} has target {:?}: {why}",
                    task.id,
                    kind.as_str(),
                    r.source,
                    r.target
                ))
            })?;
            let path = task_dir.join(kind.dir()).join(&relative);
            write_file(&path, &data.0, r).map_err(|e| match e {
                WriteError::Invalid(why) => {
                    DriverError::Rejected(format!("task {}: {} {}: {why}", task.id, kind.as_str(), r.source))
                }
                WriteError::Io(what, e) => {
                    DriverError::Runtime(format!("cannot write {} {} ({what}): {e}", kind.as_str(), r.source))
                }
            })?;
            written.files.push(MountedFile {
                host_path: path,
                target: r.target.clone(),
            });
        }
        Ok(written)
    }

    /// Removes `task_id`'s files (nothing when it has none); unmounts the tmpfs when it was the last.
    pub fn remove(&self, task_id: &str) {
        if check_task_id(task_id).is_err() {
            return;
        }
        let dir = self.root.join(task_id);
        if !dir.exists() {
            return;
        }
        let mut state = self.lock();
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            tracing::warn!(task = %task_id, "cannot remove the task's secret and config files: {e}");
        }
        self.release_if_empty(&mut state);
    }

    /// Removes every task's files but those of `keep` (what a previous run left behind).
    pub fn retain(&self, keep: &BTreeSet<String>) {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return;
        };
        let stale: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .filter(|name| !keep.contains(name))
            .collect();
        for id in stale {
            self.remove(&id);
        }
        let mut state = self.lock();
        self.release_if_empty(&mut state);
    }

    /// Once no task has files, the tmpfs is unmounted and its directory removed.
    fn release_if_empty(&self, state: &mut State) {
        let empty = std::fs::read_dir(&self.root)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false);
        if !empty {
            return;
        }
        if state.backing == Some(Backing::Tmpfs) || is_tmpfs(&self.root) {
            unmount(&self.root);
        }
        let _ = std::fs::remove_dir(&self.root);
        state.backing = None;
    }

    fn ensure_backing(&self, state: &mut State) -> Result<(), DriverError> {
        if state.backing.is_some() && self.root.is_dir() {
            return Ok(());
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&self.root)
            .map_err(|e| DriverError::Runtime(format!("cannot create {}: {e}", self.root.display())))?;
        if is_tmpfs(&self.root) {
            state.backing = Some(Backing::Tmpfs);
            return Ok(());
        }
        match mount_tmpfs(&self.root) {
            Ok(()) => state.backing = Some(Backing::Tmpfs),
            Err(e) => {
                tracing::warn!(
                    dir = %self.root.display(),
                    "cannot mount a tmpfs for secret and config files ({e}); they are written to this directory on \
                     disk instead (run the agent as root to keep them in memory)"
                );
                std::fs::set_permissions(&self.root, std::fs::Permissions::from_mode(0o700))
                    .map_err(|e| DriverError::Runtime(format!("cannot restrict {}: {e}", self.root.display())))?;
                state.backing = Some(Backing::Directory);
            }
        }
        Ok(())
    }
}

/// Task ids name directories: only what ids are made of.
fn check_task_id(id: &str) -> Result<(), DriverError> {
    if id.is_empty() || id.len() > 128 || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return Err(DriverError::Rejected(format!(
            "task id {id:?} cannot name a directory (letters, digits, '-' and '_' only)"
        )));
    }
    Ok(())
}

/// Where a reference's file goes under the task's `secrets/` or `configs/` directory: the target relative to
/// `/run/secrets` for secrets (to `/` otherwise), never outside.
pub fn relative_path(kind: FileKind, r: &FileRef) -> Result<PathBuf, String> {
    let target = r.target.as_str();
    let rest = match kind {
        FileKind::Secret => target.strip_prefix("/run/secrets/").unwrap_or(target),
        FileKind::Config => target,
    };
    let rest = rest.trim_start_matches('/');
    let mut out = PathBuf::new();
    for part in rest.split('/') {
        match part {
            "" | "." => continue,
            ".." => return Err("it may not contain `..`".into()),
            p if p.contains('\0') => return Err("it may not contain NUL".into()),
            p => out.push(p),
        }
    }
    if out.as_os_str().is_empty() {
        return Err("it names no file".into());
    }
    Ok(out)
}

enum WriteError {
    Invalid(String),
    Io(String, std::io::Error),
}

fn make_dir(dir: &Path) -> Result<(), DriverError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(|e| DriverError::Runtime(format!("cannot create {}: {e}", dir.display())))
}

fn write_file(path: &Path, data: &[u8], r: &FileRef) -> Result<(), WriteError> {
    let id = |what: &str, text: &str| {
        text.parse::<u32>()
            .map_err(|_| WriteError::Invalid(format!("{what} {text:?} is not a number (give a numeric {what})")))
    };
    let uid = id("uid", &r.uid)?;
    let gid = id("gid", &r.gid)?;
    if r.mode > 0o7777 {
        return Err(WriteError::Invalid(format!("mode {:#o} is not a file mode", r.mode)));
    }
    let parent = path.parent().unwrap_or(Path::new("/"));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(parent)
        .map_err(|e| WriteError::Io(format!("creating {}", parent.display()), e))?;
    let io = |what: &str| {
        let what = what.to_string();
        move |e| WriteError::Io(what, e)
    };
    let tmp = path.with_file_name(format!(
        ".{}.tmp",
        path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()
    ));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io("creating the file"))?;
    f.write_all(data).map_err(io("writing the file"))?;
    drop(f);
    // Ownership only when the agent may give it away (root); mode after chown, which may clear set-id bits.
    if unsafe { libc::geteuid() } == 0 {
        std::os::unix::fs::chown(&tmp, Some(uid), Some(gid)).map_err(io("changing the owner"))?;
    }
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(r.mode)).map_err(io("setting the mode"))?;
    std::fs::rename(&tmp, path).map_err(io("moving the file in place"))
}

/// Whether `dir` is a tmpfs mount point (from `/proc/self/mountinfo`).
fn is_tmpfs(dir: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let wanted = dir.display().to_string();
    info.lines().any(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let mount_point = fields.get(4).map(|p| unescape(p));
        let fstype = fields.iter().position(|f| *f == "-").and_then(|i| fields.get(i + 1));
        mount_point.as_deref() == Some(wanted.as_str()) && fstype == Some(&"tmpfs")
    })
}

/// `/proc/self/mountinfo` escapes space, tab, newline and backslash as `\ooo`.
fn unescape(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() && bytes[i + 1..i + 4].iter().all(|b| (b'0'..=b'7').contains(b)) {
            let n = bytes[i + 1..i + 4]
                .iter()
                .fold(0u32, |n, b| n * 8 + u32::from(b - b'0'));
            out.push(n as u8);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn mount_tmpfs(dir: &Path) -> std::io::Result<()> {
    let target = CString::new(dir.as_os_str().as_bytes())?;
    let options = CString::new(format!("mode=0755,size={TMPFS_SIZE}"))?;
    let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    let rc = unsafe {
        libc::mount(
            c"tmpfs".as_ptr(),
            target.as_ptr(),
            c"tmpfs".as_ptr(),
            flags,
            options.as_ptr().cast(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn unmount(dir: &Path) {
    let Ok(target) = CString::new(dir.as_os_str().as_bytes()) else {
        return;
    };
    // Detached: a container that still holds a bind mount of a file keeps its own reference.
    if unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) } != 0 {
        tracing::warn!(dir = %dir.display(), "cannot unmount the task files tmpfs: {}", std::io::Error::last_os_error());
    }
}

/// Base64 of a payload's data (for tests and tools that build messages by hand).
pub fn encode(data: &[u8]) -> String {
    base64_bytes::encode(data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use swarm_specs::spec::Driver;
    use swarm_specs::spec::TaskSpec;
    use swarm_specs::task::TaskStatus;

    fn file_ref(source: &str, target: &str, mode: u32) -> FileRef {
        FileRef {
            source: source.into(),
            target: target.into(),
            uid: "0".into(),
            gid: "0".into(),
            mode,
        }
    }

    fn task(id: &str) -> Task {
        let mut spec = TaskSpec::with_command(Driver::Process, None, vec!["true".into()]);
        spec.secrets = vec![file_ref("s_db-1", "/run/secrets/db", 0o400)];
        spec.configs = vec![file_ref("s_conf-2", "/etc/app/conf.ini", 0o444)];
        Task {
            id: id.into(),
            service: "s_web".into(),
            slot: Some(1),
            node_id: Some("n1".into()),
            spec_version: 1,
            spec,
            desired_state: TaskState::Running,
            status: TaskStatus::new(TaskState::Assigned, 0, ""),
            created_at: 0,
            ports: Vec::new(),
            networks: Vec::new(),
            started_at: None,
        }
    }

    fn payload(kind: FileKind, name: &str, data: &[u8]) -> FilePayload {
        FilePayload {
            kind,
            name: name.into(),
            data: SecretBytes(data.to_vec()),
        }
    }

    #[test]
    fn payloads_never_print_their_data_and_round_trip_as_base64() {
        let p = payload(FileKind::Secret, "s_db-1", b"hunter2");
        assert!(!format!("{p:?}").contains("hunter2"));
        let json = serde_json::to_string(&p).unwrap();
        assert!(!json.contains("hunter2"));
        assert_eq!(serde_json::from_str::<FilePayload>(&json).unwrap(), p);
        let bad = r#"{"kind":"secret","name":"x","data":"hunter2!!"}"#;
        let err = serde_json::from_str::<FilePayload>(bad).unwrap_err().to_string();
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn targets_map_under_the_task_directory_and_never_outside() {
        let p = |kind, target: &str| relative_path(kind, &file_ref("x", target, 0o400));
        assert_eq!(p(FileKind::Secret, "/run/secrets/db").unwrap(), PathBuf::from("db"));
        assert_eq!(p(FileKind::Secret, "/etc/key").unwrap(), PathBuf::from("etc/key"));
        assert_eq!(p(FileKind::Config, "/conf.ini").unwrap(), PathBuf::from("conf.ini"));
        assert_eq!(
            p(FileKind::Config, "/etc/app/conf.ini").unwrap(),
            PathBuf::from("etc/app/conf.ini")
        );
        assert!(p(FileKind::Config, "/etc/../../x").is_err());
        assert!(p(FileKind::Secret, "/run/secrets/").is_err());
    }

    #[test]
    fn only_tasks_that_may_run_need_their_files() {
        let mut t = task("t1");
        assert_eq!(needed(&t).len(), 2);
        t.desired_state = TaskState::Shutdown;
        assert!(needed(&t).is_empty());
        t.desired_state = TaskState::Running;
        t.status.state = TaskState::Failed;
        assert!(needed(&t).is_empty());
    }

    #[test]
    fn files_are_written_with_their_mode_and_removed_with_the_task() {
        let dir = tempfile::tempdir().unwrap();
        // A plain directory is enough here: mounting needs root and is covered end to end.
        let files = TaskFiles::new(dir.path().join("task-files"));
        files.lock().backing = Some(Backing::Directory);
        std::fs::create_dir_all(files.root()).unwrap();
        let t = task("t1");
        let err = files.write(&t, "n1").unwrap_err().to_string();
        assert!(err.contains("secret s_db-1 was not delivered to node n1"), "{err}");
        files.put(vec![
            payload(FileKind::Secret, "s_db-1", b"hunter2"),
            payload(FileKind::Config, "s_conf-2", b"[app]\n"),
        ]);
        let written = files.write(&t, "n1").unwrap();
        assert_eq!(written.files.len(), 2);
        let secret = &written.files[0];
        assert_eq!(secret.target, "/run/secrets/db");
        assert_eq!(std::fs::read(&secret.host_path).unwrap(), b"hunter2");
        let mode = std::fs::metadata(&secret.host_path).unwrap().permissions().mode();
        assert_eq!(mode & 0o7777, 0o400);
        assert!(written.files[1].host_path.ends_with("t1/configs/etc/app/conf.ini"));
        assert_eq!(
            written.env[SECRETS_DIR_ENV],
            dir.path().join("task-files/t1/secrets").display().to_string()
        );
        // Again: same files, no error.
        assert_eq!(files.write(&t, "n1").unwrap(), written);
        files.remove("t1");
        assert!(!secret.host_path.exists());
        assert!(!files.root().exists(), "the last task's removal removes the root too");
    }

    #[test]
    fn a_new_complete_set_drops_what_it_does_not_deliver_again() {
        let files = TaskFiles::new(PathBuf::from("/nonexistent"));
        files.put(vec![
            payload(FileKind::Secret, "a", b"1"),
            payload(FileKind::Secret, "b", b"2"),
        ]);
        files.begin_full();
        files.put(vec![payload(FileKind::Secret, "b", b"2")]);
        files.end_full();
        assert_eq!(
            files.held(),
            vec![FileKey {
                kind: FileKind::Secret,
                name: "b".into()
            }]
        );
        files.forget(&files.held());
        assert!(files.held().is_empty());
    }

    #[test]
    fn mountinfo_paths_unescape() {
        assert_eq!(unescape(r"/a\040b"), "/a b");
        assert_eq!(unescape("/plain"), "/plain");
    }
}
