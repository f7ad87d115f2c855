//! Which secret and config contents a node's session carries: those its assigned tasks reference while they may
//! still run, sent before the tasks that need them, and withdrawn once no task there needs them.

use std::collections::BTreeSet;
use std::collections::HashMap;

use swarm_agent::files::needed;
use swarm_agent::files::FileKey;
use swarm_agent::files::FileKind;
use swarm_agent::files::FilePayload;
use swarm_specs::spec::ConfigSpec;
use swarm_specs::spec::SecretBytes;
use swarm_specs::task::Task;

use super::Keyring;
use super::SealedSecret;
use crate::store;
use crate::store::StateMachineStore;

/// One session's view of what its node holds.
#[derive(Debug, Default)]
pub struct Delivery {
    /// Task id → what it needs (only tasks that need something).
    needs: HashMap<String, Vec<FileKey>>,
    /// What the node was sent and not told to forget.
    sent: BTreeSet<FileKey>,
}

/// What to send the node now.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Next {
    /// Contents to send before the tasks.
    pub send: Vec<FilePayload>,
    /// What no task there needs any more.
    pub forget: Vec<FileKey>,
}

impl Delivery {
    /// A task assigned to the node, new or changed.
    pub fn track(&mut self, task: &Task) {
        let keys = needed(task);
        if keys.is_empty() {
            self.needs.remove(&task.id);
        } else {
            self.needs.insert(task.id.clone(), keys);
        }
    }

    /// A task no longer assigned to the node.
    pub fn untrack(&mut self, task_id: &str) {
        self.needs.remove(task_id);
    }

    /// What the node lacks (decrypted now, for this message only) and what it may drop. A content that cannot be
    /// read (the swarm is locked, the object is gone) is skipped and logged by name; it is tried again with the
    /// next change, and the task that needs it is rejected by its node meanwhile, saying what is missing.
    pub fn next(&mut self, sm: &StateMachineStore, keyring: &Keyring, node_id: &str) -> Next {
        let wanted: BTreeSet<FileKey> = self.needs.values().flatten().cloned().collect();
        let mut next = Next::default();
        for key in wanted.difference(&self.sent) {
            match content(sm, keyring, key) {
                Ok(data) => next.send.push(FilePayload {
                    kind: key.kind,
                    name: key.name.clone(),
                    data,
                }),
                Err(why) => tracing::warn!(
                    node = %node_id,
                    "cannot deliver {} {}: {why}",
                    key.kind.as_str(),
                    key.name
                ),
            }
        }
        next.forget = self.sent.difference(&wanted).cloned().collect();
        for p in &next.send {
            self.sent.insert(FileKey {
                kind: p.kind,
                name: p.name.clone(),
            });
        }
        for key in &next.forget {
            self.sent.remove(key);
        }
        next
    }
}

fn content(sm: &StateMachineStore, keyring: &Keyring, key: &FileKey) -> Result<SecretBytes, String> {
    match key.kind {
        FileKind::Secret => {
            let (sealed, _) = store::get::<SealedSecret>(sm, &key.name)
                .ok_or_else(|| "its content is not in the store (it was removed)".to_string())?;
            let k = keyring.key().map_err(|e| e.to_string())?;
            sealed.open(&k).map_err(|e| e.to_string())
        }
        FileKind::Config => store::get::<ConfigSpec>(sm, &key.name)
            .map(|(c, _)| SecretBytes(c.data))
            .ok_or_else(|| "it does not exist (it was removed)".to_string()),
    }
}
