//! Result CSV and the paper-style summary table, next to the published reference figures.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::metrics::RunResult;

/// Arrived-load points of the summary table (% of cluster GPU capacity).
pub const SUMMARY_POINTS: [u32; 7] = [90, 95, 100, 105, 110, 120, 130];

/// Error while writing results or reading the reference file.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// File path.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The CSV layer failed.
    #[error("{path}: {message}")]
    Csv {
        /// File path.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}

/// Writes one row per (trace, policy, seed, bucket):
/// `trace,policy,seed,arrived_pct,unalloc_gpu_pct,alloc_ratio_pct,frag_amount_pct,frag_ratio_pct`.
pub fn write_results_csv<W: Write>(out: W, results: &[RunResult]) -> csv::Result<()> {
    let mut w = csv::Writer::from_writer(out);
    w.write_record([
        "trace",
        "policy",
        "seed",
        "arrived_pct",
        "unalloc_gpu_pct",
        "alloc_ratio_pct",
        "frag_amount_pct",
        "frag_ratio_pct",
    ])?;
    for r in results {
        for b in &r.buckets {
            w.write_record([
                r.trace.clone(),
                r.policy.clone(),
                r.seed.to_string(),
                b.arrived_pct.to_string(),
                format!("{:.2}", b.unalloc_gpu_pct),
                format!("{:.2}", b.alloc_ratio_pct),
                format!("{:.2}", b.frag_amount_pct),
                b.frag_ratio_pct
                    .map_or(String::new(), |v| format!("{v:.2}")),
            ])?;
        }
    }
    w.flush()?;
    Ok(())
}

/// Writes the results CSV to a file.
pub fn write_results_file(
    path: impl AsRef<Path>,
    results: &[RunResult],
) -> Result<(), ReportError> {
    let path = path.as_ref();
    let file = std::fs::File::create(path).map_err(|source| ReportError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    write_results_csv(std::io::BufWriter::new(file), results).map_err(|e| ReportError::Csv {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Published means of unallocated GPU % per (trace, policy) at [`SUMMARY_POINTS`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reference {
    values: HashMap<(String, String), Vec<Option<f64>>>,
}

impl Reference {
    /// Reference mean at `arrived_pct` (one of [`SUMMARY_POINTS`]).
    pub fn mean(&self, trace: &str, policy: &str, arrived_pct: u32) -> Option<f64> {
        let i = SUMMARY_POINTS.iter().position(|&p| p == arrived_pct)?;
        *self
            .values
            .get(&(trace.to_string(), policy.to_string()))?
            .get(i)?
    }
}

/// Reads `fgd_atc23_reference_results.csv` (columns `trace,policy,unalloc_gpu_pct_at_{P}_mean`);
/// `Ok(None)` when the file does not exist.
pub fn load_reference(path: impl AsRef<Path>) -> Result<Option<Reference>, ReportError> {
    let path = path.as_ref();
    if !path.exists() {
        return Ok(None);
    }
    let csv_err = |e: csv::Error| ReportError::Csv {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let mut r = csv::Reader::from_path(path).map_err(csv_err)?;
    let headers = r.headers().map_err(csv_err)?.clone();
    let col = |name: &str| headers.iter().position(|h| h == name);
    let (Some(c_trace), Some(c_policy)) = (col("trace"), col("policy")) else {
        return Err(ReportError::Csv {
            path: path.to_path_buf(),
            message: "missing `trace` or `policy` column".into(),
        });
    };
    let cols: Vec<Option<usize>> = SUMMARY_POINTS
        .iter()
        .map(|p| col(&format!("unalloc_gpu_pct_at_{p}_mean")))
        .collect();
    let mut values = HashMap::new();
    for rec in r.records() {
        let rec = rec.map_err(csv_err)?;
        let vals = cols
            .iter()
            .map(|c| {
                c.and_then(|c| rec.get(c))
                    .and_then(|v| v.trim().parse().ok())
            })
            .collect();
        let trace = rec.get(c_trace).unwrap_or("").to_string();
        let policy = rec.get(c_policy).unwrap_or("").to_string();
        values.insert((trace, policy), vals);
    }
    Ok(Some(Reference { values }))
}

/// Mean and sample standard deviation (n − 1); sd is 0 for one value.
pub fn mean_sd(xs: &[f64]) -> Option<(f64, f64)> {
    if xs.is_empty() {
        return None;
    }
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let sd = if xs.len() > 1 {
        (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
    } else {
        0.0
    };
    Some((mean, sd))
}

/// Unallocated GPU % of one (trace, policy) over its seeds.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicySummary {
    /// Trace label.
    pub trace: String,
    /// Policy name.
    pub policy: String,
    /// Number of runs (seeds).
    pub seeds: usize,
    /// (mean, sd) at each of [`SUMMARY_POINTS`]; `None` where no run reached the point.
    pub unalloc: Vec<Option<(f64, f64)>>,
}

/// Per (trace, policy), in first-seen order: mean and sd over seeds of unallocated GPU % at each
/// summary point.
pub fn summarize(results: &[RunResult]) -> Vec<PolicySummary> {
    let mut keys: Vec<(String, String)> = Vec::new();
    for r in results {
        let k = (r.trace.clone(), r.policy.clone());
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    keys.into_iter()
        .map(|(trace, policy)| {
            let runs: Vec<&RunResult> = results
                .iter()
                .filter(|r| r.trace == trace && r.policy == policy)
                .collect();
            let unalloc = SUMMARY_POINTS
                .iter()
                .map(|&p| {
                    let xs: Vec<f64> = runs
                        .iter()
                        .filter_map(|r| r.at(p))
                        .map(|b| b.unalloc_gpu_pct)
                        .collect();
                    mean_sd(&xs)
                })
                .collect();
            PolicySummary {
                trace,
                policy,
                seeds: runs.len(),
                unalloc,
            }
        })
        .collect()
}

/// Paper-style table: unallocated GPU % (mean ± sd over seeds) at arrived 90…130 %, with the
/// published mean in brackets when a reference is given, and the difference at 100 %.
pub fn summary_table(results: &[RunResult], reference: Option<&Reference>) -> String {
    let mut out = String::new();
    let mut current = String::new();
    for PolicySummary {
        trace,
        policy,
        seeds,
        unalloc: stats,
    } in summarize(results)
    {
        if trace != current {
            let _ = writeln!(
                out,
                "\ntrace {trace}: unallocated GPU % (mean±sd over seeds){}",
                if reference.is_some() {
                    " [paper mean]"
                } else {
                    ""
                }
            );
            let _ = write!(out, "{:<11} {:>5}", "policy", "seeds");
            for p in SUMMARY_POINTS {
                let w = if reference.is_some() { 20 } else { 12 };
                let _ = write!(out, " {:>w$}", format!("@{p}%"));
            }
            if reference.is_some() {
                let _ = write!(out, " {:>9}", "Δ@100%");
            }
            out.push('\n');
            current.clone_from(&trace);
        }
        let _ = write!(out, "{policy:<11} {seeds:>5}");
        for (i, s) in stats.iter().enumerate() {
            let cell = s.map_or("-".to_string(), |(m, sd)| format!("{m:.2}±{sd:.2}"));
            match reference {
                Some(r) => {
                    let refv = r
                        .mean(&trace, &policy, SUMMARY_POINTS[i])
                        .map_or("-".to_string(), |v| format!("{v:.2}"));
                    let _ = write!(out, " {:>20}", format!("{cell} [{refv}]"));
                }
                None => {
                    let _ = write!(out, " {cell:>12}");
                }
            }
        }
        if let Some(r) = reference {
            let delta = stats[2]
                .zip(r.mean(&trace, &policy, 100))
                .map(|((m, _), v)| m - v);
            let _ = write!(
                out,
                " {:>9}",
                delta.map_or("-".to_string(), |d| format!("{d:+.2}"))
            );
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::metrics::BucketRow;
    use super::*;

    fn run(policy: &str, seed: u64, unalloc100: f64) -> RunResult {
        let row = |p: u32, u: f64| BucketRow {
            arrived_pct: p,
            unalloc_gpu_pct: u,
            alloc_ratio_pct: 100.0 - u,
            frag_amount_pct: 1.0,
            frag_ratio_pct: None,
        };
        RunResult {
            trace: "tiny".into(),
            policy: policy.into(),
            seed,
            pods: 3,
            failed: 0,
            buckets: vec![row(90, 10.0), row(100, unalloc100)],
            seconds: 0.0,
        }
    }

    #[test]
    fn csv_and_table() {
        let results = vec![
            run("BestFit", 1, 7.0),
            run("BestFit", 2, 9.0),
            run("FGD", 1, 5.0),
        ];
        let mut buf = Vec::new();
        write_results_csv(&mut buf, &results).unwrap();
        let text = String::from_utf8(buf).unwrap();
        assert!(text.starts_with("trace,policy,seed,arrived_pct,unalloc_gpu_pct,alloc_ratio_pct,frag_amount_pct,frag_ratio_pct\n"));
        assert!(text.contains("tiny,BestFit,2,100,9.00,91.00,1.00,\n"));
        assert_eq!(text.lines().count(), 1 + 6);

        let (m, sd) = mean_sd(&[7.0, 9.0]).unwrap();
        assert_eq!((m, sd), (8.0, 2f64.sqrt()));
        let table = summary_table(&results, None);
        assert!(table.contains("8.00±1.41"), "{table}");
        assert!(table.contains("5.00±0.00"));

        let dir = std::env::temp_dir().join(format!("replay-report-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ref.csv");
        std::fs::write(
            &path,
            "trace,policy,seeds,unalloc_gpu_pct_at_90_mean,unalloc_gpu_pct_at_100_mean\ntiny,BestFit,10,10.01,7.14\n",
        )
        .unwrap();
        let reference = load_reference(&path).unwrap().unwrap();
        assert_eq!(reference.mean("tiny", "BestFit", 100), Some(7.14));
        assert_eq!(reference.mean("tiny", "BestFit", 95), None);
        let table = summary_table(&results, Some(&reference));
        assert!(table.contains("8.00±1.41 [7.14]"), "{table}");
        assert!(table.contains("+0.86"), "{table}");
        std::fs::remove_file(&path).unwrap();
        assert!(load_reference(&path).unwrap().is_none());
    }
}
