//! Loading the openb node and pod lists (Alibaba `cluster-trace-gpu-v2023`).
//!
//! Columns are found by header name, never by position, so the 11-column pod lists and the
//! 5-column `multigpu*` lists load through the same code. Every malformed value is reported as a
//! [`TraceError`] naming the file, the 1-based line and the column.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// Most GPUs a node may have and a pod may request (the simulator's `MaxNumGpuPerNode`).
pub const MAX_GPUS: u8 = 8;
/// One whole GPU in milli-GPU units.
pub const MILLI: u16 = 1000;

/// Error while reading a trace CSV.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// The file could not be opened or read.
    #[error("{path}: {source}")]
    Io {
        /// File path.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The header lacks a required column.
    #[error("{path}:1: missing required column `{column}`")]
    MissingColumn {
        /// File path.
        path: PathBuf,
        /// Column name.
        column: &'static str,
    },
    /// A record could not be parsed as CSV (e.g. wrong number of fields).
    #[error("{path}:{line}: malformed CSV record: {message}")]
    Csv {
        /// File path.
        path: PathBuf,
        /// 1-based line number.
        line: u64,
        /// Parser message.
        message: String,
    },
    /// A field holds an invalid value.
    #[error("{path}:{line}: column `{column}`: {message}")]
    Field {
        /// File path.
        path: PathBuf,
        /// 1-based line number.
        line: u64,
        /// Column name.
        column: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The file has a header but no data rows.
    #[error("{path}: no data rows")]
    Empty {
        /// File path.
        path: PathBuf,
    },
}

/// One node of the node list (`sn,cpu_milli,memory_mib,gpu,model`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceNode {
    /// Node name (`sn`).
    pub name: String,
    /// CPU capacity in milli-cores.
    pub cpu_milli: u32,
    /// Host memory in MiB.
    pub memory_mib: u64,
    /// Number of GPUs (0..=8).
    pub num_gpus: u8,
    /// GPU model; empty on CPU-only nodes.
    pub model: String,
}

/// One pod of a pod list. Only the columns the replay uses are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TracePod {
    /// Pod name, unique within the file.
    pub name: String,
    /// CPU request in milli-cores.
    pub cpu_milli: u32,
    /// Host memory request in MiB.
    pub memory_mib: u64,
    /// GPUs requested (0..=8).
    pub num_gpu: u8,
    /// Milli-GPU per requested GPU: 0 for CPU-only pods, 1000 for whole GPUs.
    pub gpu_milli: u16,
    /// Allowed GPU models, deduplicated, in file order; empty means any model.
    pub gpu_spec: Vec<String>,
    /// The `gpu_spec` field as the simulator keys it (empty parts dropped, duplicates kept).
    pub gpu_spec_raw: String,
}

impl TracePod {
    /// Total GPU request in milli-GPU (`num_gpu × gpu_milli`).
    pub fn total_gpu_milli(&self) -> u64 {
        u64::from(self.num_gpu) * u64::from(self.gpu_milli)
    }

    /// True for a pod that asks for a fraction of one GPU.
    pub fn is_gpu_share(&self) -> bool {
        self.num_gpu == 1 && self.gpu_milli < MILLI
    }
}

struct Table {
    path: PathBuf,
    reader: csv::Reader<std::fs::File>,
    headers: csv::StringRecord,
}

impl Table {
    fn open(path: &Path) -> Result<Self, TraceError> {
        let file = std::fs::File::open(path).map_err(|source| TraceError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(true)
            .trim(csv::Trim::All)
            .from_reader(file);
        let headers = reader.headers().map_err(|e| csv_error(path, e))?.clone();
        Ok(Self {
            path: path.to_path_buf(),
            reader,
            headers,
        })
    }

    fn column(&self, name: &'static str) -> Result<usize, TraceError> {
        self.optional_column(name)
            .ok_or_else(|| TraceError::MissingColumn {
                path: self.path.clone(),
                column: name,
            })
    }

    fn optional_column(&self, name: &str) -> Option<usize> {
        self.headers.iter().position(|h| h == name)
    }
}

fn csv_error(path: &Path, e: csv::Error) -> TraceError {
    if let csv::ErrorKind::Io(_) = e.kind() {
        if let csv::ErrorKind::Io(io) = e.into_kind() {
            return TraceError::Io {
                path: path.to_path_buf(),
                source: io,
            };
        }
        unreachable!("checked above");
    }
    let line = e.position().map_or(0, csv::Position::line);
    TraceError::Csv {
        path: path.to_path_buf(),
        line,
        message: e.to_string(),
    }
}

struct Row<'a> {
    path: &'a Path,
    line: u64,
    record: &'a csv::StringRecord,
}

