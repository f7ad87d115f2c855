//! Shared by the specs integration tests: where the shared corpus lives, what each corpus file needs, and `Files`
//! fakes that serve placeholder or in-memory content.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::io;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Mutex;

use swarm_specs::loader::Files;
use swarm_specs::LoadOptions;

/// `/work/shared` seen from this crate: the shared corpus and reference files live outside the repository.
pub fn shared_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared")
}

/// The corpus of real-world stack files, or `None` (with a note on stdout) when this checkout has none.
pub fn corpus_dir() -> Option<PathBuf> {
    existing(shared_dir().join("corpus/compose"))
}

/// docker/cli's reference files, or `None` (with a note) when absent.
pub fn reference_dir() -> Option<PathBuf> {
    existing(shared_dir().join("reference"))
}

fn existing(dir: PathBuf) -> Option<PathBuf> {
    if dir.is_dir() {
        Some(dir)
    } else {
        println!("note: {} is absent; skipping", dir.display());
        None
    }
}

/// One corpus file and what it needs to load: variables, and the files it names that the corpus does not ship.
pub struct CorpusFile {
    pub name: &'static str,
    /// Variables passed as the process environment. Files whose `${VAR}`s all have defaults need none.
    pub env: &'static [(&'static str, &'static str)],
    /// `file:` paths of secrets/configs (relative to the stack file) that the corpus does not include; served as
    /// placeholder content. Every one listed must be read, so the list stays exact.
    pub placeholders: &'static [&'static str],
}

/// Every stack file in the corpus. A test checks that this table and the directory list the same files.
pub const CORPUS: &[CorpusFile] = &[
    CorpusFile {
        name: "BretFisher__dogvscat__stack-elk.yml",
        env: &[],
        placeholders: &[
            "docker-elk/elasticsearch/config/elasticsearch.yml",
            "docker-elk/logstash/config/logstash.yml",
            "logstash.conf",
            "docker-elk/kibana/config/kibana.yml",
        ],
    },
    CorpusFile {
        name: "BretFisher__dogvscat__stack-ghost.yml",
        env: &[],
        placeholders: &["secret-ghost-db"],
    },
    CorpusFile {
        name: "BretFisher__dogvscat__stack-portainer.yml",
        env: &[],
        placeholders: &[],
    },
    CorpusFile {
        name: "BretFisher__dogvscat__stack-proxy-global.yml",
        env: &[],
        placeholders: &[],
    },
    CorpusFile {
        name: "BretFisher__dogvscat__stack-proxy.yml",
        env: &[],
        placeholders: &[],
    },
    CorpusFile {
        name: "BretFisher__dogvscat__stack-prune.yml",
        env: &[],
        placeholders: &[],
    },
    CorpusFile {
        name: "BretFisher__dogvscat__stack-rexray.yml",
        env: &[],
        placeholders: &[],
    },
    CorpusFile {
        name: "BretFisher__dogvscat__stack-swarmprom.yml",
        env: &[("ADMIN_USER", "root"), ("SLACK_CHANNEL", "ops")],
        placeholders: &[
            "swarmprom/dockerd-exporter/Caddyfile",
            "swarmprom/prometheus/rules/swarm_node.rules.yml",
            "swarmprom/prometheus/rules/swarm_task.rules.yml",
        ],
    },
    CorpusFile {
        name: "BretFisher__dogvscat__stack-voting.yml",
        env: &[("DOCKER_VOL_DRIVER", "rexray/dobs")],
        placeholders: &[],
    },
    CorpusFile {
        name: "dockersamples__atsea-sample-shop-app__docker-stack.yml",
        env: &[],
        placeholders: &[],
    },
    CorpusFile {
        name: "dockersamples__example-voting-app__docker-stack.yml",
        env: &[],
        placeholders: &[],
    },
    CorpusFile {
        name: "openfaas__faas__docker-compose.yml",
        env: &[
            ("BASIC_AUTH", "true"),
            ("AUTH_URL", "http://basic-auth-plugin:8080/validate"),
        ],
        placeholders: &[
            "prometheus/prometheus.yml",
            "prometheus/alert.rules.yml",
            "prometheus/alertmanager.yml",
        ],
    },
    CorpusFile {
        name: "stefanprodan__swarmprom__docker-compose.yml",
        env: &[("PROMETHEUS_RETENTION", "48h")],
        placeholders: &[
            "caddy/Caddyfile",
            "dockerd-exporter/Caddyfile",
            "prometheus/rules/swarm_node.rules.yml",
            "prometheus/rules/swarm_task.rules.yml",
        ],
    },
];

impl CorpusFile {
    pub fn environment(&self) -> BTreeMap<String, String> {
        self.env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    /// Options that load this file as stack `corpus`.
    pub fn options(&self, dir: &Path) -> LoadOptions {
        LoadOptions {
            files: vec![dir.join(self.name)],
            stack: Some("corpus".into()),
            environment: self.environment(),
            ..LoadOptions::default()
        }
    }

    pub fn files(&self, dir: &Path) -> Placeholders {
        Placeholders::new(dir, self.placeholders)
    }
}

/// Content served for a listed file that does not exist on disk.
pub const PLACEHOLDER: &[u8] = b"placeholder content for a file the corpus does not ship\n";

/// The local file system, plus placeholder content for a fixed list of missing files.
pub struct Placeholders {
    missing: BTreeSet<PathBuf>,
    served: Mutex<BTreeSet<PathBuf>>,
}

impl Placeholders {
    pub fn new(dir: &Path, relative: &[&str]) -> Placeholders {
        Placeholders {
            missing: relative.iter().map(|r| dir.join(r)).collect(),
            served: Mutex::new(BTreeSet::new()),
        }
    }

    /// Listed placeholders that the loader never asked for (the list is stale).
    pub fn unused(&self) -> Vec<PathBuf> {
        let served = self.served.lock().unwrap();
        self.missing.iter().filter(|p| !served.contains(*p)).cloned().collect()
    }
}

impl Files for Placeholders {
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        // The loader resolves `.` and `..` lexically, as docker's filepath.Join does: compare that way.
        let listed = self.missing.iter().find(|m| lexical(m) == lexical(path)).cloned();
        match (std::fs::read(path), listed) {
            (Ok(bytes), _) => Ok(bytes),
            (Err(_), Some(listed)) => {
                self.served.lock().unwrap().insert(listed);
                Ok(PLACEHOLDER.to_vec())
            }
            (Err(e), None) => Err(e),
        }
    }
}

/// `a/b/../c/./d` → `a/c/d`, without touching the file system.
pub fn lexical(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// An in-memory file system: the loader sees exactly these files and nothing else.
#[derive(Default)]
pub struct MemFiles(pub BTreeMap<PathBuf, Vec<u8>>);

impl MemFiles {
    pub fn with(mut self, path: impl Into<PathBuf>, content: impl Into<Vec<u8>>) -> MemFiles {
        self.0.insert(path.into(), content.into());
        self
    }
}

impl Files for MemFiles {
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.0
            .iter()
            .find(|(p, _)| lexical(p) == lexical(path))
            .map(|(_, c)| c.clone())
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{} is not in the test's files", path.display()),
                )
            })
    }
}

/// A stack file's `services` as a generic value, read without our loader (anchors and `<<` merges applied).
pub fn generic_yaml(text: &str) -> serde_json::Value {
    serde_saphyr::from_str::<serde_json::Value>(text).unwrap_or_else(|e| panic!("serde-saphyr cannot read it: {e}"))
}
