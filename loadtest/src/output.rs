//! `--out DIR`: summary JSON, per-second CSV and a PNG chart.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{anyhow, Context};
use plotters::prelude::*;

use crate::report::Report;
use crate::Scenario;

pub const SUMMARY_FILE: &str = "summary.json";
pub const TIMESERIES_FILE: &str = "timeseries.csv";
pub const CHART_FILE: &str = "chart.png";

/// Write all output files into `dir` (created if missing). Returns the written paths.
pub fn write_all(report: &Report, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let summary = dir.join(SUMMARY_FILE);
    let json = serde_json::to_string_pretty(report)?;
    std::fs::write(&summary, json + "\n")
        .with_context(|| format!("cannot write {}", summary.display()))?;
    let csv = dir.join(TIMESERIES_FILE);
    std::fs::write(&csv, timeseries_csv(report))
        .with_context(|| format!("cannot write {}", csv.display()))?;
    let png = dir.join(CHART_FILE);
    write_chart(report, &png).with_context(|| format!("cannot write {}", png.display()))?;
    Ok(vec![summary, csv, png])
}

/// Instances seen in the time series, in a stable order.
fn instances(report: &Report) -> Vec<String> {
    let set: BTreeSet<&String> = report
        .timeseries
        .iter()
        .flat_map(|r| r.served_by.keys())
        .collect();
    set.into_iter().cloned().collect()
}

/// CSV: one row per second of the timed phase.
pub fn timeseries_csv(report: &Report) -> String {
    let inst = instances(report);
    let mut o = String::from("second,completed,ok_2xx,non_2xx,errors,p50_ms,p99_ms,max_ms");
    for i in &inst {
        o.push_str(",served_by:");
        o.push_str(&csv_field(i));
    }
    o.push('\n');
    for r in &report.timeseries {
        let _ = write!(
            o,
            "{},{},{},{},{},{:.3},{:.3},{:.3}",
            r.second, r.completed, r.ok, r.non_2xx, r.failed, r.p50_ms, r.p99_ms, r.max_ms
        );
        for i in &inst {
            let _ = write!(o, ",{}", r.served_by.get(i).copied().unwrap_or(0));
        }
        o.push('\n');
    }
    o
}

fn csv_field(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c == ',' || c == '"' || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect()
}

/// Registers the embedded DejaVu Sans as "sans-serif" for the charts (once); false if it fails.
pub fn register_font() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular())
            .is_ok()
    })
}

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("chart: {e:?}")
}

/// PNG chart: throughput and p99 per second, plus per-instance share for `product`.
pub fn write_chart(report: &Report, path: &Path) -> anyhow::Result<()> {
    if !register_font() {
        return Err(anyhow!("embedded font could not be loaded"));
    }
    let inst = instances(report);
    let with_share = report.scenario == Scenario::Product && !inst.is_empty();
    let height = if with_share { 1050 } else { 720 };
    let root = BitMapBackend::new(path, (1200, height)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let title = format!(
        "loadtest {} - {} model, concurrency {} - {:.0}/s overall",
        report.scenario, report.model, report.concurrency, report.throughput_per_s
    );
    let root = root.titled(&title, ("sans-serif", 24)).map_err(err)?;
    let panels = if with_share { 3 } else { 2 };
    let areas = root.split_evenly((panels, 1));
    let rows = &report.timeseries;
    let xmax = rows.len().max(1) as f64;

    // Throughput.
    let ymax = rows.iter().map(|r| r.completed).max().unwrap_or(0).max(1) as f64 * 1.1;
    let mut chart = ChartBuilder::on(&areas[0])
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .caption("throughput (completed per second)", ("sans-serif", 18))
        .build_cartesian_2d(0f64..xmax, 0f64..ymax)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("per second")
        .x_label_formatter(&|v| format!("{v:.1}"))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(err)?;
    chart
        .draw_series(LineSeries::new(
            rows.iter()
                .map(|r| (r.second as f64 + 0.5, r.completed as f64)),
            BLUE.stroke_width(2),
        ))
        .map_err(err)?
        .label("completed")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLUE.stroke_width(2)));
    chart
        .draw_series(LineSeries::new(
            rows.iter()
                .map(|r| (r.second as f64 + 0.5, (r.non_2xx + r.failed) as f64)),
            RED.stroke_width(2),
        ))
        .map_err(err)?
        .label("non-2xx + errors")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], RED.stroke_width(2)));
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .draw()
        .map_err(err)?;

    // Latency p99 (and p50).
    let lmax = rows.iter().map(|r| r.p99_ms).fold(0.0, f64::max).max(0.001) * 1.1;
    let mut chart = ChartBuilder::on(&areas[1])
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .caption("latency per second (ms)", ("sans-serif", 18))
        .build_cartesian_2d(0f64..xmax, 0f64..lmax)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("ms")
        .x_label_formatter(&|v| format!("{v:.1}"))
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(err)?;
    let active = || rows.iter().filter(|r| r.completed > 0);
    chart
        .draw_series(LineSeries::new(
            active().map(|r| (r.second as f64 + 0.5, r.p99_ms)),
            MAGENTA.stroke_width(2),
        ))
        .map_err(err)?
        .label("p99")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], MAGENTA.stroke_width(2)));
    chart
        .draw_series(LineSeries::new(
            active().map(|r| (r.second as f64 + 0.5, r.p50_ms)),
            GREEN.stroke_width(2),
        ))
        .map_err(err)?
        .label("p50")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], GREEN.stroke_width(2)));
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .draw()
        .map_err(err)?;

    // Per-instance share of responses.
    if with_share {
        let mut chart = ChartBuilder::on(&areas[2])
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(70)
            .caption(
                "share of responses per x-served-by instance (%)",
                ("sans-serif", 18),
            )
            .build_cartesian_2d(0f64..xmax, 0f64..100f64)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("seconds")
            .y_desc("%")
            .x_label_formatter(&|v| format!("{v:.1}"))
            .y_label_formatter(&|v| format!("{v:.0}"))
            .label_style(("sans-serif", 13))
            .draw()
            .map_err(err)?;
        for (idx, name) in inst.iter().enumerate() {
            let color = Palette99::pick(idx).to_rgba();
            let points = rows.iter().filter_map(|r| {
                let total: u64 = r.served_by.values().sum();
                (total > 0).then(|| {
                    let n = r.served_by.get(name).copied().unwrap_or(0);
                    (r.second as f64 + 0.5, n as f64 * 100.0 / total as f64)
                })
            });
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))
                .map_err(err)?
                .label(name.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 13))
            .draw()
            .map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(())
}
