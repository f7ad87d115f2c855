//! The benchmark report: reads the figures the benchmarks wrote as JSON (`BENCH_JSON`) and writes, next to them,
//! SVG bar charts of ours against each reference and a Markdown table (`report.md`).
//!
//! usage: swarm-bench-report [RESULTS_DIR]   (default: bench/results)
//!
//! Every `*.json` file in the directory is `{"bench": NAME, "figures": {KEY: NUMBER, ...}, "about": {...}}`, as
//! written by `benches/cluster.rs` (bench "cluster"), `benches/etcd.rs` ("etcd") and `bench/services.sh`
//! ("services"). Several files of one bench (repeated rounds) give a median and a min–max range. A figure whose
//! files are missing is left out.

use std::collections::BTreeMap;
use std::path::Path;
use std::path::PathBuf;

use anyhow::bail;
use anyhow::Context;
use anyhow::Result;
use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;
use plotters::style::text_anchor::HPos;
use plotters::style::text_anchor::Pos;
use plotters::style::text_anchor::VPos;
use serde_json::Value;

/// How a figure is judged: which way is better, and the goal if it has one.
#[derive(Clone, Copy)]
enum Goal {
    Unstated,
    /// ours / reference at most this.
    RatioAtMost(f64),
    /// ours / reference at least this.
    RatioAtLeast(f64),
    /// ours at most this, in the figure's unit.
    AtMost(f64),
}

/// One row of the report: our figure, and the reference's figure for the same measurement when there is one.
struct Comparison {
    /// The chart this figure is drawn in (`<chart>.svg`).
    chart: &'static str,
    figure: &'static str,
    unit: Unit,
    ours: (&'static str, &'static str),
    reference: Option<(&'static str, &'static str)>,
    goal: Goal,
}

#[derive(Clone, Copy, PartialEq)]
enum Unit {
    PerSecond,
    Millis,
    Seconds,
}

impl Unit {
    fn format(self, v: f64) -> String {
        format!("{}{}", self.number(v), self.suffix())
    }

    fn number(self, v: f64) -> String {
        match self {
            Unit::PerSecond | Unit::Millis => thousands(v.round() as u64),
            Unit::Seconds => format!("{v:.2}"),
        }
    }

    fn suffix(self) -> &'static str {
        match self {
            Unit::PerSecond => "",
            Unit::Millis => " ms",
            Unit::Seconds => " s",
        }
    }

    fn axis(self) -> &'static str {
        match self {
            Unit::PerSecond => "writes/s (higher is better)",
            Unit::Millis => "ms (lower is better)",
            Unit::Seconds => "s (lower is better)",
        }
    }
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn comparisons() -> Vec<Comparison> {
    let c = |chart, figure, unit, ours, reference, goal| Comparison {
        chart,
        figure,
        unit,
        ours,
        reference,
        goal,
    };
    use Goal::*;
    use Unit::*;
    vec![
        c(
            "writes",
            "committed writes/s, 1 client",
            PerSecond,
            ("cluster", "writes_per_s_1"),
            Some(("etcd", "writes_per_s_1")),
            RatioAtLeast(1.0),
        ),
        c(
            "writes",
            "committed writes/s, 64 clients",
            PerSecond,
            ("cluster", "writes_per_s_64"),
            Some(("etcd", "writes_per_s_64")),
            RatioAtLeast(1.0),
        ),
        c(
            "failover",
            "leader failover p50",
            Millis,
            ("cluster", "failover_p50_ms"),
            Some(("etcd", "failover_p50_ms")),
            Unstated,
        ),
        c(
            "failover",
            "leader failover p99",
            Millis,
            ("cluster", "failover_p99_ms"),
            Some(("etcd", "failover_p99_ms")),
            AtMost(1000.0),
        ),
        c(
            "services",
            "create replicas, all running",
            Seconds,
            ("services", "ours_create_s"),
            Some(("services", "swarm_create_s")),
            RatioAtMost(0.8),
        ),
        c(
            "services",
            "recover a removed container",
            Seconds,
            ("services", "ours_recover_s"),
            Some(("services", "swarm_recover_s")),
            AtMost(0.5),
        ),
        c(
            "services",
            "scale up by 20",
            Seconds,
            ("services", "ours_scale_s"),
            Some(("services", "swarm_scale_s")),
            Unstated,
        ),
        c(
            "services",
            "rolling update, parallelism 1",
            Seconds,
            ("services", "ours_update_p1_s"),
            Some(("services", "swarm_update_p1_s")),
            Unstated,
        ),
        c(
            "services",
            "rolling update, parallelism 5",
            Seconds,
            ("services", "ours_update_p5_s"),
            Some(("services", "swarm_update_p5_s")),
            Unstated,
        ),
        c(
            "services",
            "worker loss, tasks running elsewhere",
            Seconds,
            ("services", "ours_worker_loss_s"),
            None,
            AtMost(5.0),
        ),
    ]
}

