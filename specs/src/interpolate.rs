//! Compose-style `${VAR}` interpolation of stack-file strings and parsing of `.env` / `--env-file` files.
//
// Interpolation follows the Compose specification (as implemented by compose-go / `docker compose config`).
// The docker CLI's own `docker stack config` (checked against docker 28.2.2) uses an older, regex-based
// template engine; where it is merely stricter or buggier than the Compose specification we follow the
// specification and say so next to the affected rule:
//
// * docker CLI rejects `${VAR:+alt}` / `${VAR+alt}` as "invalid interpolation format"; we support them.
// * docker CLI does not interpolate inside defaults/messages: `${A:-${B:-x}}` yields the literal text
//   `${B:-x}` and `${A:-$$}` yields `$$`; we interpolate them recursively, as the specification says.
// * docker CLI tries `-` before `?`, so `${A?a-b}` yields `b` (it treats `A?a` as the name); we use the
//   operator that directly follows the name, so that is a "required" check with message `a-b`.
//
// Everything else below (what counts as a name, `$$`, which `$` forms are syntax errors, empty
// defaults, the required-variable message, `}` inside defaults closing the substitution) matches
// `docker stack config` output for the same input.

use thiserror::Error;

/// Result of interpolating one string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interpolated {
    /// The input with every substitution applied.
    pub value: String,
    /// Variables that were referenced without a default, were unset, and were replaced by an empty string.
    /// Deduplicated, in order of first use. Callers usually turn these into warnings.
    pub missing: Vec<String>,
}

/// Why a string could not be interpolated.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum InterpolationError {
    /// `${VAR:?msg}` / `${VAR?msg}` with the variable missing (or, for `:?`, empty).
    #[error("{}", required_text(variable, message))]
    Required {
        /// Name of the required variable.
        variable: String,
        /// The (interpolated) message written after `?` in the template; may be empty.
        message: String,
    },
    /// Malformed template, e.g. unterminated `${`, invalid name.
    #[error("invalid interpolation at character {offset}: {message}")]
    Syntax {
        /// 0-based offset, counted in chars (not bytes), of the `$` that starts the malformed substitution.
        offset: usize,
        /// What is wrong and how to fix it.
        message: String,
    },
}

fn required_text(variable: &str, message: &str) -> String {
    if message.is_empty() {
        format!(
            "required variable {variable} is missing a value (set {variable} in the environment or in the .env file)"
        )
    } else {
        format!("required variable {variable} is missing a value: {message}")
    }
}

/// Maximum nesting depth of `${...}` inside defaults / alternatives / messages. Deeper input is rejected
/// instead of risking a stack overflow on hostile input.
const MAX_DEPTH: usize = 64;

/// Hint appended to most syntax errors.
const ESCAPE_HINT: &str = "write \"$$\" for a literal \"$\"";

/// Interpolates `$VAR`, `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:?msg}`, `${VAR?msg}`,
/// `${VAR:+alt}`, `${VAR+alt}` and `$$` in `input`, looking variables up with `lookup` (`None` = unset).
///
/// Defaults, alternatives and messages are themselves interpolated, but only when they are used: a
/// `${B:?}` inside the default of a variable that is set does not fail, and does not report `B` as missing.
/// Syntax errors are reported wherever they are.
///
/// # Errors
///
/// [`InterpolationError::Required`] when a `${VAR:?msg}` / `${VAR?msg}` check fails, and
/// [`InterpolationError::Syntax`] when the template is malformed (e.g. `${` without `}`, `${1A}`, a `$` not
/// followed by a name, `{` or `$`).
pub fn interpolate(input: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<Interpolated, InterpolationError> {
    if !input.contains('$') {
        return Ok(Interpolated {
            value: input.to_owned(),
            missing: Vec::new(),
        });
    }
    let mut parser = Parser {
        chars: input.chars().collect(),
        pos: 0,
        lookup,
        missing: Vec::new(),
    };
    let value = parser.sequence(0, true)?;
    // At depth 0 `sequence` only stops at the end of input; a stray `}` is ordinary text there.
    Ok(Interpolated {
        value,
        missing: parser.missing,
    })
}

struct Parser<'a> {
    chars: Vec<char>,
    pos: usize,
    lookup: &'a dyn Fn(&str) -> Option<String>,
    missing: Vec<String>,
}

/// The operator between the name and the word in `${NAME<op>word}`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    /// `:-`
    DefaultIfUnsetOrEmpty,
    /// `-`
    DefaultIfUnset,
    /// `:?`
    RequiredNonEmpty,
    /// `?`
    Required,
    /// `:+`
    AlternativeIfNonEmpty,
    /// `+`
    AlternativeIfSet,
}

