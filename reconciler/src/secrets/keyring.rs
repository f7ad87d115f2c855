//! A manager's copy of the cluster's secrets key, on disk and in memory.
//!
//! On disk (`<data>/secrets/`), the key is never in the clear: `key.json` holds it sealed with a key-encryption key
//! (KEK). Without autolock the KEK is the random `kek` file beside it (as Docker keeps its KEK next to the data when
//! autolock is off: it protects against copies of the Raft files alone, not against someone who reads the whole
//! data directory). With autolock the KEK is derived from the unlock key, which is never stored: after a restart the
//! manager is *locked* until `swarm unlock` gives that key again.

use std::path::Path;
use std::path::PathBuf;
use std::sync::PoisonError;
use std::sync::RwLock;

use serde::Deserialize;
use serde::Serialize;
use swarm_specs::spec::base64_bytes;

use super::crypto::CryptoError;
use super::crypto::Key;
use super::crypto::Sealed;
use super::crypto::UnlockKey;

const KEY_FILE: &str = "key.json";
const KEK_FILE: &str = "kek";
/// The context the secrets key is sealed under in `key.json`.
const WRAP_CONTEXT: &str = "swarm secrets key";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(
        "the swarm is locked: run `swarm unlock` on this manager and give the unlock key (`swarm unlock-key` on an \
         unlocked manager prints it)"
    )]
    Locked,
    #[error(
        "this manager has not received the cluster's secrets key yet (a new manager gets it from another manager \
         within seconds of joining); try again"
    )]
    Missing,
    #[error("this manager is not locked: there is nothing to unlock")]
    NotLocked,
    #[error(
        "invalid unlock key: it does not decrypt this manager's secrets key. If the key was rotated while this \
         manager was down, give the previous one"
    )]
    WrongUnlockKey,
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is damaged ({why}); remove this manager's secrets directory and restart it to fetch the key again from another manager")]
    Corrupt { path: String, why: String },
    #[error(transparent)]
    Crypto(#[from] CryptoError),
}

/// How a manager protects its copy of the key on disk.
#[derive(Debug, Clone)]
pub enum Protection {
    /// With a random KEK kept beside it (autolock off).
    Local,
    /// With a KEK derived from the unlock key (autolock on).
    UnlockKey(UnlockKey),
}

/// What a manager can do with secrets right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// No key yet (a manager that just joined, or a worker).
    Missing,
    /// Autolock is on and this manager restarted: `swarm unlock` needed.
    Locked,
    Unlocked,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum Wrapping {
    Local,
    UnlockKey,
}

/// `key.json`.
#[derive(Debug, Serialize, Deserialize)]
struct KeyFile {
    version: u32,
    wrapping: Wrapping,
    /// The cluster's key generation ([`super::KeyInfo::generation`]) this wrapping follows.
    generation: u64,
    /// HKDF salt (base64) for an unlock-key wrapping.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    salt: String,
    key: Sealed,
}

enum State {
    Missing,
    Locked { generation: u64 },
    Unlocked { key: Key, generation: u64 },
}

pub struct Keyring {
    dir: PathBuf,
    state: RwLock<State>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("dir", &self.dir)
            .field("status", &self.status())
            .finish()
    }
}

