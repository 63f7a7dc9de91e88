//! The pipeline's report: `report.json`, `report.md` and PNG charts.
//!
//! Every number in a [`Report`] is filled from measurements made in the same
//! run; the ratios are computed here from those numbers, never typed in.

use crate::price::PriceTable;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// What one system (the AFM, or the multi-agent system) measured on the
/// held-out tasks.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SystemMetrics {
    /// Tasks evaluated.
    pub tasks: usize,
    /// Fraction of tasks whose final answer the verifier accepts.
    pub success_rate: f64,
    /// Per-task latency at batch 1, milliseconds; NaN (`null` in JSON) when
    /// not measured.
    #[serde(deserialize_with = "nan_from_null")]
    pub latency_ms_p50: f64,
    #[serde(deserialize_with = "nan_from_null")]
    pub latency_ms_p95: f64,
    /// Tasks per second at each measured batch size (`"1"`, `"8"`).
    pub throughput_tasks_per_s: BTreeMap<String, f64>,
    /// Tokens read by a forward pass (prompts, re-read context, observations).
    pub tokens_prefill: u64,
    /// Tokens generated.
    pub tokens_decode: u64,
    /// Model calls.
    pub calls: u64,
    /// Tool (interpreter) calls.
    pub tool_calls: u64,
    /// Models that must be resident to serve the system.
    pub models: usize,
    /// Bytes of resident model weights.
    pub memory_bytes: u64,
    /// Cost of all evaluated tasks under the price table.
    pub cost: f64,
}

/// `null` in JSON (how serde_json writes NaN) reads back as NaN.
fn nan_from_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// MAS / AFM ratios (> 1 means the AFM uses less, or is faster). A ratio
/// with a zero denominator is NaN (`null` in JSON).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Ratios {
    #[serde(deserialize_with = "nan_from_null")]
    pub latency_p50: f64,
    #[serde(deserialize_with = "nan_from_null")]
    pub latency_p95: f64,
    #[serde(deserialize_with = "nan_from_null")]
    pub throughput_b1: f64,
    #[serde(deserialize_with = "nan_from_null")]
    pub throughput_b8: f64,
    #[serde(deserialize_with = "nan_from_null")]
    pub tokens_total: f64,
    #[serde(deserialize_with = "nan_from_null")]
    pub tokens_prefill: f64,
    #[serde(deserialize_with = "nan_from_null")]
    pub calls: f64,
    #[serde(deserialize_with = "nan_from_null")]
    pub cost: f64,
    #[serde(deserialize_with = "nan_from_null")]
    pub memory: f64,
    /// AFM success rate minus MAS success rate (absolute).
    #[serde(deserialize_with = "nan_from_null")]
    pub success_delta: f64,
}

fn ratio(num: f64, den: f64) -> f64 {
    if den > 0.0 {
        num / den
    } else {
        f64::NAN
    }
}

impl Ratios {
    /// Compute every ratio from the two measured systems.
    pub fn between(mas: &SystemMetrics, afm: &SystemMetrics) -> Self {
        let tp = |m: &SystemMetrics, b: &str| {
            m.throughput_tasks_per_s.get(b).copied().unwrap_or(f64::NAN)
        };
        Self {
            latency_p50: ratio(mas.latency_ms_p50, afm.latency_ms_p50),
            latency_p95: ratio(mas.latency_ms_p95, afm.latency_ms_p95),
            throughput_b1: ratio(tp(afm, "1"), tp(mas, "1")),
            throughput_b8: ratio(tp(afm, "8"), tp(mas, "8")),
            tokens_total: ratio(
                (mas.tokens_prefill + mas.tokens_decode) as f64,
                (afm.tokens_prefill + afm.tokens_decode) as f64,
            ),
            tokens_prefill: ratio(mas.tokens_prefill as f64, afm.tokens_prefill as f64),
            calls: ratio(mas.calls as f64, afm.calls as f64),
            cost: ratio(mas.cost, afm.cost),
            memory: ratio(mas.memory_bytes as f64, afm.memory_bytes as f64),
            success_delta: afm.success_rate - mas.success_rate,
        }
    }
}

