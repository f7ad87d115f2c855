//! Parsers and formatters for Compose/Swarm scalars: durations, sizes, CPUs, ports, volumes, constraints, signals.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A parse error whose message says what was wrong, quotes the input and says how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UnitError(pub String);

/// Largest value Docker/Swarm can carry in its signed 64-bit fields (nanoseconds, bytes, nano-CPUs).
const I64_MAX: u128 = i64::MAX as u128;

/// Parses `digits` (ASCII digits only, possibly empty) into a u128, saturating above `i64::MAX`.
fn parse_int_saturating(digits: &str) -> u128 {
    let mut v: u128 = 0;
    for b in digits.bytes() {
        v = v.saturating_mul(10).saturating_add(u128::from(b - b'0'));
        if v > I64_MAX {
            return I64_MAX + 1;
        }
    }
    v
}

/// Returns `frac_digits * mult / 10^len` truncated, looking at no more than 20 fraction digits.
fn scaled_fraction(frac_digits: &str, mult: u128) -> u128 {
    let digits = frac_digits.get(..frac_digits.len().min(20)).unwrap_or("");
    let mut f: u128 = 0;
    let mut scale: u128 = 1;
    for b in digits.bytes() {
        f = f * 10 + u128::from(b - b'0');
        scale *= 10;
    }
    f.saturating_mul(mult) / scale
}

/// Splits a leading run of ASCII digits off `s`.
fn split_digits(s: &str) -> (&str, &str) {
    let n = s.bytes().take_while(u8::is_ascii_digit).count();
    s.split_at(n)
}

/// Splits an unsigned decimal number (`12`, `1.5`, `.5`, `5.`) into integer and fraction digits plus the rest.
/// Returns `None` when `s` does not start with a digit or a `.` followed by a digit.
fn split_decimal(s: &str) -> Option<(&str, &str, &str)> {
    let (int, rest) = split_digits(s);
    let (frac, rest) = match rest.strip_prefix('.') {
        Some(after) => split_digits(after),
        None => ("", rest),
    };
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    Some((int, frac, rest))
}

// ---------------------------------------------------------------------------------------------------------------
// Durations
// ---------------------------------------------------------------------------------------------------------------

const NS_PER_SEC: u128 = 1_000_000_000;
const DURATION_UNITS_HELP: &str = "use ns, us, ms, s, m or h, e.g. \"1m30s\"";

fn duration_unit(unit: &str) -> Option<u128> {
    Some(match unit {
        "ns" => 1,
        "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
        "ms" => 1_000_000,
        "s" => NS_PER_SEC,
        "m" => 60 * NS_PER_SEC,
        "h" => 3_600 * NS_PER_SEC,
        _ => return None,
    })
}

fn duration_unit_hint(unit: &str) -> Option<&'static str> {
    Some(match unit.to_ascii_lowercase().as_str() {
        "d" | "day" | "days" => "days are not supported, use hours, e.g. \"24h\"",
        "w" | "wk" | "week" | "weeks" => "weeks are not supported, use hours, e.g. \"168h\"",
        "sec" | "secs" | "second" | "seconds" => "write seconds as \"s\"",
        "min" | "mins" | "minute" | "minutes" => "write minutes as \"m\"",
        "hr" | "hrs" | "hour" | "hours" => "write hours as \"h\"",
        "msec" | "msecs" | "millisecond" | "milliseconds" => "write milliseconds as \"ms\"",
        "ns" | "us" | "\u{b5}s" | "\u{3bc}s" | "ms" | "s" | "m" | "h" => "units are lower case",
        _ => return None,
    })
}

/// Parses a Go `time.ParseDuration` string as Compose uses it (`10s`, `1m30s`, `1.5h`, `300ms`, `0`).
///
/// Negative durations are rejected; the maximum is Go's (`2562047h47m16.854775807s`).
pub fn parse_duration(s: &str) -> Result<Duration, UnitError> {
    let fail = |why: String| UnitError(format!("invalid duration {s:?}: {why}"));
    if s.is_empty() {
        return Err(fail(
            "empty value (write a number with a unit, e.g. \"10s\" or \"1m30s\")".into(),
        ));
    }
    if s.starts_with('-') {
        return Err(fail(format!(
            "negative durations are not allowed (remove the \"-\", e.g. {:?})",
            s.get(1..).unwrap_or("")
        )));
    }
    let body = s.strip_prefix('+').unwrap_or(s);
    if body == "0" {
        return Ok(Duration::ZERO);
    }
    if body.is_empty() {
        return Err(fail("missing number after \"+\" (e.g. \"10s\")".into()));
    }
    let mut rest = body;
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let Some((int, frac, after)) = split_decimal(rest) else {
            return Err(fail(format!(
                "expected a number at {rest:?} (write a number followed by a unit, e.g. \"10s\" or \"1.5h\")"
            )));
        };
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        let number = &rest[..rest.len() - after.len()];
        if unit.is_empty() {
            return Err(fail(format!(
                "missing unit after {number:?} ({DURATION_UNITS_HELP}; only a bare \"0\" may omit the unit)"
            )));
        }
        let Some(mult) = duration_unit(unit) else {
            let hint = duration_unit_hint(unit).map(|h| format!("{h}; ")).unwrap_or_default();
            return Err(fail(format!("unknown unit {unit:?} ({hint}{DURATION_UNITS_HELP})")));
        };
        let whole = parse_int_saturating(int);
        total = total
            .saturating_add(whole.saturating_mul(mult))
            .saturating_add(scaled_fraction(frac, mult));
        if total > I64_MAX {
            return Err(fail(
                "too large (the maximum is \"2562047h47m16.854775807s\", about 292 years)".into(),
            ));
        }
        rest = next;
    }
    let secs = u64::try_from(total / NS_PER_SEC).unwrap_or(u64::MAX);
    let nanos = u32::try_from(total % NS_PER_SEC).unwrap_or(0);
    Ok(Duration::new(secs, nanos))
}

