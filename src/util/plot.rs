//! Plotting primitives shared by every picture kiln draws (run curves, evaluation charts, tune
//! studies, profiles): the embedded font, matplotlib's first colours, one canvas size, and
//! [`write_png`], which draws into memory and writes the PNG atomically.

use std::error::Error as StdError;
use std::path::Path;
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;

use super::write_atomic;
use crate::error::{Error, Result};

/// The embedded font for the plots' text: DejaVu Sans cut down to Latin-1 (22 KB; license and
/// the command that made it in assets/fonts/LICENSE).
///
/// Why embed it: plotters draws no text without a font, and its default font backend finds the
/// system's fonts through fontconfig, a C library the build would then need. Looking for a font
/// file at run time would make the pictures depend on the machine: a clean one (CI's, a
/// container) may have none, and there the tests would check a text-less fallback rather than
/// what users see. 22 KB in the binary buys the same pictures everywhere, with no system package
/// to install.
const FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans-subset.ttf");

/// Registers [`FONT`] as plotters' "sans-serif" (the family its axes and legends ask for), once.
pub fn register_font() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| plotters::style::register_font("sans-serif", FontStyle::Normal, FONT).is_ok());
    if ok { Ok(()) } else { Err(Error::invalid("plot", "the embedded font does not parse")) }
}

/// Every picture's size in pixels (width, height).
pub const SIZE: (u32, u32) = (960, 540);
// matplotlib's first colours, so the pictures look familiar.
pub const BLUE: RGBColor = RGBColor(31, 119, 180);
pub const ORANGE: RGBColor = RGBColor(255, 127, 14);
pub const GREEN: RGBColor = RGBColor(44, 160, 44);
pub const RED: RGBColor = RGBColor(214, 39, 40);
pub const PURPLE: RGBColor = RGBColor(148, 103, 189);

pub type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;
pub type DrawResult = std::result::Result<(), Box<dyn StdError>>;

/// Draws a chart into an RGB buffer, encodes it as PNG and writes it atomically.
pub fn write_png(path: &Path, draw: impl FnOnce(&Area) -> DrawResult) -> Result<()> {
    let fail = |e: &dyn std::fmt::Display| Error::invalid("plot", format!("{}: {e}", path.display()));
    let (width, height) = SIZE;
    let mut rgb = vec![0u8; (width * height * 3) as usize];
    {
        let area = BitMapBackend::with_buffer(&mut rgb, SIZE).into_drawing_area();
        area.fill(&WHITE).map_err(|e| fail(&e))?;
        draw(&area).map_err(|e| fail(&e))?;
        area.present().map_err(|e| fail(&e))?;
    }
    let mut bytes = Vec::new();
    let mut encoder = png::Encoder::new(&mut bytes, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().map_err(|e| fail(&e))?;
    writer.write_image_data(&rgb).map_err(|e| fail(&e))?;
    writer.finish().map_err(|e| fail(&e))?;
    write_atomic(path, &bytes)
}

/// The range of the finite `values` with 5% room on both sides (a unit around a single value).
pub fn padded_range(values: impl IntoIterator<Item = f64>) -> std::ops::Range<f64> {
    let (lo, hi) = values
        .into_iter()
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo > hi {
        return 0.0..1.0;
    }
    let pad = if hi > lo { 0.05 * (hi - lo) } else { 0.5 };
    lo - pad..hi + pad
}

/// A short line in the series' colour for the legend.
pub fn legend_mark(color: impl Color) -> impl Fn((i32, i32)) -> PathElement<(i32, i32)> {
    let style = color.stroke_width(2);
    move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style)
}