impl Row<'_> {
    fn text(&self, idx: usize) -> &str {
        self.record.get(idx).unwrap_or("")
    }

    fn err(&self, column: &'static str, message: impl Into<String>) -> TraceError {
        TraceError::Field {
            path: self.path.to_path_buf(),
            line: self.line,
            column,
            message: message.into(),
        }
    }

    fn number<T: std::str::FromStr>(
        &self,
        idx: usize,
        column: &'static str,
    ) -> Result<T, TraceError> {
        let text = self.text(idx);
        if text.is_empty() {
            return Err(self.err(column, "empty value"));
        }
        text.parse::<T>().map_err(|_| {
            self.err(
                column,
                format!("`{text}` is not a valid non-negative integer"),
            )
        })
    }

    fn name(
        &self,
        idx: usize,
        column: &'static str,
        seen: &mut HashSet<String>,
    ) -> Result<String, TraceError> {
        let name = self.text(idx);
        if name.is_empty() {
            return Err(self.err(column, "empty name"));
        }
        if !seen.insert(name.to_string()) {
            return Err(self.err(column, format!("duplicate name `{name}`")));
        }
        Ok(name.to_string())
    }
}

fn for_each_row(
    table: &mut Table,
    mut f: impl FnMut(&Row<'_>) -> Result<(), TraceError>,
) -> Result<usize, TraceError> {
    let mut record = csv::StringRecord::new();
    let mut rows = 0;
    loop {
        match table.reader.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => return Err(csv_error(&table.path, e)),
        }
        let line = record.position().map_or(0, csv::Position::line);
        f(&Row {
            path: &table.path,
            line,
            record: &record,
        })?;
        rows += 1;
    }
    if rows == 0 {
        return Err(TraceError::Empty {
            path: table.path.clone(),
        });
    }
    Ok(rows)
}

/// Loads a node list (`sn,cpu_milli,memory_mib,gpu,model`; extra columns are ignored).
pub fn load_nodes(path: impl AsRef<Path>) -> Result<Vec<TraceNode>, TraceError> {
    let mut table = Table::open(path.as_ref())?;
    let c_sn = table.column("sn")?;
    let c_cpu = table.column("cpu_milli")?;
    let c_mem = table.column("memory_mib")?;
    let c_gpu = table.column("gpu")?;
    let c_model = table.column("model")?;
    let mut seen = HashSet::new();
    let mut nodes = Vec::new();
    for_each_row(&mut table, |row| {
        let name = row.name(c_sn, "sn", &mut seen)?;
        let cpu_milli: u32 = row.number(c_cpu, "cpu_milli")?;
        if cpu_milli == 0 {
            return Err(row.err("cpu_milli", "must be positive"));
        }
        let memory_mib: u64 = row.number(c_mem, "memory_mib")?;
        let num_gpus: u8 = row.number(c_gpu, "gpu")?;
        if num_gpus > MAX_GPUS {
            return Err(row.err(
                "gpu",
                format!("{num_gpus} GPUs exceeds the maximum of {MAX_GPUS}"),
            ));
        }
        let model = row.text(c_model).to_string();
        if num_gpus > 0 && model.is_empty() {
            return Err(row.err("model", "empty model on a node with GPUs"));
        }
        nodes.push(TraceNode {
            name,
            cpu_milli,
            memory_mib,
            num_gpus,
            model,
        });
        Ok(())
    })?;
    Ok(nodes)
}