/// Formats `v / 10^prec` with trailing fractional zeros removed (Go's `fmtFrac` + `fmtInt`).
fn format_scaled(v: u128, prec: u32) -> String {
    let scale = 10u128.pow(prec);
    let (int, frac) = (v / scale, v % scale);
    if frac == 0 {
        return int.to_string();
    }
    let digits = format!("{frac:0width$}", width = prec as usize);
    format!("{int}.{}", digits.trim_end_matches('0'))
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar (H. Hinnant's algorithm).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month as u32, day as u32)
}

/// Formats a duration the way Go's `time.Duration.String` does: `0s`, `500ms`, `1.5µs`, `10s`, `1m30s`, `1h0m0s`.
pub fn format_duration(d: Duration) -> String {
    let total = d.as_nanos();
    if total == 0 {
        return "0s".into();
    }
    if total < 1_000 {
        return format!("{total}ns");
    }
    if total < 1_000_000 {
        return format!("{}\u{b5}s", format_scaled(total, 3));
    }
    if total < NS_PER_SEC {
        return format!("{}ms", format_scaled(total, 6));
    }
    let secs = total / NS_PER_SEC;
    let (h, m) = (secs / 3_600, (secs / 60) % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if secs >= 60 {
        out.push_str(&format!("{m}m"));
    }
    out.push_str(&format_scaled(total % (60 * NS_PER_SEC), 9));
    out.push('s');
    out
}

// ---------------------------------------------------------------------------------------------------------------
// Sizes and CPUs
// ---------------------------------------------------------------------------------------------------------------

const BYTES_UNITS_HELP: &str =
    "use b, k, m, g, t or p (binary multiples, case-insensitive), optionally followed by \"b\" or \"ib\", \
     e.g. \"512m\" or \"1GiB\"";

/// Parses a memory size like Docker's `units.RAMInBytes`: `1024`, `512m`, `512MB`, `1.5g`, `1GiB`, `100k`, `2t`, `1p`.
///
/// Multiples are binary (k = 1024). Fractions are truncated to whole bytes. One space may separate the number and
/// the unit. The maximum is `i64::MAX` bytes, as Docker stores sizes in signed 64-bit fields.
pub fn parse_bytes(s: &str) -> Result<u64, UnitError> {
    let fail = |why: String| UnitError(format!("invalid size {s:?}: {why}"));
    if s.is_empty() {
        return Err(fail(
            "empty value (write a number with an optional unit, e.g. \"512m\" or \"1.5g\")".into(),
        ));
    }
    if s.starts_with('-') {
        return Err(fail("negative sizes are not allowed (e.g. \"512m\")".into()));
    }
    let Some((int, frac, rest)) = split_decimal(s) else {
        return Err(fail(
            "expected a number at the start (e.g. \"512m\" or \"1.5g\")".into(),
        ));
    };
    let suffix = rest.strip_prefix(' ').unwrap_or(rest);
    if suffix.starts_with(|c: char| c.is_ascii_digit() || c == '.') {
        let len = s
            .bytes()
            .take_while(|b| b.is_ascii_digit() || matches!(b, b'.' | b' '))
            .count();
        let token = s.get(..len).unwrap_or(s).trim_end();
        return Err(fail(format!(
            "{token:?} is not a number (write one decimal number followed by an optional unit, e.g. \"1.5g\")"
        )));
    }
    let lower = suffix.to_ascii_lowercase();
    let mult: u128 = match lower.as_str() {
        "" | "b" => 1,
        _ => {
            let mut chars = lower.chars();
            let base = match chars.next() {
                Some('k') => 1u128 << 10,
                Some('m') => 1 << 20,
                Some('g') => 1 << 30,
                Some('t') => 1 << 40,
                Some('p') => 1 << 50,
                _ => 0,
            };
            match chars.as_str() {
                "" | "b" | "ib" if base != 0 => base,
                _ => return Err(fail(format!("unknown unit {suffix:?} ({BYTES_UNITS_HELP})"))),
            }
        }
    };
    let total = parse_int_saturating(int)
        .saturating_mul(mult)
        .saturating_add(scaled_fraction(frac, mult));
    if total > I64_MAX {
        return Err(fail(format!(
            "too large (the maximum is {} bytes, just under 8192p)",
            i64::MAX
        )));
    }
    Ok(u64::try_from(total).unwrap_or(u64::MAX))
}

const NANO_CPUS: u64 = 1_000_000_000;

/// Parses a decimal number of CPUs (`0.5`, `2`, `.25`) into nano-CPUs (1 CPU = 1 000 000 000).
///
/// Like Docker, at most 9 significant decimal places are allowed (trailing zeros beyond that are fine).
pub fn parse_cpus(s: &str) -> Result<u64, UnitError> {
    let fail = |why: &str| UnitError(format!("invalid cpus {s:?}: {why}"));
    if s.starts_with('-') {
        return Err(fail(
            "negative values are not allowed (use a positive number such as \"0.5\" or \"2\")",
        ));
    }
    let (int, frac) = match split_decimal(s) {
        Some((int, frac, "")) => (int, frac),
        _ => return Err(fail("expected a decimal number of CPUs (e.g. \"0.5\" or \"2\")")),
    };
    let frac = frac.trim_end_matches('0');
    if frac.len() > 9 {
        return Err(fail(
            "too precise: at most 9 decimal places are supported (the smallest step is \"0.000000001\")",
        ));
    }
    let frac_nanos = format!("{frac:0<9}").parse::<u128>().unwrap_or(0);
    let total = parse_int_saturating(int)
        .saturating_mul(u128::from(NANO_CPUS))
        .saturating_add(frac_nanos);
    if total > I64_MAX {
        return Err(fail("too large (the maximum is \"9223372036.854775807\")"));
    }
    Ok(u64::try_from(total).unwrap_or(u64::MAX))
}

/// Formats nano-CPUs as a decimal number of CPUs: `500_000_000` → `"0.5"`, `2_000_000_000` → `"2"`.
pub fn format_cpus(nano: u64) -> String {
    format_scaled(u128::from(nano), 9)
}

// ---------------------------------------------------------------------------------------------------------------
// Ports
// ---------------------------------------------------------------------------------------------------------------

/// Transport protocol of a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP (the default).
    #[default]
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl Protocol {
    /// The lower-case name used in Compose files (`tcp`, `udp`, `sctp`).
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a port is published: through the routing mesh, or directly on the node running the task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PublishMode {
    /// Routing mesh: every node listens on the published port (the default).
    #[default]
    Ingress,
    /// Only the node running the task listens.
    Host,
}

impl PublishMode {
    /// The lower-case name used in Compose files (`ingress`, `host`).
    pub fn as_str(self) -> &'static str {
        match self {
            PublishMode::Ingress => "ingress",
            PublishMode::Host => "host",
        }
    }
}

impl fmt::Display for PublishMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One published (or merely exposed) port of a service.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
pub struct PortConfig {
    /// Port inside the container.
    pub target: u16,
    /// Port on the nodes; `None` lets Swarm pick one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published: Option<u16>,
    /// Transport protocol.
    pub protocol: Protocol,
    /// Publish mode.
    pub mode: PublishMode,
    /// Host IP from the short syntax (canonical text form). Swarm services ignore it, as Docker does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<String>,
}

/// Parses a port protocol, case-insensitively: `tcp`, `udp` or `sctp`.
pub fn parse_protocol(s: &str) -> Result<Protocol, UnitError> {
    match s.to_ascii_lowercase().as_str() {
        "tcp" => Ok(Protocol::Tcp),
        "udp" => Ok(Protocol::Udp),
        "sctp" => Ok(Protocol::Sctp),
        _ => Err(UnitError(format!(
            "invalid protocol {s:?}: must be one of tcp, udp or sctp{}",
            suggestion(s, &["tcp", "udp", "sctp"])
        ))),
    }
}

/// Parses a port publish mode, case-insensitively: `ingress` or `host`.
pub fn parse_publish_mode(s: &str) -> Result<PublishMode, UnitError> {
    match s.to_ascii_lowercase().as_str() {
        "ingress" => Ok(PublishMode::Ingress),
        "host" => Ok(PublishMode::Host),
        _ => Err(UnitError(format!(
            "invalid publish mode {s:?}: must be one of ingress or host{}",
            suggestion(s, &["ingress", "host"])
        ))),
    }
}

const PORT_HELP: &str =
    "use [HOST_IP:][PUBLISHED:]TARGET[/PROTOCOL], e.g. \"80\", \"8080:80/udp\" or \"127.0.0.1:8080:80\"";

fn parse_port_number(p: &str, what: &str, input: &str) -> Result<u16, UnitError> {
    let fail = |why: String| UnitError(format!("invalid port {input:?}: {why}"));
    if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
        return Err(fail(format!("{what} {p:?} is not a port number ({PORT_HELP})")));
    }
    match parse_int_saturating(p) {
        0 => Err(fail(format!(
            "{what} 0 is not allowed (ports must be between 1 and 65535)"
        ))),
        n => u16::try_from(n).map_err(|_| {
            fail(format!(
                "{what} {p} is out of range (ports must be between 1 and 65535)"
            ))
        }),
    }
}

fn parse_port_range(p: &str, what: &str, input: &str) -> Result<(u16, u16), UnitError> {
    match p.split_once('-') {
        None => parse_port_number(p, what, input).map(|n| (n, n)),
        Some((a, b)) => {
            let start = parse_port_number(a, what, input)?;
            let end = parse_port_number(b, what, input)?;
            if start > end {
                return Err(UnitError(format!(
                    "invalid port {input:?}: {what} range {p:?} ends before it starts \
                     (write it low-high, e.g. \"{end}-{start}\")"
                )));
            }
            Ok((start, end))
        }
    }
}

/// Parses a Compose short-syntax port (`80`, `8080:80/udp`, `127.0.0.1:8080:80`, `[::1]::80`, `9090-9091:8080-8081`).
///
/// Ranges expand to one entry per port, in ascending order. A published range with a single target port expands
/// to one entry per published port, all with that target (as Docker does). The mode is always `Ingress`.
pub fn parse_port_short(s: &str) -> Result<Vec<PortConfig>, UnitError> {
    let fail = |why: String| UnitError(format!("invalid port {s:?}: {why}"));
    if s.is_empty() {
        return Err(fail(format!("empty value ({PORT_HELP})")));
    }
    if s.trim() != s {
        return Err(fail("remove the leading or trailing whitespace".into()));
    }
    let (spec, protocol) = match s.split_once('/') {
        None => (s, Protocol::Tcp),
        Some((_, "")) => {
            return Err(fail(
                "missing protocol after \"/\" (use tcp, udp or sctp, e.g. \"80/udp\")".into(),
            ))
        }
        Some((_, p)) if p.contains('/') => {
            return Err(fail(format!(
                "only one protocol may follow the port, got {p:?} (e.g. \"80/udp\")"
            )))
        }
        Some((spec, p)) => (spec, parse_protocol(p).map_err(|e| fail(e.0))?),
    };
    let (ip, published, target) = if let Some(bracketed) = spec.strip_prefix('[') {
        let Some((ip, after)) = bracketed.split_once(']') else {
            return Err(fail(format!("missing \"]\" after the IPv6 host address ({PORT_HELP})")));
        };
        let Some(after) = after.strip_prefix(':') else {
            return Err(fail("expected \":\" after \"]\" (e.g. \"[::1]:8080:80\")".into()));
        };
        let Some((published, target)) = after.split_once(':') else {
            return Err(fail(format!(
                "a host IP needs a published port too (write \"[{ip}]:{after}:{after}\", \
                 or \"[{ip}]::{after}\" to let Swarm pick one)"
            )));
        };
        if target.contains(':') {
            return Err(fail(format!("too many \":\" after the host IP ({PORT_HELP})")));
        }
        (Some(ip), published, target)
    } else {
        let parts: Vec<&str> = spec.split(':').collect();
        match parts.as_slice() {
            [target] => (None, "", *target),
            [published, target] => {
                if published.parse::<IpAddr>().is_ok() {
                    return Err(fail(format!(
                        "{published:?} is a host IP, not a port (write \"{published}:{target}:{target}\", \
                         or \"{published}::{target}\" to let Swarm pick the published port)"
                    )));
                }
                (None, *published, *target)
            }
            [ip, published, target] => (Some(*ip), *published, *target),
            [.., published, target] => {
                // Unbracketed IPv6 host address, e.g. "::1:8080:80".
                let ip_len = spec.len().saturating_sub(published.len() + target.len() + 2);
                (Some(spec.get(..ip_len).unwrap_or("")), *published, *target)
            }
            [] => (None, "", ""),
        }
    };
    let host_ip = match ip {
        None => None,
        Some(ip) => match ip.parse::<IpAddr>() {
            Ok(addr) => Some(addr.to_string()),
            Err(_) => {
                return Err(fail(format!(
                "host IP {ip:?} is not a valid IPv4 or IPv6 address (e.g. \"127.0.0.1:8080:80\" or \"[::1]:8080:80\")"
            )))
            }
        },
    };
    if target.is_empty() {
        return Err(fail(format!("missing target (container) port ({PORT_HELP})")));
    }
    let (t_start, t_end) = parse_port_range(target, "target port", s)?;
    let published = if published.is_empty() {
        None
    } else {
        Some(parse_port_range(published, "published port", s)?)
    };
    let entry = |target: u16, published: Option<u16>| PortConfig {
        target,
        published,
        protocol,
        mode: PublishMode::Ingress,
        host_ip: host_ip.clone(),
    };
    let out = match published {
        None => (t_start..=t_end).map(|t| entry(t, None)).collect(),
        Some((p_start, p_end)) if t_start == t_end => (p_start..=p_end).map(|p| entry(t_start, Some(p))).collect(),
        Some((p_start, p_end)) => {
            if p_end - p_start != t_end - t_start {
                return Err(fail(format!(
                    "published range \"{p_start}-{p_end}\" has {} ports but target range {target:?} has {} (make both \
                     ranges the same length)",
                    u32::from(p_end - p_start) + 1,
                    u32::from(t_end - t_start) + 1,
                )));
            }
            (t_start..=t_end)
                .zip(p_start..=p_end)
                .map(|(t, p)| entry(t, Some(p)))
                .collect()
        }
    };
    Ok(out)
}

// ---------------------------------------------------------------------------------------------------------------
// Volumes
// ---------------------------------------------------------------------------------------------------------------

/// Kind of mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum MountType {
    /// A named or anonymous volume (the default).
    #[default]
    Volume,
    /// A host path bind-mounted into the container.
    Bind,
    /// An in-memory filesystem (never produced by the short syntax).
    Tmpfs,
}

