//! `--jobs N`: an experiment's runs (variant × seed) as up to N processes at once, the threads
//! split between them. A run starts when the run it starts from (same seed) has finished; each
//! process is this binary with `--variant V --seed S`, writing its own run folder under the
//! per-run lock, so nothing is shared but the finished source runs it reads.

use anyhow::{Context, Result, bail};
use runner::spec::{LoadedExperiment, Run};
use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The process running one run, and the threads that forward its output and error lines.
struct Running {
    run: Run,
    child: Child,
    logs: [std::thread::JoinHandle<()>; 2],
}

/// Run `runs` (in the file's stage order) as processes of this binary, at most `jobs` at once;
/// `shared_args` are the command-line arguments every process takes (experiment file, device,
/// folders, epochs, ...); the runs in `forced` also take `--force`. Fails, after the others
/// have finished, if any run failed.
pub fn run(
    exp: &LoadedExperiment,
    runs: &[Run],
    forced: &[Run],
    jobs: usize,
    shared_args: &[OsString],
) -> Result<()> {
    let spec = &exp.spec;
    let exe = std::env::current_exe().context("cannot find the harness binary to start runs")?;
    let threads = (runner::provenance::threads() / jobs).max(1);
    let mut pending: Vec<Run> = runs.to_vec();
    let mut running: Vec<Running> = Vec::new();
    let (mut finished, mut failed): (Vec<Run>, Vec<Run>) = (Vec::new(), Vec::new());
    let name = |run: Run| {
        let variant = &spec.variants[run.variant].name;
        match spec.protocol_of(run.variant).is_seed_sweep() {
            true => format!("{variant} seed {}", run.seed),
            false => variant.clone(),
        }
    };
    eprintln!(
        "{} runs, {jobs} at a time, {threads} thread{} each",
        runs.len(),
        if threads == 1 { "" } else { "s" }
    );
    while !pending.is_empty() || !running.is_empty() {
        // A run whose source failed cannot start; a run whose source is not among `runs` was
        // finished before (runner::selected_runs adds every unfinished source).
        pending.retain(|&run| {
            let blocked = spec.source_run(run).is_some_and(|s| failed.contains(&s));
            if blocked {
                failed.push(run);
                eprintln!("[{}] not started: the run it starts from failed", name(run));
            }
            !blocked
        });
        while running.len() < jobs {
            let ready = pending.iter().position(|&run| {
                spec.source_run(run)
                    .is_none_or(|s| !runs.contains(&s) || finished.contains(&s))
            });
            let Some(index) = ready else { break };
            let run = pending.remove(index);
            let mut child = Command::new(&exe)
                .arg("run")
                .args(shared_args)
                .args(["--variant", &spec.variants[run.variant].name])
                .args(["--seed", &run.seed.to_string()])
                .arg("--no-figures")
                .args(forced.contains(&run).then_some("--force"))
                .env("RAYON_NUM_THREADS", threads.to_string())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .with_context(|| format!("cannot start {}", exe.display()))?;
            let prefix = format!("[{}]", name(run));
            let (out, err) = (child.stdout.take(), child.stderr.take());
            let logs = [
                std::thread::spawn({
                    let prefix = prefix.clone();
                    move || forward(out, &prefix)
                }),
                std::thread::spawn(move || forward(err, &prefix)),
            ];
            running.push(Running { run, child, logs });
        }
        std::thread::sleep(Duration::from_millis(100));
        let mut k = 0;
        while k < running.len() {
            match running[k].child.try_wait()? {
                None => k += 1,
                Some(status) => {
                    let done = running.remove(k);
                    for log in done.logs {
                        let _ = log.join();
                    }
                    if status.success() {
                        finished.push(done.run);
                    } else {
                        eprintln!("[{}] failed ({status})", name(done.run));
                        failed.push(done.run);
                    }
                }
            }
        }
    }
    if !failed.is_empty() {
        let names: Vec<String> = failed.into_iter().map(name).collect();
        bail!(
            "{} of {} runs failed: {}",
            names.len(),
            runs.len(),
            names.join(", ")
        );
    }
    Ok(())
}

/// Print each line of a child's output with the run's name in front (indicatif draws no bars
/// into a pipe, so the lines are the per-epoch summaries and messages).
fn forward(stream: Option<impl std::io::Read>, prefix: &str) {
    let Some(stream) = stream else { return };
    for line in BufReader::new(stream).lines().map_while(Result::ok) {
        eprintln!("{prefix} {line}");
    }
}
