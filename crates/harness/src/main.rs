//! `harness`: reproduce "Variational Dropout Sparsifies Deep Neural Networks" from experiment
//! files. `harness experiments/lenet300.toml` trains every variant and writes `results/`.

use anyhow::{Context, Result};
use burn::tensor::{Device, Tensor, TensorData};
use clap::{Parser, Subcommand, ValueEnum};
use runner::spec::LoadedExperiment;
use std::path::PathBuf;

mod eval;
mod figures;
mod jobs;
mod report;
mod slurm;
mod table1;

#[derive(Parser)]
#[command(version, about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Train the variants of an experiment file and write their results (the default).
    Run(RunArgs),
    /// Validate an experiment file without training.
    Check {
        experiment: PathBuf,
        /// Also open this backend and check one small computation on it.
        #[arg(long, value_enum)]
        device: Option<Backend>,
    },
    /// Regenerate results/table1.{md,csv}, every experiment's figures and results/REPORT.md (all
    /// tables and figures in one document) from the results on disk.
    Report {
        #[arg(long, default_value = "results")]
        results_dir: PathBuf,
        #[arg(long, default_value = "figures")]
        figures_dir: PathBuf,
    },
    /// Re-evaluate a saved model: error and compression at a threshold, or a threshold sweep.
    Eval {
        experiment: PathBuf,
        /// The variant whose saved model to load.
        #[arg(long)]
        variant: String,
        /// Its run under this seed [default: the protocol's first seed].
        #[arg(long)]
        seed: Option<u64>,
        /// log α threshold [default: the experiment's].
        #[arg(long)]
        threshold: Option<f64>,
        /// Sweep thresholds from −2 to 7.5; writes threshold_sweep.csv beside the model and a figure.
        #[arg(long)]
        sweep: bool,
        #[command(flatten)]
        folders: Folders,
    },
    /// Record the training-spec hash in the provenance of finished runs that predate it (their
    /// experiment file unchanged since they ran), so that editing comments, paper rows or
    /// tolerances later leaves them current.
    Stamp {
        experiment: PathBuf,
        #[arg(long, default_value = "results")]
        results_dir: PathBuf,
    },
    /// Time training steps of an experiment's variants on a device (random inputs of the data
    /// set's shape, the variant's batch size; no data needed), e.g.
    /// `harness bench experiments/vgg_cifar10.toml --variant sparse_vd_k1.0 --device vulkan`.
    Bench {
        experiment: PathBuf,
        /// Time only this variant (repeatable) [default: every variant].
        #[arg(long = "variant")]
        variants: Vec<String>,
        /// Steps timed per variant; the median is reported.
        #[arg(long, default_value_t = 20)]
        steps: usize,
        /// Steps run first and not timed (kernel compilation and autotuning on a GPU).
        #[arg(long, default_value_t = 5)]
        warmup: usize,
        #[arg(long, value_enum, default_value_t = Backend::Flex)]
        device: Backend,
        /// Run the composed operations (a GPU's code path) on the CPU backend too.
        #[arg(long)]
        composed: bool,
        /// Append one row per variant to this CSV file (written with a header when new).
        #[arg(long)]
        csv: Option<PathBuf>,
    },
    /// Write Slurm batch scripts for an experiment's runs: one job array per stage level, one
    /// task per (variant, seed), each level after the one it starts from (afterok), then a job
    /// that redraws the comparison and figures. With --submit, submit them (sbatch).
    Slurm {
        experiment: PathBuf,
        /// Only this variant (repeatable), with the runs it starts from.
        #[arg(long = "variant")]
        variants: Vec<String>,
        /// Only under this seed (repeatable).
        #[arg(long = "seed")]
        seeds: Vec<u64>,
        #[arg(long)]
        partition: Option<String>,
        /// Generic resources per task, e.g. gpu:1.
        #[arg(long)]
        gres: Option<String>,
        /// Time limit per task, e.g. 12:00:00.
        #[arg(long)]
        time: Option<String>,
        /// CPU cores per task (the task's training threads).
        #[arg(long, default_value_t = 2)]
        cpus_per_task: usize,
        /// The backend each task trains on (the binary must be built with its feature).
        #[arg(long, value_enum, default_value_t = Backend::Flex)]
        device: Backend,
        /// Train this many epochs instead of the file's (shortened runs, labelled so).
        #[arg(long)]
        epochs: Option<usize>,
        /// Folders on a file system every node sees.
        #[command(flatten)]
        folders: Folders,
        /// Fetch the data here first, then submit the scripts (sbatch must be on PATH).
        #[arg(long)]
        submit: bool,
    },
    /// Redraw an experiment's figures and rewrite its comparison table from its results on disk.
    Figures {
        experiment: PathBuf,
        #[arg(long, default_value = "results")]
        results_dir: PathBuf,
        #[arg(long, default_value = "figures")]
        figures_dir: PathBuf,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// Experiment file, e.g. experiments/lenet300.toml.
    experiment: Option<PathBuf>,
    /// Backend to compute on.
    #[arg(long, value_enum, default_value_t = Backend::Flex)]
    device: Backend,
    #[command(flatten)]
    folders: Folders,
    /// Run only this variant (repeatable), and the variants it starts from if they have not
    /// finished.
    #[arg(long = "variant")]
    variants: Vec<String>,
    /// Run only under this seed (repeatable) [default: every seed of the protocol].
    #[arg(long = "seed")]
    seeds: Vec<u64>,
    /// Run up to N runs (variant × seed) at once, as separate processes splitting the threads;
    /// a run starts when the run it starts from has finished.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    jobs: u64,
    /// Draw no figures and write no comparison after the run (for runs started by --jobs or a
    /// Slurm array task: the parent, or `harness figures`, draws them once).
    #[arg(long, hide = true)]
    no_figures: bool,
    /// Retrain variants whose results already exist (with --variant: only those named).
    #[arg(long)]
    force: bool,
    /// Train this many epochs instead of the file's (the results are labelled as shortened).
    #[arg(long)]
    epochs: Option<usize>,
    /// Run the composed operations (a GPU's code path) on the CPU backend instead of its host
    /// kernels; provenance records the backend as `flex-composed`.
    #[arg(long)]
    composed: bool,
}