fn is_name_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

fn syntax(offset: usize, message: String) -> InterpolationError {
    InterpolationError::Syntax { offset, message }
}

fn unterminated(offset: usize) -> InterpolationError {
    syntax(
        offset,
        format!("unterminated \"${{\" (add the closing \"}}\" or {ESCAPE_HINT})"),
    )
}

impl Parser<'_> {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn peek_at(&self, ahead: usize) -> Option<char> {
        self.chars.get(self.pos.saturating_add(ahead)).copied()
    }

    /// Parses text up to the end of input or, when `depth > 0`, up to (not including) a `}` that is not
    /// part of a nested substitution. With `active == false` nothing is looked up or recorded: the text
    /// is only checked for syntax errors.
    fn sequence(&mut self, depth: usize, active: bool) -> Result<String, InterpolationError> {
        let mut out = String::new();
        while let Some(c) = self.peek() {
            match c {
                '$' => out.push_str(&self.dollar(depth, active)?),
                '}' if depth > 0 => break,
                _ => {
                    out.push(c);
                    self.pos += 1;
                }
            }
        }
        Ok(out)
    }

    fn name(&mut self) -> String {
        let mut name = String::new();
        while let Some(c) = self.peek().filter(|c| is_name_char(*c)) {
            name.push(c);
            self.pos += 1;
        }
        name
    }

    fn get(&self, name: &str, active: bool) -> Option<String> {
        if active {
            (self.lookup)(name)
        } else {
            None
        }
    }

    /// Value of a plain `$NAME` / `${NAME}`: empty (and recorded as missing) when unset.
    fn plain(&mut self, name: String, active: bool) -> String {
        let value = self.get(&name, active);
        if active && value.is_none() && !self.missing.contains(&name) {
            self.missing.push(name);
        }
        value.unwrap_or_default()
    }

    /// Parses one `$...` construct; `self.pos` is at the `$`.
    fn dollar(&mut self, depth: usize, active: bool) -> Result<String, InterpolationError> {
        let start = self.pos;
        self.pos += 1;
        // Inside a default, alternative or message only `${...}` nests and `$$` escapes; any other `$` is text.
        // docker CLI does not interpolate defaults at all, and real stack files rely on that for htpasswd hashes
        // such as `${PASSWORD:-$2y$05$oZcj...}`, so those must stay literal.
        if depth > 0 && !matches!(self.peek(), Some('$' | '{')) {
            return Ok("$".to_owned());
        }
        match self.peek() {
            None => Err(syntax(
                start,
                format!("\"$\" at the end of the text is not a variable reference ({ESCAPE_HINT})"),
            )),
            Some('$') => {
                self.pos += 1;
                Ok("$".to_owned())
            }
            Some('{') => {
                self.pos += 1;
                self.braced(start, depth, active)
            }
            Some(c) if is_name_start(c) => {
                let name = self.name();
                Ok(self.plain(name, active))
            }
            Some(c) => Err(syntax(
                start,
                format!(
                    "\"$\" followed by {c:?} is not a variable reference (use \"$NAME\" or \"${{NAME}}\" where NAME \
                     starts with a letter or \"_\", or {ESCAPE_HINT})"
                ),
            )),
        }
    }

    /// Parses what follows the name in `${NAME...`: consumes and returns the operator, or consumes the
    /// closing `}` and returns `None` for a plain `${NAME}`.
    fn operator(&mut self, start: usize, name: &str) -> Result<Option<Op>, InterpolationError> {
        let op = match (self.peek(), self.peek_at(1)) {
            (None, _) | (Some(':'), None) => return Err(unterminated(start)),
            (Some('}'), _) => {
                self.pos += 1;
                return Ok(None);
            }
            (Some(':'), Some('-')) => Op::DefaultIfUnsetOrEmpty,
            (Some(':'), Some('?')) => Op::RequiredNonEmpty,
            (Some(':'), Some('+')) => Op::AlternativeIfNonEmpty,
            (Some('-'), _) => Op::DefaultIfUnset,
            (Some('?'), _) => Op::Required,
            (Some('+'), _) => Op::AlternativeIfSet,
            (Some(c), next) => {
                let found = match (c, next) {
                    (':', Some(n)) => format!("\":{n}\""),
                    _ => format!("{c:?}"),
                };
                return Err(syntax(
                    start,
                    format!(
                        "unexpected {found} after \"${{{name}\" (close it with \"}}\" or use one of the modifiers \
                         \":-\", \"-\", \":?\", \"?\", \":+\", \"+\"; variable names contain only letters, digits and \
                         \"_\"; or {ESCAPE_HINT})"
                    ),
                ));
            }
        };
        self.pos += match op {
            Op::DefaultIfUnsetOrEmpty | Op::RequiredNonEmpty | Op::AlternativeIfNonEmpty => 2,
            Op::DefaultIfUnset | Op::Required | Op::AlternativeIfSet => 1,
        };
        Ok(Some(op))
    }

    /// Parses the rest of `${...}`; `self.pos` is just after the `{`, `start` is the offset of the `$`.
    fn braced(&mut self, start: usize, depth: usize, active: bool) -> Result<String, InterpolationError> {
        let name = match self.peek() {
            None => return Err(unterminated(start)),
            Some('}') => {
                return Err(syntax(
                    start,
                    format!(
                        "empty variable name in \"${{}}\" (put a name inside the braces, as in \"${{NAME}}\", or \
                         {ESCAPE_HINT})"
                    ),
                ))
            }
            Some(c) if is_name_start(c) => self.name(),
            Some(c) => {
                return Err(syntax(
                    start,
                    format!(
                        "invalid variable name: it starts with {c:?}, but names must start with a letter or \"_\" and \
                         contain only letters, digits and \"_\" (rename the variable, or {ESCAPE_HINT})"
                    ),
                ))
            }
        };
        let Some(op) = self.operator(start, &name)? else {
            return Ok(self.plain(name, active));
        };
        if depth + 1 >= MAX_DEPTH {
            return Err(syntax(
                start,
                format!("substitutions are nested more than {MAX_DEPTH} levels deep (simplify the template)"),
            ));
        }

        let value = self.get(&name, active);
        let set_non_empty = value.as_deref().is_some_and(|v| !v.is_empty());
        // Whether the word after the operator is used (interpolated, looked up) at all.
        let use_word = active
            && match op {
                Op::DefaultIfUnsetOrEmpty | Op::RequiredNonEmpty => !set_non_empty,
                Op::DefaultIfUnset | Op::Required => value.is_none(),
                Op::AlternativeIfNonEmpty => set_non_empty,
                Op::AlternativeIfSet => value.is_some(),
            };
        let word = self.sequence(depth + 1, use_word)?;
        if self.peek() != Some('}') {
            return Err(unterminated(start));
        }
        self.pos += 1;

        Ok(match op {
            Op::DefaultIfUnsetOrEmpty | Op::DefaultIfUnset => {
                if use_word {
                    word
                } else {
                    value.unwrap_or_default()
                }
            }
            Op::RequiredNonEmpty | Op::Required => {
                if use_word {
                    return Err(InterpolationError::Required {
                        variable: name,
                        message: word,
                    });
                }
                value.unwrap_or_default()
            }
            Op::AlternativeIfNonEmpty | Op::AlternativeIfSet => {
                if use_word {
                    word
                } else {
                    String::new()
                }
            }
        })
    }
}

