//! `swarm apply --watch`: the local loop. Applies the stack, then re-plans and applies it on every save of the
//! files it is made of, until Ctrl-C.
//!
//! Each round is exactly `swarm apply --yes` ([`apply::submit`], then [`apply::converge`] unless `--detach`), so
//! the output is the same. What is watched is every file the loader reads or looks for: the `-f` files, the
//! `--env-file` or the `.env` beside the first file (also while it does not exist), and the `env_file`, `secrets`
//! and `configs` files the stack names (found by loading it through a recording [`Files`]). The directories that
//! hold them are watched rather than the files, so editors that save by writing a new file and renaming it over
//! the old one are seen too. Saves are debounced: what arrives within [`DEBOUNCE`] is one change.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::path::Path;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use notify::event::AccessKind;
use notify::event::AccessMode;
use notify::EventKind;
use notify::RecommendedWatcher;
use notify::RecursiveMode;
use notify_debouncer_full::DebounceEventResult;
use notify_debouncer_full::Debouncer;
use notify_debouncer_full::RecommendedCache;
use swarm_specs::loader::Files;
use swarm_specs::LoadOptions;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::apply;
use crate::apply::ApplyArgs;
use crate::client::Client;
use crate::StackArgs;

/// Events closer together than this are one save (an editor's write, truncate and rename come as several).
pub const DEBOUNCE: Duration = Duration::from_millis(300);