/// Where data are read and results and figures written.
#[derive(clap::Args)]
struct Folders {
    /// Data cache folder [default: $HARNESS_DATA_DIR, else data/ at the repository root].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Results root; each experiment writes RESULTS_DIR/NAME/VARIANT/ (and seed_N/
    /// below it in a seed sweep).
    #[arg(long, default_value = "results")]
    results_dir: PathBuf,
    /// Where figures are written.
    #[arg(long, default_value = "figures")]
    figures_dir: PathBuf,
}

#[derive(Clone, Copy, ValueEnum)]
enum Backend {
    /// burn's pure-Rust CPU backend.
    Flex,
    /// burn's wgpu backend pinned to Vulkan (GPUs; build with `--features vulkan`).
    #[cfg(feature = "vulkan")]
    Vulkan,
    /// burn's wgpu backend with WGSL kernels on the graphics API wgpu picks (build with
    /// `--features wgpu`).
    #[cfg(feature = "wgpu")]
    Wgpu,
    /// libtorch on CUDA device 0 (build with `--features tch`).
    #[cfg(feature = "tch")]
    Tch,
    /// libtorch on the CPU (build with `--features tch`): checks a tch build without a GPU.
    #[cfg(feature = "tch")]
    TchCpu,
}

impl Backend {
    fn device(self) -> Device {
        match self {
            Backend::Flex => Device::flex().autodiff(),
            #[cfg(feature = "vulkan")]
            Backend::Vulkan => Device::vulkan(Default::default()).autodiff(),
            #[cfg(feature = "wgpu")]
            Backend::Wgpu => Device::wgpu(Default::default()).autodiff(),
            // burn 0.22 marks burn-tch deprecated; the project's design names it.
            #[cfg(feature = "tch")]
            #[allow(deprecated)]
            Backend::Tch => Device::libtorch_cuda(0).autodiff(),
            #[cfg(feature = "tch")]
            #[allow(deprecated)]
            Backend::TchCpu => Device::libtorch().autodiff(),
        }
    }

    /// What the results' provenance records as the device.
    fn description(self) -> String {
        match self {
            Backend::Flex => format!("CPU: {}", runner::provenance::cpu_model()),
            #[cfg(feature = "vulkan")]
            Backend::Vulkan => match Device::vulkan(Default::default()).identity() {
                Some(gpu) => format!("GPU: {} (Vulkan)", gpu.name),
                None => "GPU: unnamed Vulkan adapter".to_string(),
            },
            #[cfg(feature = "wgpu")]
            Backend::Wgpu => match Device::wgpu(Default::default()).identity() {
                Some(gpu) => format!("GPU: {} (wgpu)", gpu.name),
                None => "GPU: unnamed wgpu adapter".to_string(),
            },
            #[cfg(feature = "tch")]
            Backend::Tch => format!("GPU: {} (libtorch)", nvidia_gpu_name()),
            #[cfg(feature = "tch")]
            Backend::TchCpu => format!("CPU: {} (libtorch)", runner::provenance::cpu_model()),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Backend::Flex => "flex",
            #[cfg(feature = "vulkan")]
            Backend::Vulkan => "vulkan",
            #[cfg(feature = "wgpu")]
            Backend::Wgpu => "wgpu",
            #[cfg(feature = "tch")]
            Backend::Tch => "tch",
            #[cfg(feature = "tch")]
            Backend::TchCpu => "tch-cpu",
        }
    }
}

