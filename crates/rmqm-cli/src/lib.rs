//! Plumbing every rmqm tool needs: parsing inputs and outputs (path or `-`), provenance with the
//! command line, progress bars on stderr, a one-line summary at the end, thread setup, and a `main`
//! wrapper that prints errors with their causes and exits non-zero.

use rmqm_artifacts::{Input, Output, Provenance, keys};
use std::time::{Duration, Instant};

pub use indicatif::ProgressBar;

/// Parses an input argument for clap: a path, or `-` for stdin.
pub fn parse_input(s: &str) -> Result<Input, String> {
    if s.is_empty() {
        Err("empty path".into())
    } else {
        Ok(Input::parse(s))
    }
}

/// Parses an output argument for clap: a path, or `-` for stdout (Arrow IPC stream).
pub fn parse_output(s: &str) -> Result<Output, String> {
    if s.is_empty() {
        Err("empty path".into())
    } else {
        Ok(Output::parse(s))
    }
}

/// The command line as one string, arguments with spaces quoted.
pub fn command_line(args: &[String]) -> String {
    args.iter()
        .map(|a| {
            if a.contains(char::is_whitespace) || a.is_empty() {
                format!("'{a}'")
            } else {
                a.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Provenance every artifact of `tool` starts with: tool, version and the command line.
pub fn base_provenance(tool: &str, args: &[String]) -> Provenance {
    Provenance::new()
        .with(keys::TOOL, tool)
        .with(keys::VERSION, env!("CARGO_PKG_VERSION"))
        .with(keys::COMMAND, command_line(args))
}

/// Rows per forward pass `embed` makes by default (its `--batch-size`): `alter --emit embeddings`
/// embeds in passes of as many rows, so that its embeddings are those of `alter | embed`.
pub const EMBED_PASS_ROWS: usize = 256;

/// Sets the number of rayon worker threads (0 = one per core); safe to call more than once.
pub fn init_threads(threads: usize) {
    if threads > 0 {
        // Ignore the error when a pool already exists (tests call tools repeatedly in one process).
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build_global();
    }
}

/// Runs `f` on a worker of rayon's global pool (set up first with [`init_threads`]) and returns
/// what it returns. Parallel loops started on a worker run there, inline with one thread; started
/// from the main thread, every one wakes the pool and puts the main thread to sleep until it is
/// done: about 100 µs a call, measured on lenet5-classic's dense layers at batch 256 with one
/// thread, whose products take 40-170 µs; a forward pass makes one such call per layer.
pub fn on_workers<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        f()
    } else {
        // `scope` runs its closure on a worker of the current (here: global) pool.
        rayon::scope(|_| f())
    }
}

/// A progress bar on stderr for `total` items of `unit` (hidden when stderr is not a terminal).
pub fn progress(total: Option<u64>, message: &str, unit: &str) -> ProgressBar {
    let bar = match total {
        Some(n) => ProgressBar::new(n),
        None => ProgressBar::new_spinner(),
    };
    let template = match total {
        Some(_) => format!(
            "{{msg}} [{{elapsed_precise}}] {{wide_bar}} {{pos}}/{{len}} {unit} ({{per_sec}}, eta {{eta}})"
        ),
        None => format!("{{msg}} [{{elapsed_precise}}] {{spinner}} {{pos}} {unit} ({{per_sec}})"),
    };
    if let Ok(style) = indicatif::ProgressStyle::with_template(&template) {
        bar.set_style(style);
    }
    bar.set_message(message.to_string());
    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr_with_hz(4));
    bar
}

/// Peak resident memory of this process in MiB (Linux `VmHWM`), if known.
pub fn peak_memory_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Times a tool's run and prints its one-line summary on stderr.
pub struct Summary {
    tool: &'static str,
    start: Instant,
}

impl Summary {
    /// Starts the clock for `tool`.
    pub fn start(tool: &'static str) -> Self {
        Summary {
            tool,
            start: Instant::now(),
        }
    }
    /// Time since start.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }
    /// Prints `tool: <what> in <s> s, peak <m> MiB` on stderr and returns the line.
    pub fn finish(&self, what: &str) -> String {
        let secs = self.elapsed().as_secs_f64();
        let mem = peak_memory_mib()
            .map(|m| format!(", peak memory {m:.0} MiB"))
            .unwrap_or_default();
        let line = format!("{}: {what} in {secs:.1} s{mem}", self.tool);
        eprintln!("{line}");
        line
    }
}

/// Formats a count with thousands separators (12,345).
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// mimalloc's option number for the purge delay (`mi_option_purge_delay` in mimalloc v3's header).
const MI_OPTION_PURGE_DELAY: i32 = 15;

/// Tells the allocator (mimalloc, every tool's global allocator) to keep freed memory instead of
/// returning it to the OS after 10 ms. Tensors of tens of MB are freed and reallocated every step;
/// returning them made each reallocation page-fault its way back in (225,000 faults and 40% of the
/// time in a ResNet-18 PGD benchmark). Peak memory is what a run needs anyway.
pub fn keep_freed_memory() {
    // SAFETY: a plain option setter of the linked allocator; any value is valid for this option.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}

/// Sets up the process for compute: keeps freed memory ([`keep_freed_memory`]) and, unless the
/// user set them, fixes two thread counts through the environment candle reads:
/// `CANDLE_NUM_THREADS=1`, because candle's own worker pool spins beside rayon's, which runs our
/// kernels (on 2 cores LeNet training and embedding ran 12-16% faster without it; the remaining
/// candle element-wise ops are small), and `RAYON_NUM_THREADS` to rayon's default, because
/// without it candle re-reads /proc/cpuinfo on every matrix product. Call it first in `main`,
/// before any thread starts.
pub fn prepare_process() {
    keep_freed_memory();
    let set_default = |name: &str, value: String| {
        if std::env::var_os(name).is_none() {
            // SAFETY: called at the top of main, before any other thread exists (the contract
            // above), so nothing reads the environment concurrently.
            unsafe { std::env::set_var(name, value) };
        }
    };
    set_default("CANDLE_NUM_THREADS", "1".into());
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    set_default("RAYON_NUM_THREADS", threads.to_string());
}

/// Runs a tool's entry point and exits: 0 on success, and quietly 0 when a downstream pipe closed
/// early; on any other error prints `tool: error: ...` with every cause on stderr and exits 1.
/// Clap's own usage errors exit 2 as usual.
pub fn main_with(tool: &str, run: impl FnOnce(Vec<String>) -> anyhow::Result<()>) -> ! {
    prepare_process();
    let args: Vec<String> = std::env::args().collect();
    match run(args) {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            if let Some(clap_err) = e.downcast_ref::<clap::Error>() {
                clap_err.exit();
            }
            // `tool | head`: the reader has what it wanted; end quietly, as Unix tools do.
            if is_broken_pipe(&e) {
                std::process::exit(0);
            }
            eprintln!("{tool}: error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            std::process::exit(1);
        }
    }
}

/// The standard streams a tool uses for `-`; tests and in-process pipes replace them.
pub struct Stdio {
    /// What `-` reads.
    pub stdin: Box<dyn std::io::Read + Send>,
    /// What `-` writes.
    pub stdout: Box<dyn std::io::Write + Send>,
    /// Whether `stdout` is a terminal (binary Arrow is not written to one).
    pub stdout_is_terminal: bool,
}

impl Default for Stdio {
    /// The process's own stdin and stdout.
    fn default() -> Self {
        use std::io::IsTerminal;
        Stdio {
            stdin: Box::new(std::io::stdin()),
            stdout: Box::new(std::io::stdout()),
            stdout_is_terminal: std::io::stdout().is_terminal(),
        }
    }
}

/// Refuses `-o -` when standard output is a terminal: an Arrow IPC stream is binary.
pub fn check_binary_output(output: &Output, stdio: &Stdio) -> anyhow::Result<()> {
    if *output == Output::Stdout && stdio.stdout_is_terminal {
        anyhow::bail!(
            "refusing to write a binary Arrow stream to the terminal (-o -): pipe it into another tool, redirect it to a file, or give -o FILE.parquet"
        );
    }
    Ok(())
}

/// Whether an error comes from writing to a pipe whose reader has gone (`tool | head`).
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            || cause.to_string().contains("Broken pipe")
    })
}