/// Loads a pod list: the 11-column `openb_pod_list_*` files or the 5-column `multigpu*` files.
///
/// Required columns: `name,cpu_milli,memory_mib,num_gpu,gpu_milli`; `gpu_spec` is optional.
/// Rejects `num_gpu > 8`, `gpu_milli > 1000`, GPU pods with `gpu_milli == 0`, CPU-only pods with
/// `gpu_milli > 0`, multi-GPU pods with `gpu_milli != 1000` and duplicate names.
pub fn load_pods(path: impl AsRef<Path>) -> Result<Vec<TracePod>, TraceError> {
    let mut table = Table::open(path.as_ref())?;
    let c_name = table.column("name")?;
    let c_cpu = table.column("cpu_milli")?;
    let c_mem = table.column("memory_mib")?;
    let c_num = table.column("num_gpu")?;
    let c_milli = table.column("gpu_milli")?;
    let c_spec = table.optional_column("gpu_spec");
    let mut seen = HashSet::new();
    let mut pods = Vec::new();
    for_each_row(&mut table, |row| {
        let name = row.name(c_name, "name", &mut seen)?;
        let cpu_milli: u32 = row.number(c_cpu, "cpu_milli")?;
        let memory_mib: u64 = row.number(c_mem, "memory_mib")?;
        let num_gpu: u8 = row.number(c_num, "num_gpu")?;
        if num_gpu > MAX_GPUS {
            return Err(row.err(
                "num_gpu",
                format!("{num_gpu} GPUs exceeds the maximum of {MAX_GPUS}"),
            ));
        }
        let gpu_milli: u16 = row.number(c_milli, "gpu_milli")?;
        if gpu_milli > MILLI {
            return Err(row.err("gpu_milli", format!("{gpu_milli} is outside 0..=1000")));
        }
        match (num_gpu, gpu_milli) {
            (0, m) if m > 0 => {
                return Err(row.err("gpu_milli", format!("{m} on a pod with num_gpu = 0")));
            }
            (n, 0) if n > 0 => return Err(row.err("gpu_milli", "0 on a pod that requests GPUs")),
            (n, m) if n > 1 && m != MILLI => {
                return Err(row.err(
                    "gpu_milli",
                    format!("multi-GPU pod must request 1000 per GPU, got {m}"),
                ));
            }
            _ => {}
        }
        let spec_text = c_spec.map_or("", |c| row.text(c));
        let mut gpu_spec: Vec<String> = Vec::new();
        let mut raw_parts: Vec<&str> = Vec::new();
        // The simulator only sets the model annotation on GPU pods.
        if num_gpu > 0 {
            for part in spec_text
                .split('|')
                .map(str::trim)
                .filter(|p| !p.is_empty())
            {
                raw_parts.push(part);
                if !gpu_spec.iter().any(|m| m == part) {
                    gpu_spec.push(part.to_string());
                }
            }
        }
        pods.push(TracePod {
            name,
            cpu_milli,
            memory_mib,
            num_gpu,
            gpu_milli,
            gpu_spec,
            gpu_spec_raw: raw_parts.join("|"),
        });
        Ok(())
    })?;
    Ok(pods)
}