/// All values of each bench's figures over the files read (one per round), and the benches' descriptions.
#[derive(Default)]
struct Results {
    values: BTreeMap<(String, String), Vec<f64>>,
    about: BTreeMap<(String, String), String>,
}

impl Results {
    fn read(dir: &Path) -> Result<Results> {
        let mut results = Results::default();
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .with_context(|| format!("cannot read the results directory {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        files.sort();
        for path in files {
            let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
            let json: Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not JSON; rerun the benchmark that wrote it", path.display()))?;
            let Some(bench) = json.get("bench").and_then(Value::as_str) else {
                bail!(
                    "{}: no \"bench\" name; expected {{\"bench\": NAME, \"figures\": {{...}}}}",
                    path.display()
                );
            };
            for (key, v) in json.get("figures").and_then(Value::as_object).into_iter().flatten() {
                // null: a figure the bench could not measure this time (e.g. no Docker Swarm baseline).
                if let Some(v) = v.as_f64() {
                    results.values.entry((bench.into(), key.clone())).or_default().push(v);
                }
            }
            for (key, v) in json.get("about").and_then(Value::as_object).into_iter().flatten() {
                let text = v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string());
                results.about.insert((bench.into(), key.clone()), text);
            }
        }
        Ok(results)
    }

    fn get(&self, (bench, key): (&str, &str)) -> Option<Stat> {
        Stat::of(self.values.get(&(bench.to_string(), key.to_string()))?)
    }

    fn about(&self, bench: &str, key: &str) -> Option<&str> {
        self.about
            .get(&(bench.to_string(), key.to_string()))
            .map(String::as_str)
    }

    /// The reference's name, as the bench that measured it describes it.
    fn reference_name(&self, (bench, key): (&str, &str)) -> String {
        match bench {
            "etcd" => self.about("etcd", "system").unwrap_or("etcd").to_string(),
            "services" if key.starts_with("swarm_") => self
                .about("services", "reference")
                .unwrap_or("Docker Swarm")
                .to_string(),
            other => other.to_string(),
        }
    }
}

/// A figure over its rounds.
#[derive(Clone, Copy)]
struct Stat {
    median: f64,
    min: f64,
    max: f64,
    rounds: usize,
}

impl Stat {
    fn of(values: &[f64]) -> Option<Stat> {
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = match n {
            0 => return None,
            _ if n % 2 == 1 => v[n / 2],
            _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        };
        Some(Stat {
            median,
            min: v[0],
            max: v[n - 1],
            rounds: n,
        })
    }

    fn format(&self, unit: Unit) -> String {
        if self.rounds > 1 && self.min != self.max {
            let (median, min, max) = (unit.number(self.median), unit.number(self.min), unit.number(self.max));
            format!("{median}{} ({min}–{max})", unit.suffix())
        } else {
            unit.format(self.median)
        }
    }
}

/// A comparison with its measured values.
struct Row<'a> {
    c: &'a Comparison,
    /// The figure's name with the sizes the bench ran with.
    label: String,
    ours: Stat,
    reference: Option<(String, Stat)>,
}

