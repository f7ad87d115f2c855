//! `swarm validate`, `swarm config`, `swarm schema` and `swarm plan`: the stack-file commands.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use swarm_reconciler::gitops::files::GitTree;
use swarm_reconciler::plan;
use swarm_specs::age;
use swarm_specs::age::AgeError;
use swarm_specs::compose::ListOrMap;
use swarm_specs::compose::Scalar;
use swarm_specs::diag::Severity;
use swarm_specs::loader::Files;
use swarm_specs::loader::LocalFiles;
use swarm_specs::Diagnostic;
use swarm_specs::Diagnostics;
use swarm_specs::LoadOptions;
use swarm_specs::Loaded;
use swarm_specs::StackSpec;

use crate::Format;
use crate::StackArgs;

/// What the loader needs for these stack arguments: the files, the environment and the age keys.
pub fn load_options(args: &StackArgs) -> Result<LoadOptions, Diagnostic> {
    let mut age_identities = Vec::new();
    for path in &args.age_key_files {
        let problem = |line_col: Option<(u32, u32)>, message: String| Diagnostic {
            severity: Severity::Error,
            file: Some(path.display().to_string()),
            line_col,
            path: "--age-key-file".into(),
            message,
            hint: Some("an age key file holds AGE-SECRET-KEY-1... lines, as `age-keygen -o key.txt` writes".into()),
        };
        let text = std::fs::read_to_string(path).map_err(|e| problem(None, format!("cannot read the age key: {e}")))?;
        match age::parse_identities(&text) {
            Ok(ids) => age_identities.extend(ids),
            Err(AgeError::Key { line, message }) => return Err(problem(Some((line as u32, 1)), message)),
            Err(e) => return Err(problem(None, e.to_string())),
        }
    }
    Ok(LoadOptions {
        files: args.files.clone(),
        env_file: args.env_file.clone(),
        stack: args.stack.clone(),
        environment: std::env::vars().collect(),
        age_identities,
    })
}

/// Loads the stack; prints warnings to stderr, and on failure every error, then says how many.
fn load(args: &StackArgs, files: &dyn Files) -> Result<Loaded, Diagnostics> {
    let options = load_options(args).map_err(|d| {
        let d = Diagnostics(vec![d]);
        eprintln!("{d}");
        d
    })?;
    let result = swarm_specs::load(&options, files);
    match &result {
        Ok(loaded) => {
            for w in loaded.diagnostics.warnings() {
                eprintln!("{w}");
            }
        }
        Err(diagnostics) => eprintln!("{diagnostics}"),
    }
    result
}

fn invalid(diagnostics: &Diagnostics) -> anyhow::Error {
    let n = diagnostics.errors().count();
    anyhow::anyhow!(
        "the stack is invalid: {n} error{} (see above)",
        if n == 1 { "" } else { "s" }
    )
}