impl Keyring {
    /// A keyring kept in `dir`; nothing is read until [`Keyring::load`].
    pub fn new(dir: PathBuf) -> Keyring {
        Keyring {
            dir,
            state: RwLock::new(State::Missing),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Reads `key.json`: unlocked when its KEK is local, locked when it needs the unlock key, missing without it.
    /// Keeps an unlocked key in memory when the file still matches it (a role restart does not lock again).
    pub fn load(&self) -> Result<(), KeyError> {
        let Some(file) = self.read_file()? else {
            *self.write() = State::Missing;
            return Ok(());
        };
        let next = match file.wrapping {
            Wrapping::Local => {
                let kek = self.read_kek()?.ok_or_else(|| KeyError::Corrupt {
                    path: self.dir.join(KEK_FILE).display().to_string(),
                    why: "missing".into(),
                })?;
                let key = unwrap(&kek, &file.key).map_err(|_| self.corrupt("its key does not decrypt"))?;
                State::Unlocked {
                    key,
                    generation: file.generation,
                }
            }
            Wrapping::UnlockKey => {
                let mut state = self.write();
                if let State::Unlocked { key, .. } = &*state {
                    // Already unlocked in this process: keep it, following the file's generation.
                    let key = key.clone();
                    *state = State::Unlocked {
                        key,
                        generation: file.generation,
                    };
                    return Ok(());
                }
                State::Locked {
                    generation: file.generation,
                }
            }
        };
        *self.write() = next;
        Ok(())
    }

    pub fn status(&self) -> Status {
        match &*self.read() {
            State::Missing => Status::Missing,
            State::Locked { .. } => Status::Locked,
            State::Unlocked { .. } => Status::Unlocked,
        }
    }

    /// The key, when this manager holds it unlocked.
    pub fn key(&self) -> Result<Key, KeyError> {
        match &*self.read() {
            State::Missing => Err(KeyError::Missing),
            State::Locked { .. } => Err(KeyError::Locked),
            State::Unlocked { key, .. } => Ok(key.clone()),
        }
    }

    /// The cluster key generation the file on disk follows.
    pub fn generation(&self) -> Option<u64> {
        match &*self.read() {
            State::Missing => None,
            State::Locked { generation } | State::Unlocked { generation, .. } => Some(*generation),
        }
    }

    /// `swarm unlock`: opens the key with the KEK this unlock key gives.
    pub fn unlock(&self, unlock: &UnlockKey) -> Result<(), KeyError> {
        let file = self.read_file()?.ok_or(KeyError::Missing)?;
        let Wrapping::UnlockKey = file.wrapping else {
            return Err(KeyError::NotLocked);
        };
        if self.status() == Status::Unlocked {
            return Err(KeyError::NotLocked);
        }
        let salt = base64_bytes::decode(&file.salt).ok_or_else(|| self.corrupt("its salt is not base64"))?;
        let key = unwrap(&unlock.kek(&salt), &file.key).map_err(|_| KeyError::WrongUnlockKey)?;
        *self.write() = State::Unlocked {
            key,
            generation: file.generation,
        };
        Ok(())
    }

    /// Keeps `key` (unlocked) and writes it to disk protected as `protection` says, for cluster key `generation`.
    pub fn install(&self, key: Key, protection: &Protection, generation: u64) -> Result<(), KeyError> {
        std::fs::create_dir_all(&self.dir).map_err(|source| KeyError::Io {
            what: format!("cannot create {}", self.dir.display()),
            source,
        })?;
        set_mode(&self.dir, 0o700)?;
        let file = match protection {
            Protection::Local => {
                let kek = match self.read_kek()? {
                    Some(kek) => kek,
                    None => {
                        let kek = Key::generate()?;
                        write_private(&self.dir.join(KEK_FILE), kek.as_bytes())?;
                        kek
                    }
                };
                KeyFile {
                    version: 1,
                    wrapping: Wrapping::Local,
                    generation,
                    salt: String::new(),
                    key: kek.seal(WRAP_CONTEXT, key.as_bytes())?,
                }
            }
            Protection::UnlockKey(unlock) => {
                let mut salt = [0u8; 16];
                super::crypto::random(&mut salt)?;
                KeyFile {
                    version: 1,
                    wrapping: Wrapping::UnlockKey,
                    generation,
                    salt: base64_bytes::encode(&salt),
                    key: unlock.kek(&salt).seal(WRAP_CONTEXT, key.as_bytes())?,
                }
            }
        };
        let json = serde_json::to_vec_pretty(&file).map_err(|e| self.corrupt(&e.to_string()))?;
        write_private(&self.dir.join(KEY_FILE), &json)?;
        if let Protection::UnlockKey(_) = protection {
            // The KEK must not be stored any more: only the unlock key opens the file now.
            match std::fs::remove_file(self.dir.join(KEK_FILE)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(KeyError::Io {
                        what: format!("cannot remove {}", self.dir.join(KEK_FILE).display()),
                        source,
                    })
                }
            }
        }
        *self.write() = State::Unlocked { key, generation };
        Ok(())
    }

    /// Drops the key from memory and disk (the node left the swarm or is no longer a manager).
    pub fn forget(&self) {
        *self.write() = State::Missing;
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    fn read_file(&self) -> Result<Option<KeyFile>, KeyError> {
        let path = self.dir.join(KEY_FILE);
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(KeyError::Io {
                    what: format!("cannot read {}", path.display()),
                    source,
                })
            }
        };
        serde_json::from_slice(&text)
            .map(Some)
            .map_err(|e| self.corrupt(&format!("not a key file: line {}, column {}", e.line(), e.column())))
    }

