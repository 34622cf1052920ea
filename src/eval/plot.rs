//! `--plot FILE.svg|FILE.png`: the post-edit scores against the number of edits, drawn with
//! plotters (labels in an embedded font, so no system font libraries are needed): a scaling
//! curve over the `--num-edits` values, or, for a sequential run, the scores of each chunk's
//! edits right after it against the number of edits made so far.

use std::path::Path;

use plotters::prelude::*;

use super::run::NumEditsRun;
use super::summary::summarize;
use crate::error::{Error, Result};

/// One curve: a name and its (x, y) points.
pub type Series = (String, Vec<(f64, f64)>);

/// The metrics drawn: the headline ones in % (ES/PS/NS/Score, or zsRE's accuracies).
fn metrics(zsre: bool) -> &'static [(&'static str, &'static str)] {
    let all = super::summary::headline_metrics(zsre);
    &all[..all.len().min(4)]
}

fn value(summary: &serde_json::Map<String, serde_json::Value>, key: &str) -> Option<f64> {
    summary.get(key).and_then(|v| v[0].as_f64())
}

/// The curves of a run, and the x axis' label.
pub fn series(runs: &[NumEditsRun], zsre: bool, sequential: bool) -> (Vec<Series>, &'static str) {
    let mut out: Vec<Series> = metrics(zsre).iter().map(|(l, _)| (l.to_string(), Vec::new())).collect();
    if sequential {
        for r in runs {
            // A streamed run keeps each chunk's summary instead of its cases.
            let per_chunk: Vec<serde_json::Map<String, serde_json::Value>> = match r.chunk_summaries.is_empty() {
                true => r.cases.chunks(r.num_edits).map(|chunk| summarize(chunk.iter().map(|c| (c, None)))).collect(),
                false => r.chunk_summaries.clone(),
            };
            for (k, s) in per_chunk.iter().enumerate() {
                for ((_, key), (_, points)) in metrics(zsre).iter().zip(out.iter_mut()) {
                    if let Some(y) = value(s, key) {
                        points.push((((k + 1) * r.num_edits) as f64, y));
                    }
                }
            }
        }
        (out, "edits made so far (each chunk scored right after its edit)")
    } else {
        for r in runs {
            for ((_, key), (_, points)) in metrics(zsre).iter().zip(out.iter_mut()) {
                if let Some(y) = value(&r.summary, key) {
                    points.push((r.num_edits as f64, y));
                }
            }
        }
        (out, "edits per batch")
    }
}

/// The labels' font, embedded (see `assets/fonts/LICENSE`), registered once for every backend.
static FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans-subset.ttf");

pub(crate) fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // The embedded file is a valid font; a failure would only leave text undrawn.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

/// The formats `--plot` writes, by file extension.
pub fn check_path(path: &Path) -> Result<()> {
    match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
        Some("svg") | Some("png") => Ok(()),
        _ => Err(Error::Input(format!("--plot {}: name the file .svg or .png", path.display()))),
    }
}

type Drawn = std::result::Result<(), Box<dyn std::error::Error>>;

fn draw<DB: DrawingBackend>(root: DrawingArea<DB, plotters::coord::Shift>, title: &str, x_label: &str, series: &[Series], (lo, hi): (f64, f64)) -> Drawn
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE)?;
    let mut builder = ChartBuilder::on(&root);
    let chart = builder.caption(title, ("sans-serif", 20)).margin(15).x_label_area_size(45).y_label_area_size(55);
    let colours = [BLUE, RED, GREEN, BLACK];
    macro_rules! body {
        ($chart:expr) => {{
            let mut chart = $chart;
            chart.configure_mesh().x_desc(x_label).y_desc("%").x_label_formatter(&|x| format!("{x:.0}")).y_label_formatter(&|y| format!("{y:.0}")).draw()?;
            for (i, (name, points)) in series.iter().enumerate() {
                let colour = colours[i % colours.len()];
                chart
                    .draw_series(LineSeries::new(points.iter().copied(), colour.stroke_width(2)))?
                    .label(name.as_str())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2)));
                chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, colour.filled())))?;
            }
            chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
        }};
    }
    let pad = if hi > lo { (hi - lo) * 0.05 } else { 0.5 };
    if hi / lo.max(1.0) >= 20.0 {
        body!(chart.build_cartesian_2d((lo * 0.8..hi * 1.25).log_scale(), 0f64..100f64)?);
    } else {
        body!(chart.build_cartesian_2d((lo - pad)..(hi + pad), 0f64..100f64)?);
    }
    root.present()?;
    Ok(())
}

/// Draws `series` (values in %) to `path`, an SVG or PNG file by its extension.
pub fn write_plot(path: &Path, title: &str, x_label: &str, series: &[Series]) -> Result<()> {
    check_path(path)?;
    let xs: Vec<f64> = series.iter().flat_map(|(_, p)| p.iter().map(|&(x, _)| x)).collect();
    if xs.is_empty() {
        return Err(Error::Input("--plot: nothing to draw (no scored records)".into()));
    }
    let range = xs.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| (a.min(x), b.max(x)));
    register_font();
    let size = (800, 500);
    let png = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("png"));
    let drawn = if png {
        draw(BitMapBackend::new(path, size).into_drawing_area(), title, x_label, series, range)
    } else {
        draw(SVGBackend::new(path, size).into_drawing_area(), title, x_label, series, range)
    };
    drawn.map_err(|e| Error::io(path, std::io::Error::other(format!("cannot draw the plot: {e}"))))
}
