//! `swarm`: the command line. Thin: clap parses, library crates decide, this file prints.

mod gitfiles;
mod stackfile;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use clap::Subcommand;
use clap::ValueEnum;

#[derive(Parser)]
#[command(
    name = "swarm",
    version,
    about = "A GitOps-native container orchestrator for Docker stack files"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Which stack files to read and how to interpolate them (shared by validate, config and plan).
#[derive(clap::Args, Debug, Clone)]
pub struct StackArgs {
    /// Stack file; repeat to merge several, later files overriding earlier ones.
    #[arg(short = 'f', long = "file", value_name = "FILE", default_value = "docker-stack.yml")]
    pub files: Vec<PathBuf>,
    /// Variables for interpolation (default: `.env` beside the first file). The environment wins.
    #[arg(long, value_name = "FILE")]
    pub env_file: Option<PathBuf>,
    /// Stack name (default: the file's `name:`, else the first file's directory name).
    #[arg(long, short = 's', value_name = "NAME")]
    pub stack: Option<String>,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Human,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Check stack files: exit 0 when valid, 1 when not; warnings go to stderr.
    Validate {
        #[command(flatten)]
        stack: StackArgs,
        /// Print nothing on success.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Print the stack after interpolation and merging, as `docker stack config` does.
    Config {
        #[command(flatten)]
        stack: StackArgs,
        /// Print the canonical spec the manager stores (JSON) instead of the stack file.
        #[arg(long)]
        normalized: bool,
    },
    /// Print the stack file JSON Schema (point your editor's YAML language server at it).
    Schema,
    /// Show what applying the stack would change: a semantic diff, not a text diff.
    Plan {
        #[command(flatten)]
        stack: StackArgs,
        /// Compare with these stack files (the current state) instead of a live cluster.
        #[arg(long, value_name = "FILE", conflicts_with = "base_git")]
        base: Vec<PathBuf>,
        /// Compare with the same files at this git revision (e.g. `origin/main`, `HEAD~1`).
        #[arg(long, value_name = "REV")]
        base_git: Option<String>,
        #[arg(long, value_enum, default_value = "human")]
        format: Format,
        /// Exit 0 when there is nothing to change, 2 when there are changes, 1 on error.
        #[arg(long)]
        detailed_exitcode: bool,
        /// Never colour the output (it is coloured only on a terminal anyway).
        #[arg(long)]
        no_color: bool,
        /// Also write the plan as JSON to this file.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Validate { stack, quiet } => stackfile::validate(&stack, quiet),
        Command::Config { stack, normalized } => stackfile::config(&stack, normalized),
        Command::Schema => stackfile::schema(),
        Command::Plan {
            stack,
            base,
            base_git,
            format,
            detailed_exitcode,
            no_color,
            out,
        } => {
            let opts = stackfile::PlanArgs {
                base,
                base_git,
                format,
                detailed_exitcode,
                no_color,
                out,
            };
            stackfile::plan(&stack, &opts)
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
