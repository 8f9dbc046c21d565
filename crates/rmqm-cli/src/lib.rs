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

/// Sets the number of rayon worker threads (0 = one per core); safe to call more than once.
pub fn init_threads(threads: usize) {
    if threads > 0 {
        // Ignore the error when a pool already exists (tests call tools repeatedly in one process).
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build_global();
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
        if i > 0 && (s.len() - i) % 3 == 0 {
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

/// Runs a tool's entry point and exits: 0 on success; on error prints `tool: error: ...` with every
/// cause on stderr and exits 1. Clap's own usage errors exit 2 as usual.
pub fn main_with(tool: &str, run: impl FnOnce(Vec<String>) -> anyhow::Result<()>) -> ! {
    prepare_process();
    let args: Vec<String> = std::env::args().collect();
    match run(args) {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            if let Some(clap_err) = e.downcast_ref::<clap::Error>() {
                clap_err.exit();
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
}

impl Default for Stdio {
    /// The process's own stdin and stdout.
    fn default() -> Self {
        Stdio {
            stdin: Box::new(std::io::stdin()),
            stdout: Box::new(std::io::stdout()),
        }
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
}