/// A syntax error in a `.env` file; `line` is 1-based and points at the start of the offending entry.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("line {line}: {message}")]
pub struct EnvFileError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong and how to fix it.
    pub message: String,
}

/// Parses a `.env` / `--env-file` file into `(key, value)` pairs, in order of first appearance; a key that
/// appears again keeps its first position but takes the later value.
///
/// Rules (after compose-go's dotenv parser):
/// * blank lines and lines starting with `#` are skipped; an optional `export ` prefix is ignored;
/// * `KEY=VALUE`, with whitespace around `KEY` and `=` allowed; keys are letters, digits, `_`, `.`, `-`,
///   `[` and `]`;
/// * a `KEY` without `=` is skipped (docker would take its value from the environment; for interpolation
///   such a line adds nothing);
/// * unquoted values are trimmed, and a `#` preceded by whitespace starts a comment;
/// * `'single quoted'` values are literal; `"double quoted"` values understand `\n`, `\r`, `\t`, `\"` and
///   `\\` (other backslashes are kept as written); both kinds may span lines, and only whitespace or a
///   `# comment` may follow the closing quote.
///
/// Values are returned as written: `$VAR` references in them are *not* expanded here.
///
/// # Errors
///
/// [`EnvFileError`] for an invalid or empty key, an unterminated quoted value, or text after a closing quote.
pub fn parse_env_file(text: &str) -> Result<Vec<(String, String)>, EnvFileError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let lines: Vec<&str> = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l)).collect();
    let mut out: Vec<(String, String)> = Vec::new();
    let mut index = 0;
    while let Some(&raw) = lines.get(index) {
        let line_no = index + 1;
        index += 1;
        let line = raw.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = strip_export(line);
        let err = |message: String| EnvFileError { line: line_no, message };
        let (key, rest) = match line.split_once('=') {
            Some((key, rest)) => (key.trim(), Some(rest)),
            None => (line.trim(), None),
        };
        check_key(key).map_err(err)?;
        let Some(rest) = rest else {
            continue;
        };
        let rest = rest.trim_start();
        let value = match rest.chars().next() {
            Some(quote @ ('"' | '\'')) => {
                let body = rest.get(1..).unwrap_or("");
                let (value, after, used) = quoted_value(body, quote, &lines, index).ok_or_else(|| {
                    err(format!(
                        "unterminated {} value for {key} (add the closing {quote} quote; inside double quotes \
                             write \\\" for a literal quote)",
                        if quote == '"' { "double-quoted" } else { "single-quoted" }
                    ))
                })?;
                index += used;
                let after = after.trim_start();
                if !after.is_empty() && !after.starts_with('#') {
                    return Err(err(format!(
                        "unexpected text {after:?} after the closing quote of {key} (put everything inside the quotes, \
                         or start a comment with \"#\")"
                    )));
                }
                value
            }
            _ => strip_inline_comment(rest).trim().to_owned(),
        };
        match out.iter_mut().find(|(k, _)| k == key) {
            Some(entry) => entry.1 = value,
            None => out.push((key.to_owned(), value)),
        }
    }
    Ok(out)
}