impl Row<'_> {
    fn ratio(&self) -> Option<f64> {
        let (_, r) = self.reference.as_ref()?;
        (r.median > 0.0).then(|| self.ours.median / r.median)
    }

    fn goal(&self) -> String {
        let unit = self.c.unit;
        let (text, met) = match self.c.goal {
            Goal::Unstated => return "—".into(),
            Goal::RatioAtMost(g) => (format!("≤ {g}×"), self.ratio().map(|r| r <= g)),
            Goal::RatioAtLeast(g) => (format!("≥ {g}×"), self.ratio().map(|r| r >= g)),
            Goal::AtMost(g) => (format!("≤ {}", unit.format(g)), Some(self.ours.median <= g)),
        };
        match met {
            Some(true) => format!("{text}: met"),
            Some(false) => format!("{text}: **missed**"),
            None => text,
        }
    }
}

fn markdown(rows: &[Row]) -> String {
    let mut md = String::new();
    md.push_str("<!-- written by bench/report from bench/results/*.json (bench/run-all.sh) -->\n");
    md.push_str("| figure | ours | reference | ratio (ours / reference) | goal |\n|---|---|---|---|---|\n");
    for row in rows {
        let (reference, ratio) = match (&row.reference, row.ratio()) {
            (Some((name, stat)), Some(r)) => (format!("{name}: {}", stat.format(row.c.unit)), format!("{r:.2}×")),
            (Some((name, stat)), None) => (format!("{name}: {}", stat.format(row.c.unit)), "—".into()),
            (None, _) => ("—".into(), "—".into()),
        };
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            row.label,
            row.ours.format(row.c.unit),
            reference,
            ratio,
            row.goal()
        ));
    }
    let rounds = rows.iter().map(|r| r.ours.rounds).max().unwrap_or(0);
    if rounds > 1 {
        md.push_str(&format!("\nMedian of up to {rounds} rounds, min–max in brackets.\n"));
    }
    md
}

/// The figure's name with the sizes the bench ran with (replicas, tasks moved), when it says them.
fn label(c: &Comparison, results: &Results) -> String {
    let about = |k| results.about("services", k);
    match (c.ours.1, about("replicas"), about("worker_tasks")) {
        ("ours_create_s", Some(n), _) => format!("create {n} replicas, all running"),
        ("ours_worker_loss_s", _, Some(n)) => format!("worker loss: {n} tasks moved"),
        _ => c.figure.to_string(),
    }
}

/// A reference's name without its version, for the charts: "etcd", "Swarm".
fn short(name: &str) -> String {
    name.strip_prefix("Docker ")
        .unwrap_or(name)
        .split(' ')
        .next()
        .unwrap_or(name)
        .to_string()
}

const OURS: RGBColor = RGBColor(31, 119, 180);
const REFERENCE: RGBColor = RGBColor(160, 160, 160);
const GOAL: RGBColor = RGBColor(214, 39, 40);

