//! `shootout --seeds`: each experiment once per seed, and a table of mean and spread
//! of the best val_accuracy, the frozen best and the fine-tuned best over the seeds. A
//! single seed moves the best by points on a few hundred validation images; this is
//! what makes two recipes comparable.

use super::ResultRow;

/// `name-seed7`: the experiment name a seed's run goes under.
pub fn seeded_name(name: &str, seed: u64) -> String {
    format!("{name}-seed{seed}")
}

/// The experiment and the seed of a `name-seed7` run name (None for other names).
pub fn split_seeded_name(name: &str) -> Option<(&str, u64)> {
    let (base, seed) = name.rsplit_once("-seed")?;
    if base.is_empty() || seed.is_empty() || !seed.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((base, seed.parse().ok()?))
}

/// Runs of one experiment over several seeds among `names` (experiment names, or
/// `experiment/timestamp` as `attach` titles runs), in first-seen order: (experiment,
/// indices into `names`), one run per seed (the first seen), only where two or more
/// seeds ran.
pub fn seed_groups(names: &[String]) -> Vec<(String, Vec<usize>)> {
    let mut groups: Vec<(String, Vec<(u64, usize)>)> = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let experiment = name.split('/').next().unwrap_or(name);
        let Some((base, seed)) = split_seeded_name(experiment) else {
            continue;
        };
        match groups.iter_mut().find(|(b, _)| b == base) {
            Some((_, members)) if members.iter().any(|(s, _)| *s == seed) => {}
            Some((_, members)) => members.push((seed, i)),
            None => groups.push((base.to_string(), vec![(seed, i)])),
        }
    }
    groups
        .into_iter()
        .filter(|(_, members)| members.len() >= 2)
        .map(|(base, members)| (base, members.into_iter().map(|(_, i)| i).collect()))
        .collect()
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
    fn seeded_names_split_and_group() {
        assert_eq!(split_seeded_name("recipe-seed12"), Some(("recipe", 12)));
        assert_eq!(
            split_seeded_name(&seeded_name("a-seed-b", 3)),
            Some(("a-seed-b", 3))
        );
        for plain in [
            "recipe",
            "recipe-seed",
            "-seed3",
            "recipe-seedx",
            "recipe-seed3b",
        ] {
            assert_eq!(split_seeded_name(plain), None, "{plain}");
        }
        let names: Vec<String> = ["a-seed1", "b", "c-seed1", "a-seed2", "a-seed3"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(seed_groups(&names), vec![("a".to_string(), vec![0, 3, 4])]);
        // As `attach` titles runs; a second run of seed 1 is not counted twice.
        let names: Vec<String> = [
            "a-seed1/20261130-1",
            "a-seed2/20261130-2",
            "a-seed1/20261130-3",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(seed_groups(&names), vec![("a".to_string(), vec![0, 1])]);
    }

    #[test]
    fn spread_is_mean_sample_sd_and_range() {
        let (mean, sd, min, max) = spread(&[0.78, 0.80, 0.82]).unwrap();
        assert!((mean - 0.80).abs() < 1e-12 && (sd - 0.02).abs() < 1e-12);
        assert_eq!((min, max), (0.78, 0.82));
        assert_eq!(spread(&[0.5]).unwrap().1, 0.0);
        assert_eq!(spread(&[]), None);
    }
}
