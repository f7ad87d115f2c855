//! `swarm config create|ls|inspect|rm`, as `docker config` (configs are not secret: `inspect` shows their content
//! base64, `--pretty` as text). `swarm config -f FILE` without a subcommand prints a stack file (src/stackfile.rs).

use std::process::ExitCode;

use crate::client::Client;
use crate::secret::Kind;

#[derive(clap::Subcommand)]
pub enum ConfigCommand {
    /// Create a config from a file, or from standard input with `-`.
    Create {
        /// Config labels.
        #[arg(short, long = "label", value_name = "KEY=VALUE")]
        labels: Vec<String>,
        name: String,
        /// The file holding the content, or `-` for standard input.
        file: String,
    },
    /// List configs.
    #[command(alias = "list")]
    Ls {
        /// Only display IDs.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Show configs in detail, their content base64 (or as text with --pretty).
    Inspect {
        #[arg(required = true)]
        configs: Vec<String>,
        /// Print in a human friendly format, the content as text.
        #[arg(long)]
        pretty: bool,
    },
    /// Remove configs (refused while a service uses one).
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        configs: Vec<String>,
    },
}

pub async fn run(client: &Client, cmd: ConfigCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ConfigCommand::Create { labels, name, file } => {
            crate::secret::create(client, Kind::Config, &name, &file, &labels).await
        }
        ConfigCommand::Ls { quiet } => crate::secret::ls(client, Kind::Config, quiet).await,
        ConfigCommand::Inspect { configs, pretty } => {
            crate::secret::inspect(client, Kind::Config, &configs, pretty).await
        }
        ConfigCommand::Rm { configs } => crate::secret::rm(client, Kind::Config, &configs).await,
    }
}