/// A Compose short-syntax volume entry (`SOURCE:TARGET[:OPTIONS]` or an anonymous `TARGET`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
pub struct VolumeShort {
    /// Volume or bind.
    pub kind: MountType,
    /// Named volume or host path as written (relative and `~` paths are not resolved); `None` for anonymous volumes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Absolute path inside the container.
    pub target: String,
    /// `ro` was given.
    pub read_only: bool,
    /// `nocopy` was given (volumes only).
    pub no_copy: bool,
    /// Bind propagation (`shared`, `slave`, `private`, `rshared`, `rslave`, `rprivate`), binds only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind_propagation: Option<String>,
}

const PROPAGATIONS: [&str; 6] = ["shared", "slave", "private", "rshared", "rslave", "rprivate"];
const VOLUME_OPTIONS: [&str; 14] = [
    "ro",
    "rw",
    "nocopy",
    "z",
    "Z",
    "shared",
    "slave",
    "private",
    "rshared",
    "rslave",
    "rprivate",
    "cached",
    "delegated",
    "consistent",
];
const VOLUME_HELP: &str =
    "use [SOURCE:]TARGET[:OPTIONS], e.g. \"/data\", \"dbdata:/var/lib/db:ro\" or \"./cfg:/etc/cfg:ro\"";

fn is_volume_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphanumeric())
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Parses a Compose short-syntax volume (`/data`, `dbdata:/var/lib/db:ro`, `./cfg:/etc/cfg:ro`, `/host:/ctr:rw,z`).
///
/// A source starting with `/`, `.` or `~` is a bind mount, anything else names a volume. Options: `ro`, `rw`,
/// `nocopy`, `z`, `Z`, the six bind propagations, and the ignored macOS consistency hints `cached`, `delegated`,
/// `consistent`.
pub fn parse_volume_short(s: &str) -> Result<VolumeShort, UnitError> {
    let fail = |why: String| UnitError(format!("invalid volume {s:?}: {why}"));
    if s.is_empty() {
        return Err(fail(format!("empty value ({VOLUME_HELP})")));
    }
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() > 3 {
        return Err(fail(format!(
            "too many \":\" ({VOLUME_HELP}; paths containing \":\" need the long syntax)"
        )));
    }
    if parts.iter().any(|p| p.is_empty()) {
        return Err(fail(format!("empty section between \":\" ({VOLUME_HELP})")));
    }
    let (source, target, options) = match parts.as_slice() {
        [target] => (None, *target, None),
        [source, target] => (Some(*source), *target, None),
        [source, target, options] => (Some(*source), *target, Some(*options)),
        _ => return Err(fail(format!("empty value ({VOLUME_HELP})"))),
    };
    if !target.starts_with('/') {
        return Err(fail(format!(
            "target {target:?} must be an absolute path inside the container (e.g. \"/data\")"
        )));
    }
    if target == "/" {
        return Err(fail(
            "target cannot be \"/\", the container's root (mount at a sub-directory such as \"/data\")".into(),
        ));
    }
    let kind = match source {
        Some(src) if src.starts_with(['/', '.', '~']) => MountType::Bind,
        Some(src) if !is_volume_name(src) => {
            return Err(fail(format!(
                "volume name {src:?} may only contain letters, digits, \"_\", \".\" and \"-\" and must start \
                 with a letter or digit (for a host path start it with \"/\", \"./\" or \"~/\")"
            )))
        }
        _ => MountType::Volume,
    };
    let mut volume = VolumeShort {
        kind,
        source: source.map(str::to_string),
        target: target.to_string(),
        read_only: false,
        no_copy: false,
        bind_propagation: None,
    };
    let (mut saw_ro, mut saw_rw) = (false, false);
    for option in options.into_iter().flat_map(|o| o.split(',')) {
        match option {
            "ro" => saw_ro = true,
            "rw" => saw_rw = true,
            "nocopy" => volume.no_copy = true,
            "z" | "Z" | "cached" | "delegated" | "consistent" => {}
            p if PROPAGATIONS.contains(&p) => {
                if let Some(prev) = &volume.bind_propagation {
                    if prev != p {
                        return Err(fail(format!(
                            "conflicting bind propagations {prev:?} and {p:?} (keep only one)"
                        )));
                    }
                }
                volume.bind_propagation = Some(p.to_string());
            }
            "" => return Err(fail("empty option between \",\" (e.g. \"ro,z\")".into())),
            other => {
                return Err(fail(format!(
                    "unknown option {other:?}{} (valid options are ro, rw, nocopy, z, Z, shared, slave, private, \
                     rshared, rslave, rprivate)",
                    suggestion(other, &VOLUME_OPTIONS)
                )))
            }
        }
    }
    if saw_ro && saw_rw {
        return Err(fail("both \"ro\" and \"rw\" given (keep only one)".into()));
    }
    volume.read_only = saw_ro;
    if volume.no_copy && volume.kind == MountType::Bind {
        return Err(fail(
            "\"nocopy\" only applies to volumes, not bind mounts (remove it)".into(),
        ));
    }
    if let (Some(p), MountType::Volume) = (&volume.bind_propagation, volume.kind) {
        return Err(fail(format!(
            "bind propagation {p:?} only applies to bind mounts (remove it, or use a host path starting with \
             \"/\" or \"./\")"
        )));
    }
    Ok(volume)
}

