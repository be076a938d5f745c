//! The latency-distribution plot of docs/benchmarks.md (issue 5 item 5): one percentile curve per
//! scenario, drawn by the tool itself as a PNG.
//!
//! Design constraints:
//! - The x axis is on a "nines" scale (`-log10(1 - p)`): p0, p90, p99 and p99.9 are equally spaced,
//!   so the tail, where webhook latency problems live, gets as much room as the median.
//! - The y axis turns logarithmic when the latencies span more than [`LOG_SCALE_RATIO`], so a fast
//!   scenario and a slow-receiver scenario can share one plot and both stay readable.
//! - Text is drawn with DejaVu Sans embedded in the binary (the `dejavu` crate) through plotters'
//!   `ab_glyph` backend: no fontconfig, no system fonts, the same picture on every machine.

use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{bail, Context as _};
use std::ops::Range;

use plotters::coord::ranged1d::{
    AsRangedCoord, KeyPointHint, NoDefaultFormatting, Ranged, ValueFormatter,
};
use plotters::prelude::*;

/// Picture size in pixels.
const WIDTH: u32 = 1000;
const HEIGHT: u32 = 600;
/// Highest latency over lowest above which the y axis is logarithmic.
const LOG_SCALE_RATIO: f64 = 20.0;
/// Points per curve (evenly spaced on the nines scale).
const POINTS: usize = 400;
/// The nines scale ends at p99.9, or earlier when there are too few samples to tell it apart.
const MAX_NINES: f64 = 3.0;
/// The lowest latency drawn on a log axis (1 µs): a zero cannot be placed on it.
const MIN_LOG_MS: f64 = 0.001;
const TITLE: &str = "Ingest-to-receipt latency";
/// The family every text of the plot uses; registered once with the embedded font.
const FONT: &str = "sans-serif";

/// Draws one percentile curve per named series into a `WIDTH`×`HEIGHT` PNG at `path`.
/// Series without samples are left out; it is an error if none has any.
pub fn latency_plot(series: &[(String, Vec<Duration>)], path: &Path) -> anyhow::Result<()> {
    register_font()?;
    let curves: Vec<Curve<'_>> = series
        .iter()
        .filter(|(_, samples)| !samples.is_empty())
        .map(|(name, samples)| Curve::new(name, samples))
        .collect();
    let Some(most_samples) = curves.iter().map(|c| c.sorted_ms.len()).max() else {
        bail!("no latency samples to plot");
    };
    // With n samples, the highest percentile that is not just the maximum is 1 - 1/n.
    let nines = (most_samples as f64).log10().clamp(1.0, MAX_NINES);
    let points: Vec<Vec<(f64, f64)>> = curves.iter().map(|c| c.points(nines)).collect();
    let (low, high) = points
        .iter()
        .flatten()
        .fold((f64::INFINITY, 0.0f64), |(low, high), &(_, ms)| {
            (low.min(ms), high.max(ms))
        });
    let high = high.max(MIN_LOG_MS);
    let low_positive = low.max(MIN_LOG_MS);
    let x_range = NinesAxis { end: nines };
    let drawing = if high / low_positive > LOG_SCALE_RATIO {
        let y_range = (low_positive / 1.25..high * 1.25).log_scale();
        draw(
            path,
            &curves,
            &points,
            x_range,
            y_range,
            "latency (ms, log scale)",
        )
    } else {
        draw(
            path,
            &curves,
            &points,
            x_range,
            0.0..high * 1.1,
            "latency (ms)",
        )
    };
    drawing.with_context(|| format!("cannot draw the latency plot to {}", path.display()))
}

/// Soak plot size in pixels (four rows of two panels).
const SOAK_WIDTH: u32 = 1400;
const SOAK_HEIGHT: u32 = 1400;

/// Named points of one curve in a soak panel.
type Series = (String, Vec<(f64, f64)>);

