//! Reading stats summaries, probe results and curves into rows, with errors naming the file.

use anyhow::{Context, Result, bail};
use rmqm_artifacts::{Input, Table, read_table};
use rmqm_correlate::{METRICS, ModelKey, ProbeRow, StatsRow, seed_of_model_id};
use rmqm_vocab::Convention;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Expands arguments that are glob patterns (when no file has that exact name); keeps order.
pub fn expand(args: &[String]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for a in args {
        let p = PathBuf::from(a);
        if p.exists() || !a.contains(['*', '?', '[']) {
            out.push(p);
            continue;
        }
        let mut matched: Vec<PathBuf> = glob::glob(a)
            .with_context(|| format!("bad pattern {a:?}"))?
            .filter_map(|r| r.ok())
            .collect();
        if matched.is_empty() {
            bail!("{a}: no file matches");
        }
        matched.sort();
        out.extend(matched);
    }
    Ok(out)
}

fn column<'a>(t: &'a Table, name: &str, path: &Path) -> Result<&'a rmqm_artifacts::Column> {
    t.get(name)
        .with_context(|| format!("{}: no column {name:?}", path.display()))
}

fn strings(t: &Table, name: &str, path: &Path) -> Result<Vec<String>> {
    column(t, name, path)?;
    Ok(t.strings(name).unwrap())
}

fn floats(t: &Table, name: &str, path: &Path) -> Result<Vec<f64>> {
    column(t, name, path)?;
    t.f64s(name)
        .with_context(|| format!("{}: column {name:?} is not numeric", path.display()))
}

/// Stats rows (label "all") of every file. Two files that claim the same (train dataset, model,
/// alteration, convention) are an error naming both.
pub fn read_stats(paths: &[PathBuf]) -> Result<Vec<StatsRow>> {
    let mut rows = Vec::new();
    let mut seen: BTreeMap<(ModelKey, String, Convention), PathBuf> = BTreeMap::new();
    for path in paths {
        let (t, _) = read_table(&Input::Path(path.clone()))?;
        let n = t.rows();
        let model = strings(&t, "model", path)?;
        let train_dataset = optional_strings(&t, "train_dataset", n);
        let method = strings(&t, "method", path)?;
        let dim = floats(&t, "dim", path)?;
        let optimizer = strings(&t, "optimizer", path)?;
        let epochs = t.f64s("epochs").unwrap_or_else(|| vec![-1.0; n]);
        let alteration = strings(&t, "alteration", path)?;
        let convention = strings(&t, "convention", path)?;
        let label = strings(&t, "label", path)?;
        let n_images = t.f64s("n_images").unwrap_or_else(|| vec![f64::NAN; n]);
        let n_steps = t.f64s("n_steps").unwrap_or_else(|| vec![f64::NAN; n]);
        let seconds = t.f64s("seconds").unwrap_or_else(|| vec![f64::NAN; n]);
        let mut metric_values = BTreeMap::new();
        for m in METRICS.iter().map(|m| m.column).chain(["D_RC", "P_RC"]) {
            match t.f64s(m) {
                Some(v) => {
                    metric_values.insert(m.to_string(), v);
                }
                // Older summaries lack the peer metrics.
                None if matches!(m, "rankme" | "alpha_req" | "lidar") => {}
                None => bail!(
                    "{}: no column {m:?}: not a manifold-stats summary",
                    path.display()
                ),
            }
        }
        for i in (0..n).filter(|&i| label[i] == "all") {
            let key = ModelKey::new(&train_dataset[i], &model[i]);
            let row_convention: Convention = convention[i]
                .parse()
                .map_err(|e| anyhow::anyhow!("{}: column convention: {e}", path.display()))?;
            let claim = (key.clone(), alteration[i].clone(), row_convention);
            if let Some(first) = seen.insert(claim, path.clone()) {
                bail!(
                    "{} and {} both hold the stats of {key} under {}/{}",
                    first.display(),
                    path.display(),
                    alteration[i],
                    convention[i]
                );
            }
            rows.push(StatsRow {
                seed: seed_of_model_id(&model[i]),
                key,
                method: method[i].clone(),
                dim: dim[i] as i64,
                optimizer: optimizer[i].clone(),
                epochs: epochs[i] as i64,
                alteration: alteration[i].clone(),
                convention: row_convention,
                n_images: n_images[i],
                n_steps: n_steps[i],
                seconds: seconds[i],
                metrics: metric_values
                    .iter()
                    .map(|(k, v)| (k.clone(), v[i]))
                    .collect(),
            });
        }
    }
    Ok(rows)
}