/// The name of CUDA device 0 as nvidia-smi gives it (libtorch does not name its devices).
#[cfg(feature = "tch")]
fn nvidia_gpu_name() -> String {
    std::process::Command::new("nvidia-smi")
        .args(["--query-gpu=name", "--format=csv,noheader", "-i", "0"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "CUDA device 0 (unnamed: no nvidia-smi)".to_string())
}

/// Opens `backend` and checks a matrix product on it (x·xᵀ for x = 0, 1, …, 1023 is
/// Σ i² = 357,389,824), so that a GPU whose driver or kernels fail shows it before any training.
fn probe(backend: Backend) -> Result<()> {
    let (device, name) = (backend.device(), backend.description());
    let x: Vec<f32> = (0..1024u16).map(f32::from).collect();
    let x = Tensor::<2>::from_data(TensorData::new(x, [1, 1024]), &device);
    let product = sparsevd::ops::read_back(x.clone().matmul(x.transpose())).convert::<f64>();
    let got = product
        .try_to_vec::<f64>()
        .map_err(|e| anyhow::anyhow!("{e:?}"))?[0];
    let expected = 357_389_824.0;
    anyhow::ensure!(
        (got - expected).abs() <= 1e-4 * expected,
        "{name}: x·xᵀ gave {got}, expected {expected}"
    );
    println!("{name}: ok (a matrix product gave the expected value)");
    Ok(())
}

fn main() -> std::process::ExitCode {
    match dispatch(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The project's error messages already include their causes; no backtrace.
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn dispatch(cli: Cli) -> Result<()> {
    match cli.command {
        Some(Command::Run(args)) => run(args),
        Some(Command::Check { experiment, device }) => {
            let exp = LoadedExperiment::load(&experiment)?;
            let count = exp.spec.variants.len();
            println!(
                "{}: ok ({count} variant{}: {})",
                experiment.display(),
                if count == 1 { "" } else { "s" },
                exp.spec
                    .variants
                    .iter()
                    .map(|v| v.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            if let Some(backend) = device {
                probe(backend)?;
            }
            Ok(())
        }
        Some(Command::Bench {
            experiment,
            variants,
            steps,
            warmup,
            device,
            composed,
            csv,
        }) => bench(
            &experiment,
            &variants,
            runner::bench::BenchSettings { warmup, steps },
            device,
            composed,
            csv.as_deref(),
        ),
        Some(Command::Figures {
            experiment,
            results_dir,
            figures_dir,
        }) => {
            let exp = LoadedExperiment::load(&experiment)?;
            draw_figures(&exp, &results_dir, &figures_dir).map(|_| ())
        }
        Some(Command::Report {
            results_dir,
            figures_dir,
        }) => report(&results_dir, &figures_dir),
        Some(Command::Slurm {
            experiment,
            variants,
            seeds,
            partition,
            gres,
            time,
            cpus_per_task,
            device,
            epochs,
            folders,
            submit,
        }) => {
            let exp = LoadedExperiment::load(&experiment)?;
            let runs = runner::selected_runs(&exp.spec, &variants, &seeds)?;
            let data_dir = datasets::data_dir(folders.data_dir);
            if submit {
                // Compute nodes may have no network: the data (and CIFAR-10's whitening) are
                // cached on the shared file system first.
                runner::load_data(&exp, &data_dir)?;
            }
            let settings = slurm::SlurmSettings {
                partition,
                gres,
                time,
                cpus_per_task,
                device: device.name().to_string(),
                epochs,
                data_dir,
                results_dir: folders.results_dir,
                figures_dir: folders.figures_dir,
            };
            let scripts = slurm::write(&exp, &runs, &settings)?;
            print_written(
                scripts
                    .stages
                    .iter()
                    .chain([&scripts.report, &scripts.submit]),
            );
            if submit {
                let ids = slurm::submit(&scripts)?;
                println!("submitted jobs {}", ids.join(", "));
            } else {
                println!("submit with: bash {}", scripts.submit.display());
            }
            Ok(())
        }
        Some(Command::Stamp {
            experiment,
            results_dir,
        }) => {
            let exp = LoadedExperiment::load(&experiment)?;
            for line in runner::stamp_variant_hashes(&exp, &results_dir)? {
                println!("{line}");
            }
            Ok(())
        }
        Some(Command::Eval {
            experiment,
            variant,
            seed,
            threshold,
            sweep,
            folders,
        }) => {
            let exp = LoadedExperiment::load(&experiment)?;
            let options = run_options(Backend::Flex, false, folders.data_dir, folders.results_dir);
            eval::run(
                &exp,
                &variant,
                seed,
                threshold,
                sweep,
                &options,
                &folders.figures_dir,
            )
        }
        None => run(cli.run),
    }
}

/// Draw `exp`'s figures and rewrite its comparison table; the figure files written.
fn draw_figures(
    exp: &LoadedExperiment,
    results_dir: &std::path::Path,
    figures_dir: &std::path::Path,
) -> Result<Vec<PathBuf>> {
    let written: Vec<PathBuf> = [
        figures::training_curves(exp, results_dir, figures_dir)?,
        figures::first_layer_masks(exp, results_dir, figures_dir)?,
        figures::width_sweep(exp, results_dir, figures_dir)?,
        figures::removed_per_layer(exp, results_dir, figures_dir)?,
        figures::parameterization(exp, results_dir, figures_dir)?,
    ]
    .into_iter()
    .flatten()
    .collect();
    print_written(written.iter());
    runner::rewrite_comparison(exp, results_dir)?;
    Ok(written)
}

fn print_written<'a>(paths: impl Iterator<Item = &'a PathBuf>) {
    for path in paths {
        println!("wrote {}", path.display());
    }
}

/// Table 1 and the figures of every experiment file under experiments/, from results on disk.
fn report(results_dir: &std::path::Path, figures_dir: &std::path::Path) -> Result<()> {
    let repo = std::path::Path::new(".");
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo.join("experiments"))
        .context("run `harness report` from the repository root (no experiments/ here)")?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|e| e == "toml") && !p.ends_with("paper_reference.toml")
        })
        .collect();
    files.sort();
    let mut sections = Vec::new();
    for file in files {
        let exp = LoadedExperiment::load(&file)?;
        let figures = draw_figures(&exp, results_dir, figures_dir)?;
        sections.push(report::Section { exp, figures });
    }
    let kl = figures::kl_approximation(figures_dir)?;
    print_written(kl.iter());
    let table1 = table1::write(repo, results_dir, figures_dir)?;
    print_written(table1.iter());
    let report = report::write(results_dir, &table1, &sections, &kl)?;
    println!("wrote {}", report.display());
    Ok(())
}