/// Where the datasets are (`--data-dir`, or `$DATA_DIR`, as `--help` shows).
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct DataDirArg {
    /// Folder holding the datasets, one folder each, laid out as their publishers distribute them.
    #[arg(long, env = "DATA_DIR", default_value = "data")]
    pub data_dir: std::path::PathBuf,
}

/// Which images of a split: by class, by id, then the first N.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct SelectionArgs {
    /// Only images of these classes, comma separated.
    #[arg(long, value_delimiter = ',')]
    pub classes: Vec<i32>,
    /// Only these image ids (indices in the split's source order), comma separated.
    #[arg(long, value_delimiter = ',')]
    pub ids: Vec<u32>,
    /// Only the first N images (after --classes and --ids).
    #[arg(long)]
    pub limit: Option<usize>,
}

impl SelectionArgs {
    /// The selected images of `set` (see [`rmqm_data::Selection`]).
    pub fn apply(&self, set: rmqm_data::ImageSet) -> anyhow::Result<rmqm_data::ImageSet> {
        rmqm_data::Selection {
            classes: self.classes.clone(),
            ids: self.ids.clone(),
            limit: self.limit,
        }
        .apply(set)
        .map_err(anyhow::Error::msg)
    }
}

/// Worker threads of a tool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::Args)]
pub struct ThreadsArg {
    /// Worker threads (0 = one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

impl ThreadsArg {
    /// Sets up the worker pool ([`init_threads`]).
    pub fn init(&self) {
        init_threads(self.threads);
    }
}

/// Who a result belongs to, for inputs without rmqm metadata (embeddings written by other tools).
/// Each flag overrides the input's metadata; without either the model id is the input file's name.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct ModelIdentity {
    /// Model id written to the output (default: the input's rmqm.model, else the input file's name).
    #[arg(long)]
    pub model_id: Option<String>,
    /// Dataset the encoder was trained on (default: the input's rmqm.train_dataset, else "unknown").
    #[arg(long)]
    pub train_dataset: Option<String>,
    /// Training method (default: the input's rmqm.method, else "unknown").
    #[arg(long)]
    pub method: Option<String>,
}