pub fn validate(args: &StackArgs, quiet: bool) -> anyhow::Result<ExitCode> {
    match load(args, &LocalFiles) {
        Ok(loaded) => {
            if !quiet {
                let s = &loaded.stack;
                println!(
                    "{}: valid (stack {:?}: {} services, {} networks, {} volumes, {} secrets, {} configs)",
                    args.files
                        .iter()
                        .map(|f| f.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                    s.name,
                    s.services.len(),
                    s.networks.len(),
                    s.volumes.len(),
                    s.secrets.len(),
                    s.configs.len()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(d) => {
            eprintln!("{}", invalid(&d));
            Ok(ExitCode::from(1))
        }
    }
}

pub fn config(args: &StackArgs, normalized: bool) -> anyhow::Result<ExitCode> {
    let loaded = load(args, &LocalFiles).map_err(|d| invalid(&d))?;
    if normalized {
        println!("{}", serde_json::to_string_pretty(&loaded.stack)?);
        return Ok(ExitCode::SUCCESS);
    }
    // As `docker stack config`: env files are folded into `environment`, which is then the whole truth.
    let mut file = loaded.file.clone();
    for (key, service) in file.services.iter_mut() {
        let Some(spec) = loaded.stack.services.get(&format!("{}_{key}", loaded.stack.name)) else {
            continue;
        };
        service.env_file = None;
        service.environment = (!spec.task.env.is_empty()).then(|| {
            ListOrMap::Map(
                spec.task
                    .env
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone().map(Scalar)))
                    .collect(),
            )
        });
    }
    let base_dir = args.files[0].parent().map(PathBuf::from).unwrap_or_default();
    for object in file.secrets.values_mut().chain(file.configs.values_mut()) {
        if let Some(f) = &object.file {
            let absolute = std::path::absolute(base_dir.join(f)).unwrap_or_else(|_| base_dir.join(f));
            object.file = Some(absolute.display().to_string());
        }
    }
    // Values are printed after interpolation, so a `$` they contain is escaped again: the output loads as it reads.
    let mut value = serde_json::to_value(&file)?;
    escape_dollars(&mut value);
    let yaml = serde_saphyr::to_string(&value).context("cannot print the stack as YAML")?;
    print!("{yaml}");
    Ok(ExitCode::SUCCESS)
}

fn escape_dollars(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::String(s) if s.contains('$') => *s = s.replace('$', "$$"),
        serde_json::Value::Array(items) => items.iter_mut().for_each(escape_dollars),
        serde_json::Value::Object(map) => map.values_mut().for_each(escape_dollars),
        _ => {}
    }
}

pub fn schema() -> anyhow::Result<ExitCode> {
    println!(
        "{}",
        serde_json::to_string_pretty(&swarm_specs::schema::editor_schema())?
    );
    Ok(ExitCode::SUCCESS)
}

/// The stack the files describe, or every diagnostic and an error.
pub fn load_stack(args: &StackArgs) -> anyhow::Result<StackSpec> {
    load(args, &LocalFiles).map(|l| l.stack).map_err(|d| invalid(&d))
}

pub struct PlanArgs {
    pub base: Vec<PathBuf>,
    pub base_git: Option<String>,
    pub format: Format,
    pub detailed_exitcode: bool,
    pub no_color: bool,
    pub out: Option<PathBuf>,
}

pub fn plan(args: &StackArgs, opts: &PlanArgs) -> anyhow::Result<ExitCode> {
    let desired = load(args, &LocalFiles).map_err(|d| invalid(&d))?.stack;
    let current = current_state(args, opts, &desired.name)?;
    let plan = plan::plan(&desired, &current);
    let json = serde_json::to_string_pretty(&plan)?;
    if let Some(out) = &opts.out {
        std::fs::write(out, format!("{json}\n")).with_context(|| format!("cannot write {}", out.display()))?;
    }
    match opts.format {
        Format::Json => println!("{json}"),
        Format::Human => {
            let color = !opts.no_color && std::io::stdout().is_terminal();
            print!("{}", plan::render(&plan, color));
        }
    }
    Ok(if opts.detailed_exitcode && plan.has_changes() {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

/// The state to compare with: other stack files, or the same files at a git revision.
fn current_state(args: &StackArgs, opts: &PlanArgs, stack: &str) -> anyhow::Result<StackSpec> {
    let base_args = |files: Vec<PathBuf>| StackArgs {
        files,
        env_file: args.env_file.clone(),
        stack: Some(stack.to_string()),
        age_key_files: args.age_key_files.clone(),
    };
    if let Some(rev) = &opts.base_git {
        let tree = GitTree::open(&args.files[0], rev)?;
        // A stack file that did not exist at that revision is a new stack: everything is created.
        if tree.read(&args.files[0]).is_err() {
            return Ok(StackSpec {
                name: stack.to_string(),
                ..StackSpec::default()
            });
        }
        return load(&base_args(args.files.clone()), &tree)
            .map(|l| l.stack)
            .map_err(|d| invalid(&d).context(format!("the stack at {rev} is invalid")));
    }
    load(&base_args(opts.base.clone()), &LocalFiles)
        .map(|l| l.stack)
        .map_err(|d| invalid(&d).context("the --base stack is invalid"))
}
