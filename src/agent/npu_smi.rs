//! The Ascend reader: runs `npu-smi info` and reads its device and process tables.
//!
//! The table has two rows per chip, in fixed columns separated by `|`:
//!
//! ```text
//! | NPU   Name                | Health        | Power(W)    Temp(C)           Hugepages-Usage(page)|
//! | Chip                      | Bus-Id        | AICore(%)   Memory-Usage(MB)  HBM-Usage(MB)        |
//! +===========================+===============+====================================================+
//! | 0     910B3               | OK            | 93.1        41                0    / 0             |
//! | 0                         | 0000:C1:00.0  | 0           0    / 0          3401 / 65536         |
//! ```
//!
//! The value columns are read by the names in the header, so the 310P layout (only
//! `Memory-Usage(MB)`) and the 910 layouts (with `HBM-Usage(MB)`) go through the same code.
//! A second column beside `Chip` (`Device` on 310P cards, `Phy-ID` on multi-chip 910 boards)
//! is the device index; without it the index is the NPU id. A following process table
//! (`| NPU Chip | Process id | Process name | Process memory(MB) |`) gives memory per process.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::devices::{DeviceReader, DeviceReading, Health, MigMode, ReadError};

/// What was wrong with `npu-smi info` output, and on which line (1-based) when one is to blame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", line.map(|l| format!("line {l}: ")).unwrap_or_default())]
pub struct ParseError {
    /// The 1-based line at fault; `None` when no one line is to blame.
    pub line: Option<usize>,
    /// What was wrong.
    pub message: String,
}

impl ParseError {
    fn at(line: usize, message: impl Into<String>) -> Self {
        Self {
            line: Some(line),
            message: message.into(),
        }
    }

    fn whole(message: impl Into<String>) -> Self {
        Self {
            line: None,
            message: message.into(),
        }
    }
}

/// One chip row pair of the device table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NpuChip {
    /// The `NPU` ID column.
    pub npu: u32,
    /// The `Chip` ID column.
    pub chip: u32,
    /// The `Device` / `Phy-ID` column beside `Chip`, where the table has one.
    pub device: Option<u32>,
    /// Chip name as printed (`910B3`, `310P3`, `Ascend910`).
    pub name: String,
    /// Health as printed (`OK`, `Warning`, `Alarm`, `Critical`).
    pub health: String,
    /// PCI bus ID as printed (`0000:C1:00.0`).
    pub bus_id: String,
    /// Device memory in use (HBM where the chip has it, else `Memory-Usage`), MB as printed (MiB).
    pub used_mb: u64,
    /// Device memory total, MB as printed (MiB); same column as `used_mb`.
    pub total_mb: u64,
}

/// One row of the process table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NpuProcess {
    /// The `NPU` ID column.
    pub npu: u32,
    /// The `Chip` ID column.
    pub chip: u32,
    /// Process ID.
    pub pid: u32,
    /// Device memory the process holds, MB as printed (MiB).
    pub memory_mb: u64,
}

/// The parsed output of `npu-smi info`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NpuSmiInfo {
    /// Rows of the device table, one per chip.
    pub chips: Vec<NpuChip>,
    /// Rows of the process table.
    pub processes: Vec<NpuProcess>,
}

const HBM_COLUMN: &str = "HBM-Usage";
const MEMORY_COLUMN: &str = "Memory-Usage";

/// The device table's columns, from its second header line.
struct Layout {
    header_line: usize,
    values: Vec<String>,
    chip_has_device: bool,
    hbm: Option<usize>,
    memory: Option<usize>,
}

/// The first row of a chip, waiting for its second.
struct PendingRow {
    line: usize,
    npu: u32,
    name: String,
    health: String,
}

enum Section {
    Preamble,
    DeviceHeader { line: usize },
    Devices(Layout),
    Processes { pid: usize, memory: usize },
}