    fn read_kek(&self) -> Result<Option<Key>, KeyError> {
        let path = self.dir.join(KEK_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => Key::from_bytes(&bytes).map(Some).ok_or_else(|| KeyError::Corrupt {
                path: path.display().to_string(),
                why: "not a 32-byte key".into(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(KeyError::Io {
                what: format!("cannot read {}", path.display()),
                source,
            }),
        }
    }

    fn corrupt(&self, why: &str) -> KeyError {
        KeyError::Corrupt {
            path: self.dir.join(KEY_FILE).display().to_string(),
            why: why.to_string(),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }
}

fn unwrap(kek: &Key, sealed: &Sealed) -> Result<Key, CryptoError> {
    let bytes = kek.open(WRAP_CONTEXT, sealed)?;
    Key::from_bytes(&bytes).ok_or_else(|| CryptoError::Open(WRAP_CONTEXT.into()))
}

fn set_mode(path: &Path, mode: u32) -> Result<(), KeyError> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|source| KeyError::Io {
        what: format!("cannot set the permissions of {}", path.display()),
        source,
    })
}

/// Writes a file atomically (temp file + rename), readable by the owner only.
fn write_private(path: &Path, data: &[u8]) -> Result<(), KeyError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("tmp");
    let io = |what: String| move |source| KeyError::Io { what, source };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io(format!("cannot write {}", tmp.display())))?;
    f.write_all(data)
        .and_then(|_| f.sync_all())
        .map_err(io(format!("cannot write {}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(io(format!("cannot write {}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_local_wrapping_reloads_unlocked_and_the_files_hold_no_plain_key() {
        let dir = tempfile::tempdir().unwrap();
        let ring = Keyring::new(dir.path().join("secrets"));
        ring.load().unwrap();
        assert_eq!(ring.status(), Status::Missing);
        assert!(matches!(ring.key(), Err(KeyError::Missing)));
        let key = Key::from_bytes(&[0x5a; 32]).unwrap();
        ring.install(key.clone(), &Protection::Local, 1).unwrap();
        let again = Keyring::new(dir.path().join("secrets"));
        again.load().unwrap();
        assert_eq!(again.key().unwrap(), key);
        assert_eq!(again.generation(), Some(1));
        let text = std::fs::read(dir.path().join("secrets/key.json")).unwrap();
        assert!(!text.windows(32).any(|w| w == [0x5a; 32]));
        use std::os::unix::fs::PermissionsExt as _;
        for name in ["key.json", "kek"] {
            let mode = std::fs::metadata(dir.path().join("secrets").join(name))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{name}");
        }
        assert!(matches!(
            again.unlock(&UnlockKey::generate().unwrap()),
            Err(KeyError::NotLocked)
        ));
    }

    #[test]
    fn an_unlock_key_wrapping_stores_no_kek_and_reloads_locked_until_unlocked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets");
        let ring = Keyring::new(path.clone());
        let key = Key::generate().unwrap();
        ring.install(key.clone(), &Protection::Local, 1).unwrap();
        let unlock = UnlockKey::generate().unwrap();
        ring.install(key.clone(), &Protection::UnlockKey(unlock.clone()), 2)
            .unwrap();
        assert!(
            !path.join("kek").exists(),
            "the KEK must not stay on disk with autolock"
        );
        assert_eq!(ring.key().unwrap(), key, "still unlocked in this process");
        // A role restart in the same process keeps it unlocked.
        ring.load().unwrap();
        assert_eq!(ring.status(), Status::Unlocked);

        let restarted = Keyring::new(path.clone());
        restarted.load().unwrap();
        assert_eq!(restarted.status(), Status::Locked);
        assert!(matches!(restarted.key(), Err(KeyError::Locked)));
        assert!(restarted
            .key()
            .unwrap_err()
            .to_string()
            .contains("the swarm is locked: run `swarm unlock`"));
        assert!(matches!(
            restarted.unlock(&UnlockKey::generate().unwrap()),
            Err(KeyError::WrongUnlockKey)
        ));
        restarted.unlock(&unlock).unwrap();
        assert_eq!(restarted.key().unwrap(), key);
        assert_eq!(restarted.generation(), Some(2));

        // Back to a local KEK: unlocked after a restart again.
        restarted.install(key.clone(), &Protection::Local, 3).unwrap();
        let later = Keyring::new(path);
        later.load().unwrap();
        assert_eq!(later.key().unwrap(), key);
    }

    #[test]
    fn a_damaged_file_says_where_and_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets");
        std::fs::create_dir_all(&path).unwrap();
        std::fs::write(path.join("key.json"), b"{nope").unwrap();
        let err = Keyring::new(path).load().unwrap_err().to_string();
        assert!(
            err.contains("key.json is damaged") && err.contains("remove this manager's secrets directory"),
            "{err}"
        );
    }

    #[test]
    fn forget_removes_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets");
        let ring = Keyring::new(path.clone());
        ring.install(Key::generate().unwrap(), &Protection::Local, 1).unwrap();
        ring.forget();
        assert!(!path.exists());
        assert_eq!(ring.status(), Status::Missing);
    }
}