/// The machine the numbers were measured on.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub os: String,
    /// UTC date of the run, `YYYY-MM-DD`.
    pub date: String,
}

impl Machine {
    /// Read this machine's description.
    pub fn detect() -> Self {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|t| {
                t.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split(':').nth(1))
                    .map(|s| s.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        Self {
            cpu,
            cores: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            os: format!("{} {}", std::env::consts::OS, std::env::consts::ARCH),
            date: today_utc(),
        }
    }
}

/// Today's UTC date as `YYYY-MM-DD` (no chrono needed).
pub fn today_utc() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    format!("{y:04}-{m:02}-{d:02}")
}

/// Howard Hinnant's days-to-civil algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// One point of a learning curve: a system's held-out task success after
/// some training time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CurvePoint {
    /// `"MAS"` or `"AFM"` (one line of the chart per distinct name).
    pub system: String,
    /// Seconds of training behind this point (for the MAS, of its agent
    /// models together).
    pub train_secs: f64,
    /// Optimiser steps behind this point.
    pub step: usize,
    /// Held-out tasks evaluated.
    pub tasks: usize,
    /// Fraction of those tasks whose final answer the verifier accepts.
    pub success_rate: f64,
}

/// The whole report of one pipeline run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    pub name: String,
    pub machine: Machine,
    pub preset: String,
    pub device: String,
    pub afm: SystemMetrics,
    pub mas: SystemMetrics,
    /// Fraction of held-out tasks where AFM and MAS give the same final answer.
    pub answer_agreement: f64,
    pub ratios: Ratios,
    pub price_table: PriceTable,
    /// Wall-clock seconds per pipeline stage, in run order.
    pub wall_s: BTreeMap<String, f64>,
    /// Free-form facts from the stages (data counts, training summaries).
    #[serde(default)]
    pub stages: BTreeMap<String, serde_json::Value>,
    /// Honest caveats to print with the numbers.
    #[serde(default)]
    pub notes: Vec<String>,
    /// The scripted agents (the system the training data came from) on the
    /// same held-out tasks, when measured (see [`crate::scripted_reference`]): the
    /// level both trained systems imitate. Only success, tokens, calls and
    /// tool calls are meaningful for it.
    #[serde(default)]
    pub reference: Option<SystemMetrics>,
    /// Held-out success against training time, per system (may be empty).
    #[serde(default)]
    pub learning_curve: Vec<CurvePoint>,
}

impl Report {
    /// Recompute `ratios` from `afm` and `mas`.
    pub fn compute_ratios(&mut self) {
        self.ratios = Ratios::between(&self.mas, &self.afm);
    }