/// A text column, or "unknown" in every row when the file has none.
fn optional_strings(t: &Table, name: &str, n: usize) -> Vec<String> {
    t.strings(name)
        .unwrap_or_else(|| vec!["unknown".to_string(); n])
}

/// Probe rows of every file; tasks named `knn-<k>` (plus `-<metric>` for other than cosine) or
/// `linear`. Two rows for the same (train dataset, model, downstream, task) are an error naming
/// their files.
pub fn read_probes(paths: &[PathBuf]) -> Result<Vec<ProbeRow>> {
    let mut rows = Vec::new();
    let mut seen: BTreeMap<(ModelKey, String, String), PathBuf> = BTreeMap::new();
    for path in paths {
        let (t, _) = read_table(&Input::Path(path.clone()))?;
        let n = t.rows();
        let model = strings(&t, "model", path)?;
        let train_dataset = optional_strings(&t, "train_dataset", n);
        let downstream = strings(&t, "downstream", path)?;
        let task = strings(&t, "task", path)?;
        let k = floats(&t, "k", path)?;
        let metric = strings(&t, "metric", path)?;
        let accuracy = floats(&t, "accuracy", path)?;
        for i in 0..n {
            let name = match task[i].as_str() {
                "knn" if metric[i] == "cosine" => format!("knn-{}", k[i] as i64),
                "knn" => format!("knn-{}-{}", k[i] as i64, metric[i]),
                other => other.to_string(),
            };
            let key = ModelKey::new(&train_dataset[i], &model[i]);
            let claim = (key.clone(), downstream[i].clone(), name.clone());
            if let Some(first) = seen.insert(claim, path.clone()) {
                bail!(
                    "{} and {} both hold {key}'s {} result on {}",
                    first.display(),
                    path.display(),
                    name,
                    downstream[i]
                );
            }
            rows.push(ProbeRow {
                key,
                downstream: downstream[i].clone(),
                task: name,
                accuracy: accuracy[i],
            });
        }
    }
    Ok(rows)
}

/// One model's curves under one alteration.
#[derive(Debug, Clone)]
pub struct Curve {
    /// The track (train dataset).
    pub train_dataset: String,
    /// Method.
    pub method: String,
    /// Epochs (0 = random init).
    pub epochs: i64,
    /// Embedding dimension.
    pub dim: i64,
    /// Alteration.
    pub alteration: String,
    /// Steps.
    pub step: Vec<f64>,
    /// Column name -> values per step (d0_mean, d0_se, rc0_mean, ...).
    pub values: BTreeMap<String, Vec<f64>>,
}

/// Curves files (from manifold-stats --curves).
pub fn read_curves(paths: &[PathBuf]) -> Result<Vec<Curve>> {
    let mut out = Vec::new();
    for path in paths {
        let (t, _) = read_table(&Input::Path(path.clone()))?;
        let model = strings(&t, "model", path)?;
        if model.is_empty() {
            continue;
        }
        let method = strings(&t, "method", path)?;
        let alteration = strings(&t, "alteration", path)?;
        let dim = floats(&t, "dim", path)?;
        let epochs = t.f64s("epochs").unwrap_or_else(|| vec![-1.0; t.rows()]);
        let train_dataset = optional_strings(&t, "train_dataset", t.rows());
        let mut values = BTreeMap::new();
        for c in [
            "d0_mean", "d0_se", "dp_mean", "dp_se", "rc0_mean", "rc0_se", "rcp_mean", "rcp_se",
        ] {
            values.insert(c.to_string(), floats(&t, c, path)?);
        }
        out.push(Curve {
            train_dataset: train_dataset[0].clone(),
            method: method[0].clone(),
            epochs: epochs[0] as i64,
            dim: dim[0] as i64,
            alteration: alteration[0].clone(),
            step: floats(&t, "step", path)?,
            values,
        });
    }
    Ok(out)
}
