//! How the CLI reaches a daemon: its unix socket (default), or a manager over HTTPS with a client certificate
//! (`SWARM_HOST=https://ADDR` and `SWARM_CERT_PATH` holding `ca.pem`, `cert.pem`, `key.pem`, as Docker's
//! `DOCKER_HOST`/`DOCKER_CERT_PATH`).

use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use http_body_util::BodyExt as _;
use http_body_util::Full;
use hyper::body::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;
use swarm_reconciler::wire::ApiError;

/// Where the daemon's socket is by default: `/run/swarm/swarm.sock` for root, else under `$XDG_RUNTIME_DIR`.
pub fn default_socket() -> PathBuf {
    if is_root() {
        return PathBuf::from("/run/swarm/swarm.sock");
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) => PathBuf::from(dir).join("swarm.sock"),
        None => std::env::temp_dir().join(format!("swarm-{}", uid())).join("swarm.sock"),
    }
}

/// Where the daemon keeps its state by default: `/var/lib/swarm` for root, else `~/.local/share/swarm`.
pub fn default_data_dir() -> PathBuf {
    if is_root() {
        return PathBuf::from("/var/lib/swarm");
    }
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".local/share/swarm"),
        None => std::env::temp_dir().join(format!("swarm-{}", uid())).join("data"),
    }
}

fn uid() -> u32 {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .unwrap_or(0)
}

fn is_root() -> bool {
    uid() == 0
}

pub enum Client {
    Unix(PathBuf),
    Https { base: String, http: reqwest::Client },
}

impl Client {
    /// `--host` / `SWARM_HOST`: `unix:///path`, a socket path, or `https://ADDR`.
    pub fn from_host(host: Option<&str>) -> anyhow::Result<Client> {
        match host {
            None => Ok(Client::Unix(default_socket())),
            Some(h) if h.starts_with("https://") || h.starts_with("tcp://") => {
                let addr = h.trim_start_matches("https://").trim_start_matches("tcp://");
                let dir = std::env::var_os("SWARM_CERT_PATH").map(PathBuf::from).context(
                    "a remote SWARM_HOST needs SWARM_CERT_PATH: a directory with ca.pem, cert.pem and key.pem",
                )?;
                let read = |name: &str| {
                    std::fs::read_to_string(dir.join(name))
                        .with_context(|| format!("cannot read {}", dir.join(name).display()))
                };
                swarm_reconciler::tls::install_crypto_provider();
                let config =
                    swarm_reconciler::tls::client_config(&read("ca.pem")?, &read("cert.pem")?, &read("key.pem")?)?;
                let http = swarm_reconciler::tls::http_client(config, Duration::from_secs(30))?;
                Ok(Client::Https {
                    base: format!("https://{addr}"),
                    http,
                })
            }
            Some(h) => Ok(Client::Unix(PathBuf::from(h.trim_start_matches("unix://")))),
        }
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.call::<(), T>("GET", path, None).await
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> anyhow::Result<T> {
        self.call("POST", path, Some(body)).await
    }

    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.call::<(), T>("DELETE", path, None).await
    }

    /// A GET whose answer is a stream of lines (NDJSON), handed to `each` as they arrive.
    pub async fn stream_lines(&self, path: &str, mut each: impl FnMut(&str)) -> anyhow::Result<()> {
        let mut buffer: Vec<u8> = Vec::new();
        let mut feed = |chunk: &[u8], each: &mut dyn FnMut(&str)| {
            buffer.extend_from_slice(chunk);
            while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buffer.drain(..=end).collect();
                each(String::from_utf8_lossy(&line).trim_end());
            }
        };
        match self {
            Client::Unix(socket) => {
                let stream = tokio::net::UnixStream::connect(socket)
                    .await
                    .with_context(|| format!("cannot connect to the swarm daemon at {}", socket.display()))?;
                let (mut sender, connection) =
                    hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                let request = hyper::Request::builder()
                    .uri(path)
                    .header("host", "swarm")
                    .body(Full::new(Bytes::new()))?;
                let response = sender.send_request(request).await?;
                let status = response.status().as_u16();
                let mut body = response.into_body();
                if !(200..300).contains(&status) {
                    let bytes = body.collect().await?.to_bytes();
                    let message = serde_json::from_slice::<ApiError>(&bytes)
                        .map(|e| e.message)
                        .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
                    anyhow::bail!("{message}");
                }
                while let Some(frame) = body.frame().await {
                    if let Ok(data) = frame?.into_data() {
                        feed(&data, &mut each);
                    }
                }
            }
            Client::Https { base, http } => {
                let mut response = http.get(format!("{base}{path}")).send().await?;
                if !response.status().is_success() {
                    let message = response.json::<ApiError>().await.map(|e| e.message).unwrap_or_default();
                    anyhow::bail!("{message}");
                }
                while let Some(chunk) = response.chunk().await? {
                    feed(&chunk, &mut each);
                }
            }
        }
        Ok(())
    }

    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&B>,
    ) -> anyhow::Result<T> {
        let body = match body {
            Some(b) => serde_json::to_vec(b)?,
            None => Vec::new(),
        };
        let (status, bytes) = match self {
            Client::Unix(socket) => unix_request(socket, method, path, body).await?,
            Client::Https { base, http } => {
                let method = reqwest::Method::from_bytes(method.as_bytes())?;
                let response = http
                    .request(method, format!("{base}{path}"))
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .with_context(|| format!("cannot reach the manager at {base}"))?;
                (response.status().as_u16(), response.bytes().await?.to_vec())
            }
        };
        if !(200..300).contains(&status) {
            let message = serde_json::from_slice::<ApiError>(&bytes)
                .map(|e| e.message)
                .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
            anyhow::bail!("{message}");
        }
        serde_json::from_slice(&bytes).context("the daemon sent an answer this CLI does not understand")
    }
}

async fn unix_request(socket: &Path, method: &str, path: &str, body: Vec<u8>) -> anyhow::Result<(u16, Vec<u8>)> {
    let stream = tokio::net::UnixStream::connect(socket).await.with_context(|| {
        format!(
            "cannot connect to the swarm daemon at {}: is `swarm daemon` running? (set --host or SWARM_HOST for another one)",
            socket.display()
        )
    })?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "swarm")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))?;
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    let bytes = response.into_body().collect().await?.to_bytes().to_vec();
    Ok((status, bytes))
}