    /// Write `report.json`, `report.md` and the charts into `dir`.
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
        let json = serde_json::to_string_pretty(self)?;
        write_atomic(&dir.join("report.json"), json.as_bytes())?;
        write_atomic(&dir.join("report.md"), self.to_markdown().as_bytes())?;
        crate::report::charts::draw(self, dir)?;
        Ok(())
    }

    /// The summary table printed at the end of the pipeline. With a
    /// [`Report::reference`], a last column shows the scripted agents
    /// (success, tokens, calls, tool calls; blank where a scripted system
    /// has nothing comparable: latency, throughput, models, cost).
    pub fn summary_table(&self) -> String {
        let a = &self.afm;
        let m = &self.mas;
        let r = &self.ratios;
        let reference = self.reference.as_ref();
        let cur = self.price_table.currency;
        let mut s = String::new();
        s.push_str("| metric | multi-agent (MAS) | AFM (one model) | MAS / AFM |");
        if reference.is_some() {
            s.push_str(" scripted agents (data source) |");
        }
        s.push_str("\n|---|---:|---:|---:|");
        if reference.is_some() {
            s.push_str("---:|");
        }
        s.push('\n');
        // The reference column of a row: `f` of the reference, or blank.
        let refv = |f: fn(&SystemMetrics) -> String| reference.map(f).unwrap_or_default();
        let mut row = |k: &str, mv: String, av: String, rv: String, sv: String| {
            s.push_str(&format!("| {k} | {mv} | {av} | {rv} |"));
            if reference.is_some() {
                s.push_str(&format!(" {sv} |"));
            }
            s.push('\n');
        };
        row(
            "task success (held-out)",
            pct(m.success_rate),
            pct(a.success_rate),
            format!("{:+.1} pts (AFM - MAS)", r.success_delta * 100.0),
            refv(|rm| pct(rm.success_rate)),
        );
        row(
            "latency p50 (ms, batch 1)",
            f1(m.latency_ms_p50),
            f1(a.latency_ms_p50),
            x(r.latency_p50),
            String::new(),
        );
        row(
            "latency p95 (ms, batch 1)",
            f1(m.latency_ms_p95),
            f1(a.latency_ms_p95),
            x(r.latency_p95),
            String::new(),
        );
        for b in ["1", "8"] {
            let mv = m.throughput_tasks_per_s.get(b).copied().unwrap_or(f64::NAN);
            let av = a.throughput_tasks_per_s.get(b).copied().unwrap_or(f64::NAN);
            row(
                &format!("throughput (tasks/s, batch {b})"),
                f2(mv),
                f2(av),
                format!("AFM {}", x(ratio(av, mv))),
                String::new(),
            );
        }
        row(
            "tokens prefill",
            m.tokens_prefill.to_string(),
            a.tokens_prefill.to_string(),
            x(r.tokens_prefill),
            refv(|rm| rm.tokens_prefill.to_string()),
        );
        row(
            "tokens decode",
            m.tokens_decode.to_string(),
            a.tokens_decode.to_string(),
            x(ratio(m.tokens_decode as f64, a.tokens_decode as f64)),
            refv(|rm| rm.tokens_decode.to_string()),
        );
        row(
            "model calls",
            m.calls.to_string(),
            a.calls.to_string(),
            x(r.calls),
            refv(|rm| rm.calls.to_string()),
        );
        row(
            "tool calls",
            m.tool_calls.to_string(),
            a.tool_calls.to_string(),
            String::new(),
            refv(|rm| rm.tool_calls.to_string()),
        );
        row(
            "resident models (weights MiB)",
            format!("{} ({:.1})", m.models, m.memory_bytes as f64 / 1048576.0),
            format!("{} ({:.1})", a.models, a.memory_bytes as f64 / 1048576.0),
            x(r.memory),
            String::new(),
        );
        row(
            &format!("cost ({cur})"),
            format!("{:.6}", m.cost),
            format!("{:.6}", a.cost),
            x(r.cost),
            String::new(),
        );
        row(
            "answer agreement",
            String::new(),
            pct(self.answer_agreement),
            String::new(),
            String::new(),
        );
        s
    }

    /// The learning-curve table: one row per point, in the order given.
    pub fn learning_curve_table(&self) -> String {
        let mut s = String::from(
            "| system | training seconds | steps | held-out tasks | success % |\n\
             |---|---:|---:|---:|---:|\n",
        );
        for p in &self.learning_curve {
            s.push_str(&format!(
                "| {} | {:.1} | {} | {} | {:.1} |\n",
                p.system,
                p.train_secs,
                p.step,
                p.tasks,
                p.success_rate * 100.0
            ));
        }
        s
    }

    /// `report.md`.
    pub fn to_markdown(&self) -> String {
        let mut s = format!(
            "# afm report: {}\n\nMeasured on {} ({} cores, {}), {}, preset `{}`, device `{}`.\n\n",
            self.name,
            self.machine.cpu,
            self.machine.cores,
            self.machine.os,
            self.machine.date,
            self.preset,
            self.device
        );
        s.push_str("## Multi-agent system vs one model\n\n");
        s.push_str(&self.summary_table());
        s.push_str(&format!(
            "\nPrices: {} {} per 1K input tokens, {} per 1K output tokens, {} per call.\n",
            self.price_table.currency,
            self.price_table.input_per_1k,
            self.price_table.output_per_1k,
            self.price_table.per_call
        ));
        if let Some(r) = &self.reference {
            s.push_str(&format!(
                "\nScripted agents (data source): the rule-based Planner, Coder and Reviewer that \
                 wrote the training trajectories, with the dataset's error rates, on {} of the same \
                 held-out tasks. Their tokens are what a multi-agent system of LMs would read and \
                 write for the same turns (`afm_bench::reference`); they run no model, so latency, \
                 models and cost are left blank.\n",
                r.tasks
            ));
        }
        s.push_str("\n![latency](latency.png) ![tokens](tokens.png) ![cost](cost.png)\n");
        if !self.learning_curve.is_empty() {
            s.push_str(
                "\n## Learning curve\n\nHeld-out task success after each amount of training \
                 (each point a checkpoint evaluated with the same decoder, tool and verifier).\n\n",
            );
            s.push_str(&self.learning_curve_table());
            s.push_str("\n![learning curve](learning_curve.png)\n");
        }
        s.push_str("\n## Wall time per stage\n\n| stage | seconds |\n|---|---:|\n");
        for (k, v) in &self.wall_s {
            s.push_str(&format!("| {k} | {v:.1} |\n"));
        }
        if !self.notes.is_empty() {
            s.push_str("\n## Notes\n\n");
            for n in &self.notes {
                s.push_str(&format!("- {n}\n"));
            }
        }
        if !self.stages.is_empty() {
            s.push_str("\n## Stage details\n\n```json\n");
            s.push_str(&serde_json::to_string_pretty(&self.stages).unwrap_or_default());
            s.push_str("\n```\n");
        }
        s
    }
}