/// Parses the output of `npu-smi info`. Never panics; any text it cannot read is an error
/// naming the line and what was expected.
pub fn parse_info(text: &str) -> Result<NpuSmiInfo, ParseError> {
    let mut info = NpuSmiInfo::default();
    let mut section = Section::Preamble;
    let mut pending: Option<PendingRow> = None;
    let mut last_line = 0;

    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        last_line = line;
        let Some(cells) = cells(raw) else {
            if let Some(p) = &pending {
                return Err(truncated(p));
            }
            continue;
        };
        let head: Vec<&str> = cells[0].split_whitespace().collect();

        if head == ["NPU", "Name"] {
            if let Some(p) = &pending {
                return Err(truncated(p));
            }
            section = Section::DeviceHeader { line };
            continue;
        }
        if head == ["NPU", "Chip"] && cells.iter().any(|c| c.starts_with("Process id")) {
            if let Some(p) = &pending {
                return Err(truncated(p));
            }
            section = process_header(line, &cells)?;
            continue;
        }

        match &mut section {
            Section::Preamble => {}
            Section::DeviceHeader { line: first } => {
                section = Section::Devices(device_layout(*first, line, &cells, &head)?);
            }
            Section::Devices(layout) => match pending.take() {
                None => pending = Some(first_row(line, &cells, &head)?),
                Some(first) => info
                    .chips
                    .push(second_row(layout, first, line, &cells, &head)?),
            },
            Section::Processes { pid, memory } => {
                if let Some(p) = process_row(line, &cells, &head, *pid, *memory)? {
                    info.processes.push(p);
                }
            }
        }
    }

    if let Some(p) = &pending {
        return Err(truncated(p));
    }
    match section {
        Section::Preamble => Err(ParseError::whole(
            "no device table: the header line `| NPU Name | Health | …` was not found",
        )),
        Section::DeviceHeader { line } => Err(ParseError::at(
            line,
            "the header's second line (`| Chip | Bus-Id | … Memory-Usage(MB) …`) is missing",
        )),
        _ if info.chips.is_empty() => Err(ParseError::at(
            last_line,
            "the device table has no NPU rows (truncated output?)",
        )),
        _ => Ok(info),
    }
}

/// The cells of a table row (`| a | b |`), trimmed; `None` for borders and other lines.
fn cells(raw: &str) -> Option<Vec<&str>> {
    let t = raw.trim();
    let body = t.strip_prefix('|')?;
    let body = body.strip_suffix('|').unwrap_or(body);
    Some(body.split('|').map(str::trim).collect())
}

/// The words of a value cell, with `used / total` pairs joined into `used/total`.
fn value_words(cell: &str) -> Vec<String> {
    let mut words: Vec<String> = Vec::new();
    for word in cell.split_whitespace() {
        match words.last_mut() {
            Some(last) if last.ends_with('/') || word.starts_with('/') => last.push_str(word),
            _ => words.push(word.to_string()),
        }
    }
    words
}

fn truncated(p: &PendingRow) -> ParseError {
    ParseError::at(
        p.line,
        format!(
            "NPU {}: the second row (Chip, Bus-Id, memory) is missing (truncated output?)",
            p.npu
        ),
    )
}

fn number<T: std::str::FromStr>(line: usize, what: &str, text: &str) -> Result<T, ParseError> {
    text.parse()
        .map_err(|_| ParseError::at(line, format!("{what} {text:?} is not a number")))
}

fn device_layout(
    first_line: usize,
    line: usize,
    cells: &[&str],
    head: &[&str],
) -> Result<Layout, ParseError> {
    if head.first() != Some(&"Chip") || cells.len() < 3 {
        return Err(ParseError::at(
            first_line + 1,
            "the header's second line (`| Chip | Bus-Id | … Memory-Usage(MB) …`) is missing",
        ));
    }
    let values: Vec<String> = cells[2].split_whitespace().map(String::from).collect();
    let find = |prefix: &str| values.iter().position(|v| v.starts_with(prefix));
    let layout = Layout {
        header_line: line,
        chip_has_device: head.len() >= 2,
        hbm: find(HBM_COLUMN),
        memory: find(MEMORY_COLUMN),
        values,
    };
    if layout.hbm.is_none() && layout.memory.is_none() {
        return Err(ParseError::at(
            line,
            "the header names neither an HBM-Usage(MB) nor a Memory-Usage(MB) column",
        ));
    }
    Ok(layout)
}