/// Draws the soak run's series over time (minutes) into a PNG at `path`: rates, latency, RSS,
/// CPU per delivery, queue depths, history sizes, dead tuples and the sweep, one panel each.
pub fn soak_plot(rows: &[crate::soak::WindowReport], path: &Path) -> anyhow::Result<()> {
    register_font()?;
    if rows.is_empty() {
        bail!("no soak windows to plot");
    }
    let minutes = |r: &crate::soak::WindowReport| r.elapsed_s / 60.0;
    let one = |name: &str, f: &dyn Fn(&crate::soak::WindowReport) -> Option<f64>| -> Series {
        (
            name.to_owned(),
            rows.iter()
                .filter_map(|r| Some((minutes(r), f(r)?)))
                .collect(),
        )
    };
    let processes: Vec<String> = rows
        .iter()
        .flat_map(|r| r.processes.iter().map(|p| p.name.clone()))
        .fold(Vec::new(), |mut names, name| {
            if !names.contains(&name) {
                names.push(name);
            }
            names
        });
    let per_process = |f: fn(&crate::soak::ProcessFigures) -> Option<f64>| -> Vec<Series> {
        processes
            .iter()
            .map(|name| {
                one(name, &|r| {
                    r.processes.iter().find(|p| &p.name == name).and_then(f)
                })
            })
            .collect()
    };
    let per_table = |f: fn(&crate::soak::TableFigures) -> f64| -> Vec<Series> {
        ["executions", "tasks", "task_logs"]
            .iter()
            .map(|table| {
                one(table, &|r| {
                    r.history.iter().find(|t| t.table == *table).map(f)
                })
            })
            .collect()
    };
    let panels: Vec<(&str, &str, Vec<Series>)> = vec![
        (
            "Rates",
            "events/s",
            vec![
                one("accepted", &|r| Some(r.accepted_per_sec)),
                one("delivered", &|r| Some(r.delivered_per_sec)),
            ],
        ),
        (
            "Send-to-receipt latency",
            "ms",
            vec![
                one("p50", &|r| r.latency_ms.map(|l| l.p50)),
                one("p99", &|r| r.latency_ms.map(|l| l.p99)),
            ],
        ),
        ("Resident memory", "MiB", per_process(|p| Some(p.rss_mib))),
        (
            "CPU per delivery",
            "ms",
            per_process(|p| p.cpu_ms_per_delivery),
        ),
        (
            "Queue depth (ready)",
            "messages",
            vec![
                one("events", &|r| r.queues.events.map(f64::from)),
                one("retry buckets", &|r| r.queues.retry),
                one("dead letters", &|r| r.queues.dead_letter.map(f64::from)),
            ],
        ),
        (
            "History size (with indexes)",
            "MiB",
            per_table(|t| t.total_mib),
        ),
        ("Dead tuples", "rows", per_table(|t| t.dead_rows as f64)),
        (
            "Retention sweep",
            "seconds sweeping per window",
            vec![one("sweep", &|r| Some(r.sweep.seconds))],
        ),
    ];
    let end = rows.iter().map(minutes).fold(0.0, f64::max).max(0.1);
    let root = BitMapBackend::new(path, (SOAK_WIDTH, SOAK_HEIGHT)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let root = root
        .titled(
            if rows.iter().any(|r| r.phase == "drain") {
                "regrelay backlog drain"
            } else {
                "regrelay soak run"
            },
            (FONT, 28),
        )
        .map_err(plot_error)?;
    for (area, (title, unit, series)) in root.split_evenly((4, 2)).iter().zip(&panels) {
        soak_panel(area, title, unit, series, end)
            .with_context(|| format!("cannot draw the panel {title:?}"))?;
    }
    root.present().map_err(plot_error)?;
    Ok(())
}

fn soak_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    unit: &str,
    series: &[Series],
    end_minutes: f64,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let high = series
        .iter()
        .flat_map(|(_, points)| points.iter().map(|p| p.1))
        .fold(0.0, f64::max);
    let high = if high > 0.0 { high * 1.15 } else { 1.0 };
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FONT, 18))
        .margin(10)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..end_minutes, 0.0..high)
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .x_desc("minutes")
        .y_desc(unit)
        .axis_desc_style((FONT, 13))
        .label_style((FONT, 12))
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(plot_error)?;
    let curves = series
        .iter()
        .map(|(name, points)| (name.as_str(), points.as_slice()));
    draw_curves(&mut chart, curves, SeriesLabelPosition::UpperRight, 12)
}