// ---------------------------------------------------------------------------------------------------------------
// Placement
// ---------------------------------------------------------------------------------------------------------------

/// Constraint operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ConstraintOp {
    /// `==`
    Eq,
    /// `!=`
    Ne,
}

impl ConstraintOp {
    /// `==` or `!=`.
    pub fn as_str(self) -> &'static str {
        match self {
            ConstraintOp::Eq => "==",
            ConstraintOp::Ne => "!=",
        }
    }
}

impl fmt::Display for ConstraintOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A Swarm placement constraint such as `node.role==manager`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
pub struct Constraint {
    /// Normalized key: the prefix in lower case, a label name as written (`node.labels.Zone`).
    pub key: String,
    /// Operator.
    pub op: ConstraintOp,
    /// Value, trimmed (`node.role` values are lower-cased).
    pub value: String,
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}{}", self.key, self.op, self.value)
    }
}

const NODE_LABELS: &str = "node.labels.";
const ENGINE_LABELS: &str = "engine.labels.";
const CONSTRAINT_KEYS: [&str; 6] = [
    "node.id",
    "node.hostname",
    "node.role",
    "node.ip",
    "node.platform.os",
    "node.platform.arch",
];
const VALID_KEYS_HELP: &str = "valid keys are node.id, node.hostname, node.role, node.ip, node.platform.os, \
     node.platform.arch, node.labels.<name> and engine.labels.<name>";

fn is_label_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Splits `key` into a normalized label key if it has a `node.labels.`/`engine.labels.` prefix (any case).
/// `Ok(None)`: no such prefix. `Err(why)`: the prefix is there but the label name is empty or malformed.
fn normalize_label_key(key: &str) -> Result<Option<String>, String> {
    for prefix in [NODE_LABELS, ENGINE_LABELS] {
        if key.eq_ignore_ascii_case(prefix.trim_end_matches('.')) {
            return Err(format!("missing label name after {key:?} (e.g. \"{prefix}zone\")"));
        }
        let Some(head) = key.get(..prefix.len()) else { continue };
        if !head.eq_ignore_ascii_case(prefix) {
            continue;
        }
        let label = &key[prefix.len()..];
        if label.is_empty() {
            return Err(format!("missing label name after {prefix:?} (e.g. \"{prefix}zone\")"));
        }
        if !is_label_name(label) {
            return Err(format!(
                "label name {label:?} may only contain letters, digits, \"-\", \"_\" and \".\""
            ));
        }
        return Ok(Some(format!("{prefix}{label}")));
    }
    Ok(None)
}

/// Suggestion candidates for a mistyped key: the fixed keys plus label keys built from the key's tail.
fn key_suggestion(key: &str, fixed: &[&str]) -> String {
    let lower = key.to_ascii_lowercase();
    let mut owned: Vec<String> = Vec::new();
    let segments: Vec<&str> = key.splitn(3, '.').collect();
    if let [_, _, tail] = segments.as_slice() {
        owned.push(format!("{NODE_LABELS}{tail}"));
        owned.push(format!("{ENGINE_LABELS}{tail}"));
    }
    if let Some((_, tail)) = key.split_once('.') {
        if !tail.is_empty() && (lower.starts_with("label") || lower.starts_with("node") || lower.starts_with("engine"))
        {
            owned.push(format!("{NODE_LABELS}{tail}"));
            owned.push(format!("{ENGINE_LABELS}{tail}"));
        }
    }
    let mut candidates: Vec<&str> = fixed.to_vec();
    candidates.extend(owned.iter().map(String::as_str));
    match did_you_mean(key, &candidates) {
        Some(found) => format!(" (did you mean {found:?}?)"),
        None => String::new(),
    }
}

/// Checks a constraint value against Swarm's allowed characters.
fn is_constraint_value(value: &str) -> bool {
    value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c.is_whitespace() || ":-_.*()?+[]\\^$|/".contains(c))
}

fn is_ip_or_cidr(value: &str) -> bool {
    if value.parse::<IpAddr>().is_ok() {
        return true;
    }
    let Some((addr, bits)) = value.split_once('/') else {
        return false;
    };
    let max = match addr.parse::<IpAddr>() {
        Ok(IpAddr::V4(_)) => 32,
        Ok(IpAddr::V6(_)) => 128,
        Err(_) => return false,
    };
    !bits.is_empty() && bits.len() <= 3 && bits.bytes().all(|b| b.is_ascii_digit()) && parse_int_saturating(bits) <= max
}

/// Parses a Swarm placement constraint, `KEY==VALUE` or `KEY!=VALUE` (e.g. `node.role==manager`).
///
/// Whitespace around key and value is trimmed; the key prefix is matched case-insensitively and normalized to lower
/// case while a label name keeps its case. `node.role` must be `manager` or `worker`; `node.ip` an IP or CIDR.
pub fn parse_constraint(s: &str) -> Result<Constraint, UnitError> {
    let fail = |why: String| UnitError(format!("invalid constraint {s:?}: {why}"));
    let op_at = [("==", ConstraintOp::Eq), ("!=", ConstraintOp::Ne)]
        .into_iter()
        .filter_map(|(text, op)| s.find(text).map(|i| (i, op)))
        .min_by_key(|(i, _)| *i);
    let Some((at, op)) = op_at else {
        let hint = if s.contains('=') {
            "use \"==\" or \"!=\", not \"=\""
        } else {
            "write KEY==VALUE or KEY!=VALUE"
        };
        return Err(fail(format!("missing operator ({hint}, e.g. \"node.role==manager\")")));
    };
    let key = s[..at].trim();
    let value = s[at + 2..].trim();
    if key.is_empty() {
        return Err(fail(format!(
            "missing key before {:?} (e.g. \"node.role{}manager\"; {VALID_KEYS_HELP})",
            op.as_str(),
            op
        )));
    }
    if value.is_empty() {
        return Err(fail(format!(
            "missing value after {:?} (e.g. \"{key}{op}VALUE\")",
            op.as_str()
        )));
    }
    if value.contains('=') || value.contains('!') {
        return Err(fail(format!(
            "value {value:?} contains a second operator (use one \"==\" or \"!=\" per constraint)"
        )));
    }
    if !is_constraint_value(value) {
        return Err(fail(format!(
            "value {value:?} has characters Swarm does not accept (use letters, digits, spaces and :-_.*()?+[]\\^$|/)"
        )));
    }
    let lower = key.to_ascii_lowercase();
    let (key, value) = if CONSTRAINT_KEYS.contains(&lower.as_str()) {
        let value = match lower.as_str() {
            "node.role" => match value.to_ascii_lowercase().as_str() {
                v @ ("manager" | "worker") => v.to_string(),
                _ => {
                    return Err(fail(format!(
                        "node.role must be \"manager\" or \"worker\", got {value:?}{}",
                        suggestion(value, &["manager", "worker"])
                    )))
                }
            },
            "node.ip" if !is_ip_or_cidr(value) => {
                return Err(fail(format!(
                    "node.ip must be an IP address or CIDR network, got {value:?} \
                     (e.g. \"node.ip==10.0.0.5\" or \"node.ip!=10.0.0.0/24\")"
                )))
            }
            _ => value.to_string(),
        };
        (lower, value)
    } else {
        match normalize_label_key(key) {
            Ok(Some(key)) => (key, value.to_string()),
            Ok(None) => {
                return Err(fail(format!(
                    "unknown key {key:?}{} ({VALID_KEYS_HELP})",
                    key_suggestion(key, &CONSTRAINT_KEYS)
                )))
            }
            Err(why) => return Err(fail(why)),
        }
    };
    Ok(Constraint { key, op, value })
}