/// Options for running every run of an experiment on `backend` (no selection, no overrides).
fn run_options(
    backend: Backend,
    composed: bool,
    data_dir: Option<PathBuf>,
    results_dir: PathBuf,
) -> runner::RunOptions {
    runner::RunOptions {
        device: backend.device(),
        backend: backend_name(backend, composed),
        device_description: backend.description(),
        data_dir: datasets::data_dir(data_dir),
        results_dir,
        only_variants: Vec::new(),
        only_seeds: Vec::new(),
        force: false,
        epochs: None,
    }
}

/// Times the variants of `experiment` named in `variants` (all when empty) and prints, or
/// appends to `csv`, one row per variant.
fn bench(
    experiment: &std::path::Path,
    variants: &[String],
    settings: runner::bench::BenchSettings,
    backend: Backend,
    composed: bool,
    csv: Option<&std::path::Path>,
) -> Result<()> {
    let exp = LoadedExperiment::load(experiment)?;
    let names: Vec<String> = match variants {
        [] => exp.spec.variants.iter().map(|v| v.name.clone()).collect(),
        named => named.to_vec(),
    };
    let _composed = composed.then(sparsevd::ops::compose_on_this_thread);
    runner::cpu::prepare_for_training();
    let device = backend.device();
    let backend_name = backend_name(backend, composed);
    let description = backend.description();
    let commit = runner::provenance::git_commit(std::path::Path::new("."));
    let header =
        "bench,backend,device,batch,steps,median_ms,mean_ms,min_ms,steps_per_second,commit";
    let mut rows = Vec::new();
    for name in &names {
        let t = runner::bench::time_variant(&exp, name, settings, &device)?;
        println!(
            "{}  {backend_name}  batch {}  median {:.2} ms  mean {:.2} ms  min {:.2} ms  ({:.1} steps/s over {} steps)",
            t.bench,
            t.batch,
            t.median_ms,
            t.mean_ms,
            t.min_ms,
            t.steps_per_second(),
            t.steps
        );
        rows.push(format!(
            "{},{backend_name},\"{}\",{},{},{:.3},{:.3},{:.3},{:.2},{commit}",
            t.bench,
            description.replace('"', "'"),
            t.batch,
            t.steps,
            t.median_ms,
            t.mean_ms,
            t.min_ms,
            t.steps_per_second()
        ));
    }
    if let Some(path) = csv {
        use std::io::Write;
        let new = !path.exists();
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open {} for appending", path.display()))?;
        let mut text = if new {
            format!("{header}\n")
        } else {
            String::new()
        };
        text.extend(rows.iter().map(|r| format!("{r}\n")));
        file.write_all(text.as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))?;
        println!("appended {} rows to {}", rows.len(), path.display());
    }
    Ok(())
}