fn pct(v: f64) -> String {
    format!("{:.1}%", v * 100.0)
}
fn f1(v: f64) -> String {
    format!("{v:.1}")
}
fn f2(v: f64) -> String {
    format!("{v:.2}")
}
fn x(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.2}x")
    } else {
        "n/a".into()
    }
}

/// Write through a temporary file in the same directory, fsync, then rename
/// ([`afm_tokenizer::atomic::write`]); the error names `path`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    afm_tokenizer::atomic::write(path, bytes).map_err(anyhow::Error::from)
}

pub mod charts {
    //! PNG charts MAS vs AFM (plotters, bitmap backend): grouped bars, and
    //! the learning curve as lines.
    use super::Report;
    use plotters::prelude::*;
    use std::path::Path;

    /// The MAS's colour in every chart.
    pub const MAS_COLOR: RGBColor = RGBColor(214, 96, 77);
    /// The AFM's colour in every chart.
    pub const AFM_COLOR: RGBColor = RGBColor(67, 147, 195);
    /// Colours of other series, in turn.
    const OTHER_COLORS: [RGBColor; 4] = [
        RGBColor(77, 175, 74),
        RGBColor(152, 78, 163),
        RGBColor(255, 127, 0),
        RGBColor(166, 86, 40),
    ];
    /// The colour of a reference level (a horizontal dashed line).
    const REFERENCE_COLOR: RGBColor = RGBColor(90, 90, 90);

    /// The colour of the `i`-th series named `name`: MAS and AFM keep their
    /// colours, others take the next of a small palette.
    fn series_color(name: &str, i: usize) -> RGBColor {
        match name {
            "MAS" => MAS_COLOR,
            "AFM" => AFM_COLOR,
            _ => OTHER_COLORS[i % OTHER_COLORS.len()],
        }
    }

