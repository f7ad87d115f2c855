//! The canonical desired state of a stack: what the manager stores and what `plan` compares.
//!
//! Every spelling a stack file allows maps to exactly one value here (maps sorted, durations in milliseconds, sizes
//! in bytes, defaults filled in), so two files that mean the same thing produce equal specs.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;
use serde::Serialize;

pub use crate::units::Constraint;
pub use crate::units::ConstraintOp;
pub use crate::units::MountType;
pub use crate::units::PortConfig;
pub use crate::units::Protocol;
pub use crate::units::PublishMode;

/// Label that ties an object to its stack, as `docker stack deploy` sets it.
pub const STACK_NAMESPACE_LABEL: &str = "com.docker.stack.namespace";
/// Label on services naming the image as written in the stack file.
pub const STACK_IMAGE_LABEL: &str = "com.docker.stack.image";

/// All objects of one stack, keyed by their stored (full) names.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StackSpec {
    pub name: String,
    pub services: BTreeMap<String, ServiceSpec>,
    pub networks: BTreeMap<String, NetworkSpec>,
    pub volumes: BTreeMap<String, VolumeSpec>,
    pub secrets: BTreeMap<String, SecretSpec>,
    pub configs: BTreeMap<String, ConfigSpec>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Driver {
    Docker,
    Process,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum ServiceMode {
    Replicated {
        replicas: u64,
    },
    Global,
    ReplicatedJob {
        max_concurrent: u64,
        total_completions: u64,
    },
    GlobalJob,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum EndpointMode {
    Vip,
    Dnsrr,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ServiceSpec {
    /// Stored name: `<stack>_<service>`.
    pub name: String,
    /// Labels on the service object (deploy.labels plus the stack label).
    pub labels: BTreeMap<String, String>,
    pub mode: ServiceMode,
    pub task: TaskSpec,
    pub endpoint_mode: EndpointMode,
    pub ports: Vec<PortConfig>,
    pub update_config: UpdateConfig,
    pub rollback_config: UpdateConfig,
}

/// Everything that shapes a task: changing any of it replaces the service's tasks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TaskSpec {
    pub driver: Driver,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    /// Environment after env_file and environment are combined; `None` = taken from the node (`- KEY` form).
    pub env: BTreeMap<String, Option<String>>,
    /// Labels on the containers.
    pub container_labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<Healthcheck>,
    pub stop_grace_period_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    pub networks: Vec<NetworkAttachment>,
    pub mounts: Vec<Mount>,
    pub secrets: Vec<FileRef>,
    pub configs: Vec<FileRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logging: Option<Logging>,
    pub extra_hosts: Vec<String>,
    pub dns: Vec<String>,
    pub dns_search: Vec<String>,
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    pub ulimits: BTreeMap<String, Ulimit>,
    pub init: bool,
    pub tty: bool,
    pub stdin_open: bool,
    pub read_only: bool,
    pub sysctls: BTreeMap<String, String>,
    pub placement: Placement,
    pub resources: Resources,
    pub restart_policy: RestartPolicy,
}

impl TaskSpec {
    /// A task spec with Swarm's defaults that runs `command` (with `image` for the docker driver).
    pub fn with_command(driver: Driver, image: Option<String>, command: Vec<String>) -> TaskSpec {
        TaskSpec {
            driver,
            image,
            command: Some(command),
            entrypoint: None,
            env: BTreeMap::new(),
            container_labels: BTreeMap::new(),
            user: None,
            working_dir: None,
            hostname: None,
            healthcheck: None,
            stop_grace_period_ms: 10_000,
            stop_signal: None,
            networks: Vec::new(),
            mounts: Vec::new(),
            secrets: Vec::new(),
            configs: Vec::new(),
            logging: None,
            extra_hosts: Vec::new(),
            dns: Vec::new(),
            dns_search: Vec::new(),
            cap_add: Vec::new(),
            cap_drop: Vec::new(),
            ulimits: BTreeMap::new(),
            init: false,
            tty: false,
            stdin_open: false,
            read_only: false,
            sysctls: BTreeMap::new(),
            placement: Placement::default(),
            resources: Resources::default(),
            restart_policy: RestartPolicy::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Healthcheck {
    /// `["NONE"]` disables the image's check; otherwise `["CMD", ...]` or `["CMD-SHELL", "..."]`.
    pub test: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_period_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_interval_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retries: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
pub struct NetworkAttachment {
    /// Stored network name (`<stack>_<network>` or the external name).
    pub target: String,
    pub aliases: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
pub struct Mount {
    #[serde(rename = "type")]
    pub kind: MountType,
    /// Volume name (stored, `<stack>_<volume>`), host path for binds, none for tmpfs and anonymous volumes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    pub target: String,
    pub read_only: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub no_copy: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bind_propagation: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tmpfs_size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tmpfs_mode: Option<u32>,
}

/// A secret or config as a task uses it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
pub struct FileRef {
    /// Stored name of the secret/config (content-hashed for stack-defined ones).
    pub source: String,
    /// Absolute path in the task: `/run/secrets/<name>` for secrets, `/<name>` for configs unless given.
    pub target: String,
    pub uid: String,
    pub gid: String,
    pub mode: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Logging {
    pub driver: String,
    pub options: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Ulimit {
    pub soft: i64,
    pub hard: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Placement {
    pub constraints: Vec<Constraint>,
    /// Label descriptors to spread over, outermost first (`node.labels.zone`).
    pub preferences: Vec<String>,
    /// 0 = unlimited.
    pub max_replicas_per_node: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ResourceAmounts {
    /// Billionths of a CPU; 0 = none.
    pub nano_cpus: u64,
    /// Bytes; 0 = none.
    pub memory_bytes: u64,
    /// 0 = none.
    pub pids: i64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Resources {
    pub limits: ResourceAmounts,
    pub reservations: ResourceAmounts,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RestartCondition {
    None,
    OnFailure,
    Any,
}

/// Docker Swarm's defaults: condition any, delay 5s, unlimited attempts, no window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RestartPolicy {
    pub condition: RestartCondition,
    pub delay_ms: u64,
    /// 0 = unlimited.
    pub max_attempts: u64,
    /// 0 = no window.
    pub window_ms: u64,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            condition: RestartCondition::Any,
            delay_ms: 5_000,
            max_attempts: 0,
            window_ms: 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum FailureAction {
    Pause,
    Continue,
    Rollback,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum UpdateOrder {
    StopFirst,
    StartFirst,
}

/// Docker Swarm's defaults: parallelism 1, delay 0, failure action pause, monitor 5s, ratio 0, stop-first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct UpdateConfig {
    /// 0 = all at once.
    pub parallelism: u64,
    pub delay_ms: u64,
    pub failure_action: FailureAction,
    pub monitor_ms: u64,
    /// Failures tolerated, in parts per million of the tasks updated (0.1 = 100_000), kept integral so specs are `Eq`.
    pub max_failure_ratio_ppm: u32,
    pub order: UpdateOrder,
}

impl Default for UpdateConfig {
    fn default() -> Self {
        UpdateConfig {
            parallelism: 1,
            delay_ms: 0,
            failure_action: FailureAction::Pause,
            monitor_ms: 5_000,
            max_failure_ratio_ppm: 0,
            order: UpdateOrder::StopFirst,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct NetworkSpec {
    pub name: String,
    pub driver: String,
    pub driver_opts: BTreeMap<String, String>,
    pub attachable: bool,
    pub internal: bool,
    pub enable_ipv6: bool,
    pub ipam: Vec<IpamPool>,
    pub labels: BTreeMap<String, String>,
    /// Managed outside the stack: only referenced, never created or removed.
    pub external: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
pub struct IpamPool {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subnet: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip_range: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct VolumeSpec {
    pub name: String,
    pub driver: String,
    pub driver_opts: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub external: bool,
}

/// Where a secret's or config's content comes from. Only the kind: the content (by digest) is what a plan compares,
/// so moving a file or renaming a variable without changing the content changes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ContentSource {
    File,
    Environment,
    Inline,
    External,
}

/// A secret: its content never appears in this type's `Debug`, `Serialize` or any output; only its digest does.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SecretSpec {
    /// Stored name: `<stack>_<name>-<digest prefix>` for stack-defined secrets, the given name for external ones.
    pub name: String,
    /// The name the stack file uses.
    pub key: String,
    pub labels: BTreeMap<String, String>,
    pub source: ContentSource,
    /// SHA-256 of the content, hex; empty for external secrets.
    pub digest: String,
    #[serde(skip)]
    #[schemars(skip)]
    pub data: SecretBytes,
}

impl std::fmt::Debug for SecretSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretSpec")
            .field("name", &self.name)
            .field("key", &self.key)
            .field("labels", &self.labels)
            .field("source", &self.source)
            .field("digest", &self.digest)
            .field("data", &self.data)
            .finish()
    }
}

/// Secret content in memory. `Debug` redacts it; it is never serialized.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretBytes(pub Vec<u8>);

impl std::fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<redacted {} bytes>", self.0.len())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ConfigSpec {
    /// Stored name: `<stack>_<name>-<digest prefix>` for stack-defined configs, the given name for external ones.
    pub name: String,
    pub key: String,
    pub labels: BTreeMap<String, String>,
    pub source: ContentSource,
    pub digest: String,
    /// Config content is not secret: kept, shown by `inspect`, diffed by `plan`.
    #[serde(with = "crate::spec::base64_bytes")]
    #[schemars(with = "String")]
    pub data: Vec<u8>,
}

/// Base64 for config content in JSON, as Docker shows it.
pub mod base64_bytes {
    use serde::Deserialize;
    use serde::Deserializer;
    use serde::Serializer;

    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    pub fn encode(data: &[u8]) -> String {
        let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
        for chunk in data.chunks(3) {
            let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    pub fn decode(text: &str) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(text.len() / 4 * 3);
        let mut buf = 0u32;
        let mut bits = 0;
        for c in text.bytes().filter(|c| !c.is_ascii_whitespace() && *c != b'=') {
            let v = ALPHABET.iter().position(|a| *a == c)? as u32;
            buf = (buf << 6) | v;
            bits += 6;
            if bits >= 8 {
                bits -= 8;
                out.push((buf >> bits) as u8);
                buf &= (1 << bits) - 1;
            }
        }
        Some(out)
    }

    pub fn serialize<S: Serializer>(data: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&encode(data))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        decode(&text).ok_or_else(|| serde::de::Error::custom("invalid base64"))
    }

    #[cfg(test)]
    mod tests {
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn round_trips(data in proptest::collection::vec(any::<u8>(), 0..100)) {
                prop_assert_eq!(super::decode(&super::encode(&data)), Some(data));
            }
        }

        #[test]
        fn matches_known_text() {
            assert_eq!(super::encode(b"hello"), "aGVsbG8=");
        }
    }
}