/// Parses a `spread` placement-preference descriptor (`node.labels.zone`, `engine.labels.K`), returning it normalized
/// (prefix lower-cased, label name as written, whitespace trimmed).
pub fn parse_spread_preference(s: &str) -> Result<String, UnitError> {
    let fail = |why: String| UnitError(format!("invalid spread preference {s:?}: {why}"));
    let key = s.trim();
    match normalize_label_key(key) {
        Ok(Some(key)) => Ok(key),
        Ok(None) => Err(fail(format!(
            "must be \"node.labels.<name>\" or \"engine.labels.<name>\"{} (e.g. \"node.labels.zone\")",
            key_suggestion(key, &[])
        ))),
        Err(why) => Err(fail(why)),
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Suggestions
// ---------------------------------------------------------------------------------------------------------------

/// Edit distance counting insertions, deletions, substitutions and adjacent transpositions as one edit each
/// (Levenshtein extended with swaps, the "optimal string alignment" distance).
fn edit_distance(a: &[char], b: &[char]) -> usize {
    let width = b.len() + 1;
    let mut rows = vec![vec![0usize; width]; 3];
    rows[2] = (0..width).collect();
    for (i, ca) in a.iter().enumerate() {
        rows.rotate_left(1);
        rows[2][0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let mut d = (rows[1][j] + usize::from(ca != cb))
                .min(rows[1][j + 1] + 1)
                .min(rows[2][j] + 1);
            if i > 0 && j > 0 && a[i - 1] == *cb && b[j - 1] == *ca {
                d = d.min(rows[0][j - 1] + 1);
            }
            rows[2][j + 1] = d;
        }
    }
    rows[2][b.len()]
}

/// Returns the candidate closest to `word` by case-insensitive edit distance (Levenshtein, with an adjacent swap
/// counting as one edit), if that distance is at most `max(1, chars(word) / 3)`. Ties go to the earliest candidate;
/// an empty `word` never matches.
pub fn did_you_mean<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let w: Vec<char> = word.to_lowercase().chars().collect();
    if w.is_empty() {
        return None;
    }
    let max = (w.len() / 3).max(1);
    let mut best: Option<(usize, &'a str)> = None;
    for &candidate in candidates {
        let c: Vec<char> = candidate.to_lowercase().chars().collect();
        if c.len().abs_diff(w.len()) > max {
            continue;
        }
        let d = edit_distance(&w, &c);
        if d <= max && best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, candidate));
        }
    }
    best.map(|(_, c)| c)
}

