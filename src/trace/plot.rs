//! Pictures of traces, drawn as the reference draws them (`plot_trace_heatmap`): tokens down,
//! layers across, the subject's tokens marked with `*`, a white-to-colour scale from the
//! corrupted run's probability up (purple for hidden states, green for MLPs, red for
//! attention), the answer's probability on the colour bar; and the average indirect effect at
//! the subject's last token per layer over many facts. PNG or SVG, with the labels' font
//! embedded (no system font libraries).

use std::path::Path;

use plotters::prelude::*;

use super::{FactTrace, Kind};
use crate::error::{Error, Result};

/// The image formats, by the extension they are written with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Png,
    Svg,
}

impl Format {
    pub const ALL: [Format; 2] = [Format::Png, Format::Svg];

    pub fn extension(self) -> &'static str {
        match self {
            Format::Png => "png",
            Format::Svg => "svg",
        }
    }
}

impl std::str::FromStr for Format {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "png" => Ok(Format::Png),
            "svg" => Ok(Format::Svg),
            _ => Err(Error::Input(format!("--plot-format {s}: use png or svg"))),
        }
    }
}

/// The darkest colour of each kind's scale (matplotlib's Purples, Greens and Reds end there).
fn dark(kind: Kind) -> (f64, f64, f64) {
    match kind {
        Kind::Hidden => (63.0, 0.0, 125.0),
        Kind::Mlp => (0.0, 68.0, 27.0),
        Kind::Attn => (103.0, 0.0, 13.0),
    }
}

/// The colour of `x` in [0, 1] on `kind`'s scale, from near-white.
fn shade(kind: Kind, x: f64) -> RGBColor {
    let x = if x.is_finite() { x.clamp(0.0, 1.0) } else { 0.0 };
    let (r, g, b) = dark(kind);
    let light = 252.0;
    let mix = |c: f64| (light + (c - light) * x).round() as u8;
    RGBColor(mix(r), mix(g), mix(b))
}

type Drawn = std::result::Result<(), Box<dyn std::error::Error>>;

fn kind_of(t: &FactTrace) -> Kind {
    Kind::ALL.into_iter().find(|k| k.reference_name() == t.kind).unwrap_or(Kind::Hidden)
}

