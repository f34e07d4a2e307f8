//! The evaluation report's pictures, drawn with plotters and the embedded font the training
//! report uses: latency histogram, throughput per batch size, a metric per group, the confusion
//! matrix and the reliability diagram. Each is written to a temporary name and renamed.

use std::path::Path;

use plotters::prelude::*;

use super::calibration::ReliabilityBin;
use super::latency::ThroughputPoint;
use crate::error::Result;
use crate::util::plot::{Area, BLUE, DrawResult, GREEN, ORANGE, RED, register_font, write_png};

/// Only Latin-1 is in the embedded font: anything else is shown as `?`.
fn latin1(s: &str) -> String {
    s.chars().map(|c| if (c as u32) < 256 { c } else { '?' }).collect()
}

/// A histogram of single-example latencies (ms), with p50 and p95 marked.
pub fn latency_histogram(path: &Path, samples_ms: &[f64], p50: f64, p95: f64, title: &str) -> Result<()> {
    register_font()?;
    write_png(path, |area| draw_histogram(area, samples_ms, p50, p95, title))
}

fn draw_histogram(area: &Area, samples: &[f64], p50: f64, p95: f64, title: &str) -> DrawResult {
    let lo = samples.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = samples.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    // One distinct value (or none): a unit-wide range around it.
    let (lo, hi) = match (lo.is_finite(), hi > lo) {
        (true, true) => (lo, hi),
        (true, false) => (lo - 0.5, lo + 0.5),
        (false, _) => (0.0, 1.0),
    };
    let bins = 20usize;
    let width = (hi - lo) / bins as f64;
    let mut counts = vec![0usize; bins];
    for &s in samples {
        counts[(((s - lo) / width) as usize).min(bins - 1)] += 1;
    }
    let top = counts.iter().copied().max().unwrap_or(1).max(1);
    let mut chart = ChartBuilder::on(area)
        .caption(latin1(title), ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d(lo..hi + width * 0.01, 0usize..top + 1)?;
    chart.configure_mesh().x_desc("latency (ms)").y_desc("runs").draw()?;
    chart.draw_series(counts.iter().enumerate().map(|(i, &c)| {
        let x0 = lo + i as f64 * width;
        Rectangle::new([(x0, 0), (x0 + width, c)], BLUE.mix(0.7).filled())
    }))?;
    for (value, color, label) in [(p50, GREEN, "p50"), (p95, RED, "p95")] {
        if value.is_finite() {
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![(value, 0), (value, top + 1)],
                    color.stroke_width(2),
                )))?
                .label(format!("{label} {value:.1} ms"))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        }
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.9)).border_style(BLACK).draw()?;
    Ok(())
}

/// Examples per second against batch size (log2 x axis as positions 0, 1, 2, ...).
pub fn throughput(path: &Path, points: &[ThroughputPoint], unit: &str, title: &str) -> Result<()> {
    register_font()?;
    write_png(path, |area| draw_throughput(area, points, unit, title))
}