/// `" (did you mean \"X\"?)"` or an empty string.
fn suggestion(word: &str, candidates: &[&str]) -> String {
    match did_you_mean(word, candidates) {
        Some(found) => format!(" (did you mean {found:?}?)"),
        None => String::new(),
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Signals
// ---------------------------------------------------------------------------------------------------------------

/// Standard Linux signal names, numbered 1 to 31.
const SIGNALS: [&str; 31] = [
    "HUP", "INT", "QUIT", "ILL", "TRAP", "ABRT", "BUS", "FPE", "KILL", "USR1", "SEGV", "USR2", "PIPE", "ALRM", "TERM",
    "STKFLT", "CHLD", "CONT", "STOP", "TSTP", "TTIN", "TTOU", "URG", "XCPU", "XFSZ", "VTALRM", "PROF", "WINCH", "IO",
    "PWR", "SYS",
];
const SIGRTMIN: u32 = 34;
const SIGRTMAX: u32 = 64;
const SIGNAL_HELP: &str =
    "use a name such as \"SIGTERM\" or \"TERM\", a number 1-31 or 34-64, or \"SIGRTMIN+N\"/\"SIGRTMAX-N\"";

fn signal_name(n: u32) -> Option<String> {
    match n {
        1..=31 => SIGNALS.get(n as usize - 1).map(|name| format!("SIG{name}")),
        SIGRTMIN => Some("SIGRTMIN".into()),
        SIGRTMAX => Some("SIGRTMAX".into()),
        35..=49 => Some(format!("SIGRTMIN+{}", n - SIGRTMIN)),
        50..=63 => Some(format!("SIGRTMAX-{}", SIGRTMAX - n)),
        _ => None,
    }
}

/// Parses a stop signal (`SIGTERM`, `term`, `15`, `SIGRTMIN+3`) into its canonical `SIGTERM`-style name.
///
/// Names are case-insensitive, the `SIG` prefix is optional, and the aliases `IOT`, `CLD` and `POLL` map to
/// `SIGABRT`, `SIGCHLD` and `SIGIO`. Numbers map to names (1-31 standard, 34-64 real-time).
pub fn parse_signal(s: &str) -> Result<String, UnitError> {
    let fail = |why: String| UnitError(format!("invalid signal {s:?}: {why}"));
    let t = s.trim();
    if t.is_empty() {
        return Err(fail(format!("empty value ({SIGNAL_HELP})")));
    }
    if t.bytes().all(|b| b.is_ascii_digit()) {
        let n = u32::try_from(parse_int_saturating(t)).unwrap_or(u32::MAX);
        return signal_name(n).ok_or_else(|| fail(format!("no Linux signal has number {t} ({SIGNAL_HELP})")));
    }
    let upper = t.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    let canonical = match name {
        "IOT" => Some("SIGABRT".to_string()),
        "CLD" => Some("SIGCHLD".to_string()),
        "POLL" => Some("SIGIO".to_string()),
        "RTMIN" => Some("SIGRTMIN".to_string()),
        "RTMAX" => Some("SIGRTMAX".to_string()),
        _ => {
            let rt_offset = |rest: &str, max: u32| -> Option<u32> {
                let ok = !rest.is_empty() && rest.len() <= 2 && rest.bytes().all(|b| b.is_ascii_digit());
                let n = if ok { rest.parse::<u32>().ok()? } else { return None };
                (1..=max).contains(&n).then_some(n)
            };
            if let Some(rest) = name.strip_prefix("RTMIN+") {
                rt_offset(rest, 15).and_then(|n| signal_name(SIGRTMIN + n))
            } else if let Some(rest) = name.strip_prefix("RTMAX-") {
                rt_offset(rest, 14).and_then(|n| signal_name(SIGRTMAX - n))
            } else {
                SIGNALS.contains(&name).then(|| format!("SIG{name}"))
            }
        }
    };
    canonical.ok_or_else(|| {
        if name.starts_with("RTMIN+") || name.starts_with("RTMAX-") {
            return fail(
                "real-time offset out of range (use SIGRTMIN+1 to SIGRTMIN+15 or SIGRTMAX-14 to SIGRTMAX-1)".into(),
            );
        }
        let names: Vec<String> = SIGNALS.iter().map(|n| format!("SIG{n}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let with_sig = format!("SIG{name}");
        fail(format!(
            "unknown signal name{} ({SIGNAL_HELP})",
            suggestion(&with_sig, &names)
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn err<T: fmt::Debug>(r: Result<T, UnitError>) -> String {
        r.expect_err("expected an error").0
    }

    fn port(target: u16, published: Option<u16>, protocol: Protocol, host_ip: Option<&str>) -> PortConfig {
        PortConfig {
            target,
            published,
            protocol,
            mode: PublishMode::Ingress,
            host_ip: host_ip.map(str::to_string),
        }
    }

    // ----- durations -----

    #[test]
    fn durations_parse() {
        let cases: [(&str, u64); 14] = [
            ("10s", 10_000_000_000),
            ("1m30s", 90_000_000_000),
            ("1.5h", 5_400_000_000_000),
            ("300ms", 300_000_000),
            ("0", 0),
            ("0s", 0),
            ("+1s", 1_000_000_000),
            (".5s", 500_000_000),
            ("5.s", 5_000_000_000),
            ("1us", 1_000),
            ("1\u{b5}s", 1_000),
            ("1\u{3bc}s", 1_000),
            ("1.0000000001s", 1_000_000_000),
            ("2562047h47m16.854775807s", i64::MAX as u64),
        ];
        for (input, nanos) in cases {
            assert_eq!(parse_duration(input), Ok(Duration::from_nanos(nanos)), "{input}");
        }
        assert_eq!(parse_duration("1h30m"), parse_duration("90m"));
        assert_eq!(parse_duration("1500ns"), Ok(Duration::from_nanos(1_500)));
    }

    #[test]
    fn durations_errors() {
        assert_eq!(
            err(parse_duration("10x")),
            "invalid duration \"10x\": unknown unit \"x\" (use ns, us, ms, s, m or h, e.g. \"1m30s\")"
        );
        assert_eq!(
            err(parse_duration("10")),
            "invalid duration \"10\": missing unit after \"10\" (use ns, us, ms, s, m or h, e.g. \"1m30s\"; only a \
             bare \"0\" may omit the unit)"
        );
        assert_eq!(
            err(parse_duration("-1s")),
            "invalid duration \"-1s\": negative durations are not allowed (remove the \"-\", e.g. \"1s\")"
        );
        assert_eq!(
            err(parse_duration("")),
            "invalid duration \"\": empty value (write a number with a unit, e.g. \"10s\" or \"1m30s\")"
        );
        assert_eq!(
            err(parse_duration("1d")),
            "invalid duration \"1d\": unknown unit \"d\" (days are not supported, use hours, e.g. \"24h\"; use ns, \
             us, ms, s, m or h, e.g. \"1m30s\")"
        );
        assert!(err(parse_duration("10S")).contains("units are lower case"));
        assert!(err(parse_duration("2562048h")).contains("too large"));
        assert!(err(parse_duration("100000000000000000000s")).contains("too large"));
        for bad in ["s", ".", "1m 30s", "1e3s", "+", "00", " 1s", "1.2.3s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations_format_like_go() {
        let cases: [(u64, &str); 12] = [
            (0, "0s"),
            (1, "1ns"),
            (1_500, "1.5\u{b5}s"),
            (500_000_000, "500ms"),
            (1_500_000, "1.5ms"),
            (10_000_000_000, "10s"),
            (90_000_000_000, "1m30s"),
            (3_600_000_000_000, "1h0m0s"),
            (5_400_000_000_000, "1h30m0s"),
            (61_500_000_000, "1m1.5s"),
            (1_000_000_001, "1.000000001s"),
            (i64::MAX as u64, "2562047h47m16.854775807s"),
        ];
        for (nanos, text) in cases {
            assert_eq!(format_duration(Duration::from_nanos(nanos)), text);
        }
    }

    // ----- bytes and cpus -----

    #[test]
    fn bytes_parse() {
        let cases: [(&str, u64); 20] = [
            ("1024", 1024),
            ("512m", 512 << 20),
            ("512M", 512 << 20),
            ("512mb", 512 << 20),
            ("1g", 1 << 30),
            ("1.5GB", 1_610_612_736),
            ("100k", 102_400),
            ("2t", 2 << 40),
            ("1p", 1 << 50),
            ("1KiB", 1024),
            ("1GiB", 1 << 30),
            ("1MiB", 1 << 20),
            ("512 MB", 512 << 20),
            (".5g", 1 << 29),
            ("5.g", 5 << 30),
            ("1 b", 1),
            ("1b", 1),
            ("1.5", 1),
            ("0", 0),
            ("9223372036854775807", i64::MAX as u64),
        ];
        for (input, bytes) in cases {
            assert_eq!(parse_bytes(input), Ok(bytes), "{input}");
        }
    }

    #[test]
    fn bytes_errors() {
        assert_eq!(
            err(parse_bytes("1x")),
            "invalid size \"1x\": unknown unit \"x\" (use b, k, m, g, t or p (binary multiples, case-insensitive), \
             optionally followed by \"b\" or \"ib\", e.g. \"512m\" or \"1GiB\")"
        );
        assert_eq!(
            err(parse_bytes("-1")),
            "invalid size \"-1\": negative sizes are not allowed (e.g. \"512m\")"
        );
        assert_eq!(
            err(parse_bytes("8192p")),
            "invalid size \"8192p\": too large (the maximum is 9223372036854775807 bytes, just under 8192p)"
        );
        assert!(err(parse_bytes("1.2.3")).contains("\"1.2.3\" is not a number"));
        for bad in [
            "",
            "m",
            "1bb",
            "1e3",
            " 1k",
            "1k ",
            "1  k",
            "9223372036854775808",
            "1kbb",
            "1ki",
        ] {
            assert!(parse_bytes(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cpus_parse_and_format() {
        assert_eq!(parse_cpus("0.5"), Ok(500_000_000));
        assert_eq!(parse_cpus("2"), Ok(2_000_000_000));
        assert_eq!(parse_cpus(".25"), Ok(250_000_000));
        assert_eq!(parse_cpus("5."), Ok(5_000_000_000));
        assert_eq!(parse_cpus("0"), Ok(0));
        assert_eq!(parse_cpus("0.000000001"), Ok(1));
        assert_eq!(parse_cpus("1.0000000000"), Ok(1_000_000_000));
        assert_eq!(
            err(parse_cpus("1.0000000001")),
            "invalid cpus \"1.0000000001\": too precise: at most 9 decimal places are supported (the smallest step \
             is \"0.000000001\")"
        );
        assert_eq!(
            err(parse_cpus("-1")),
            "invalid cpus \"-1\": negative values are not allowed (use a positive number such as \"0.5\" or \"2\")"
        );
        for bad in ["", ".", "abc", "1/2", "1e-3", "+1", " 1", "9223372037"] {
            assert!(parse_cpus(bad).is_err(), "{bad}");
        }
        assert_eq!(format_cpus(500_000_000), "0.5");
        assert_eq!(format_cpus(2_000_000_000), "2");
        assert_eq!(format_cpus(1), "0.000000001");
        assert_eq!(format_cpus(0), "0");
    }

    // ----- ports -----

    #[test]
    fn ports_parse() {
        use Protocol::*;
        assert_eq!(parse_port_short("80"), Ok(vec![port(80, None, Tcp, None)]));
        assert_eq!(parse_port_short("8080:80"), Ok(vec![port(80, Some(8080), Tcp, None)]));
        assert_eq!(
            parse_port_short("8080:80/udp"),
            Ok(vec![port(80, Some(8080), Udp, None)])
        );
        assert_eq!(parse_port_short("80/TCP"), Ok(vec![port(80, None, Tcp, None)]));
        assert_eq!(parse_port_short("80/sctp"), Ok(vec![port(80, None, Sctp, None)]));
        assert_eq!(
            parse_port_short("127.0.0.1:8080:80"),
            Ok(vec![port(80, Some(8080), Tcp, Some("127.0.0.1"))])
        );
        assert_eq!(
            parse_port_short("[::1]:8080:80"),
            Ok(vec![port(80, Some(8080), Tcp, Some("::1"))])
        );
        assert_eq!(
            parse_port_short("::1:8080:80"),
            Ok(vec![port(80, Some(8080), Tcp, Some("::1"))])
        );
        assert_eq!(
            parse_port_short("[::1]::80/udp"),
            Ok(vec![port(80, None, Udp, Some("::1"))])
        );
        assert_eq!(
            parse_port_short("127.0.0.1::80"),
            Ok(vec![port(80, None, Tcp, Some("127.0.0.1"))])
        );
        assert_eq!(parse_port_short(":80"), Ok(vec![port(80, None, Tcp, None)]));
        assert_eq!(parse_port_short("080"), Ok(vec![port(80, None, Tcp, None)]));
        assert_eq!(
            parse_port_short("3000-3005"),
            Ok((3000..=3005).map(|t| port(t, None, Tcp, None)).collect())
        );
        assert_eq!(
            parse_port_short("9090-9091:8080-8081"),
            Ok(vec![
                port(8080, Some(9090), Tcp, None),
                port(8081, Some(9091), Tcp, None)
            ])
        );
        assert_eq!(
            parse_port_short("127.0.0.1:8080-8081:80-81/udp"),
            Ok(vec![
                port(80, Some(8080), Udp, Some("127.0.0.1")),
                port(81, Some(8081), Udp, Some("127.0.0.1"))
            ])
        );
        // Docker: a published range with one target publishes every port of the range to that target.
        assert_eq!(
            parse_port_short("8080-8081:80"),
            Ok(vec![port(80, Some(8080), Tcp, None), port(80, Some(8081), Tcp, None)])
        );
        assert_eq!(
            parse_port_short("8080-8080:80"),
            Ok(vec![port(80, Some(8080), Tcp, None)])
        );
        assert_eq!(parse_port_short("9-10").map(|v| v.len()), Ok(2));
        assert_eq!(parse_port_short("1-65535").map(|v| v.len()), Ok(65535));
    }

    #[test]
    fn ports_errors() {
        assert_eq!(
            err(parse_port_short("8080-8082:80-81")),
            "invalid port \"8080-8082:80-81\": published range \"8080-8082\" has 3 ports but target range \"80-81\" \
             has 2 (make both ranges the same length)"
        );
        assert_eq!(
            err(parse_port_short("0")),
            "invalid port \"0\": target port 0 is not allowed (ports must be between 1 and 65535)"
        );
        assert_eq!(
            err(parse_port_short("65536")),
            "invalid port \"65536\": target port 65536 is out of range (ports must be between 1 and 65535)"
        );
        assert_eq!(
            err(parse_port_short("80/foo")),
            "invalid port \"80/foo\": invalid protocol \"foo\": must be one of tcp, udp or sctp"
        );
        assert_eq!(
            err(parse_port_short("127.0.0.1:80")),
            "invalid port \"127.0.0.1:80\": \"127.0.0.1\" is a host IP, not a port (write \"127.0.0.1:80:80\", or \
             \"127.0.0.1::80\" to let Swarm pick the published port)"
        );
        assert!(err(parse_port_short("81-80")).contains("ends before it starts"));
        assert!(err(parse_port_short("localhost:80:80")).contains("host IP \"localhost\" is not a valid"));
        assert!(err(parse_port_short("0:80")).contains("published port 0 is not allowed"));
        for bad in [
            "",
            " 80",
            "80 ",
            "abc",
            "+80",
            "-80",
            "80-",
            "1-2-3",
            "8080:",
            "80/",
            "/tcp",
            "8080::80",
            "[::1]:80",
            "[::1",
            "[::1]8080:80",
            "1:2:3:4",
            "80/tcp/udp",
            "99999999999999999999999",
        ] {
            assert!(parse_port_short(bad).is_err(), "{bad}");
        }
        assert_eq!(
            err(parse_protocol("tpc")),
            "invalid protocol \"tpc\": must be one of tcp, udp or sctp (did you mean \"tcp\"?)"
        );
        assert_eq!(
            err(parse_publish_mode("hots")),
            "invalid publish mode \"hots\": must be one of ingress or host (did you mean \"host\"?)"
        );
        assert_eq!(parse_publish_mode("Host"), Ok(PublishMode::Host));
        assert_eq!(parse_publish_mode("ingress"), Ok(PublishMode::Ingress));
        assert_eq!(parse_protocol("UDP"), Ok(Protocol::Udp));
    }

    // ----- volumes -----

    fn vol(kind: MountType, source: Option<&str>, target: &str) -> VolumeShort {
        VolumeShort {
            kind,
            source: source.map(str::to_string),
            target: target.to_string(),
            read_only: false,
            no_copy: false,
            bind_propagation: None,
        }
    }

    #[test]
    fn volumes_parse() {
        use MountType::*;
        assert_eq!(parse_volume_short("/data"), Ok(vol(Volume, None, "/data")));
        assert_eq!(
            parse_volume_short("dbdata:/var/lib/db"),
            Ok(vol(Volume, Some("dbdata"), "/var/lib/db"))
        );
        assert_eq!(
            parse_volume_short("dbdata:/var/lib/db:ro"),
            Ok(VolumeShort {
                read_only: true,
                ..vol(Volume, Some("dbdata"), "/var/lib/db")
            })
        );
        assert_eq!(
            parse_volume_short("./cfg:/etc/cfg:ro"),
            Ok(VolumeShort {
                read_only: true,
                ..vol(Bind, Some("./cfg"), "/etc/cfg")
            })
        );
        assert_eq!(
            parse_volume_short("/host:/ctr:rw,z"),
            Ok(vol(Bind, Some("/host"), "/ctr"))
        );
        assert_eq!(parse_volume_short("~/x:/y"), Ok(vol(Bind, Some("~/x"), "/y")));
        assert_eq!(parse_volume_short("../a:/b"), Ok(vol(Bind, Some("../a"), "/b")));
        assert_eq!(parse_volume_short(".:/app"), Ok(vol(Bind, Some("."), "/app")));
        assert_eq!(
            parse_volume_short("vol:/b:ro,z,Z"),
            Ok(VolumeShort {
                read_only: true,
                ..vol(Volume, Some("vol"), "/b")
            })
        );
        assert_eq!(
            parse_volume_short("vol:/b:nocopy"),
            Ok(VolumeShort {
                no_copy: true,
                ..vol(Volume, Some("vol"), "/b")
            })
        );
        assert_eq!(
            parse_volume_short("/a:/b:ro,rshared"),
            Ok(VolumeShort {
                read_only: true,
                bind_propagation: Some("rshared".into()),
                ..vol(Bind, Some("/a"), "/b")
            })
        );
        assert_eq!(parse_volume_short("/a:/b:cached"), Ok(vol(Bind, Some("/a"), "/b")));
        assert_eq!(
            parse_volume_short("my-vol_1.2:/b"),
            Ok(vol(Volume, Some("my-vol_1.2"), "/b"))
        );
    }

    #[test]
    fn volumes_errors() {
        assert_eq!(
            err(parse_volume_short("vol:/b:foo")),
            "invalid volume \"vol:/b:foo\": unknown option \"foo\" (valid options are ro, rw, nocopy, z, Z, shared, \
             slave, private, rshared, rslave, rprivate)"
        );
        assert_eq!(
            err(parse_volume_short("vol:/b:nocpy")),
            "invalid volume \"vol:/b:nocpy\": unknown option \"nocpy\" (did you mean \"nocopy\"?) (valid options \
             are ro, rw, nocopy, z, Z, shared, slave, private, rshared, rslave, rprivate)"
        );
        assert_eq!(
            err(parse_volume_short("data:rel")),
            "invalid volume \"data:rel\": target \"rel\" must be an absolute path inside the container (e.g. \"/data\")"
        );
        assert_eq!(
            err(parse_volume_short("vol::/b")),
            "invalid volume \"vol::/b\": empty section between \":\" (use [SOURCE:]TARGET[:OPTIONS], e.g. \"/data\", \
             \"dbdata:/var/lib/db:ro\" or \"./cfg:/etc/cfg:ro\")"
        );
        assert!(err(parse_volume_short("vol:/b:ro:x")).contains("too many \":\""));
        assert!(err(parse_volume_short("/a:/b:nocopy")).contains("\"nocopy\" only applies to volumes"));
        assert!(err(parse_volume_short("vol:/b:rslave")).contains("only applies to bind mounts"));
        assert!(err(parse_volume_short("/a:/b:ro,rw")).contains("both \"ro\" and \"rw\""));
        assert!(err(parse_volume_short("/a:/b:shared,slave")).contains("conflicting bind propagations"));
        assert!(err(parse_volume_short(" vol:/b")).contains("volume name \" vol\""));
        for bad in ["", "abc", ":/b", "vol:", "vol:/b:", "vol:/b:ro,,z", "vol:/", "/a:/b:RO"] {
            assert!(parse_volume_short(bad).is_err(), "{bad}");
        }
    }

    // ----- constraints -----

    #[test]
    fn constraints_parse() {
        let c = parse_constraint("node.role==manager").unwrap();
        assert_eq!(
            c,
            Constraint {
                key: "node.role".into(),
                op: ConstraintOp::Eq,
                value: "manager".into()
            }
        );
        assert_eq!(c.to_string(), "node.role==manager");
        let c = parse_constraint("  NODE.ROLE  ==  Manager ").unwrap();
        assert_eq!(c.to_string(), "node.role==manager");
        let c = parse_constraint("NODE.LABELS.Zone != eu-west 1").unwrap();
        assert_eq!(
            c,
            Constraint {
                key: "node.labels.Zone".into(),
                op: ConstraintOp::Ne,
                value: "eu-west 1".into()
            }
        );
        assert_eq!(
            parse_constraint("engine.labels.os==linux").unwrap().key,
            "engine.labels.os"
        );
        assert_eq!(parse_constraint("node.hostname==web-1").unwrap().value, "web-1");
        assert_eq!(
            parse_constraint("node.platform.OS==Linux").unwrap().to_string(),
            "node.platform.os==Linux"
        );
        assert_eq!(parse_constraint("node.ip!=10.0.0.0/24").unwrap().value, "10.0.0.0/24");
        assert_eq!(parse_constraint("node.ip==2001:db8::2").unwrap().value, "2001:db8::2");
        assert_eq!(parse_constraint("node.id==abc123").unwrap().op, ConstraintOp::Eq);
        assert_eq!(
            parse_constraint("node.platform.arch!=x86_64").unwrap().op,
            ConstraintOp::Ne
        );
    }

    #[test]
    fn constraints_errors() {
        assert_eq!(
            err(parse_constraint("node.rol==manager")),
            "invalid constraint \"node.rol==manager\": unknown key \"node.rol\" (did you mean \"node.role\"?) (valid \
             keys are node.id, node.hostname, node.role, node.ip, node.platform.os, node.platform.arch, \
             node.labels.<name> and engine.labels.<name>)"
        );
        assert_eq!(
            err(parse_constraint("node.role=manager")),
            "invalid constraint \"node.role=manager\": missing operator (use \"==\" or \"!=\", not \"=\", e.g. \
             \"node.role==manager\")"
        );
        assert_eq!(
            err(parse_constraint("node.role==")),
            "invalid constraint \"node.role==\": missing value after \"==\" (e.g. \"node.role==VALUE\")"
        );
        assert_eq!(
            err(parse_constraint("node.role==boss")),
            "invalid constraint \"node.role==boss\": node.role must be \"manager\" or \"worker\", got \"boss\""
        );
        assert_eq!(
            err(parse_constraint("node.role==mannager")),
            "invalid constraint \"node.role==mannager\": node.role must be \"manager\" or \"worker\", got \
             \"mannager\" (did you mean \"manager\"?)"
        );
        assert!(err(parse_constraint("node.label.zone==a")).contains("did you mean \"node.labels.zone\"?"));
        assert!(err(parse_constraint("nodes.labels.zone==a")).contains("did you mean \"node.labels.zone\"?"));
        assert!(err(parse_constraint("node.labels.==a")).contains("missing label name"));
        assert_eq!(
            err(parse_constraint("Node.Labels==a")),
            "invalid constraint \"Node.Labels==a\": missing label name after \"Node.Labels\" \
             (e.g. \"node.labels.zone\")"
        );
        assert!(err(parse_constraint("node.labels.A B==a")).contains("label name \"A B\""));
        assert!(err(parse_constraint("node.ip==nope")).contains("node.ip must be an IP address or CIDR"));
        assert!(err(parse_constraint("node.ip==10.0.0.0/33")).contains("node.ip must be"));
        assert!(err(parse_constraint("==manager")).contains("missing key"));
        assert!(err(parse_constraint("node.role==manager==x")).contains("second operator"));
        assert!(err(parse_constraint("node.labels.a==<b>")).contains("characters Swarm does not accept"));
        for bad in ["", "=", "==", "node.role", "foo==bar", "node.labels==x"] {
            assert!(parse_constraint(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn spread_preferences() {
        assert_eq!(
            parse_spread_preference("node.labels.zone"),
            Ok("node.labels.zone".into())
        );
        assert_eq!(
            parse_spread_preference(" NODE.LABELS.Zone "),
            Ok("node.labels.Zone".into())
        );
        assert_eq!(
            parse_spread_preference("engine.labels.rack"),
            Ok("engine.labels.rack".into())
        );
        assert_eq!(
            err(parse_spread_preference("foo")),
            "invalid spread preference \"foo\": must be \"node.labels.<name>\" or \"engine.labels.<name>\" (e.g. \
             \"node.labels.zone\")"
        );
        assert!(err(parse_spread_preference("node.label.zone")).contains("did you mean \"node.labels.zone\"?"));
        assert!(err(parse_spread_preference("node.labels.")).contains("missing label name"));
        assert!(parse_spread_preference("node.hostname").is_err());
    }

    #[test]
    fn did_you_mean_rules() {
        let c = ["image", "ports", "volumes", "deploy"];
        assert_eq!(did_you_mean("imgae", &c), Some("image"));
        assert_eq!(did_you_mean("Image", &c), Some("image"));
        assert_eq!(did_you_mean("volume", &c), Some("volumes"));
        assert_eq!(did_you_mean("xyz", &c), None);
        assert_eq!(did_you_mean("", &c), None);
        assert_eq!(did_you_mean("ab", &["a", "xy"]), Some("a"));
        // distance 2 needs at least 6 characters
        assert_eq!(did_you_mean("portz1", &c), Some("ports"));
        assert_eq!(did_you_mean("pxrtz", &c), None);
    }

    // ----- signals -----

    #[test]
    fn signals() {
        for (input, want) in [
            ("SIGTERM", "SIGTERM"),
            ("TERM", "SIGTERM"),
            ("term", "SIGTERM"),
            ("15", "SIGTERM"),
            ("9", "SIGKILL"),
            ("1", "SIGHUP"),
            ("31", "SIGSYS"),
            ("SIGRTMIN+3", "SIGRTMIN+3"),
            ("rtmin+3", "SIGRTMIN+3"),
            ("37", "SIGRTMIN+3"),
            ("34", "SIGRTMIN"),
            ("64", "SIGRTMAX"),
            ("50", "SIGRTMAX-14"),
            ("SIGRTMAX-14", "SIGRTMAX-14"),
            ("IOT", "SIGABRT"),
            ("SIGCLD", "SIGCHLD"),
            ("SIGPOLL", "SIGIO"),
            ("SIGUSR1", "SIGUSR1"),
        ] {
            assert_eq!(parse_signal(input), Ok(want.to_string()), "{input}");
        }
        assert_eq!(
            err(parse_signal("SIGTREM")),
            "invalid signal \"SIGTREM\": unknown signal name (did you mean \"SIGTERM\"?) (use a name such as \
             \"SIGTERM\" or \"TERM\", a number 1-31 or 34-64, or \"SIGRTMIN+N\"/\"SIGRTMAX-N\")"
        );
        assert_eq!(
            err(parse_signal("0")),
            "invalid signal \"0\": no Linux signal has number 0 (use a name such as \"SIGTERM\" or \"TERM\", a \
             number 1-31 or 34-64, or \"SIGRTMIN+N\"/\"SIGRTMAX-N\")"
        );
        assert!(err(parse_signal("SIGRTMIN+16")).contains("real-time offset out of range"));
        for bad in [
            "",
            "32",
            "65",
            "99999999999999999999",
            "SIG",
            "SIGRTMIN+0",
            "RTMAX-15",
            "-15",
            "SIGFOO",
        ] {
            assert!(parse_signal(bad).is_err(), "{bad}");
        }
    }

    // ----- properties -----

    fn all_parsers(s: &str) {
        let _ = parse_duration(s);
        let _ = parse_bytes(s);
        let _ = parse_cpus(s);
        let _ = parse_port_short(s);
        let _ = parse_protocol(s);
        let _ = parse_publish_mode(s);
        let _ = parse_volume_short(s);
        let _ = parse_constraint(s);
        let _ = parse_spread_preference(s);
        let _ = parse_signal(s);
        let _ = did_you_mean(s, &["node.role", "image", ""]);
    }

    proptest! {
        #[test]
        fn no_panic_on_any_string(s in any::<String>()) {
            all_parsers(&s);
        }

        #[test]
        fn no_panic_on_syntax_soup(s in "[0-9.:/\\[\\]a-zA-Z~=!, +\u{b5}\u{3bc}-]{0,24}") {
            all_parsers(&s);
        }

        #[test]
        fn duration_round_trips(ms in 0u64..=365 * 24 * 3600 * 1000) {
            let d = Duration::from_millis(ms);
            prop_assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }

        #[test]
        fn duration_round_trips_any_nanos(ns in 0u64..=i64::MAX as u64) {
            let d = Duration::from_nanos(ns);
            prop_assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }

        #[test]
        fn cpus_round_trip(n in 0u64..=i64::MAX as u64) {
            prop_assert_eq!(parse_cpus(&format_cpus(n)), Ok(n));
        }

        #[test]
        fn constraint_display_round_trips(
            key in prop_oneof![
                Just("node.id".to_string()),
                Just("NODE.Hostname".to_string()),
                Just("node.platform.os".to_string()),
                "[nN][oO][dD][eE]\\.[lL]abels\\.[A-Za-z0-9_.-]{1,8}",
                "engine\\.labels\\.[A-Za-z0-9_.-]{1,8}",
            ],
            op in prop_oneof![Just("=="), Just("!=")],
            value in "[ ]{0,2}[a-zA-Z0-9:_.*/ -]{1,12}[ ]{0,2}",
        ) {
            let input = format!("{key}{op}{value}");
            if let Ok(c) = parse_constraint(&input) {
                prop_assert_eq!(parse_constraint(&c.to_string()), Ok(c));
            }
        }

        #[test]
        fn port_ranges_expand_consistently(start in 1u16..=65000, len in 0u16..10, offset in 1u16..500) {
            let end = start + len;
            let published = start.saturating_add(offset).min(65000);
            let spec = format!("{published}-{}:{start}-{end}/udp", published + len);
            let ports = parse_port_short(&spec).unwrap();
            prop_assert_eq!(ports.len(), usize::from(len) + 1);
            prop_assert!(ports.iter().all(|p| p.protocol == Protocol::Udp && p.published.is_some()));
        }
    }
}