fn heatmap<DB: DrawingBackend>(root: DrawingArea<DB, plotters::coord::Shift>, t: &FactTrace, model: &str) -> Drawn
where
    DB::ErrorType: 'static,
{
    let kind = kind_of(t);
    let (n_tok, n_layer) = (t.scores.len(), t.scores.first().map_or(0, Vec::len));
    let low = t.low_score.unwrap_or(0.0);
    let high = t.scores.iter().flatten().copied().fold(low, f64::max);
    let scale = |v: f64| if high > low { (v - low) / (high - low) } else { 0.0 };
    let labels: Vec<String> =
        t.input_tokens.iter().enumerate().map(|(i, s)| if (t.subject_range.0..t.subject_range.1).contains(&i) { format!("{s}*") } else { s.clone() }).collect();
    let (title, x_desc) = match kind {
        Kind::Hidden => ("Impact of restoring state after corrupted input".to_string(), format!("single restored layer within {model}")),
        k => {
            let name = if k == Kind::Mlp { "MLP" } else { "Attn" };
            (format!("Impact of restoring {name} after corrupted input"), format!("center of interval of {} restored {name} layers", t.window))
        }
    };
    root.fill(&WHITE)?;
    let (main, bar) = root.split_horizontally(root.dim_in_pixel().0 as i32 - 110);
    let mut chart = ChartBuilder::on(&main)
        .caption(title, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(120)
        .build_cartesian_2d(0f64..n_layer as f64, 0f64..n_tok as f64)?;
    chart.configure_mesh().disable_mesh().x_desc(x_desc).x_labels(0).y_labels(0).draw()?;
    // Token i occupies the row from n_tok − i − 1 to n_tok − i: the first token on top.
    chart.draw_series(t.scores.iter().enumerate().flat_map(|(i, row)| {
        let y = (n_tok - i - 1) as f64;
        row.iter().enumerate().map(move |(l, &v)| Rectangle::new([(l as f64, y), (l as f64 + 1.0, y + 1.0)], shade(kind, scale(v)).filled()))
    }))?;
    // Labels drawn on the root area, in the backend's coordinates: tokens left of their rows,
    // layers under the middle of their columns (every one on small models, every fifth else).
    use plotters::style::text_anchor::{HPos, Pos, VPos};
    let font = ("sans-serif", 13).into_font();
    let left = TextStyle::from(font.clone()).pos(Pos::new(HPos::Right, VPos::Center));
    for (i, label) in labels.iter().enumerate() {
        let (x, y) = chart.backend_coord(&(0.0, (n_tok - i) as f64 - 0.5));
        root.draw(&Text::new(label.clone(), (x - 6, y), left.clone()))?;
    }
    let below = TextStyle::from(font.clone()).pos(Pos::new(HPos::Center, VPos::Top));
    let step = if n_layer <= 16 { 1 } else { 5 };
    for l in (0..n_layer).step_by(step) {
        let (x, y) = chart.backend_coord(&(l as f64 + 0.5, 0.0));
        root.draw(&Text::new(l.to_string(), (x, y + 4), below.clone()))?;
    }
    // The colour bar: the scale from the corrupted run's probability to the highest score.
    let mut cb = ChartBuilder::on(&bar)
        .margin_top(40)
        .margin_bottom(50)
        .margin_right(45)
        .y_label_area_size(0)
        .build_cartesian_2d(0f64..1f64, low..high.max(low + 1e-9))?;
    let steps = 64;
    cb.draw_series((0..steps).map(|k| {
        let (a, b) = (low + (high - low) * k as f64 / steps as f64, low + (high - low) * (k + 1) as f64 / steps as f64);
        Rectangle::new([(0.0, a), (1.0, b)], shade(kind, k as f64 / (steps - 1) as f64).filled())
    }))?;
    for k in 0..=4 {
        let v = low + (high - low) * k as f64 / 4.0;
        let (x, y) = cb.backend_coord(&(1.0, v));
        root.draw(&Text::new(format!("{v:.3}"), (x + 4, y), TextStyle::from(("sans-serif", 12).into_font()).pos(Pos::new(HPos::Left, VPos::Center))))?;
    }
    let (x, y) = cb.backend_coord(&(0.5, low));
    root.draw(&Text::new(format!("p({})", t.answer.trim()), (x, y + 10), below))?;
    root.present()?;
    Ok(())
}

fn lines<DB: DrawingBackend>(root: DrawingArea<DB, plotters::coord::Shift>, title: &str, series: &[(Kind, Vec<f64>)], model: &str) -> Drawn
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE)?;
    let n_layer = series.iter().map(|(_, v)| v.len()).max().unwrap_or(1);
    let (lo, hi) = series.iter().flat_map(|(_, v)| v.iter().copied()).fold((0f64, 0f64), |(a, b), v| (a.min(v), b.max(v)));
    let pad = ((hi - lo) * 0.05).max(1e-3);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..(n_layer.max(2) - 1) as f64, (lo - pad)..(hi + pad))?;
    chart
        .configure_mesh()
        .x_desc(format!("layer within {model}"))
        .y_desc("average indirect effect")
        .x_labels(n_layer.min(25))
        .x_label_formatter(&|x| if x.fract() == 0.0 { format!("{x:.0}") } else { String::new() })
        .draw()?;
    for (kind, values) in series {
        let (r, g, b) = dark(*kind);
        let colour = RGBColor(r as u8, g as u8, b as u8);
        let points: Vec<(f64, f64)> = values.iter().enumerate().map(|(l, &v)| (l as f64, v)).collect();
        chart
            .draw_series(LineSeries::new(points.clone(), colour.stroke_width(2)))?
            .label(kind.name())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2)));
        chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, colour.filled())))?;
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
    root.present()?;
    Ok(())
}

/// Draws through a temporary file beside `path`, renamed into place once complete.
fn write_with(path: &Path, format: Format, draw: impl Fn(&Path, Format) -> Drawn) -> Result<()> {
    crate::eval::plot::register_font();
    // The backends pick the encoding from the extension.
    let tmp = crate::fsutil::sibling(path, "partial").with_extension(format.extension());
    draw(&tmp, format).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, std::io::Error::other(format!("cannot draw the plot: {e}")))
    })?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// One fact's heatmap.
pub fn write_heatmap(path: &Path, format: Format, t: &FactTrace, model: &str) -> Result<()> {
    let size = (900, (200 + 28 * t.scores.len()) as u32);
    write_with(path, format, |p, f| match f {
        Format::Png => heatmap(BitMapBackend::new(p, size).into_drawing_area(), t, model),
        Format::Svg => heatmap(SVGBackend::new(p, size).into_drawing_area(), t, model),
    })
}

/// The average indirect effect at the subject's last token per layer, one line per kind.
pub fn write_effects(path: &Path, format: Format, facts: usize, series: &[(Kind, Vec<f64>)], model: &str) -> Result<()> {
    let size = (800, 500);
    let title = format!("Average indirect effect at the last subject token ({facts} facts)");
    write_with(path, format, |p, f| match f {
        Format::Png => lines(BitMapBackend::new(p, size).into_drawing_area(), &title, series, model),
        Format::Svg => lines(SVGBackend::new(p, size).into_drawing_area(), &title, series, model),
    })
}