fn draw_throughput(area: &Area, points: &[ThroughputPoint], unit: &str, title: &str) -> DrawResult {
    let value = |p: &ThroughputPoint| if unit == "tokens" { p.tokens_per_second } else { p.examples_per_second };
    let top = points.iter().map(value).fold(0.0, f64::max).max(1e-9) * 1.15;
    let labels: Vec<String> = points.iter().map(|p| p.batch.to_string()).collect();
    let mut chart = ChartBuilder::on(area)
        .caption(latin1(title), ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(72)
        .build_cartesian_2d(-0.5f64..points.len() as f64 - 0.5, 0.0..top)?;
    chart
        .configure_mesh()
        .x_labels(points.len().max(1))
        .x_label_formatter(&|x| {
            let i = x.round();
            if (x - i).abs() < 1e-6 && i >= 0.0 {
                labels.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .x_desc("batch size")
        .y_desc(format!("{unit} / s"))
        .draw()?;
    chart.draw_series(
        LineSeries::new(points.iter().enumerate().map(|(i, p)| (i as f64, value(p))), ORANGE.stroke_width(2))
            .point_size(5),
    )?;
    Ok(())
}

/// One bar per group with its metric value and example count.
pub fn group_bars(path: &Path, groups: &[(String, f64, usize)], metric: &str, title: &str) -> Result<()> {
    register_font()?;
    write_png(path, |area| draw_group_bars(area, groups, metric, title))
}

fn draw_group_bars(area: &Area, groups: &[(String, f64, usize)], metric: &str, title: &str) -> DrawResult {
    let top = groups.iter().map(|g| g.1).fold(0.0, f64::max).max(1e-9) * 1.15;
    let names: Vec<String> = groups.iter().map(|g| latin1(&format!("{} (n={})", g.0, g.2))).collect();
    let mut chart = ChartBuilder::on(area)
        .caption(latin1(title), ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d(-0.5f64..groups.len() as f64 - 0.5, 0.0..top)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(groups.len().max(1))
        .x_label_formatter(&|x| {
            let i = x.round();
            if (x - i).abs() < 1e-6 && i >= 0.0 {
                names.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_desc(latin1(metric))
        .draw()?;
    chart.draw_series(
        groups
            .iter()
            .enumerate()
            .map(|(i, g)| Rectangle::new([(i as f64 - 0.35, 0.0), (i as f64 + 0.35, g.1)], BLUE.mix(0.8).filled())),
    )?;
    chart.draw_series(groups.iter().enumerate().map(|(i, g)| {
        Text::new(format!("{:.3}", g.1), (i as f64 - 0.15, g.1 + top * 0.02), ("sans-serif", 18).into_font())
    }))?;
    Ok(())
}

/// The confusion matrix as a heat map, gold classes as rows, counts written in the cells.
pub fn confusion(path: &Path, matrix: &[Vec<usize>], labels: &[String], title: &str) -> Result<()> {
    register_font()?;
    write_png(path, |area| draw_confusion(area, matrix, labels, title))
}

fn draw_confusion(area: &Area, matrix: &[Vec<usize>], labels: &[String], title: &str) -> DrawResult {
    let k = matrix.len();
    let max = matrix.iter().flatten().copied().max().unwrap_or(1).max(1) as f64;
    let names: Vec<String> = labels.iter().map(|l| latin1(l)).collect();
    let mut chart = ChartBuilder::on(area)
        .caption(latin1(title), ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(96)
        .build_cartesian_2d(0f64..k as f64, 0f64..k as f64)?;
    let label_of = |v: &f64| {
        let i = v.floor();
        if (v - i - 0.5).abs() < 1e-6 { names.get(i as usize).cloned().unwrap_or_default() } else { String::new() }
    };
    let flip = |v: &f64| label_of(&(k as f64 - v));
    chart
        .configure_mesh()
        .disable_mesh()
        .x_labels(2 * k + 1)
        .y_labels(2 * k + 1)
        .x_label_formatter(&label_of)
        .y_label_formatter(&flip)
        .x_desc("predicted")
        .y_desc("gold")
        .draw()?;
    for (g, row) in matrix.iter().enumerate() {
        for (p, &n) in row.iter().enumerate() {
            // Gold row 0 at the top.
            let y0 = (k - 1 - g) as f64;
            let shade = n as f64 / max;
            let color = RGBColor(255 - (224.0 * shade) as u8, 255 - (136.0 * shade) as u8, 255 - (75.0 * shade) as u8);
            chart.draw_series(std::iter::once(Rectangle::new(
                [(p as f64, y0), (p as f64 + 1.0, y0 + 1.0)],
                color.filled(),
            )))?;
            let ink = if shade > 0.5 { WHITE } else { BLACK };
            chart.draw_series(std::iter::once(Text::new(
                n.to_string(),
                (p as f64 + 0.45, y0 + 0.5),
                ("sans-serif", 28).into_font().color(&ink),
            )))?;
        }
    }
    Ok(())
}

/// The reliability diagram: accuracy per confidence bin against the diagonal.
pub fn reliability(path: &Path, bins: &[ReliabilityBin], ece: f64, title: &str) -> Result<()> {
    register_font()?;
    write_png(path, |area| draw_reliability(area, bins, ece, title))
}

fn draw_reliability(area: &Area, bins: &[ReliabilityBin], ece: f64, title: &str) -> DrawResult {
    let mut chart = ChartBuilder::on(area)
        .caption(latin1(&format!("{title} (ECE {ece:.4})")), ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d(0f64..1f64, 0f64..1f64)?;
    chart.configure_mesh().x_desc("confidence").y_desc("accuracy").draw()?;
    chart
        .draw_series(
            bins.iter()
                .filter(|b| b.count > 0)
                .map(|b| Rectangle::new([(b.lo, 0.0), (b.hi, b.accuracy)], BLUE.mix(0.6).filled())),
        )?
        .label("accuracy per bin")
        .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 20, y + 5)], BLUE.mix(0.6).filled()));
    chart
        .draw_series(LineSeries::new([(0.0, 0.0), (1.0, 1.0)], BLACK.stroke_width(1)))?
        .label("perfect calibration")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.stroke_width(1)));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoded_size(path: &Path) -> (u32, u32) {
        let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
        let reader = decoder.read_info().unwrap();
        (reader.info().width, reader.info().height)
    }

    #[test]
    fn every_plot_draws_a_png() {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        latency_histogram(&p("lat.png"), &[1.0, 2.0, 2.5, 9.0], 2.2, 8.0, "latency").unwrap();
        latency_histogram(&p("lat1.png"), &[3.0], 3.0, 3.0, "one run").unwrap();
        let tp = |b, e| ThroughputPoint {
            batch: b,
            batches: 1,
            seconds: 1.0,
            examples_per_second: e,
            tokens_per_second: e * 10.0,
        };
        throughput(&p("tp.png"), &[tp(1, 3.0), tp(2, 5.0), tp(4, 6.0)], "examples", "throughput").unwrap();
        group_bars(
            &p("g.png"),
            &[("easy-ham-1".into(), 0.98, 120), ("hard-ham-1".into(), 0.7, 17)],
            "accuracy",
            "groups",
        )
        .unwrap();
        confusion(&p("c.png"), &[vec![5, 1], vec![2, 7]], &["ham".into(), "spam".into()], "confusion").unwrap();
        let bins = crate::eval::calibration::expected_calibration_error(&[0.6, 0.9, 0.95], &[true, false, true], 15);
        reliability(&p("r.png"), &bins.bins, bins.ece, "reliability").unwrap();
        for n in ["lat.png", "lat1.png", "tp.png", "g.png", "c.png", "r.png"] {
            assert_eq!(decoded_size(&p(n)), (960, 540), "{n}");
        }
    }
}