/// One SVG per chart: a panel per figure with a bar for ours and one for the reference (median; a whisker for the
/// min–max of several rounds), the ratio and the goal under it, and an absolute goal as a red line.
fn draw(path: &Path, title: &str, rows: &[&Row]) -> Result<()> {
    let panel_w = 260u32;
    let root = SVGBackend::new(path, (panel_w * rows.len() as u32, 360)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 20))?;
    for (panel, row) in root.split_evenly((1, rows.len())).iter().zip(rows) {
        let (plot, footer) = panel.split_vertically(panel.dim_in_pixel().1 - 46);
        let mut bars = vec![("ours".to_string(), row.ours, OURS)];
        if let Some((name, stat)) = &row.reference {
            bars.push((short(name), *stat, REFERENCE));
        }
        let goal = match row.c.goal {
            Goal::AtMost(g) => Some(g),
            _ => None,
        };
        let top = bars.iter().map(|b| b.1.max).chain(goal).fold(0.0, f64::max) * 1.2;
        let names: Vec<String> = bars.iter().map(|b| b.0.clone()).collect();
        let mut chart = ChartBuilder::on(&plot)
            .caption(&row.label, ("sans-serif", 14))
            .margin(8)
            .x_label_area_size(24)
            .y_label_area_size(56)
            .build_cartesian_2d(
                // Two slots, ours and the reference's (empty when there is none): 0..1 has two segments.
                (0..1).into_segmented(),
                0.0..top.max(f64::MIN_POSITIVE),
            )?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .max_light_lines(1)
            .y_desc(row.c.unit.axis())
            .y_label_formatter(&|v| match row.c.unit {
                Unit::Seconds => format!("{v:.1}"),
                _ => thousands(v.round() as u64),
            })
            .x_label_formatter(&|x| match x {
                SegmentValue::CenterOf(i) => names.get(*i as usize).cloned().unwrap_or_else(|| "not measured".into()),
                _ => String::new(),
            })
            .draw()?;
        let at = |i: usize| SegmentValue::CenterOf(i as i32);
        let edge = |i: usize| {
            if i < 2 {
                SegmentValue::Exact(i as i32)
            } else {
                SegmentValue::Last
            }
        };
        chart.draw_series(bars.iter().enumerate().map(|(i, (_, s, color))| {
            let mut bar = Rectangle::new([(edge(i), 0.0), (edge(i + 1), s.median)], color.filled());
            bar.set_margin(0, 0, 22, 22);
            bar
        }))?;
        chart.draw_series(
            bars.iter()
                .enumerate()
                .filter(|(_, (_, s, _))| s.rounds > 1 && s.min != s.max)
                .map(|(i, (_, s, _))| PathElement::new(vec![(at(i), s.min), (at(i), s.max)], BLACK.stroke_width(1))),
        )?;
        let above = TextStyle::from(("sans-serif", 12).into_font()).pos(Pos::new(HPos::Center, VPos::Bottom));
        chart.draw_series(
            bars.iter()
                .enumerate()
                .map(|(i, (_, s, _))| Text::new(row.c.unit.format(s.median), (at(i), s.max), above.clone())),
        )?;
        if let Some(g) = goal {
            chart.draw_series([PathElement::new(vec![(edge(0), g), (edge(2), g)], GOAL.stroke_width(2))])?;
        }
        let note = match (row.ratio(), &row.reference) {
            (Some(r), Some((name, _))) => format!("ours / {} = {r:.2}×", short(name)),
            _ => "no reference measured".to_string(),
        };
        let centre = |size| TextStyle::from(("sans-serif", size).into_font()).pos(Pos::new(HPos::Center, VPos::Center));
        let x = (panel_w / 2) as i32;
        footer.draw_text(&note, &centre(14), (x, 12))?;
        if !matches!(row.c.goal, Goal::Unstated) {
            let goal = format!("goal {}", row.goal().replace("**", ""));
            footer.draw_text(&goal, &centre(12).color(&GOAL), (x, 32))?;
        }
    }
    root.present()?;
    Ok(())
}

fn main() -> Result<()> {
    let dir = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "bench/results".into()));
    let results = Results::read(&dir)?;
    let comparisons = comparisons();
    let rows: Vec<Row> = comparisons
        .iter()
        .filter_map(|c| {
            let ours = results.get(c.ours)?;
            let reference = c
                .reference
                .and_then(|r| Some((results.reference_name(r), results.get(r)?)));
            Some(Row {
                c,
                label: label(c, &results),
                ours,
                reference,
            })
        })
        .collect();
    if rows.is_empty() {
        bail!(
            "no figures in {}: run bench/run-all.sh (or a bench with BENCH_JSON=FILE) first",
            dir.display()
        );
    }

    let titles = [
        ("writes", "Committed writes/s, three managers on loopback: ours vs etcd"),
        ("failover", "Leader failover, kill -9 → a write accepted: ours vs etcd"),
        ("services", "Services on one Docker Engine: ours vs Docker Swarm"),
    ];
    for (chart, title) in titles {
        let in_chart: Vec<&Row> = rows.iter().filter(|r| r.c.chart == chart).collect();
        if in_chart.is_empty() {
            continue;
        }
        let path = dir.join(format!("{chart}.svg"));
        draw(&path, title, &in_chart).with_context(|| format!("cannot draw {}", path.display()))?;
        println!("{}", path.display());
    }
    let md = markdown(&rows);
    let path = dir.join("report.md");
    std::fs::write(&path, &md).with_context(|| format!("cannot write {}", path.display()))?;
    println!("{}\n\n{md}", path.display());
    Ok(())
}
