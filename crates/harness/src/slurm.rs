//! `harness slurm`: an experiment's runs as Slurm job arrays, for sweeps that outgrow one
//! machine. One array per stage level (level 0: runs that start from nothing; level k: runs that
//! start from a level k − 1 run), one array task per (variant, seed), each level held with
//! `--dependency=afterok` on the level before; a last job redraws the comparison and figures.
//! Every task runs this same binary on the same experiment file with `--variant` and `--seed`,
//! writing into one results folder, which must be on a file system every node sees.

use anyhow::{Context, Result};
use runner::output::write_atomic;
use runner::spec::{LoadedExperiment, Run};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// What the scripts ask of Slurm, and where the tasks read and write.
pub struct SlurmSettings {
    pub partition: Option<String>,
    pub gres: Option<String>,
    pub time: Option<String>,
    pub cpus_per_task: usize,
    /// The `--device` each task trains on.
    pub device: String,
    /// The `--epochs` each task trains (a shortened run).
    pub epochs: Option<usize>,
    pub data_dir: PathBuf,
    pub results_dir: PathBuf,
    pub figures_dir: PathBuf,
}

/// The scripts written, in the order `submit.sh` submits them.
pub struct Scripts {
    pub stages: Vec<PathBuf>,
    pub report: PathBuf,
    pub submit: PathBuf,
}

/// The stage level of each run: 0 for a run that starts from nothing, else one more than the
/// level of the run it starts from.
pub fn levels(exp: &LoadedExperiment, runs: &[Run]) -> Vec<Vec<Run>> {
    let level = |run: Run| {
        let mut level = 0;
        let mut at = run;
        while let Some(source) = exp.spec.source_run(at) {
            level += 1;
            at = source;
        }
        level
    };
    let mut levels: Vec<Vec<Run>> = Vec::new();
    for &run in runs {
        let l = level(run);
        if levels.len() <= l {
            levels.resize(l + 1, Vec::new());
        }
        levels[l].push(run);
    }
    levels.retain(|l| !l.is_empty());
    levels
}

/// Write the sbatch scripts of `runs` and `submit.sh` into `<results>/<experiment>/slurm/`.
pub fn write(exp: &LoadedExperiment, runs: &[Run], settings: &SlurmSettings) -> Result<Scripts> {
    let absolute = |p: &Path| -> Result<PathBuf> {
        std::path::absolute(p).with_context(|| format!("{}: cannot make it absolute", p.display()))
    };
    let exe = std::env::current_exe().context("cannot find the harness binary")?;
    let experiment = absolute(&exp.path)?;
    let results = absolute(&settings.results_dir)?;
    let (data, figures) = (
        absolute(&settings.data_dir)?,
        absolute(&settings.figures_dir)?,
    );
    let workdir = std::env::current_dir().context("no working folder")?;
    let dir = results.join(&exp.spec.name).join("slurm");
    std::fs::create_dir_all(dir.join("logs"))
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let name = &exp.spec.name;
    let header = |job: &str, tasks: Option<usize>| {
        let mut s = format!("#!/bin/bash\n#SBATCH --job-name={name}-{job}\n");
        match tasks {
            Some(n) => {
                let _ = writeln!(s, "#SBATCH --array=0-{}", n - 1);
                let _ = writeln!(s, "#SBATCH --output={}/logs/{job}_%a.out", dir.display());
            }
            None => {
                let _ = writeln!(s, "#SBATCH --output={}/logs/{job}.out", dir.display());
            }
        }
        let _ = writeln!(s, "#SBATCH --cpus-per-task={}", settings.cpus_per_task);
        for (key, value) in [
            ("partition", &settings.partition),
            ("gres", &settings.gres),
            ("time", &settings.time),
        ] {
            if let Some(value) = value {
                let _ = writeln!(s, "#SBATCH --{key}={value}");
            }
        }
        let _ = writeln!(
            s,
            "set -euo pipefail\ncd {}\nexport RAYON_NUM_THREADS=\"${{SLURM_CPUS_PER_TASK:-{}}}\"",
            quoted(&workdir),
            settings.cpus_per_task
        );
        s
    };
    let mut stages = Vec::new();
    for (level, runs) in levels(exp, runs).iter().enumerate() {
        let job = format!("stage{level}");
        let mut s = header(&job, Some(runs.len()));
        s.push_str("# One array task per (variant, seed).\ncase \"$SLURM_ARRAY_TASK_ID\" in\n");
        for (task, run) in runs.iter().enumerate() {
            let variant = &exp.spec.variants[run.variant].name;
            let _ = writeln!(s, "  {task}) VARIANT={variant}; SEED={} ;;", run.seed);
        }
        s.push_str(
            "  *) echo \"no run for array task $SLURM_ARRAY_TASK_ID\" >&2; exit 1 ;;\nesac\n",
        );
        let _ = write!(
            s,
            "exec {} run {} --variant \"$VARIANT\" --seed \"$SEED\" --device {} --data-dir {} --results-dir {} --no-figures",
            quoted(&exe),
            quoted(&experiment),
            settings.device,
            quoted(&data),
            quoted(&results)
        );
        if let Some(epochs) = settings.epochs {
            let _ = write!(s, " --epochs {epochs}");
        }
        s.push('\n');
        let path = dir.join(format!("{job}.sbatch"));
        write_atomic(&path, s.as_bytes())?;
        stages.push(path);
    }
    let mut s = header("report", None);
    let _ = writeln!(
        s,
        "exec {} figures {} --results-dir {} --figures-dir {}",
        quoted(&exe),
        quoted(&experiment),
        quoted(&results),
        quoted(&figures)
    );
    let report = dir.join("report.sbatch");
    write_atomic(&report, s.as_bytes())?;
    let submit = dir.join("submit.sh");
    write_atomic(&submit, submit_script(&stages).as_bytes())?;
    make_executable(&submit)?;
    Ok(Scripts {
        stages,
        report,
        submit,
    })
}

