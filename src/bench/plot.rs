//! `kiln bench --step --profile --plot FILE`: time per kernel family, stacked, one bar per
//! profiled step. GPU time where the profile has timestamps, else the CPU time recording.

use std::path::Path;

use plotters::prelude::*;

use crate::error::Result;
use crate::gpu::{GpuTiming, Profile};
use crate::util::plot::{Area, BLUE, DrawResult, GREEN, ORANGE, PURPLE, RED, register_font, write_png};

/// matplotlib's next colours after the report's five.
const MORE: [RGBColor; 5] = [
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// The families of `profiles` (most time first) and each step's milliseconds per family.
pub fn family_times(profiles: &[Profile]) -> (Vec<String>, Vec<Vec<f64>>) {
    let mut total: std::collections::HashMap<String, f64> = Default::default();
    let ms = |p: &Profile, g: &crate::gpu::profile::Group| match p.timing {
        GpuTiming::PerDispatch => g.gpu_ns.unwrap_or(0.0) / 1e6,
        _ => g.cpu_ns as f64 / 1e6,
    };
    for p in profiles {
        for g in p.by_family() {
            *total.entry(g.name.clone()).or_default() += ms(p, &g);
        }
    }
    let mut names: Vec<String> = total.keys().cloned().collect();
    names.sort_by(|a, b| total[b].total_cmp(&total[a]).then(a.cmp(b)));
    let steps = profiles
        .iter()
        .map(|p| {
            let groups = p.by_family();
            names.iter().map(|n| groups.iter().find(|g| &g.name == n).map_or(0.0, |g| ms(p, g))).collect()
        })
        .collect();
    (names, steps)
}

pub fn profile_png(path: &Path, profiles: &[Profile], title: &str) -> Result<()> {
    register_font()?;
    write_png(path, |area| draw(area, profiles, title))
}

fn draw(area: &Area, profiles: &[Profile], title: &str) -> DrawResult {
    let (names, steps) = family_times(profiles);
    let top = steps.iter().map(|s| s.iter().sum::<f64>()).fold(0.0, f64::max).max(1e-6) * 1.1;
    let timed = profiles.first().is_some_and(|p| p.timing == GpuTiming::PerDispatch);
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d(0.5f64..steps.len() as f64 + 0.5, 0.0..top)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(steps.len().max(1))
        .x_label_formatter(&|x| format!("{x:.0}"))
        .x_desc("profiled step")
        .y_desc(if timed { "GPU ms per family" } else { "CPU ms recording, per family" })
        .draw()?;
    let colors: Vec<RGBColor> = [BLUE, ORANGE, GREEN, RED, PURPLE].into_iter().chain(MORE).collect();
    for (f, name) in names.iter().enumerate() {
        let color = colors[f % colors.len()];
        let bars = steps.iter().enumerate().map(|(i, s)| {
            let below: f64 = s[..f].iter().sum();
            let x = i as f64 + 1.0;
            Rectangle::new([(x - 0.35, below), (x + 0.35, below + s[f])], color.filled())
        });
        chart
            .draw_series(bars)?
            .label(name.clone())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 20, y + 5)], color.filled()));
    }
    chart.configure_series_labels().border_style(BLACK).background_style(WHITE.mix(0.85)).draw()?;
    Ok(())
}