fn strip_export(line: &str) -> &str {
    match line.strip_prefix("export") {
        Some(rest) if rest.starts_with([' ', '\t']) => rest.trim_start(),
        _ => line,
    }
}

fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("missing variable name before \"=\" (write KEY=VALUE)".to_owned());
    }
    if let Some(c) = key
        .chars()
        .find(|c| !(c.is_alphanumeric() || matches!(c, '_' | '.' | '-' | '[' | ']')))
    {
        let what = if c.is_whitespace() {
            "whitespace".to_owned()
        } else {
            format!("the character {c:?}")
        };
        return Err(format!(
            "invalid variable name {key:?}: it contains {what} (names may contain only letters, digits, \"_\", \".\", \
             \"-\", \"[\" and \"]\"; write KEY=VALUE, and quote values that contain spaces)"
        ));
    }
    Ok(())
}

/// Strips a `#` comment that is preceded by whitespace.
fn strip_inline_comment(value: &str) -> &str {
    let mut prev_space = false;
    for (i, c) in value.char_indices() {
        if c == '#' && prev_space {
            return value.get(..i).unwrap_or(value);
        }
        prev_space = c.is_whitespace();
    }
    value
}

/// Reads a quoted value whose text (after the opening quote) starts with `first`, continuing on
/// `lines[next..]` if needed. Returns the value, the text after the closing quote and how many extra
/// lines were consumed; `None` if the quote is never closed.
fn quoted_value<'a>(first: &'a str, quote: char, lines: &[&'a str], next: usize) -> Option<(String, &'a str, usize)> {
    let mut value = String::new();
    let mut current = first;
    let mut used = 0;
    loop {
        let mut chars = current.char_indices();
        while let Some((i, c)) = chars.next() {
            if c == quote {
                let after = current.get(i + c.len_utf8()..).unwrap_or("");
                return Some((value, after, used));
            }
            if c == '\\' && quote == '"' {
                match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, 'r')) => value.push('\r'),
                    Some((_, 't')) => value.push('\t'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, '\\')) | None => value.push('\\'),
                    Some((_, other)) => {
                        value.push('\\');
                        value.push(other);
                    }
                }
                continue;
            }
            value.push(c);
        }
        current = lines.get(next + used)?;
        used += 1;
        value.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn run(input: &str, pairs: &[(&str, &str)]) -> Result<Interpolated, InterpolationError> {
        let vars = env(pairs);
        interpolate(input, &|name| vars.get(name).cloned())
    }

    fn value(input: &str, pairs: &[(&str, &str)]) -> String {
        match run(input, pairs) {
            Ok(i) => i.value,
            Err(e) => panic!("{input:?} failed: {e}"),
        }
    }

    fn syntax_offset(input: &str) -> usize {
        match run(input, &[]) {
            Err(InterpolationError::Syntax { offset, .. }) => offset,
            other => panic!("{input:?}: expected a syntax error, got {other:?}"),
        }
    }

    fn required(input: &str, pairs: &[(&str, &str)]) -> (String, String) {
        match run(input, pairs) {
            Err(InterpolationError::Required { variable, message }) => (variable, message),
            other => panic!("{input:?}: expected a required error, got {other:?}"),
        }
    }

    // ---- one test per Compose interpolation rule ----

    #[test]
    fn unbraced_variable() {
        assert_eq!(value("x$A", &[("A", "1")]), "x1");
        // name is greedy over [A-Za-z0-9_], stops at anything else (docker: `x$A_B-c` with nothing set -> `xc`)
        assert_eq!(value("$A_B-c", &[("A_B", "v"), ("A", "no")]), "v-c");
        assert_eq!(value("$a.b", &[("a", "lower")]), "lower.b");
    }

    #[test]
    fn braced_variable() {
        assert_eq!(value("x${A}y", &[("A", "1")]), "x1y");
        assert_eq!(value("${A}${A}", &[("A", "ab")]), "abab");
    }

    #[test]
    fn unset_variable_is_empty_and_reported_missing() {
        let r = run("$A-${B}-$A-${C:-c}", &[]).unwrap();
        assert_eq!(r.value, "---c");
        assert_eq!(r.missing, vec!["A".to_owned(), "B".to_owned()]);
    }

    #[test]
    fn set_but_empty_variable_is_not_missing() {
        let r = run("x${A}y", &[("A", "")]).unwrap();
        assert_eq!(r.value, "xy");
        assert!(r.missing.is_empty());
    }

    #[test]
    fn default_if_unset_or_empty() {
        assert_eq!(value("${A:-d}", &[]), "d");
        assert_eq!(value("${A:-d}", &[("A", "")]), "d");
        assert_eq!(value("${A:-d}", &[("A", "v")]), "v");
        assert!(run("${A:-d}", &[]).unwrap().missing.is_empty());
    }

    #[test]
    fn default_if_unset() {
        assert_eq!(value("${A-d}", &[]), "d");
        assert_eq!(value("${A-d}", &[("A", "")]), "");
        assert_eq!(value("${A-d}", &[("A", "v")]), "v");
    }

    #[test]
    fn required_if_unset_or_empty() {
        assert_eq!(required("${A:?need A}", &[]), ("A".to_owned(), "need A".to_owned()));
        assert_eq!(
            required("${A:?need A}", &[("A", "")]),
            ("A".to_owned(), "need A".to_owned())
        );
        assert_eq!(value("${A:?need A}", &[("A", "v")]), "v");
    }

    #[test]
    fn required_if_unset() {
        assert_eq!(required("${A?need A}", &[]), ("A".to_owned(), "need A".to_owned()));
        assert_eq!(value("x${A?need A}", &[("A", "")]), "x");
        assert_eq!(value("${A?need A}", &[("A", "v")]), "v");
    }

    // docker CLI 28 rejects `:+` and `+` ("invalid interpolation format"); the Compose spec defines them.
    #[test]
    fn alternative_if_set_and_non_empty() {
        assert_eq!(value("x${A:+alt}", &[("A", "v")]), "xalt");
        assert_eq!(value("x${A:+alt}", &[("A", "")]), "x");
        assert_eq!(value("x${A:+alt}", &[]), "x");
        assert!(run("${A:+alt}", &[]).unwrap().missing.is_empty());
    }

    #[test]
    fn alternative_if_set() {
        assert_eq!(value("x${A+alt}", &[("A", "v")]), "xalt");
        assert_eq!(value("x${A+alt}", &[("A", "")]), "xalt");
        assert_eq!(value("x${A+alt}", &[]), "x");
    }

    #[test]
    fn dollar_dollar_is_literal_dollar() {
        assert_eq!(value("x$$y", &[]), "x$y");
        assert_eq!(value("$$$A", &[("A", "1")]), "$1");
        assert_eq!(value("$$$$", &[]), "$$");
    }

    // docker CLI returns `${B:-x}` literally here; the Compose spec interpolates nested substitutions.
    #[test]
    fn nested_interpolation() {
        assert_eq!(value("x${A:-${B:-x}}", &[]), "xx");
        assert_eq!(value("x${A:-${B:-x}}", &[("B", "b")]), "xb");
        assert_eq!(value("x${A:-${B:-x}}", &[("A", "a")]), "xa");
        assert_eq!(value("${A:+[${B}]}", &[("A", "1"), ("B", "2")]), "[2]");
        assert_eq!(value("${A:-pre ${B} post}", &[("B", "b")]), "pre b post");
        assert_eq!(
            required("${A:?set ${WHAT}}", &[("WHAT", "it")]),
            ("A".to_owned(), "set it".to_owned())
        );
    }

    #[test]
    fn htpasswd_hashes_in_defaults_stay_literal_as_docker_keeps_them() {
        let hash = "$2y$05$oZcj4FgdSFEYNCH0EH/3Vu7Hp72gkvEadHzMsDhGFkbvS/ZrKMKfK";
        let r = run(&format!("${{USER:-admin}}:${{PW:-{hash}}}"), &[]).unwrap();
        assert_eq!(r.value, format!("admin:{hash}"));
        assert!(r.missing.is_empty());
    }

    #[test]
    fn unused_branches_are_not_evaluated() {
        let r = run("${A:-${B:?boom}$C}", &[("A", "a")]).unwrap();
        assert_eq!(r.value, "a");
        assert!(r.missing.is_empty());
        let r = run("${A:+$C}", &[]).unwrap();
        assert!(r.missing.is_empty());
        // but the default of a used branch reports its own missing variables
        let r = run("${A:-${C}}", &[]).unwrap();
        assert_eq!(r.missing, vec!["C".to_owned()]);
    }

    // ---- edge cases ----

    #[test]
    fn empty_default() {
        assert_eq!(value("x${A:-}y", &[]), "xy");
        assert_eq!(value("x${A-}y", &[]), "xy");
        assert!(run("${A:-}", &[]).unwrap().missing.is_empty());
    }

    #[test]
    fn escaped_braced_is_literal() {
        assert_eq!(value("x$${A}", &[("A", "no")]), "x${A}");
        assert_eq!(value("$${A:-d}", &[]), "${A:-d}");
    }

    // docker CLI keeps `$$` inside a default as `$$` (defaults are not interpolated there).
    #[test]
    fn escape_inside_default() {
        assert_eq!(value("${A:-$$}", &[]), "$");
    }

    #[test]
    fn first_closing_brace_ends_the_substitution() {
        // same as docker: `x${A:-a}b}` -> `xab}`, `x${A:-{}}` -> `x{}`
        assert_eq!(value("x${A:-a}b}", &[]), "xab}");
        assert_eq!(value("x${A:-{}}", &[]), "x{}");
        assert_eq!(value("}{", &[]), "}{");
    }

    #[test]
    fn default_may_contain_operators_and_spaces() {
        assert_eq!(value("${A:-x:-y}", &[]), "x:-y");
        assert_eq!(value("${A:-a b}", &[]), "a b");
        assert_eq!(value("${A:-a?b}", &[]), "a?b");
        assert_eq!(value("${A-a?b}", &[]), "a?b");
    }

    // docker CLI gives `b` for `${A?a-b}` (it tries `-` first and reads the name as `A?a`).
    #[test]
    fn operator_directly_after_name_wins() {
        assert_eq!(required("${A?a-b}", &[]), ("A".to_owned(), "a-b".to_owned()));
        assert_eq!(required("${A?a:b}", &[]), ("A".to_owned(), "a:b".to_owned()));
    }

    #[test]
    fn unicode_around_variables() {
        assert_eq!(value("é${A}é", &[("A", "ü")]), "éüé");
        assert_eq!(value("x$Aé", &[("A", "1")]), "x1é");
        assert_eq!(value("日本${A:-語}", &[]), "日本語");
        assert_eq!(value("🦀$$🦀", &[]), "🦀$🦀");
    }

    #[test]
    fn unterminated_brace() {
        assert_eq!(syntax_offset("x${A"), 1);
        assert_eq!(syntax_offset("x${"), 1);
        assert_eq!(syntax_offset("x${A:-d"), 1);
        assert_eq!(syntax_offset("x${A:"), 1);
        assert_eq!(syntax_offset("é${A:-${B}"), 1);
        let err = run("x${A", &[]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid interpolation at character 1: unterminated \"${\" (add the closing \"}\" or write \"$$\" for a \
             literal \"$\")"
        );
    }

    #[test]
    fn offsets_count_chars_not_bytes() {
        assert_eq!(syntax_offset("ééé${"), 3);
        assert_eq!(syntax_offset("🦀 $"), 2);
    }

    #[test]
    fn bad_names() {
        assert_eq!(syntax_offset("x${1A}"), 1);
        assert_eq!(syntax_offset("x${}"), 1);
        assert_eq!(syntax_offset("x${ A}"), 1);
        assert_eq!(syntax_offset("x${A }"), 1);
        assert_eq!(syntax_offset("x${A-B.C}${é}"), 9);
        assert_eq!(syntax_offset("${A:=x}"), 0);
        assert_eq!(syntax_offset("${A:x}"), 0);
        let msg = run("${}", &[]).unwrap_err().to_string();
        assert!(msg.contains("empty variable name"), "{msg}");
        let msg = run("${A:=x}", &[]).unwrap_err().to_string();
        assert!(msg.contains("\":=\""), "{msg}");
    }

    // docker CLI: `x$ y`, `x$`, `x$1`, `x$}`, `x$é` are all "invalid interpolation format".
    #[test]
    fn dollar_not_followed_by_a_name_is_an_error() {
        assert_eq!(syntax_offset("x$ y"), 1);
        assert_eq!(syntax_offset("x$"), 1);
        assert_eq!(syntax_offset("x$1"), 1);
        assert_eq!(syntax_offset("x$}"), 1);
        assert_eq!(syntax_offset("x$é"), 1);
        // inside defaults a lone `$` is text, as docker keeps it
        assert_eq!(value("${A:-a$}", &[]), "a$");
    }

    #[test]
    fn syntax_errors_in_unused_branches_are_still_reported() {
        assert!(matches!(
            run("${A:-${}}", &[("A", "a")]),
            Err(InterpolationError::Syntax { offset: 5, .. })
        ));
    }

    #[test]
    fn required_error_text() {
        assert_eq!(
            run("${A:?need it}", &[]).unwrap_err().to_string(),
            "required variable A is missing a value: need it"
        );
        let msg = run("${A?}", &[]).unwrap_err().to_string();
        assert!(msg.starts_with("required variable A is missing a value"), "{msg}");
        assert!(msg.contains("set A"), "{msg}");
    }

    #[test]
    fn deep_nesting_is_rejected_not_overflowed() {
        let deep = "${A:-".repeat(10_000) + &"}".repeat(10_000);
        assert!(matches!(run(&deep, &[]), Err(InterpolationError::Syntax { .. })));
        let ok = "${A:-".repeat(10) + "x" + &"}".repeat(10);
        assert_eq!(value(&ok, &[]), "x");
    }

    #[test]
    fn lookup_not_called_for_unused_branches() {
        let calls = std::cell::RefCell::new(Vec::new());
        let lookup = |name: &str| {
            calls.borrow_mut().push(name.to_owned());
            Some("v".to_owned())
        };
        interpolate("${A:-${B}}${C+${D}}", &lookup).unwrap();
        assert_eq!(*calls.borrow(), vec!["A", "C", "D"]);
    }

    // ---- env files ----

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn env_blank_lines_and_comments_are_skipped() {
        let text = "\n# comment\n   # indented comment\nA=1\n\n  \t\nB=2\n";
        assert_eq!(parse_env_file(text).unwrap(), pairs(&[("A", "1"), ("B", "2")]));
    }

    #[test]
    fn env_export_prefix() {
        assert_eq!(
            parse_env_file("export A=1\nexport\tB=2").unwrap(),
            pairs(&[("A", "1"), ("B", "2")])
        );
        assert_eq!(
            parse_env_file("export=1\nexporter=2").unwrap(),
            pairs(&[("export", "1"), ("exporter", "2")])
        );
    }

    #[test]
    fn env_key_value() {
        assert_eq!(
            parse_env_file("A=1\nB = two words \nC=\nD=a=b\nE.F-G[0]=x").unwrap(),
            pairs(&[
                ("A", "1"),
                ("B", "two words"),
                ("C", ""),
                ("D", "a=b"),
                ("E.F-G[0]", "x")
            ])
        );
    }

    #[test]
    fn env_key_without_value_is_skipped() {
        assert_eq!(parse_env_file("A\nB=1\n  C  \n").unwrap(), pairs(&[("B", "1")]));
    }

    #[test]
    fn env_single_quotes_are_literal() {
        assert_eq!(
            parse_env_file(r"A='a \n $B # not a comment'").unwrap(),
            pairs(&[("A", r"a \n $B # not a comment")])
        );
        assert_eq!(
            parse_env_file("A='line1\nline2' # c\nB=2").unwrap(),
            pairs(&[("A", "line1\nline2"), ("B", "2")])
        );
    }

    #[test]
    fn env_double_quotes_understand_escapes() {
        assert_eq!(
            parse_env_file(r#"A="a\nb \"q\" c\\d \$e # kept""#).unwrap(),
            pairs(&[("A", "a\nb \"q\" c\\d \\$e # kept")])
        );
    }

    #[test]
    fn env_double_quotes_may_span_lines() {
        let text = "A=\"first\nsecond\"\nB=after\n";
        assert_eq!(
            parse_env_file(text).unwrap(),
            pairs(&[("A", "first\nsecond"), ("B", "after")])
        );
        // line numbers after a multi-line value stay right
        let err = parse_env_file("A=\"x\ny\"\nBAD KEY=1").unwrap_err();
        assert_eq!(err.line, 3);
    }

    #[test]
    fn env_unquoted_values_are_trimmed_and_lose_inline_comments() {
        assert_eq!(
            parse_env_file("A=  v  \nB=v # comment\nC=v#not-comment\nD= #not a comment\nE=a\t# tab comment").unwrap(),
            pairs(&[
                ("A", "v"),
                ("B", "v"),
                ("C", "v#not-comment"),
                ("D", "#not a comment"),
                ("E", "a")
            ])
        );
    }

    #[test]
    fn env_invalid_keys_are_errors_with_line_numbers() {
        let err = parse_env_file("A=1\nMY KEY=v\n").unwrap_err();
        assert_eq!(err.line, 2);
        assert!(
            err.to_string().starts_with("line 2: invalid variable name \"MY KEY\""),
            "{err}"
        );
        assert_eq!(parse_env_file("\n\n=v").unwrap_err().line, 3);
        assert_eq!(parse_env_file("A$=1").unwrap_err().line, 1);
        assert_eq!(parse_env_file("two words").unwrap_err().line, 1);
    }

    #[test]
    fn env_unterminated_quote_is_an_error() {
        let err = parse_env_file("A=1\nB=\"open\nC=3").unwrap_err();
        assert_eq!(err.line, 2);
        assert!(err.message.contains("unterminated"), "{err}");
        assert_eq!(parse_env_file("A='x").unwrap_err().line, 1);
    }

    #[test]
    fn env_text_after_closing_quote_is_an_error() {
        assert_eq!(parse_env_file("A=\"x\" y").unwrap_err().line, 1);
        assert_eq!(parse_env_file("A=\"x\"   # ok").unwrap(), pairs(&[("A", "x")]));
    }

    #[test]
    fn env_later_duplicates_override_keeping_first_position() {
        assert_eq!(
            parse_env_file("A=1\nB=2\nA=3").unwrap(),
            pairs(&[("A", "3"), ("B", "2")])
        );
    }

    #[test]
    fn env_crlf_and_bom() {
        assert_eq!(
            parse_env_file("\u{feff}A=1\r\nB=\"x\r\ny\"\r\n").unwrap(),
            pairs(&[("A", "1"), ("B", "x\ny")])
        );
    }

    #[test]
    fn env_unicode_keys_and_values() {
        assert_eq!(
            parse_env_file("ÄÖ=ü # c\nX='日本'").unwrap(),
            pairs(&[("ÄÖ", "ü"), ("X", "日本")])
        );
    }

    // ---- properties ----

    fn lookup_some(name: &str) -> Option<String> {
        match name.len() % 3 {
            0 => None,
            1 => Some(String::new()),
            _ => Some(format!("<{name}>")),
        }
    }

    proptest! {
        #[test]
        fn prop_never_panics(s in any::<String>()) {
            let _ = interpolate(&s, &lookup_some);
            let _ = parse_env_file(&s);
        }

        #[test]
        fn prop_template_like_strings_never_panic(s in r"[$\{\}:\-?+A-Ba_1 é]{0,40}") {
            let _ = interpolate(&s, &lookup_some);
        }

        #[test]
        fn prop_env_like_files_never_panic(s in "[A-B =#'\"\\\\\n\r\té]{0,60}") {
            let _ = parse_env_file(&s);
        }

        #[test]
        fn prop_no_dollar_is_unchanged(s in "[^$]*") {
            let r = interpolate(&s, &lookup_some).unwrap();
            prop_assert_eq!(r.value, s);
            prop_assert!(r.missing.is_empty());
        }

        #[test]
        fn prop_escaped_dollars_round_trip(s in any::<String>()) {
            let r = interpolate(&s.replace('$', "$$"), &lookup_some).unwrap();
            prop_assert_eq!(r.value, s);
            prop_assert!(r.missing.is_empty());
        }

        #[test]
        fn prop_escaped_dollars_round_trip_dollar_heavy(s in r"[$\{\}A:\-é]{0,40}") {
            let r = interpolate(&s.replace('$', "$$"), &lookup_some).unwrap();
            prop_assert_eq!(r.value, s);
        }
    }
}