fn first_row(line: usize, cells: &[&str], head: &[&str]) -> Result<PendingRow, ParseError> {
    if cells.len() < 3 {
        return Err(ParseError::at(
            line,
            format!(
                "NPU row has {} of 3 columns (NPU Name | Health | …; truncated?)",
                cells.len()
            ),
        ));
    }
    if head.len() < 2 {
        return Err(ParseError::at(
            line,
            format!(
                "NPU row should start with the NPU id and chip name, found {:?}",
                cells[0]
            ),
        ));
    }
    let health = cells[1];
    if health.is_empty() {
        return Err(ParseError::at(line, "NPU row has an empty Health column"));
    }
    Ok(PendingRow {
        line,
        npu: number(line, "NPU id", head[0])?,
        name: head[1..].join(" "),
        health: health.to_string(),
    })
}

fn second_row(
    layout: &Layout,
    first: PendingRow,
    line: usize,
    cells: &[&str],
    head: &[&str],
) -> Result<NpuChip, ParseError> {
    let npu = first.npu;
    if cells.len() < 3 {
        return Err(ParseError::at(
            line,
            format!(
                "NPU {npu}: chip row has {} of 3 columns (Chip | Bus-Id | …; truncated?)",
                cells.len()
            ),
        ));
    }
    let want = if layout.chip_has_device { 2 } else { 1 };
    if head.len() != want {
        return Err(ParseError::at(
            line,
            format!(
                "NPU {npu}: chip row should start with {} number(s) as the header on line {} says, found {:?}",
                want, layout.header_line, cells[0]
            ),
        ));
    }
    let chip = number(line, "chip id", head[0])?;
    let device = match head.get(1) {
        Some(d) => Some(number(line, "device id", d)?),
        None => None,
    };
    let values = value_words(cells[2]);
    if values.len() != layout.values.len() {
        return Err(ParseError::at(
            line,
            format!(
                "NPU {npu}: {} value(s) under `{}`, expected {} (missing column?)",
                values.len(),
                layout.values.join(" "),
                layout.values.len()
            ),
        ));
    }
    let usage = |column: usize| usage(line, npu, &layout.values[column], &values[column]);
    let hbm = layout.hbm.map(usage).transpose()?;
    // HBM where the chip has it; `Memory-Usage` is the 310P's memory, or a 910's DDR.
    let (used_mb, total_mb) = match (hbm, layout.memory) {
        (Some(hbm), _) if hbm.1 > 0 => hbm,
        (_, Some(memory)) => usage(memory)?,
        (Some(hbm), None) => hbm,
        (None, None) => return Err(ParseError::at(line, "no memory column")),
    };
    Ok(NpuChip {
        npu,
        chip,
        device,
        name: first.name,
        health: first.health,
        bus_id: cells[1].to_string(),
        used_mb,
        total_mb,
    })
}

/// `used/total` in MB.
fn usage(line: usize, npu: u32, column: &str, value: &str) -> Result<(u64, u64), ParseError> {
    let parsed = value
        .split_once('/')
        .and_then(|(u, t)| Some((u.parse::<u64>().ok()?, t.parse::<u64>().ok()?)));
    parsed.ok_or_else(|| {
        ParseError::at(
            line,
            format!("NPU {npu}: {column} {value:?} is not `used / total` in MB"),
        )
    })
}

fn process_header(line: usize, cells: &[&str]) -> Result<Section, ParseError> {
    let pid = cells.iter().position(|c| *c == "Process id");
    let memory = cells.iter().position(|c| c.starts_with("Process memory"));
    match (pid, memory) {
        (Some(pid), Some(memory)) => Ok(Section::Processes { pid, memory }),
        _ => Err(ParseError::at(
            line,
            "the process table header lacks `Process id` or `Process memory(MB)`",
        )),
    }
}

fn process_row(
    line: usize,
    cells: &[&str],
    head: &[&str],
    pid: usize,
    memory: usize,
) -> Result<Option<NpuProcess>, ParseError> {
    if cells.len() == 1 {
        // `| No running processes found in NPU 0 |`
        return Ok(None);
    }
    let need = pid.max(memory) + 1;
    if cells.len() < need || head.len() != 2 {
        return Err(ParseError::at(
            line,
            format!(
                "process row should be `| NPU Chip | Process id | … | Process memory(MB) |`, found {:?}",
                cells.join(" | ")
            ),
        ));
    }
    Ok(Some(NpuProcess {
        npu: number(line, "NPU id", head[0])?,
        chip: number(line, "chip id", head[1])?,
        pid: number(line, "process id", cells[pid])?,
        memory_mb: number(line, "process memory", cells[memory])?,
    }))
}

