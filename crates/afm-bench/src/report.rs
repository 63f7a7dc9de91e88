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
    /// Per-task latency at batch 1, milliseconds.
    pub latency_ms_p50: f64,
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

    /// The summary table printed at the end of the pipeline.
    pub fn summary_table(&self) -> String {
        let a = &self.afm;
        let m = &self.mas;
        let r = &self.ratios;
        let cur = self.price_table.currency;
        let mut s = String::new();
        s.push_str("| metric | multi-agent (MAS) | AFM (one model) | MAS / AFM |\n");
        s.push_str("|---|---:|---:|---:|\n");
        let mut row = |k: &str, mv: String, av: String, rv: String| {
            s.push_str(&format!("| {k} | {mv} | {av} | {rv} |\n"));
        };
        row(
            "task success (held-out)",
            pct(m.success_rate),
            pct(a.success_rate),
            format!("{:+.1} pts (AFM - MAS)", r.success_delta * 100.0),
        );
        row(
            "latency p50 (ms, batch 1)",
            f1(m.latency_ms_p50),
            f1(a.latency_ms_p50),
            x(r.latency_p50),
        );
        row(
            "latency p95 (ms, batch 1)",
            f1(m.latency_ms_p95),
            f1(a.latency_ms_p95),
            x(r.latency_p95),
        );
        for b in ["1", "8"] {
            let mv = m.throughput_tasks_per_s.get(b).copied().unwrap_or(f64::NAN);
            let av = a.throughput_tasks_per_s.get(b).copied().unwrap_or(f64::NAN);
            row(
                &format!("throughput (tasks/s, batch {b})"),
                f2(mv),
                f2(av),
                format!("AFM {}", x(ratio(av, mv))),
            );
        }
        row(
            "tokens prefill",
            m.tokens_prefill.to_string(),
            a.tokens_prefill.to_string(),
            x(r.tokens_prefill),
        );
        row(
            "tokens decode",
            m.tokens_decode.to_string(),
            a.tokens_decode.to_string(),
            x(ratio(m.tokens_decode as f64, a.tokens_decode as f64)),
        );
        row(
            "model calls",
            m.calls.to_string(),
            a.calls.to_string(),
            x(r.calls),
        );
        row(
            "tool calls",
            m.tool_calls.to_string(),
            a.tool_calls.to_string(),
            String::new(),
        );
        row(
            "resident models (weights MiB)",
            format!("{} ({:.1})", m.models, m.memory_bytes as f64 / 1048576.0),
            format!("{} ({:.1})", a.models, a.memory_bytes as f64 / 1048576.0),
            x(r.memory),
        );
        row(
            &format!("cost ({cur})"),
            format!("{:.6}", m.cost),
            format!("{:.6}", a.cost),
            x(r.cost),
        );
        row(
            "answer agreement",
            String::new(),
            pct(self.answer_agreement),
            String::new(),
        );
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
        s.push_str("\n![latency](latency.png) ![tokens](tokens.png) ![cost](cost.png)\n");
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

/// Write through a temporary file in the same directory, then rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("out")
    ));
    std::fs::write(&tmp, bytes).map_err(|e| anyhow::anyhow!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(())
}

pub mod charts {
    //! PNG bar charts MAS vs AFM (plotters, bitmap backend).
    use super::Report;
    use plotters::prelude::*;
    use std::path::Path;

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
        let mas = RGBColor(214, 96, 77);
        let afm = RGBColor(67, 147, 195);
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

    /// latency.png, tokens.png, cost.png.
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
        Ok(())
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

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_416), (2025, 11, 24));
    }
}