/// `submit.sh`: each stage's array after the one before it succeeded, the report after all;
/// prints the job ids, one per line.
fn submit_script(stages: &[PathBuf]) -> String {
    let mut s = String::from(
        "#!/bin/bash\n# Submits the stages in order; each waits for the whole array before it (afterok).\nset -euo pipefail\ncd \"$(dirname \"$0\")\"\n",
    );
    let mut all = Vec::new();
    for (level, stage) in stages.iter().enumerate() {
        let file = stage
            .file_name()
            .map_or_else(String::new, |f| f.to_string_lossy().into());
        let dependency = match level {
            0 => String::new(),
            _ => format!(" --dependency=afterok:$job{}", level - 1),
        };
        let _ = writeln!(s, "job{level}=$(sbatch --parsable{dependency} {file})");
        let _ = writeln!(s, "echo \"$job{level}\"");
        all.push(format!("$job{level}"));
    }
    let _ = writeln!(
        s,
        "report=$(sbatch --parsable --dependency=afterok:{} report.sbatch)\necho \"$report\"",
        all.join(":")
    );
    s
}

/// Run `submit.sh`; the job ids it printed.
pub fn submit(scripts: &Scripts) -> Result<Vec<String>> {
    let output = std::process::Command::new("bash")
        .arg(&scripts.submit)
        .output()
        .context("cannot run bash for submit.sh")?;
    anyhow::ensure!(
        output.status.success(),
        "{}: sbatch failed: {}",
        scripts.submit.display(),
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect())
}

/// `path` in single quotes for bash.
fn quoted(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', r"'\''"))
}

fn make_executable(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("cannot make {} executable", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_stage_waits_for_the_one_before_and_the_report_for_all() {
        let s = submit_script(&[
            PathBuf::from("/x/stage0.sbatch"),
            PathBuf::from("/x/stage1.sbatch"),
        ]);
        assert!(s.contains("job0=$(sbatch --parsable stage0.sbatch)"), "{s}");
        assert!(
            s.contains("job1=$(sbatch --parsable --dependency=afterok:$job0 stage1.sbatch)"),
            "{s}"
        );
        assert!(
            s.contains("--dependency=afterok:$job0:$job1 report.sbatch"),
            "{s}"
        );
    }

    #[test]
    fn quoting_survives_a_quote_in_a_path() {
        assert_eq!(quoted(Path::new("/a b/it's")), r"'/a b/it'\''s'");
    }
}