/// Short trace label from a pod-list path: `openb_pod_list_gpushare40.csv` → `gpushare40`.
pub fn trace_label(path: impl AsRef<Path>) -> String {
    let stem = path
        .as_ref()
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    stem.strip_prefix("openb_pod_list_")
        .unwrap_or(&stem)
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TempFile(PathBuf);

    impl TempFile {
        fn new(name: &str, content: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("replay-trace-test-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join(name);
            std::fs::write(&path, content).unwrap();
            Self(path)
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn field_err(err: TraceError) -> (PathBuf, u64, &'static str) {
        match err {
            TraceError::Field {
                path, line, column, ..
            } => (path, line, column),
            other => panic!("expected a field error, got {other:?}"),
        }
    }

    #[test]
    fn loads_nodes_by_header_name() {
        let f = TempFile::new(
            "nodes_ok.csv",
            "model,gpu,sn,memory_mib,cpu_milli\nT4,2,n0,1024,32000\n,0,n1,2048,8000\n",
        );
        let nodes = load_nodes(&f.0).unwrap();
        assert_eq!(nodes.len(), 2);
        assert_eq!(nodes[0].name, "n0");
        assert_eq!(nodes[0].num_gpus, 2);
        assert_eq!(nodes[0].model, "T4");
        assert_eq!(nodes[1].cpu_milli, 8000);
        assert_eq!(nodes[1].model, "");
    }

    #[test]
    fn loads_eleven_and_five_column_pod_lists() {
        let f11 = TempFile::new(
            "pods11.csv",
            "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,deletion_time,scheduled_time\n\
             p0,6000,100,1,460,V100M16|V100M32|V100M32,LS,Running,0,1,0\n\
             p1,1000,0,0,0,,BE,Pending,0,1,\n",
        );
        let pods = load_pods(&f11.0).unwrap();
        assert_eq!(pods[0].gpu_spec, vec!["V100M16", "V100M32"]);
        assert_eq!(pods[0].gpu_spec_raw, "V100M16|V100M32|V100M32");
        assert!(pods[0].is_gpu_share());
        assert_eq!(pods[1].memory_mib, 0);
        assert!(pods[1].gpu_spec.is_empty());

        let f5 = TempFile::new(
            "pods5.csv",
            "name,cpu_milli,memory_mib,num_gpu,gpu_milli\np0,8000,10,8,1000\n",
        );
        let pods = load_pods(&f5.0).unwrap();
        assert_eq!(pods[0].total_gpu_milli(), 8000);
        assert!(pods[0].gpu_spec.is_empty());
    }

    #[test]
    fn bad_values_name_file_line_and_column() {
        let header = "name,cpu_milli,memory_mib,num_gpu,gpu_milli\n";
        let cases = [
            (
                "bad_milli.csv",
                "p0,1000,1,1,500\np1,1000,1,1,1001\n",
                3,
                "gpu_milli",
            ),
            ("bad_num.csv", "p0,1000,1,9,1000\n", 2, "num_gpu"),
            (
                "bad_cpu.csv",
                "p0,1000,1,1,500\np1,1.5,1,1,500\n",
                3,
                "cpu_milli",
            ),
            ("neg_mem.csv", "p0,1000,-4,1,500\n", 2, "memory_mib"),
            ("multi_share.csv", "p0,1000,1,2,500\n", 2, "gpu_milli"),
            ("dup.csv", "p0,1000,1,1,500\np0,1000,1,1,500\n", 3, "name"),
            ("empty_cpu.csv", "p0,,1,1,500\n", 2, "cpu_milli"),
        ];
        for (file, rows, want_line, want_col) in cases {
            let f = TempFile::new(file, &format!("{header}{rows}"));
            let err = load_pods(&f.0).unwrap_err();
            let msg = err.to_string();
            let (path, line, column) = field_err(err);
            assert_eq!(path, f.0, "{file}");
            assert_eq!(line, want_line, "{file}: {msg}");
            assert_eq!(column, want_col, "{file}: {msg}");
            assert!(
                msg.contains(file) && msg.contains(&format!(":{want_line}:")),
                "{msg}"
            );
        }
    }

    #[test]
    fn structural_errors() {
        let f = TempFile::new(
            "missing.csv",
            "name,cpu_milli,num_gpu,gpu_milli\np0,1,1,500\n",
        );
        let err = load_pods(&f.0).unwrap_err();
        assert!(
            matches!(
                err,
                TraceError::MissingColumn {
                    column: "memory_mib",
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("missing.csv:1"));

        let f = TempFile::new(
            "ragged.csv",
            "name,cpu_milli,memory_mib,num_gpu,gpu_milli\np0,1,1,1\n",
        );
        let err = load_pods(&f.0).unwrap_err();
        assert!(matches!(err, TraceError::Csv { line: 2, .. }), "{err}");

        let f = TempFile::new("empty.csv", "name,cpu_milli,memory_mib,num_gpu,gpu_milli\n");
        assert!(matches!(
            load_pods(&f.0).unwrap_err(),
            TraceError::Empty { .. }
        ));

        let err = load_pods("/nonexistent/replay/pods.csv").unwrap_err();
        assert!(matches!(err, TraceError::Io { .. }));
        assert!(err.to_string().contains("/nonexistent/replay/pods.csv"));

        let f = TempFile::new(
            "nodes_bad.csv",
            "sn,cpu_milli,memory_mib,gpu,model\nn0,1000,1,9,T4\n",
        );
        let (_, line, column) = field_err(load_nodes(&f.0).unwrap_err());
        assert_eq!((line, column), (2, "gpu"));
        let f = TempFile::new(
            "nodes_nomodel.csv",
            "sn,cpu_milli,memory_mib,gpu,model\nn0,1000,1,2,\n",
        );
        let (_, line, column) = field_err(load_nodes(&f.0).unwrap_err());
        assert_eq!((line, column), (2, "model"));
    }

    #[test]
    fn labels() {
        assert_eq!(
            trace_label("/x/openb_pod_list_gpushare40.csv"),
            "gpushare40"
        );
        assert_eq!(trace_label("mine.csv"), "mine");
    }
}