/// The device plugin's product name: `910B3` → `Ascend910B3`; `Ascend910` stays.
pub fn ascend_product(name: &str) -> String {
    let name = name.trim();
    if name
        .get(..6)
        .is_some_and(|p| p.eq_ignore_ascii_case("ascend"))
    {
        name.to_string()
    } else {
        format!("Ascend{name}")
    }
}

/// `OK` and `Warning` (a minor alarm) are healthy; `Alarm`, `Critical` and anything else are not.
pub fn ascend_health(health: &str) -> Health {
    match health.trim() {
        h if h.eq_ignore_ascii_case("ok") || h.eq_ignore_ascii_case("warning") => Health::Healthy,
        h if h.eq_ignore_ascii_case("alarm") || h.eq_ignore_ascii_case("critical") => {
            Health::Unhealthy(format!("npu-smi health {h}"))
        }
        h => Health::Unhealthy(format!("npu-smi health {h:?} not understood")),
    }
}

/// Turns parsed chips into readings. The index is the chip's `Device`/`Phy-ID` column where
/// the table has one, else the NPU id where every NPU has one chip, else the chip's position in
/// the table. Two chips with one index are an error (the core would keep only one).
pub fn readings(info: &NpuSmiInfo) -> Result<Vec<DeviceReading>, ParseError> {
    let npus: BTreeSet<u32> = info.chips.iter().map(|c| c.npu).collect();
    let one_chip_each = npus.len() == info.chips.len();
    let mut seen = BTreeSet::new();
    let mut out = Vec::with_capacity(info.chips.len());
    for (position, chip) in info.chips.iter().enumerate() {
        let index = match chip.device {
            Some(d) => d,
            None if one_chip_each => chip.npu,
            None => u32::try_from(position).unwrap_or(u32::MAX),
        };
        if !seen.insert(index) {
            return Err(ParseError::whole(format!(
                "two chips read as device {index} (NPU {} chip {})",
                chip.npu, chip.chip
            )));
        }
        let mut processes = BTreeMap::new();
        for p in info
            .processes
            .iter()
            .filter(|p| p.npu == chip.npu && p.chip == chip.chip)
        {
            *processes.entry(p.pid).or_insert(0) += p.memory_mb;
        }
        out.push(DeviceReading {
            index,
            uuid: String::new(),
            product: ascend_product(&chip.name),
            total_mib: chip.total_mb,
            used_mib: chip.used_mb,
            free_mib: chip.total_mb.saturating_sub(chip.used_mb),
            processes,
            health: ascend_health(&chip.health),
            mig: MigMode::NotSupported,
        });
    }
    Ok(out)
}

/// What a finished command printed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CommandOutput {
    /// Whether it exited successfully.
    pub success: bool,
    /// How it ended, in words (`exit status: 1`).
    pub status: String,
    /// Standard output, as text.
    pub stdout: String,
    /// Standard error, as text.
    pub stderr: String,
}

/// Runs a command to completion (a fake in tests).
pub trait CommandRunner: Send + Sync {
    /// Runs `program` with `args` and waits for it to finish.
    fn run(&self, program: &str, args: &[&str]) -> io::Result<CommandOutput>;
}

/// Runs commands on this machine, killing any that outlive `timeout` (a wedged driver can
/// make `npu-smi` hang).
#[derive(Debug, Clone, Copy)]
pub struct SystemRunner {
    /// Longest a command may run before it is killed.
    pub timeout: Duration,
}

impl Default for SystemRunner {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
        }
    }
}