/// One line per named curve, in the palette's order, and their legend at `position`.
fn draw_curves<'a, 'c, DB, X, Y>(
    chart: &mut ChartContext<'c, DB, Cartesian2d<X, Y>>,
    curves: impl Iterator<Item = (&'a str, &'a [(f64, f64)])>,
    position: SeriesLabelPosition,
    font_size: u32,
) -> anyhow::Result<()>
where
    DB: DrawingBackend + 'c,
    DB::ErrorType: 'static,
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    let key = i32::try_from(font_size).unwrap_or(12) * 4 / 3;
    for (i, (name, points)) in curves.enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(plot_error)?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + key, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(position)
        .label_font((FONT, font_size))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(plot_error)?;
    Ok(())
}

/// One series, its samples in milliseconds, sorted.
struct Curve<'a> {
    name: &'a str,
    sorted_ms: Vec<f64>,
}

impl<'a> Curve<'a> {
    fn new(name: &'a str, samples: &[Duration]) -> Self {
        let mut sorted_ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        sorted_ms.sort_by(f64::total_cmp);
        Self { name, sorted_ms }
    }

    /// `(nines, latency ms)` from p0 to `nines`, by nearest rank.
    fn points(&self, nines: f64) -> Vec<(f64, f64)> {
        (0..=POINTS)
            .map(|i| {
                let x = nines * i as f64 / POINTS as f64;
                (x, percentile(&self.sorted_ms, percentile_of_nines(x)))
            })
            .collect()
    }
}

/// The x axis: `0..end` on the nines scale, ticked at p0, p50, p90, p99 and p99.9.
struct NinesAxis {
    end: f64,
}

impl Ranged for NinesAxis {
    type FormatOption = NoDefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        let share = if self.end > 0.0 {
            value / self.end
        } else {
            0.0
        };
        limit.0 + (share * f64::from(limit.1 - limit.0)).round() as i32
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        // Only bold ticks: the light grid is not drawn.
        if hint.weight().allow_light_points() {
            return Vec::new();
        }
        [0.0, 2f64.log10(), 1.0, 2.0, 3.0]
            .into_iter()
            .filter(|x| *x <= self.end + 1e-9)
            .collect()
    }

    fn range(&self) -> Range<f64> {
        0.0..self.end
    }
}

impl ValueFormatter<f64> for NinesAxis {
    fn format_ext(&self, value: &f64) -> String {
        nines_label(value)
    }
}

/// `-log10(1 - p)` back to `p` (0..1).
fn percentile_of_nines(x: f64) -> f64 {
    1.0 - 10f64.powf(-x)
}

/// The nearest-rank `p` quantile (0..=1) of sorted, non-empty values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// `p50`, `p99.9`: the label of a point on the nines scale.
fn nines_label(x: &f64) -> String {
    let p = percentile_of_nines(*x) * 100.0;
    let text = format!("{p:.1}");
    format!("p{}", text.strip_suffix(".0").unwrap_or(&text))
}

