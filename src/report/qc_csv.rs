//! The QC metrics as CSV, one row per image and IoU threshold, then the mean over images and the
//! pooled totals: the table ZeroCostDL4Mic and BIOP's QuPath extension hand their users, readable
//! by any spreadsheet. Undefined values (no objects to score) are left empty.

use crate::evaluate::ApSummary;

const HEADER: &str = "image,threshold,n_true,n_pred,tp,fp,fn,ap,precision,recall,f1,pq";

fn num(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.6}")
    } else {
        String::new()
    }
}

/// Quotes a field when it holds a comma, quote or line break (RFC 4180).
fn field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// `image,threshold,n_true,n_pred,tp,fp,fn,ap,precision,recall,f1,pq` rows: each image, then
/// `mean` (mean over images of the per-image scores; counts summed) and `total` (scores from the
/// counts and IoUs summed over images; AP is the mean of per-image AP, as everywhere).
pub fn qc_csv(summary: &ApSummary) -> String {
    let mut out = String::from(HEADER);
    out.push('\n');
    let th = &summary.thresholds;
    for s in &summary.per_image {
        let qc = s.qc();
        for (i, t) in th.iter().enumerate() {
            let at = |v: &[f64]| num(v.get(i).copied().unwrap_or(f64::NAN));
            out.push_str(&format!(
                "{},{t},{},{},{},{},{},{},{},{},{},{}\n",
                field(&s.name),
                s.n_true,
                s.n_pred,
                s.tp.get(i).copied().unwrap_or(0),
                s.fp.get(i).copied().unwrap_or(0),
                s.fn_.get(i).copied().unwrap_or(0),
                at(&s.ap),
                at(&qc.precision),
                at(&qc.recall),
                at(&qc.f1),
                at(&qc.pq),
            ));
        }
    }
    let sum = |v: fn(&crate::evaluate::ImageScore) -> &Vec<u64>, i: usize| -> u64 {
        summary.per_image.iter().map(|s| v(s).get(i).copied().unwrap_or(0)).sum()
    };
    let m = &summary.image_mean;
    for (i, t) in th.iter().enumerate() {
        let at = |v: &[f64]| num(v.get(i).copied().unwrap_or(f64::NAN));
        let counts = format!(
            "{},{},{},{},{}",
            summary.n_true,
            summary.n_pred,
            sum(|s| &s.tp, i),
            sum(|s| &s.fp, i),
            sum(|s| &s.fn_, i)
        );
        out.push_str(&format!(
            "mean,{t},{counts},{},{},{},{},{}\n",
            at(&summary.ap),
            at(&m.precision),
            at(&m.recall),
            at(&m.f1),
            at(&m.pq)
        ));
        out.push_str(&format!(
            "total,{t},{counts},{},{},{},{},{}\n",
            at(&summary.ap),
            at(&summary.precision),
            at(&summary.recall),
            at(&summary.f1),
            at(&summary.pq)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evaluate::ImageScore;

    #[test]
    fn rows_per_image_and_threshold_then_mean_and_total() {
        let img = |name: &str, tp: u64| ImageScore {
            name: name.into(),
            n_true: 2,
            n_pred: 2,
            ap: vec![tp as f64 / (4 - tp) as f64, 0.0, 0.0],
            tp: vec![tp, 0, 0],
            fp: vec![2 - tp, 2, 2],
            fn_: vec![2 - tp, 2, 2],
            iou_sum: vec![0.8 * tp as f64, 0.0, 0.0],
        };
        let s = ApSummary::from_images(vec![img("a,b.tif", 2), img("c.tif", 1)]);
        let csv = qc_csv(&s);
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines.len(), 1 + 2 * 3 + 2 * 3, "{csv}");
        assert_eq!(lines[0], HEADER);
        assert_eq!(lines[1], "\"a,b.tif\",0.5,2,2,2,0,0,1.000000,1.000000,1.000000,1.000000,0.800000");
        // c.tif at 0.5: P = R = F1 = 0.5, PQ = 0.8 / (1 + 1)
        assert_eq!(lines[4], "c.tif,0.5,2,2,1,1,1,0.333333,0.500000,0.500000,0.500000,0.400000");
        assert!(
            lines[7].starts_with("mean,0.5,4,4,3,1,1,0.666667,0.750000,0.750000,0.750000,0.600000"),
            "{csv}"
        );
        // pooled: PQ = 2.4 / (3 + 1)
        assert!(
            lines[8].starts_with("total,0.5,4,4,3,1,1,0.666667,0.750000,0.750000,0.750000,0.600000"),
            "{csv}"
        );
    }
}