    /// Line chart: one line with points per named series of `(x, y)` points
    /// (drawn in x order; non-finite points are skipped), the y axis from 0
    /// to `y_max`, and optionally a labelled horizontal dashed line at a
    /// reference level. The x axis starts at 0 and ends past the largest x.
    pub fn line_chart(
        path: &Path,
        title: &str,
        x_desc: &str,
        y_desc: &str,
        y_max: f64,
        series: &[(&str, Vec<(f64, f64)>)],
        reference: Option<(&str, f64)>,
    ) -> anyhow::Result<()> {
        let root = BitMapBackend::new(path, (640, 400)).into_drawing_area();
        root.fill(&WHITE)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let finite = |p: &&(f64, f64)| p.0.is_finite() && p.1.is_finite();
        let xmax = series
            .iter()
            .flat_map(|(_, pts)| pts.iter().filter(finite).map(|p| p.0))
            .fold(0.0f64, f64::max)
            .max(1e-9)
            * 1.05;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(64)
            .build_cartesian_2d(0.0..xmax, 0.0..y_max)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        chart
            .configure_mesh()
            .light_line_style(WHITE)
            .x_label_formatter(&|v| format!("{v:.0}"))
            .y_label_formatter(&|v| format!("{v:.0}"))
            .x_desc(x_desc)
            .y_desc(y_desc)
            .draw()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        for (i, (name, pts)) in series.iter().enumerate() {
            let color = series_color(name, i);
            let mut pts: Vec<(f64, f64)> = pts.iter().filter(finite).copied().collect();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            chart
                .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .label(*name)
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 16, y)], color.stroke_width(2))
                });
            chart
                .draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled())))
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        if let Some((name, level)) = reference.filter(|r| r.1.is_finite()) {
            let color = REFERENCE_COLOR;
            chart
                .draw_series(DashedLineSeries::new(
                    [(0.0, level), (xmax, level)],
                    8,
                    6,
                    color.stroke_width(2),
                ))
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .label(name)
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 16, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .border_style(BLACK)
            .background_style(WHITE.mix(0.8))
            .draw()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        root.present()
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Ok(())
    }

    /// Grouped bars: one group per metric, MAS and AFM side by side.
    pub fn bars(
        path: &Path,
        title: &str,
        unit: &str,
        groups: &[(&str, f64, f64)],
    ) -> anyhow::Result<()> {
        let root = BitMapBackend::new(path, (640, 400)).into_drawing_area();
        root.fill(&WHITE)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let ymax = groups
            .iter()
            .flat_map(|g| [g.1, g.2])
            .filter(|v| v.is_finite())
            .fold(0.0f64, f64::max)
            .max(1e-9)
            * 1.15;
        let n = groups.len() as f64;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(64)
            .build_cartesian_2d(0.0..n, 0.0..ymax)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let labels: Vec<String> = groups.iter().map(|g| g.0.to_string()).collect();
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(groups.len() * 2 + 1)
            .x_label_formatter(&|v| {
                let i = v.floor() as usize;
                if (v - v.floor() - 0.5).abs() < 1e-6 && i < labels.len() {
                    labels[i].clone()
                } else {
                    String::new()
                }
            })
            .y_desc(unit)
            .draw()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let (mas, afm) = (MAS_COLOR, AFM_COLOR);
        for (i, g) in groups.iter().enumerate() {
            let x0 = i as f64;
            for (k, (v, color, name)) in [(g.1, mas, "MAS"), (g.2, afm, "AFM")]
                .into_iter()
                .enumerate()
            {
                if !v.is_finite() {
                    continue;
                }
                let l = x0 + 0.1 + 0.4 * k as f64;
                let series = chart
                    .draw_series(std::iter::once(Rectangle::new(
                        [(l, 0.0), (l + 0.38, v)],
                        color.filled(),
                    )))
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                if i == 0 {
                    series.label(name).legend(move |(x, y)| {
                        Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled())
                    });
                }
            }
        }
        chart
            .configure_series_labels()
            .border_style(BLACK)
            .background_style(WHITE.mix(0.8))
            .draw()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        root.present()
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Ok(())
    }

    /// latency.png, tokens.png, cost.png, and learning_curve.png when the
    /// report has a learning curve.
    pub fn draw(r: &Report, dir: &Path) -> anyhow::Result<()> {
        bars(
            &dir.join("latency.png"),
            "Latency per task (batch 1)",
            "ms",
            &[
                ("p50", r.mas.latency_ms_p50, r.afm.latency_ms_p50),
                ("p95", r.mas.latency_ms_p95, r.afm.latency_ms_p95),
            ],
        )?;
        let per = |v: u64, m: &super::SystemMetrics| v as f64 / m.tasks.max(1) as f64;
        bars(
            &dir.join("tokens.png"),
            "Tokens per task",
            "tokens",
            &[
                (
                    "prefill",
                    per(r.mas.tokens_prefill, &r.mas),
                    per(r.afm.tokens_prefill, &r.afm),
                ),
                (
                    "decode",
                    per(r.mas.tokens_decode, &r.mas),
                    per(r.afm.tokens_decode, &r.afm),
                ),
                (
                    "calls x100",
                    per(r.mas.calls * 100, &r.mas),
                    per(r.afm.calls * 100, &r.afm),
                ),
            ],
        )?;
        bars(
            &dir.join("cost.png"),
            &format!("Cost per 1K tasks ({})", r.price_table.currency),
            &r.price_table.currency.to_string(),
            &[(
                "cost",
                r.mas.cost / r.mas.tasks.max(1) as f64 * 1000.0,
                r.afm.cost / r.afm.tasks.max(1) as f64 * 1000.0,
            )],
        )?;
        if !r.learning_curve.is_empty() {
            learning_curve(r, &dir.join("learning_curve.png"))?;
        }
        Ok(())
    }

    /// learning_curve.png: held-out success % against training seconds, one
    /// line per system (in order of first appearance), and the scripted
    /// agents' success as a dashed reference level when the report has it.
    pub fn learning_curve(r: &Report, path: &Path) -> anyhow::Result<()> {
        let mut series: Vec<(&str, Vec<(f64, f64)>)> = Vec::new();
        for p in &r.learning_curve {
            let point = (p.train_secs, p.success_rate * 100.0);
            match series.iter_mut().find(|(name, _)| *name == p.system) {
                Some((_, pts)) => pts.push(point),
                None => series.push((&p.system, vec![point])),
            }
        }
        line_chart(
            path,
            "Held-out task success vs training time",
            "training seconds",
            "success %",
            100.0,
            &series,
            r.reference
                .as_ref()
                .map(|m| ("scripted agents (data source)", m.success_rate * 100.0)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Report {
        let mut afm = SystemMetrics {
            tasks: 10,
            success_rate: 0.8,
            latency_ms_p50: 100.0,
            latency_ms_p95: 150.0,
            tokens_prefill: 500,
            tokens_decode: 1000,
            calls: 10,
            models: 1,
            memory_bytes: 1 << 20,
            cost: 1.0,
            ..Default::default()
        };
        afm.throughput_tasks_per_s.insert("1".into(), 10.0);
        let mut mas = afm.clone();
        mas.latency_ms_p50 = 300.0;
        mas.tokens_prefill = 2500;
        mas.calls = 30;
        mas.models = 3;
        mas.memory_bytes = 3 << 20;
        mas.success_rate = 0.7;
        mas.throughput_tasks_per_s.insert("1".into(), 5.0);
        let mut r = Report {
            name: "t".into(),
            afm,
            mas,
            ..Default::default()
        };
        r.compute_ratios();
        r
    }

    #[test]
    fn ratios_are_computed() {
        let r = sample();
        assert_eq!(r.ratios.latency_p50, 3.0);
        assert_eq!(r.ratios.calls, 3.0);
        assert_eq!(r.ratios.tokens_total, 3500.0 / 1500.0);
        assert_eq!(r.ratios.throughput_b1, 2.0);
        assert!(r.ratios.throughput_b8.is_nan());
        assert!((r.ratios.success_delta - 0.1).abs() < 1e-12);
    }

    #[test]
    fn writes_json_markdown_and_pngs() {
        let dir = tempfile::tempdir().unwrap();
        let r = sample();
        r.write(dir.path()).unwrap();
        if let Some(keep) = std::env::var_os("AFM_KEEP_CHARTS") {
            r.write(std::path::Path::new(&keep)).unwrap();
        }
        let back: Report =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("report.json")).unwrap())
                .unwrap();
        assert_eq!(back.afm, r.afm);
        let md = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
        assert!(md.contains("| model calls | 30 | 10 | 3.00x |"), "{md}");
        for png in ["latency.png", "tokens.png", "cost.png"] {
            let b = std::fs::read(dir.path().join(png)).unwrap();
            assert_eq!(&b[..4], b"\x89PNG");
        }
    }

    /// [`sample`] with a scripted reference and a learning curve.
    fn sample_with_reference_and_curve() -> Report {
        let mut r = sample();
        r.reference = Some(SystemMetrics {
            tasks: 10,
            success_rate: 0.9,
            latency_ms_p50: f64::NAN,
            latency_ms_p95: f64::NAN,
            tokens_prefill: 4000,
            tokens_decode: 700,
            calls: 31,
            tool_calls: 11,
            ..Default::default()
        });
        let point = |system: &str, train_secs: f64, step: usize, success_rate: f64| CurvePoint {
            system: system.into(),
            train_secs,
            step,
            tasks: 10,
            success_rate,
        };
        r.learning_curve = vec![
            point("MAS", 20.0, 40, 0.1),
            point("AFM", 30.0, 20, 0.2),
            point("MAS", 60.0, 120, 0.7),
            point("AFM", 90.0, 60, 0.8),
            point("AFM", 60.0, 40, 0.5),
        ];
        r
    }

    #[test]
    fn reference_column_and_learning_curve_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let r = sample_with_reference_and_curve();
        r.write(dir.path()).unwrap();
        if let Some(keep) = std::env::var_os("AFM_KEEP_CHARTS") {
            r.write(std::path::Path::new(&keep)).unwrap();
        }
        let md = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
        assert!(
            md.contains("| MAS / AFM | scripted agents (data source) |"),
            "{md}"
        );
        assert!(md.contains("|---|---:|---:|---:|---:|"), "{md}");
        assert!(
            md.contains(
                "| task success (held-out) | 70.0% | 80.0% | +10.0 pts (AFM - MAS) | 90.0% |"
            ),
            "{md}"
        );
        assert!(
            md.contains("| model calls | 30 | 10 | 3.00x | 31 |"),
            "{md}"
        );
        assert!(md.contains("| tool calls | 0 | 0 |  | 11 |"), "{md}");
        assert!(
            md.contains("| latency p50 (ms, batch 1) | 300.0 | 100.0 | 3.00x |  |"),
            "{md}"
        );
        assert!(md.contains("## Learning curve"), "{md}");
        assert!(
            md.contains("| system | training seconds | steps | held-out tasks | success % |"),
            "{md}"
        );
        assert!(md.contains("| AFM | 90.0 | 60 | 10 | 80.0 |"), "{md}");
        assert!(md.contains("![learning curve](learning_curve.png)"), "{md}");
        let png = std::fs::read(dir.path().join("learning_curve.png")).unwrap();
        assert!(png.len() > 1000, "{} bytes", png.len());
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");

        // Round trip, NaN latencies of the reference included.
        let back: Report =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("report.json")).unwrap())
                .unwrap();
        assert_eq!(back.learning_curve, r.learning_curve);
        let reference = back.reference.unwrap();
        assert!(reference.latency_ms_p50.is_nan());
        assert_eq!(reference.calls, 31);
    }

    #[test]
    fn without_reference_or_curve_the_report_is_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let r = sample();
        r.write(dir.path()).unwrap();
        let md = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
        assert!(md.contains("| metric | multi-agent (MAS) | AFM (one model) | MAS / AFM |\n|---|---:|---:|---:|\n"), "{md}");
        assert!(!md.contains("scripted agents"), "{md}");
        assert!(!md.contains("Learning curve"), "{md}");
        assert!(!dir.path().join("learning_curve.png").exists());
    }

    #[test]
    fn old_report_json_without_new_fields_loads() {
        let mut v = serde_json::to_value(sample()).unwrap();
        let obj = v.as_object_mut().unwrap();
        assert!(obj.remove("reference").is_some());
        assert!(obj.remove("learning_curve").is_some());
        let old: Report = serde_json::from_value(v).unwrap();
        assert_eq!(old.reference, None);
        assert!(old.learning_curve.is_empty());
        assert_eq!(old.afm, sample().afm);
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_416), (2025, 11, 24));
    }
}