impl CommandRunner for SystemRunner {
    fn run(&self, program: &str, args: &[&str]) -> io::Result<CommandOutput> {
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let stdout = drain(child.stdout.take());
        let stderr = drain(child.stderr.take());
        let deadline = Instant::now() + self.timeout;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if Instant::now() >= deadline {
                // Best effort: the child may have exited meanwhile.
                let _ = child.kill();
                let _ = child.wait();
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no answer within {} ms", self.timeout.as_millis()),
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Ok(CommandOutput {
            success: status.success(),
            status: status.to_string(),
            stdout: stdout.join().unwrap_or_default(),
            stderr: stderr.join().unwrap_or_default(),
        })
    }
}

/// Reads a pipe to its end on a thread, so a chatty child never blocks on a full pipe.
fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut bytes);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// Reads Ascend NPUs with `npu-smi info`.
pub struct NpuSmiReader {
    runner: Box<dyn CommandRunner>,
    program: String,
}

impl NpuSmiReader {
    /// The program run, found on `PATH` unless [`program`](Self::program) says otherwise.
    pub const DEFAULT_PROGRAM: &'static str = "npu-smi";

    /// A reader running `npu-smi` on this machine (10 s timeout).
    pub fn system() -> Self {
        Self::new(Box::new(SystemRunner::default()))
    }

    /// A reader over any [`CommandRunner`] (a fake in tests).
    pub fn new(runner: Box<dyn CommandRunner>) -> Self {
        Self {
            runner,
            program: Self::DEFAULT_PROGRAM.to_string(),
        }
    }

    /// Runs `program` instead of `npu-smi` from `PATH` (e.g. `/usr/local/sbin/npu-smi`).
    pub fn program(mut self, program: impl Into<String>) -> Self {
        self.program = program.into();
        self
    }

    fn command(&self) -> String {
        format!("{} info", self.program)
    }
}