/// The backend as provenance and bench rows name it.
fn backend_name(backend: Backend, composed: bool) -> String {
    match composed {
        true => format!("{}-composed", backend.name()),
        false => backend.name().to_string(),
    }
}

fn run(args: RunArgs) -> Result<()> {
    let path = args
        .experiment
        .clone()
        .context("no experiment file given; try `harness experiments/lenet300.toml`")?;
    let exp = LoadedExperiment::load(&path)?;
    let _composed = args.composed.then(sparsevd::ops::compose_on_this_thread);
    let options = runner::RunOptions {
        only_variants: args.variants.clone(),
        only_seeds: args.seeds.clone(),
        force: args.force,
        epochs: args.epochs,
        ..run_options(
            args.device,
            args.composed,
            args.folders.data_dir.clone(),
            args.folders.results_dir.clone(),
        )
    };
    let summaries = if args.jobs > 1 {
        let runs = runner::selected_runs(&exp.spec, &options.only_variants, &options.only_seeds)?;
        // Fetched (and for CIFAR-10 whitened and cached) once, before the processes start.
        runner::load_data(&exp, &options.data_dir)?;
        let jobs = usize::try_from(args.jobs).unwrap_or(usize::MAX);
        let forced: Vec<_> = match args.force {
            true => runs
                .iter()
                .copied()
                .filter(|&run| {
                    runner::is_named(run, &exp.spec, &options.only_variants, &options.only_seeds)
                })
                .collect(),
            false => Vec::new(),
        };
        jobs::run(&exp, &runs, &forced, jobs, &child_args(&args, &path))?;
        runner::rewrite_comparison(&exp, &options.results_dir)?
    } else {
        runner::run_experiment(&exp, &options)?
    };
    if args.no_figures {
        return Ok(());
    }
    draw_figures(&exp, &options.results_dir, &args.folders.figures_dir)?;
    let dir = runner::experiment_dir(&exp, &options);
    for s in &summaries {
        let paper = match (s.paper_error_pct, s.paper_compression) {
            (Some(error), Some(compression)) => {
                format!("  paper: {error:.2}%, {compression:.1}×")
            }
            (Some(error), None) => format!("  paper: {error:.2}%"),
            _ => String::new(),
        };
        // A seed sweep's numbers are the mean over its finished runs.
        let over_seeds = match exp.spec.variant_index(&s.variant) {
            Some(i) if exp.spec.protocol_of(i).is_seed_sweep() => {
                let n = runner::seeds::finished_runs(&exp.spec, &dir, i)?.runs.len();
                format!(", mean of {n} seed{}", if n == 1 { "" } else { "s" })
            }
            _ => String::new(),
        };
        println!(
            "{:<12} test error {:.2}%  compression {:.1}×  ({} epochs{}{over_seeds}){paper}",
            s.variant,
            s.test_error_pct,
            s.compression,
            s.epochs,
            if s.shortened { ", shortened" } else { "" }
        );
    }
    println!("results in {}", dir.display());
    Ok(())
}

/// The arguments each run's process of `--jobs` takes besides its `--variant` and `--seed`:
/// everything of `args` that says how to run, nothing that selects.
fn child_args(args: &RunArgs, experiment: &std::path::Path) -> Vec<std::ffi::OsString> {
    let mut out: Vec<std::ffi::OsString> = vec![
        experiment.into(),
        "--device".into(),
        args.device.name().into(),
        "--results-dir".into(),
        args.folders.results_dir.clone().into(),
        "--figures-dir".into(),
        args.folders.figures_dir.clone().into(),
    ];
    if let Some(dir) = &args.folders.data_dir {
        out.extend(["--data-dir".into(), dir.clone().into()]);
    }
    if let Some(epochs) = args.epochs {
        out.extend(["--epochs".into(), epochs.to_string().into()]);
    }
    if args.composed {
        out.push("--composed".into());
    }
    out
}
