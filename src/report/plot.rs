//! The training report picture: loss curves (train and test), learning rate, and validation AP
//! before and after training, drawn with plotters into a PNG (fonts embedded: DejaVu Sans).

use std::sync::Once;

use plotters::prelude::*;

/// What the picture shows.
pub struct PlotData<'a> {
    pub title: &'a str,
    pub train_loss: &'a [(usize, f64)],
    pub test_loss: &'a [(usize, f64)],
    pub lr: &'a [(usize, f64)],
    /// (threshold, AP before, AP after) rows.
    pub ap: &'a [(f64, Option<f64>, Option<f64>)],
    /// A line under the AP bars: the trained model's F1 and PQ, the kept epoch.
    pub qc_note: Option<&'a str>,
}

#[derive(Debug, thiserror::Error)]
#[error("drawing the report: {0}")]
pub struct PlotError(pub String);

fn err<E: std::fmt::Display>(e: E) -> PlotError {
    PlotError(e.to_string())
}

static FONT: Once = Once::new();

/// Registers the embedded DejaVu Sans as plotters' "sans-serif" (once per process).
pub(crate) fn register_font() {
    FONT.call_once(|| {
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular());
    });
}

/// A learning rate as a tick label: scientific, so Cellpose-SAM's 1e-5 and its halving tail
/// read as well as CPnet's 0.01 (fixed decimals print every small tick as 0.0).
fn lr_label(v: &f64) -> String {
    if *v == 0.0 {
        "0".into()
    } else {
        format!("{v:.1e}")
    }
}

fn epoch_label(x: &f64) -> String {
    format!("{x:.0}")
}

/// Renders `data` as a 1500x450 PNG.
pub(crate) fn render_png(data: &PlotData) -> Result<Vec<u8>, PlotError> {
    register_font();
    let (w, h) = (1500u32, 450u32);
    let mut rgb = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let root = root.titled(data.title, ("sans-serif", 22)).map_err(err)?;
        let panels = root.split_evenly((1, 3));

        let n = data.train_loss.iter().chain(data.test_loss).map(|p| p.0).max().unwrap_or(1).max(1) as f64;
        let ymax = data
            .train_loss
            .iter()
            .chain(data.test_loss)
            .map(|p| p.1)
            .filter(|v| v.is_finite())
            .fold(0.0, f64::max)
            .max(1e-3)
            * 1.05;
        let mut c = ChartBuilder::on(&panels[0])
            .caption("Loss", ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(35)
            .y_label_area_size(55)
            .build_cartesian_2d(0f64..n, 0f64..ymax)
            .map_err(err)?;
        c.configure_mesh().x_desc("epoch").x_label_formatter(&epoch_label).draw().map_err(err)?;
        c.draw_series(LineSeries::new(data.train_loss.iter().map(|&(e, v)| (e as f64, v)), &BLUE))
            .map_err(err)?
            .label("train")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLUE));
        if !data.test_loss.is_empty() {
            c.draw_series(LineSeries::new(data.test_loss.iter().map(|&(e, v)| (e as f64, v)), &RED))
                .map_err(err)?
                .label("test")
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], RED));
        }
        c.configure_series_labels()
            .border_style(BLACK)
            .background_style(WHITE.mix(0.8))
            .draw()
            .map_err(err)?;

        let lmax = data.lr.iter().map(|p| p.1).fold(0.0, f64::max).max(1e-9) * 1.05;
        let mut c = ChartBuilder::on(&panels[1])
            .caption("Learning rate", ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(35)
            .y_label_area_size(65)
            .build_cartesian_2d(0f64..n, 0f64..lmax)
            .map_err(err)?;
        c.configure_mesh()
            .x_desc("epoch")
            .x_label_formatter(&epoch_label)
            .y_label_formatter(&lr_label)
            .draw()
            .map_err(err)?;
        c.draw_series(LineSeries::new(data.lr.iter().map(|&(e, v)| (e as f64, v)), &BLACK)).map_err(err)?;

        // groups centred on integer x: tick k is "IoU t_k"; grey = base model, blue = trained
        let groups = data.ap.len().max(1) as f64;
        let mut c = ChartBuilder::on(&panels[2])
            .caption("Validation AP", ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(35)
            .y_label_area_size(45)
            .build_cartesian_2d(-0.5f64..(groups - 0.5), 0f64..1.1)
            .map_err(err)?;
        c.configure_mesh()
            .disable_x_mesh()
            .x_labels(2 * data.ap.len() + 1)
            .x_label_formatter(&|x| {
                let k = x.round();
                match data.ap.get(k as usize) {
                    Some(r) if (x - k).abs() < 1e-6 && k >= 0.0 => format!("IoU {}", r.0),
                    _ => String::new(),
                }
            })
            .draw()
            .map_err(err)?;
        let grey = RGBColor(150, 150, 150);
        let value_style = ("sans-serif", 14).into_font();
        // (label, colour, offset from the group centre, which AP of the row)
        for (label, color, dx, after) in [("base model", grey, -0.18, false), ("trained", BLUE, 0.18, true)] {
            let pts: Vec<(f64, f64)> = data
                .ap
                .iter()
                .enumerate()
                .filter_map(|(i, r)| (if after { r.2 } else { r.1 }).map(|v| (i as f64 + dx, v)))
                .collect();
            c.draw_series(
                pts.iter().map(|&(x, v)| Rectangle::new([(x - 0.16, 0.0), (x + 0.16, v)], color.filled())),
            )
            .map_err(err)?
            .label(label)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], color.filled()));
            c.draw_series(
                pts.iter()
                    .map(|&(x, v)| Text::new(format!("{v:.2}"), (x - 0.12, v + 0.06), value_style.clone())),
            )
            .map_err(err)?;
        }
        if !data.ap.is_empty() {
            c.configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .border_style(BLACK)
                .background_style(WHITE.mix(0.8))
                .draw()
                .map_err(err)?;
        }
        if let Some(note) = data.qc_note {
            panels[2]
                .draw_text(note, &("sans-serif", 14).into_text_style(&panels[2]), (60, 40))
                .map_err(err)?;
        }
        if data.ap.is_empty() {
            panels[2]
                .draw_text(
                    "no validation regions",
                    &("sans-serif", 16).into_text_style(&panels[2]),
                    (140, 200),
                )
                .map_err(err)?;
        }
        root.present().map_err(err)?;
    }
    let img = image::RgbImage::from_raw(w, h, rgb).ok_or_else(|| PlotError("bad buffer size".into()))?;
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).map_err(err)?;
    Ok(png)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_learning_rates_keep_their_digits_on_the_axis() {
        let ticks: Vec<String> = [0.0, 1e-5, 5e-6, 2.5e-6, 0.01].iter().map(lr_label).collect();
        assert_eq!(ticks, ["0", "1.0e-5", "5.0e-6", "2.5e-6", "1.0e-2"]);
    }
}
