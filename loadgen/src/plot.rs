//! The latency percentile plot, HdrHistogram style: the x axis is `-log10(1 - percentile)`,
//! so 90 %, 99 %, 99.9 % and 99.99 % are evenly spaced and the tail gets most of the width;
//! the latency axis is logarithmic too. SVG only (no font libraries needed).

use std::path::Path;

use anyhow::anyhow;
use plotters::prelude::*;

use crate::stats::{Latency, Stats};

/// Largest x: the 99.9999th percentile.
const NINES_MAX: f64 = 6.0;

/// One system's latency distributions, as (percentile 0..=100, latency in µs) points.
#[derive(Debug, Clone)]
pub struct Curve {
    pub label: String,
    pub e2e: Vec<(f64, f64)>,
    pub ack: Vec<(f64, f64)>,
}

impl Curve {
    pub fn from_stats(label: &str, stats: &Stats) -> Curve {
        Curve {
            label: label.to_string(),
            e2e: stats.e2e.percentile_curve(),
            ack: if stats.acked > 0 {
                stats.ack.percentile_curve()
            } else {
                Latency::new().percentile_curve()
            },
        }
    }
}

/// `-log10(1 - p/100)`, capped at `NINES_MAX`.
pub fn nines(percentile: f64) -> f64 {
    let rest = (1.0 - percentile / 100.0).max(10f64.powf(-NINES_MAX));
    (-rest.log10()).clamp(0.0, NINES_MAX)
}

fn nines_label(x: f64) -> String {
    match x.round() as i32 {
        0 => "0%".into(),
        1 => "90%".into(),
        2 => "99%".into(),
        3 => "99.9%".into(),
        4 => "99.99%".into(),
        5 => "99.999%".into(),
        _ => "99.9999%".into(),
    }
}

/// Writes the end-to-end (solid) and publish-to-ack (dashed) curves of every system.
pub fn write_svg(path: &Path, curves: &[Curve]) -> anyhow::Result<()> {
    let error = |e: &dyn std::fmt::Display| anyhow!("drawing {}: {e}", path.display());
    let all = curves.iter().flat_map(|c| c.e2e.iter().chain(&c.ack));
    let y_max = all.clone().map(|(_, y)| *y).fold(10.0, f64::max) * 1.5;
    let y_min = all
        .map(|(_, y)| *y)
        .fold(f64::MAX, f64::min)
        .clamp(0.5, 10.0)
        / 1.5;
    let root = SVGBackend::new(path, (1100, 650)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| error(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Latency by percentile (from intended send time; solid: end to end, dashed: publish to ack)",
            ("sans-serif", 18),
        )
        .margin(20)
        .x_label_area_size(45)
        .y_label_area_size(80)
        .build_cartesian_2d(0f64..NINES_MAX, (y_min..y_max).log_scale())
        .map_err(|e| error(&e))?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (us)")
        .x_labels(7)
        .x_label_formatter(&|x| nines_label(*x))
        .y_label_formatter(&|y| {
            if *y >= 1000.0 {
                format!("{:.0} ms", y / 1e3)
            } else {
                format!("{y:.0} us")
            }
        })
        .draw()
        .map_err(|e| error(&e))?;
    for (index, curve) in curves.iter().enumerate() {
        let color = Palette99::pick(index).to_rgba();
        let points = |data: &[(f64, f64)]| -> Vec<(f64, f64)> {
            data.iter()
                .map(|(p, us)| (nines(*p), us.max(y_min)))
                .collect()
        };
        if !curve.e2e.is_empty() {
            chart
                .draw_series(LineSeries::new(points(&curve.e2e), color.stroke_width(2)))
                .map_err(|e| error(&e))?
                .label(format!("{} end to end", curve.label))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
        }
        if !curve.ack.is_empty() {
            chart
                .draw_series(DashedLineSeries::new(
                    points(&curve.ack),
                    6,
                    4,
                    color.stroke_width(1),
                ))
                .map_err(|e| error(&e))?
                .label(format!("{} publish to ack", curve.label))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(1))
                });
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| error(&e))?;
    root.present().map_err(|e| error(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn nines_space_the_tail_evenly() {
        assert!((nines(90.0) - 1.0).abs() < 1e-9);
        assert!((nines(99.9) - 3.0).abs() < 1e-9);
        assert_eq!(nines(100.0), NINES_MAX);
        assert_eq!(nines(0.0), 0.0);
    }

    #[test]
    fn svg_has_a_line_per_curve() {
        let mut stats = Stats::default();
        for i in 1..10_000u64 {
            stats.e2e.record(i * 1000);
            stats.ack.record(i * 500);
        }
        stats.acked = 1;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plot.svg");
        write_svg(
            &path,
            &[
                Curve::from_stats("a", &stats),
                Curve::from_stats("b", &stats),
            ],
        )
        .unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("a end to end"));
        assert!(svg.contains("b publish to ack"));
        assert!(svg.matches("<polyline").count() + svg.matches("<path").count() >= 4);
    }
}
