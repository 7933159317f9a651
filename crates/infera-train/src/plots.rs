//! PNG plots people would rather look at than read: the confusion matrix as a heatmap, and
//! training curves.

use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use crate::TrainError;
use crate::metrics::Metrics;

/// Fonts tried for the text in plots (Debian: fonts-dejavu-core, fonts-liberation).
const FONTS: [&str; 3] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

fn plot_err(e: impl std::fmt::Display) -> TrainError {
    TrainError::Plot(e.to_string())
}

/// plotters draws text only with a registered font; one is read from the system once.
fn ensure_font() -> Result<(), TrainError> {
    static FONT: OnceLock<Result<(), String>> = OnceLock::new();
    FONT.get_or_init(|| {
        let bytes = FONTS
            .iter()
            .find_map(|p| std::fs::read(p).ok())
            .ok_or_else(|| {
                format!(
                    "no font for plot text (looked for {}): install fonts-dejavu-core",
                    FONTS.join(", ")
                )
            })?;
        // Registered fonts live for the whole process.
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
            .map_err(|_| "the plot font could not be read".to_string())
    })
    .clone()
    .map_err(TrainError::Plot)
}

/// The confusion matrix with counts in the cells, shaded by the share of each true class.
pub fn confusion_matrix_png(m: &Metrics, path: &Path, title: &str) -> Result<(), TrainError> {
    ensure_font()?;
    let k = m.confusion.len();
    let cell = 56u32;
    let (left, top) = (130u32, 60u32);
    let size = (left + cell * k as u32 + 20, top + cell * k as u32 + 70);
    let root = BitMapBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    root.draw(&Text::new(
        format!("{title} (accuracy {:.2}%)", m.accuracy * 100.0),
        (10, 15),
        ("sans-serif", 20).into_font(),
    ))
    .map_err(plot_err)?;
    let small = ("sans-serif", 12).into_font();
    for (r, row) in m.confusion.iter().enumerate() {
        let total = row.iter().sum::<u64>().max(1) as f64;
        let y = (top + cell * r as u32) as i32;
        root.draw(&Text::new(
            m.per_class[r].label.clone(),
            (8, y + cell as i32 / 2 - 6),
            small.clone(),
        ))
        .map_err(plot_err)?;
        for (c, &n) in row.iter().enumerate() {
            let share = n as f64 / total;
            let x = (left + cell * c as u32) as i32;
            let shade = (255.0 * (1.0 - share)) as u8;
            let fill = if r == c {
                RGBColor(shade, shade, 255)
            } else {
                RGBColor(255, shade, shade)
            };
            root.draw(&Rectangle::new(
                [(x, y), (x + cell as i32 - 1, y + cell as i32 - 1)],
                fill.filled(),
            ))
            .map_err(plot_err)?;
            let color = if share > 0.5 { &WHITE } else { &BLACK };
            root.draw(&Text::new(
                n.to_string(),
                (x + 6, y + cell as i32 / 2 - 6),
                small.clone().color(color),
            ))
            .map_err(plot_err)?;
        }
    }
    let bottom = (top + cell * k as u32) as i32;
    for (c, class) in m.per_class.iter().enumerate() {
        let x = (left + cell * c as u32) as i32 + 4;
        let label: String = class.label.chars().take(8).collect();
        root.draw(&Text::new(label, (x, bottom + 8), small.clone()))
            .map_err(plot_err)?;
    }
    root.draw(&Text::new(
        "rows: true class · columns: predicted class",
        (left as i32, bottom + 40),
        ("sans-serif", 14).into_font(),
    ))
    .map_err(plot_err)?;
    root.present().map_err(plot_err)
}

/// One epoch of training, as logged and plotted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    pub epoch: usize,
    pub train_loss: f64,
    pub train_accuracy: f64,
    pub val_loss: f64,
    pub val_accuracy: f64,
    pub lr: f64,
    pub seconds: f64,
}

/// Loss (left) and accuracy (right) per epoch, training and validation.
pub fn training_curves_png(history: &[EpochRecord], path: &Path) -> Result<(), TrainError> {
    ensure_font()?;
    let root = BitMapBackend::new(path, (960, 400)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let (l, r) = root.split_horizontally(480);
    let last = history.last().map_or(1, |h| h.epoch).max(1) as f64;
    let series = [
        (
            "loss",
            &l,
            [
                (
                    "train",
                    history.iter().map(|h| h.train_loss).collect::<Vec<_>>(),
                ),
                ("validation", history.iter().map(|h| h.val_loss).collect()),
            ],
        ),
        (
            "accuracy",
            &r,
            [
                ("train", history.iter().map(|h| h.train_accuracy).collect()),
                (
                    "validation",
                    history.iter().map(|h| h.val_accuracy).collect(),
                ),
            ],
        ),
    ];
    for (name, area, lines) in series {
        let all = lines.iter().flat_map(|(_, v)| v.iter().copied());
        let (lo, hi) = all.fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(v), b.max(v)));
        let (lo, hi) = if lo > hi { (0.0, 1.0) } else { (lo, hi) };
        let pad = ((hi - lo) * 0.05).max(1e-3);
        let mut chart = ChartBuilder::on(area)
            .caption(name, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(30)
            .y_label_area_size(50)
            .build_cartesian_2d(1.0..last.max(2.0), (lo - pad)..(hi + pad))
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc("epoch")
            .draw()
            .map_err(plot_err)?;
        for ((label, values), color) in lines.iter().zip([BLUE, RED]) {
            let points: Vec<(f64, f64)> = history
                .iter()
                .zip(values)
                .map(|(h, &v)| (h.epoch as f64, v))
                .collect();
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))
                .map_err(plot_err)?
                .label(*label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(plot_err)?;
    }
    root.present().map_err(plot_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plots_are_written_as_png() {
        if ensure_font().is_err() {
            return; // no system font here; CI installs one
        }
        let d = tempfile::tempdir().unwrap();
        let m = Metrics::compute(
            &[0, 1, 1, 2],
            &[0, 1, 2, 2],
            &["T-shirt/top", "Trouser", "Bag"],
        );
        let p = d.path().join("cm.png");
        confusion_matrix_png(&m, &p, "test").unwrap();
        let h: Vec<EpochRecord> = (1..=3)
            .map(|e| EpochRecord {
                epoch: e,
                train_loss: 1.0 / e as f64,
                train_accuracy: 0.5 + e as f64 / 10.0,
                val_loss: 1.1 / e as f64,
                val_accuracy: 0.45 + e as f64 / 10.0,
                lr: 0.001,
                seconds: 1.0,
            })
            .collect();
        let c = d.path().join("curves.png");
        training_curves_png(&h, &c).unwrap();
        for f in [p, c] {
            let bytes = std::fs::read(&f).unwrap();
            assert!(
                bytes.starts_with(b"\x89PNG") && bytes.len() > 2000,
                "{}",
                f.display()
            );
        }
    }
}
