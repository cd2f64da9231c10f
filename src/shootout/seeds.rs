//! `shootout --seeds`: each experiment once per seed, and a table of mean and spread
//! of the best val_accuracy, the frozen best and the fine-tuned best over the seeds. A
//! single seed moves the best by points on a few hundred validation images; this is
//! what makes two recipes comparable.

use super::ResultRow;

/// `name-seed7`: the experiment name a seed's run goes under.
pub fn seeded_name(name: &str, seed: u64) -> String {
    format!("{name}-seed{seed}")
}

/// Mean, sample standard deviation, min and max (None without values).
pub fn spread(values: &[f64]) -> Option<(f64, f64, f64, f64)> {
    if values.is_empty() {
        return None;
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = if values.len() > 1 {
        values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    Some((mean, var.sqrt(), min, max))
}

fn cell(values: &[f64]) -> String {
    match spread(values) {
        Some((mean, sd, min, max)) => format!("{mean:.4} ± {sd:.4} ({min:.4}–{max:.4})"),
        None => "-".into(),
    }
}

/// The table over seeds, one line per experiment (`base` names, in order): mean ±
/// standard deviation (min–max) of each best, and the seeds that ran.
pub fn markdown(base: &[String], rows: &[ResultRow], seeds: &[u64]) -> String {
    let mut out = String::from(
        "| experiment | seeds | best val_acc | frozen best | fine-tuned best |\n|---|---|---|---|---|\n",
    );
    for name in base {
        let mine: Vec<&ResultRow> = seeds
            .iter()
            .filter_map(|s| {
                let seeded = seeded_name(name, *s);
                rows.iter().find(|r| r.experiment == seeded)
            })
            .collect();
        let best: Vec<f64> = mine.iter().map(|r| r.best_val_accuracy).collect();
        let frozen: Vec<f64> = mine.iter().filter_map(|r| r.frozen_best).collect();
        let tuned: Vec<f64> = mine.iter().filter_map(|r| r.finetune_best).collect();
        out.push_str(&format!(
            "| {name} | {} | {} | {} | {} |\n",
            mine.len(),
            cell(&best),
            cell(&frozen),
            cell(&tuned)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_is_mean_sample_sd_and_range() {
        let (mean, sd, min, max) = spread(&[0.78, 0.80, 0.82]).unwrap();
        assert!((mean - 0.80).abs() < 1e-12 && (sd - 0.02).abs() < 1e-12);
        assert_eq!((min, max), (0.78, 0.82));
        assert_eq!(spread(&[0.5]).unwrap().1, 0.0);
        assert_eq!(spread(&[]), None);
    }
}