/// `swarm apply --watch`: one apply now, one after every save, until Ctrl-C or SIGTERM (exit 0).
///
/// A round that fails — an invalid file, a stale plan, an unreachable manager, a service that does not converge —
/// prints why and keeps watching; nothing is applied from an invalid file. A save while a round waits for
/// convergence ends that wait and starts the next round at once.
pub async fn watch(client: &Client, args: &ApplyArgs) -> anyhow::Result<ExitCode> {
    if args.plan_file.is_some() {
        anyhow::bail!("--watch applies the stack files as they change, not a saved plan: drop the PLAN argument");
    }
    let args = ApplyArgs {
        stack: args.stack.clone(),
        plan_file: None,
        yes: true,
        prune: args.prune,
        detach: args.detach,
        no_color: args.no_color,
        quiet: args.quiet,
    };
    let (tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let debouncer = notify_debouncer_full::new_debouncer(DEBOUNCE, None, move |result: DebounceEventResult| {
        let _ = tx.send(result);
    })
    .context("cannot start watching files")?;
    let mut watched = Watched {
        debouncer,
        dirs: BTreeSet::new(),
        files: BTreeMap::new(),
        names: Vec::new(),
    };
    // The stack files must be watchable; the others are watched when their directory exists.
    for file in &args.stack.files {
        watched
            .add(file)
            .with_context(|| format!("cannot watch {}", file.display()))?;
    }

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let stop = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    tokio::pin!(stop);

    let mut changed: Option<Vec<String>> = None;
    loop {
        for file in files_read(&args.stack) {
            // A file the stack names in a directory that does not exist: the load reports it; nothing to watch.
            let _ = watched.add(&file);
        }
        if let Some(names) = changed.take() {
            println!("\nChanged: {}. Planning again.\n", names.join(", "));
        }
        let round = tokio::select! {
            round = round(client, &args, &mut events, &watched) => round?,
            _ = &mut stop => break,
        };
        if let Some(names) = round {
            changed = Some(names);
            continue;
        }
        println!("\nWatching {} for changes (Ctrl-C to stop).", watched.names.join(", "));
        tokio::select! {
            names = next_change(&mut events, &watched) => changed = Some(names?),
            _ = &mut stop => break,
        }
    }
    println!("\nStopped watching.");
    Ok(ExitCode::SUCCESS)
}

/// One `swarm apply --yes`. A failure is printed, not returned: the loop goes on. Returns the files saved while it
/// waited for convergence (the wait is then abandoned).
async fn round(
    client: &Client,
    args: &ApplyArgs,
    events: &mut UnboundedReceiver<DebounceEventResult>,
    watched: &Watched,
) -> anyhow::Result<Option<Vec<String>>> {
    let applied = match apply::submit(client, args).await {
        Ok(Some(applied)) => applied,
        Ok(None) => return Ok(None),
        Err(e) => {
            eprintln!("Error: {e:#}");
            eprintln!("Nothing applied. Fix it and save again; still watching.");
            return Ok(None);
        }
    };
    if args.detach {
        return Ok(None);
    }
    tokio::select! {
        result = apply::converge(client, &applied, args.quiet) => {
            if let Err(e) = result {
                eprintln!("Error: {e:#}");
            }
            Ok(None)
        }
        names = next_change(events, watched) => {
            println!("\nNo longer waiting for stack {} to converge: a file changed.", applied.stack);
            Ok(Some(names?))
        }
    }
}

/// Waits for the next save of a watched file; returns the names of the files saved (all the changes queued by
/// then count as one).
async fn next_change(
    events: &mut UnboundedReceiver<DebounceEventResult>,
    watched: &Watched,
) -> anyhow::Result<Vec<String>> {
    loop {
        let first = events
            .recv()
            .await
            .context("the file watcher stopped; run `swarm apply --watch` again")?;
        let mut changed = BTreeSet::new();
        watched.collect(first, &mut changed);
        while let Ok(more) = events.try_recv() {
            watched.collect(more, &mut changed);
        }
        if !changed.is_empty() {
            return Ok(changed.into_iter().collect());
        }
    }
}

/// The files that make up the stack, and the watches on their directories.
struct Watched {
    debouncer: Debouncer<RecommendedWatcher, RecommendedCache>,
    dirs: BTreeSet<PathBuf>,
    /// Each file by the path events name it with (its canonical directory and its name), with the name to print.
    files: BTreeMap<PathBuf, String>,
    /// The names to print, in the order the files were added (the stack files first).
    names: Vec<String>,
}

impl Watched {
    /// Watches `file` (which need not exist yet) through its directory.
    fn add(&mut self, file: &Path) -> anyhow::Result<()> {
        let Some(name) = file.file_name() else {
            anyhow::bail!("{} names no file", file.display());
        };
        let parent = match file.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let dir = parent.canonicalize().with_context(|| {
            format!(
                "its directory {} cannot be opened; create it or fix the path",
                parent.display()
            )
        })?;
        let key = dir.join(name);
        if self.files.contains_key(&key) {
            return Ok(());
        }
        if !self.dirs.contains(&dir) {
            self.debouncer
                .watch(&dir, RecursiveMode::NonRecursive)
                .with_context(|| {
                    format!(
                        "cannot watch directory {} (out of inotify watches? raise fs.inotify.max_user_watches)",
                        dir.display()
                    )
                })?;
            self.dirs.insert(dir);
        }
        self.files.insert(key, display(file));
        self.names.push(display(file));
        Ok(())
    }

    /// Adds to `changed` the watched files that these events touched (an editor's save, a new file, a removal, a
    /// rename); reads — including the loader's own — are not changes. Watcher errors are printed.
    fn collect(&self, result: DebounceEventResult, changed: &mut BTreeSet<String>) {
        let events = match result {
            Ok(events) => events,
            Err(errors) => {
                for e in errors {
                    eprintln!("warning: watching files: {e}");
                }
                return;
            }
        };
        for event in events {
            let read = matches!(event.kind, EventKind::Access(kind) if kind != AccessKind::Close(AccessMode::Write));
            if read {
                continue;
            }
            if event.need_rescan() {
                // Events were lost: any file may have changed.
                changed.extend(self.names.iter().cloned());
                continue;
            }
            for path in &event.paths {
                if let Some(name) = self.files.get(path) {
                    changed.insert(name.clone());
                }
            }
        }
    }
}

/// A path as the person gave it, without a leading `./`.
fn display(path: &Path) -> String {
    let text = path.display().to_string();
    text.strip_prefix("./").map(str::to_string).unwrap_or(text)
}

/// Every file the loader reads or looks for when it loads these stack files: the files themselves, the env file,
/// and the files of `env_file`, `secrets` and `configs`. Loads silently: the round's `apply` prints the diagnostics.
fn files_read(args: &StackArgs) -> Vec<PathBuf> {
    let recorder = Recorder::default();
    // A bad key file still leaves the paths to watch; the round's `apply` reports it.
    let options = crate::stackfile::load_options(args).unwrap_or_else(|_| LoadOptions {
        files: args.files.clone(),
        env_file: args.env_file.clone(),
        stack: args.stack.clone(),
        environment: std::env::vars().collect(),
        ..LoadOptions::default()
    });
    let _ = swarm_specs::load(&options, &recorder);
    recorder.paths.into_inner()
}

/// The local file system, noting every path asked for.
#[derive(Default)]
struct Recorder {
    paths: RefCell<Vec<PathBuf>>,
}

impl Files for Recorder {
    fn read(&self, path: &Path) -> std::io::Result<Vec<u8>> {
        self.paths.borrow_mut().push(path.to_path_buf());
        std::fs::read(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stack_args(dir: &Path, files: &[&str]) -> StackArgs {
        StackArgs {
            files: files.iter().map(|f| dir.join(f)).collect(),
            env_file: None,
            stack: Some("s".into()),
            age_key_files: Vec::new(),
        }
    }

    #[test]
    fn the_watched_files_are_the_stack_files_the_env_file_and_what_the_stack_names() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        };
        write(
            "stack.yml",
            "services:\n  web:\n    image: nginx\n    env_file: web.env\n    secrets: [pw]\n    configs: [conf]\n\
             secrets:\n  pw:\n    file: ./secrets/pw.txt\nconfigs:\n  conf:\n    file: conf.txt\n",
        );
        write("prod.yml", "services:\n  web:\n    image: nginx:1.27\n");
        write("web.env", "A=1\n");
        write("secrets/pw.txt", "hunter2\n");
        write("conf.txt", "x\n");
        let read: BTreeSet<PathBuf> = files_read(&stack_args(dir.path(), &["stack.yml", "prod.yml"]))
            .into_iter()
            .map(|p| {
                let name = p.file_name().unwrap().to_owned();
                p.parent().unwrap().canonicalize().unwrap().join(name)
            })
            .collect();
        let root = dir.path().canonicalize().unwrap();
        for expected in ["stack.yml", "prod.yml", ".env", "web.env", "secrets/pw.txt", "conf.txt"] {
            assert!(
                read.contains(&root.join(expected)),
                "{expected} is not among the files read: {read:?}"
            );
        }
    }

    #[test]
    fn watch_takes_the_stack_files_not_a_saved_plan() {
        use clap::Parser as _;
        let parse = |args: &[&str]| crate::Cli::try_parse_from(args).map(|cli| cli.command);
        assert!(matches!(
            parse(&["swarm", "apply", "--watch", "-f", "a.yml", "--detach", "--prune"]),
            Ok(crate::Command::Apply {
                watch: true,
                detach: true,
                prune: true,
                ..
            })
        ));
        let err = parse(&["swarm", "apply", "-w", "plan.json"]).err().expect("refused");
        assert!(err.to_string().contains("cannot be used with"), "{err}");
    }

    #[test]
    fn an_invalid_stack_still_names_its_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("stack.yml"), "services: [oops]\n").unwrap();
        let read = files_read(&stack_args(dir.path(), &["stack.yml"]));
        assert!(read.contains(&dir.path().join("stack.yml")), "{read:?}");
    }

    #[test]
    fn reads_are_not_changes_and_other_files_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, _rx) = std::sync::mpsc::channel();
        let mut watched = Watched {
            debouncer: notify_debouncer_full::new_debouncer(DEBOUNCE, None, tx).unwrap(),
            dirs: BTreeSet::new(),
            files: BTreeMap::new(),
            names: Vec::new(),
        };
        let file = dir.path().join("stack.yml");
        watched.add(&file).unwrap();
        let key = dir.path().canonicalize().unwrap().join("stack.yml");
        let event = |kind: EventKind, path: PathBuf| {
            notify_debouncer_full::DebouncedEvent::new(
                notify::Event::new(kind).add_path(path),
                std::time::Instant::now(),
            )
        };
        let mut changed = BTreeSet::new();
        watched.collect(
            Ok(vec![
                event(EventKind::Access(AccessKind::Open(AccessMode::Any)), key.clone()),
                event(EventKind::Access(AccessKind::Close(AccessMode::Read)), key.clone()),
                event(
                    EventKind::Modify(notify::event::ModifyKind::Any),
                    key.with_file_name("other.yml"),
                ),
            ]),
            &mut changed,
        );
        assert!(changed.is_empty(), "{changed:?}");
        watched.collect(
            Ok(vec![event(
                EventKind::Modify(notify::event::ModifyKind::Any),
                key.clone(),
            )]),
            &mut changed,
        );
        assert_eq!(changed.into_iter().collect::<Vec<_>>(), vec![display(&file)]);
        // A missing directory is an error that names it.
        let err = watched.add(&dir.path().join("nope/stack.yml")).unwrap_err();
        assert!(format!("{err:#}").contains("nope"), "{err:#}");
    }
}