impl DeviceReader for NpuSmiReader {
    fn runtime(&self) -> &'static str {
        "npu-smi"
    }

    fn read(&self) -> Result<Vec<DeviceReading>, ReadError> {
        let output = self
            .runner
            .run(&self.program, &["info"])
            .map_err(|e| ReadError::Command {
                command: self.command(),
                message: format!("could not run: {e}"),
            })?;
        if !output.success {
            let said = output
                .stderr
                .lines()
                .chain(output.stdout.lines())
                .map(str::trim)
                .find(|l| !l.is_empty())
                .unwrap_or("no output");
            return Err(ReadError::Command {
                command: self.command(),
                message: format!("{}: {said}", output.status),
            });
        }
        let info = parse_info(&output.stdout)?;
        Ok(readings(&info)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const A2_910B3: &str = include_str!("../../tests/fixtures/npu-smi/910b3-atlas-800i-a2.txt");
    const CARD_310P3: &str = include_str!("../../tests/fixtures/npu-smi/310p3-atlas-300i-pro.txt");
    const DUO_310P3: &str = include_str!("../../tests/fixtures/npu-smi/310p3-atlas-300i-duo.txt");

    fn err(text: &str) -> ParseError {
        parse_info(text).unwrap_err()
    }

    #[test]
    fn reads_an_atlas_800i_a2_with_eight_910b3() {
        let info = parse_info(A2_910B3).unwrap();
        assert_eq!(info.chips.len(), 8);
        assert_eq!(
            info.chips[0],
            NpuChip {
                npu: 0,
                chip: 0,
                device: None,
                name: "910B3".into(),
                health: "OK".into(),
                bus_id: "0000:C1:00.0".into(),
                used_mb: 31862,
                total_mb: 65536,
            }
        );
        let used: Vec<u64> = info.chips.iter().map(|c| c.used_mb).collect();
        assert_eq!(used, [31862, 3401, 3398, 61254, 3402, 3397, 3400, 3403]);
        assert!(info.chips.iter().all(|c| c.total_mb == 65536));
        assert_eq!(info.chips[5].health, "Alarm");
        assert_eq!(
            info.processes,
            vec![
                NpuProcess {
                    npu: 0,
                    chip: 0,
                    pid: 481203,
                    memory_mb: 28416
                },
                NpuProcess {
                    npu: 3,
                    chip: 0,
                    pid: 481377,
                    memory_mb: 41210
                },
                NpuProcess {
                    npu: 3,
                    chip: 0,
                    pid: 481378,
                    memory_mb: 16640
                },
            ]
        );

        let r = readings(&info).unwrap();
        let indices: Vec<u32> = r.iter().map(|d| d.index).collect();
        assert_eq!(indices, [0, 1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(r[0].product, "Ascend910B3");
        assert_eq!(r[0].uuid, "");
        assert_eq!(
            (r[0].total_mib, r[0].used_mib, r[0].free_mib),
            (65536, 31862, 33674)
        );
        assert_eq!(r[0].processes, BTreeMap::from([(481203, 28416)]));
        assert_eq!(
            r[3].processes,
            BTreeMap::from([(481377, 41210), (481378, 16640)])
        );
        assert!(r[1].processes.is_empty());
        assert_eq!(
            r[5].health,
            Health::Unhealthy("npu-smi health Alarm".into())
        );
        assert!(r
            .iter()
            .enumerate()
            .all(|(i, d)| (i == 5) != d.health.is_healthy()));
        assert!(r.iter().all(|d| d.mig == MigMode::NotSupported));
    }

    #[test]
    fn reads_a_310p3_card_from_memory_usage_and_the_device_column() {
        let info = parse_info(CARD_310P3).unwrap();
        assert_eq!(info.chips.len(), 2);
        assert_eq!(info.chips[1].device, Some(1));
        let r = readings(&info).unwrap();
        assert_eq!(r[0].product, "Ascend310P3");
        assert_eq!(
            (r[0].index, r[0].total_mib, r[0].used_mib),
            (0, 21527, 6731)
        );
        assert_eq!(
            (r[1].index, r[1].total_mib, r[1].used_mib),
            (1, 21527, 1081)
        );
        assert_eq!(r[0].processes, BTreeMap::from([(20731, 5632)]));
        assert!(r[1].health.is_healthy(), "Warning is a minor alarm");
    }

    #[test]
    fn reads_a_two_chip_duo_card_by_device_id() {
        let info = parse_info(DUO_310P3).unwrap();
        let r = readings(&info).unwrap();
        let keys: Vec<(u32, u32, u32)> = info
            .chips
            .iter()
            .zip(&r)
            .map(|(c, d)| (c.npu, c.chip, d.index))
            .collect();
        assert_eq!(keys, [(0, 0, 0), (0, 1, 1), (1, 0, 2), (1, 1, 3)]);
        assert_eq!(r[1].processes, BTreeMap::from([(7788, 2048)]));
        assert!(r[0].processes.is_empty());
        assert_eq!(r[3].used_mib, 3129);
    }

    #[test]
    fn chips_without_a_device_column_are_numbered_by_position() {
        let text = "\
| NPU   Name                | Health        | Power(W)    Temp(C)           Hugepages-Usage(page)|
| Chip                      | Bus-Id        | AICore(%)   Memory-Usage(MB)  HBM-Usage(MB)        |
+===========================+===============+====================================================+
| 4     Ascend910           | OK            | 170.7       49                0    / 0             |
| 0                         | 0000:8D:00.0  | 0           0    / 0          51255/ 65536         |
+------------------------------------------------------------------------------------------------+
| 4     Ascend910           | OK            | -           51                0    / 0             |
| 1                         | 0000:8F:00.0  | 0           0    / 0          45292/ 65536         |
+===========================+===============+====================================================+
";
        let r = readings(&parse_info(text).unwrap()).unwrap();
        assert_eq!(r.iter().map(|d| d.index).collect::<Vec<_>>(), [0, 1]);
        assert_eq!(r[0].product, "Ascend910");
        assert_eq!((r[0].used_mib, r[1].used_mib), (51255, 45292));
    }

    #[test]
    fn hbm_is_preferred_and_an_empty_hbm_falls_back_to_memory() {
        let text = "\
| NPU   Name           | Health        | Power(W)    Temp(C)           Hugepages-Usage(page)|
| Chip                 | Bus-Id        | AICore(%)   Memory-Usage(MB)  HBM-Usage(MB)        |
+======================+===============+====================================================+
| 0     910A           | OK            | 67.8        45                0    / 0             |
| 0                    | 0000:61:00.0  | 12          2006 / 15039      1024 / 32768         |
+======================+===============+====================================================+
| 1     910A           | OK            | 67.8        45                0    / 0             |
| 0                    | 0000:62:00.0  | 12          2006 / 15039      0    / 0             |
+======================+===============+====================================================+
";
        let info = parse_info(text).unwrap();
        assert_eq!(
            (info.chips[0].used_mb, info.chips[0].total_mb),
            (1024, 32768)
        );
        assert_eq!(
            (info.chips[1].used_mb, info.chips[1].total_mb),
            (2006, 15039)
        );
    }

    #[test]
    fn health_words() {
        assert!(ascend_health("OK").is_healthy());
        assert!(ascend_health("Warning").is_healthy());
        assert_eq!(
            ascend_health("Critical").reason(),
            Some("npu-smi health Critical")
        );
        assert_eq!(
            ascend_health("Unknown").reason(),
            Some("npu-smi health \"Unknown\" not understood")
        );
    }

    #[test]
    fn product_names() {
        assert_eq!(ascend_product("910B4"), "Ascend910B4");
        assert_eq!(ascend_product("Ascend910"), "Ascend910");
        assert_eq!(ascend_product("ascend310P3"), "ascend310P3");
        assert_eq!(ascend_product("é"), "Ascendé");
    }

    #[test]
    fn garbage_has_no_table() {
        let e = err("bash: npu-smi: command not found\n");
        assert_eq!(
            e.to_string(),
            "no device table: the header line `| NPU Name | Health | …` was not found"
        );
        assert_eq!(err("").line, None);
    }

    #[test]
    fn a_table_cut_after_a_first_row_names_the_npu() {
        let cut: String = A2_910B3.lines().take(28).collect::<Vec<_>>().join("\n");
        assert!(cut.ends_with("| 7     910B3               | OK            | 94.1        40                0    / 0             |"));
        assert_eq!(
            err(&cut).to_string(),
            "line 28: NPU 7: the second row (Chip, Bus-Id, memory) is missing (truncated output?)"
        );
    }

    #[test]
    fn a_table_cut_mid_row_is_refused() {
        let cut = &A2_910B3[..A2_910B3.find("| 0000:42:00.0").unwrap() + 8];
        let e = err(cut);
        assert_eq!(e.line, Some(29));
        assert!(
            e.message.contains("NPU 7: chip row has 2 of 3 columns"),
            "{e}"
        );
    }

    #[test]
    fn a_header_alone_has_no_rows() {
        let header: String = A2_910B3.lines().take(6).collect::<Vec<_>>().join("\n");
        assert_eq!(
            err(&header).to_string(),
            "line 6: the device table has no NPU rows (truncated output?)"
        );
        let first: String = A2_910B3.lines().take(4).collect::<Vec<_>>().join("\n");
        assert!(err(&first)
            .to_string()
            .starts_with("line 4: the header's second line"));
    }

    #[test]
    fn a_missing_value_column_is_named() {
        let text = A2_910B3.replacen("0    / 0          31862/ 65536", "31862/ 65536", 1);
        assert_eq!(
            err(&text).to_string(),
            "line 8: NPU 0: 2 value(s) under `AICore(%) Memory-Usage(MB) HBM-Usage(MB)`, expected 3 (missing column?)"
        );
    }

    #[test]
    fn a_header_without_memory_columns_is_refused() {
        let text = A2_910B3.replacen(
            "Memory-Usage(MB)  HBM-Usage(MB)",
            "Mem(MB)           Hbm(MB)      ",
            1,
        );
        assert_eq!(
            err(&text).to_string(),
            "line 5: the header names neither an HBM-Usage(MB) nor a Memory-Usage(MB) column"
        );
    }

    #[test]
    fn non_numeric_memory_is_named() {
        let text = A2_910B3.replacen("3401 / 65536", "N/A  / 65536", 1);
        assert_eq!(
            err(&text).to_string(),
            "line 11: NPU 1: HBM-Usage(MB) \"N/A/65536\" is not `used / total` in MB"
        );
    }

    #[test]
    fn non_numeric_ids_are_named() {
        let text = A2_910B3.replacen("| 2     910B3", "| x     910B3", 1);
        assert_eq!(
            err(&text).to_string(),
            "line 13: NPU id \"x\" is not a number"
        );
        let text = A2_910B3.replacen("| 481377", "| pid-1 ", 1);
        assert!(err(&text)
            .to_string()
            .contains("process id \"pid-1\" is not a number"));
    }

    #[test]
    fn duplicate_indices_are_refused() {
        let text = CARD_310P3.replacen("| 0       1         |", "| 0       0         |", 1);
        let e = readings(&parse_info(&text).unwrap()).unwrap_err();
        assert_eq!(e.to_string(), "two chips read as device 0 (NPU 1 chip 0)");
    }

    struct FakeRunner(io::Result<CommandOutput>);

    impl CommandRunner for FakeRunner {
        fn run(&self, program: &str, args: &[&str]) -> io::Result<CommandOutput> {
            assert_eq!((program, args), ("npu-smi", &["info"][..]));
            match &self.0 {
                Ok(o) => Ok(o.clone()),
                Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
            }
        }
    }

    fn reader(result: io::Result<CommandOutput>) -> NpuSmiReader {
        NpuSmiReader::new(Box::new(FakeRunner(result)))
    }

    fn ok(stdout: &str) -> io::Result<CommandOutput> {
        Ok(CommandOutput {
            success: true,
            status: "exit status: 0".into(),
            stdout: stdout.into(),
            stderr: String::new(),
        })
    }

    #[test]
    fn reader_runs_npu_smi_info() {
        let r = reader(ok(A2_910B3)).read().unwrap();
        assert_eq!(r.len(), 8);
        assert_eq!(reader(ok("")).runtime(), "npu-smi");
    }

    #[test]
    fn reader_reports_a_missing_program_a_failure_and_bad_output() {
        let e = reader(Err(io::Error::new(
            io::ErrorKind::NotFound,
            "No such file or directory",
        )))
        .read()
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "npu-smi info: could not run: No such file or directory"
        );

        let failed = Ok(CommandOutput {
            success: false,
            status: "exit status: 255".into(),
            stdout: String::new(),
            stderr: "\ndcmi module initialize failed. ret is -8005\n".into(),
        });
        assert_eq!(
            reader(failed).read().unwrap_err().to_string(),
            "npu-smi info: exit status: 255: dcmi module initialize failed. ret is -8005"
        );

        let e = reader(ok("garbage")).read().unwrap_err();
        assert!(matches!(e, ReadError::NpuSmi(_)));
        assert!(e
            .to_string()
            .starts_with("npu-smi info output: no device table"));
    }

    #[cfg(unix)]
    #[test]
    fn system_runner_captures_output_and_times_out() {
        let runner = SystemRunner {
            timeout: Duration::from_secs(5),
        };
        let out = runner
            .run("sh", &["-c", "echo out; echo err >&2; exit 3"])
            .unwrap();
        assert!(!out.success);
        assert_eq!(
            (out.stdout.as_str(), out.stderr.as_str()),
            ("out\n", "err\n")
        );
        assert!(out.status.contains('3'), "{}", out.status);

        let slow = SystemRunner {
            timeout: Duration::from_millis(100),
        };
        let e = slow.run("sleep", &["5"]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert_eq!(e.to_string(), "no answer within 100 ms");
        let e = runner.run("/nonexistent/npu-smi", &["info"]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
        assert_eq!(e.raw_os_error(), Some(2), "{e}"); // ENOENT
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(text in any::<String>()) {
            if let Ok(info) = parse_info(&text) {
                let _ = readings(&info);
            }
        }

        #[test]
        fn table_like_text_never_panics(
            lines in proptest::collection::vec("[|+= 0-9A-Za-z/().:-]{0,40}", 0..30)
        ) {
            let text = lines.join("\n");
            if let Ok(info) = parse_info(&text) {
                let _ = readings(&info);
            }
        }

        #[test]
        fn cut_or_corrupted_fixtures_never_panic(
            cut in 0usize..4000,
            at in 0usize..4000,
            c in any::<char>(),
        ) {
            for fixture in [A2_910B3, CARD_310P3, DUO_310P3] {
                let cut = cut.min(fixture.len());
                let _ = parse_info(&fixture[..cut]);
                let at = at.min(fixture.len());
                let mut corrupted = fixture.to_string();
                corrupted.insert(at, c);
                if let Ok(info) = parse_info(&corrupted) {
                    let _ = readings(&info);
                }
            }
        }
    }
}