impl ModelIdentity {
    /// `prov` with the identity keys set: flags first, then what `prov` has, then (model id only)
    /// the name of `input`'s file.
    pub fn apply(&self, mut prov: Provenance, input: &Input) -> Provenance {
        if let Some(m) = &self.model_id {
            prov.set(keys::MODEL, m);
        } else if prov.get(keys::MODEL).is_none()
            && let Input::Path(p) = input
            && let Some(stem) = p.file_stem().and_then(|s| s.to_str())
        {
            prov.set(keys::MODEL, stem);
        }
        if let Some(t) = &self.train_dataset {
            prov.set(keys::TRAIN_DATASET, t);
        }
        if let Some(m) = &self.method {
            prov.set(keys::METHOD, m);
        }
        prov
    }
}

impl Stdio {
    /// Takes the stdin stream out (replacing it with an empty reader).
    pub fn take_stdin(&mut self) -> Box<dyn std::io::Read + Send> {
        std::mem::replace(&mut self.stdin, Box::new(std::io::empty()))
    }
    /// Takes the stdout stream out (replacing it with a sink).
    pub fn take_stdout(&mut self) -> Box<dyn std::io::Write + Send> {
        std::mem::replace(&mut self.stdout, Box::new(std::io::sink()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_and_command_line() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(command_line(&["a".into(), "b c".into()]), "a 'b c'");
        let p = base_provenance("alter", &["alter".into(), "-o".into(), "x".into()]);
        assert_eq!(p.get(keys::COMMAND), Some("alter -o x"));
        assert_eq!(p.get(keys::TOOL), Some("alter"));
    }

    #[test]
    fn identity_flags_override_metadata_and_fall_back_to_the_file_name() {
        let input = Input::Path("/data/resnet50-traj.parquet".into());
        let none = ModelIdentity::default();
        let p = none.apply(Provenance::new(), &input);
        assert_eq!(p.get(keys::MODEL), Some("resnet50-traj"));
        let p = none.apply(Provenance::new().with(keys::MODEL, "m1"), &input);
        assert_eq!(p.get(keys::MODEL), Some("m1"));
        let flags = ModelIdentity {
            model_id: Some("r50".into()),
            train_dataset: Some("imagenet".into()),
            method: None,
        };
        let p = flags.apply(Provenance::new().with(keys::MODEL, "m1"), &Input::Stdin);
        assert_eq!(p.get(keys::MODEL), Some("r50"));
        assert_eq!(p.get(keys::TRAIN_DATASET), Some("imagenet"));
    }

    #[test]
    fn terminal_output_is_refused_and_broken_pipes_are_recognised() {
        let mut stdio = Stdio {
            stdout_is_terminal: true,
            ..Stdio::default()
        };
        assert!(check_binary_output(&Output::Stdout, &stdio).is_err());
        assert!(check_binary_output(&Output::Path("x.parquet".into()), &stdio).is_ok());
        stdio.stdout_is_terminal = false;
        assert!(check_binary_output(&Output::Stdout, &stdio).is_ok());
        let e = anyhow::Error::new(std::io::Error::from(std::io::ErrorKind::BrokenPipe))
            .context("writing -");
        assert!(is_broken_pipe(&e));
        assert!(!is_broken_pipe(&anyhow::anyhow!("no such file")));
    }
}