fn draw<Y>(
    path: &Path,
    curves: &[Curve<'_>],
    points: &[Vec<(f64, f64)>],
    x_range: NinesAxis,
    y_range: Y,
    y_description: &str,
) -> anyhow::Result<()>
where
    Y: AsRangedCoord<Value = f64>,
    Y::CoordDescType: ValueFormatter<f64>,
{
    let root = BitMapBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(TITLE, (FONT, 26))
        .margin(16)
        // Room for the last x label (`p99.9`), centred on the right edge.
        .margin_right(40)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d(x_range, y_range)
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .x_desc("percentile (nines scale)")
        .y_desc(y_description)
        .y_label_formatter(&|ms: &f64| format_ms(*ms))
        .axis_desc_style((FONT, 16))
        .label_style((FONT, 14))
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(plot_error)?;
    let named = curves
        .iter()
        .zip(points)
        .map(|(curve, points)| (curve.name, points.as_slice()));
    draw_curves(&mut chart, named, SeriesLabelPosition::UpperLeft, 14)?;
    root.present().map_err(plot_error)?;
    Ok(())
}

/// Milliseconds with as many decimals as small values need.
fn format_ms(ms: f64) -> String {
    if ms == 0.0 {
        "0".to_owned()
    } else if ms >= 10.0 {
        format!("{ms:.0}")
    } else if ms >= 1.0 {
        format!("{ms:.1}")
    } else {
        format!("{ms:.2}")
    }
}

/// plotters' errors borrow the backend's error type; keep their text.
fn plot_error<E: std::error::Error + Send + Sync>(error: DrawingAreaErrorKind<E>) -> anyhow::Error {
    anyhow::anyhow!("{error}")
}

/// Registers the embedded DejaVu Sans as the plot's font, once per process.
fn register_font() -> anyhow::Result<()> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular())
                .map_err(|_| "the embedded DejaVu Sans font cannot be read".to_owned())
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The width and height in a PNG's IHDR chunk, after checking the signature.
    fn png_size(bytes: &[u8]) -> (u32, u32) {
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
        assert_eq!(&bytes[12..16], b"IHDR");
        let word = |at: usize| {
            u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        (word(16), word(20))
    }

    fn synthetic(n: u64, base_us: u64, tail_us: u64) -> Vec<Duration> {
        (0..n)
            .map(|i| {
                let tail = if i % 100 == 0 { tail_us } else { 0 };
                Duration::from_micros(base_us + (i * 7919) % base_us + tail)
            })
            .collect()
    }

    #[test]
    fn plots_two_series_into_a_png_of_the_right_size() {
        let dir = std::env::temp_dir().join(format!("regrelay-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (name, series) in [
            // Narrow range: linear axis.
            (
                "linear.png",
                vec![
                    ("history on".to_owned(), synthetic(5000, 4000, 3000)),
                    ("history off".to_owned(), synthetic(5000, 3000, 2000)),
                ],
            ),
            // Wide range (50 ms receiver next to a fast one): log axis; an empty series is skipped.
            (
                "log.png",
                vec![
                    ("fast".to_owned(), synthetic(2000, 800, 20_000)),
                    ("slow receiver".to_owned(), synthetic(300, 50_000, 80_000)),
                    ("nothing".to_owned(), Vec::new()),
                ],
            ),
        ] {
            let path = dir.join(name);
            latency_plot(&series, &path).unwrap();
            let bytes = std::fs::read(&path).unwrap();
            assert_eq!(png_size(&bytes), (WIDTH, HEIGHT), "{name}");
            // A plot with text and curves compresses far worse than a blank canvas.
            assert!(bytes.len() > 10_000, "{name}: only {} bytes", bytes.len());
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn no_samples_is_an_error() {
        let path = std::env::temp_dir().join("regrelay-plot-empty.png");
        let error = latency_plot(&[("a".into(), Vec::new())], &path).unwrap_err();
        assert!(error.to_string().contains("no latency samples"), "{error}");
    }

    #[test]
    fn nines_scale_labels_and_ranks() {
        assert_eq!(nines_label(&0.0), "p0");
        assert_eq!(nines_label(&2f64.log10()), "p50");
        assert_eq!(nines_label(&1.0), "p90");
        assert_eq!(nines_label(&2.0), "p99");
        assert_eq!(nines_label(&3.0), "p99.9");
        let sorted: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&sorted, 0.0), 1.0);
        assert_eq!(percentile(&sorted, 0.5), 50.0);
        assert_eq!(percentile(&sorted, 0.99), 99.0);
        assert_eq!(percentile(&sorted, 0.999), 100.0);
    }
}
