//! libtorch set-up: one venv with `torch==2.13.0`, cached outside the checkout.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The libtorch version tch 0.26 is built against.
pub const TORCH_VERSION: &str = "2.13.0";

/// Workspace root (the parent of `xtask/`).
pub fn root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().map(Path::to_path_buf).unwrap_or(here)
}

/// The cargo target directory this checkout builds into.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => {
            let d = PathBuf::from(d);
            if d.is_absolute() {
                d
            } else {
                root().join(d)
            }
        }
        None => root().join("target"),
    }
}

/// Directory holding the cached torch venv.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("AFM_TORCH_HOME") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("afm");
    }
    match std::env::var_os("HOME") {
        Some(h) => PathBuf::from(h).join(".cache").join("afm"),
        None => root().join("target").join("afm-cache"),
    }
}

/// The venv's python, for scripts that need torch/transformers (benches/compare_hf.py).
pub fn venv_python() -> PathBuf {
    cache_dir()
        .join(format!("torch-{TORCH_VERSION}"))
        .join("bin")
        .join("python")
}

/// Run a command to completion; an error names the command and its status.
pub fn run(cmd: &mut Command) -> Result<(), String> {
    let shown = format!("{cmd:?}");
    let status = cmd
        .status()
        .map_err(|e| format!("could not start {shown}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{shown} failed with {status}"))
    }
}

fn looks_like_libtorch(dir: &Path) -> bool {
    dir.join("lib").is_dir() && dir.join("include").is_dir()
}

/// Install (once) and link libtorch. Returns the libtorch directory.
pub fn setup() -> Result<PathBuf, String> {
    let ours = root().join("target").join("libtorch");
    let libtorch = match std::env::var_os("LIBTORCH").map(PathBuf::from) {
        // A LIBTORCH set by the user (not the one .cargo/config.toml gives us).
        Some(user) if user != ours && user != target_dir().join("libtorch") => {
            if !looks_like_libtorch(&user) {
                return Err(format!(
                    "LIBTORCH={} has no lib/ and include/; unset it to let setup install torch {TORCH_VERSION}",
                    user.display()
                ));
            }
            eprintln!(
                "xtask: using LIBTORCH={} from the environment",
                user.display()
            );
            user
        }
        _ => install_torch_venv()?,
    };
    for link_dir in [root().join("target"), target_dir()] {
        link(&libtorch, &link_dir.join("libtorch"))?;
    }
    Ok(libtorch)
}

/// Python packages the tests need in the venv (import name, pip name):
/// `python/tests/test_trl_export.py` loads afm's TRL export with `datasets`,
/// reads the shards with `numpy` and runs TRL's padding-free collator;
/// `python/tests/test_serve.py` uses `openai`.
/// Pinned to the versions the test was written against (trl brings
/// transformers and accelerate).
pub const PY_PACKAGES: [(&str, &str); 5] = [
    // Builds python/afm_dist's editable install (`ensure_afm_dist`).
    ("setuptools", "setuptools"),
    ("numpy", "numpy"),
    ("datasets", "datasets==5.2.0"),
    ("trl", "trl==1.16.0"),
    // `python/tests/test_serve.py` drives `afm serve` with the official
    // client (it brings httpx).
    ("openai", "openai==3.57.0"),
];

/// Make every [`PY_PACKAGES`] importable by [`venv_python`]: the missing
/// ones are pip-installed, then imported. Idempotent and independent of the
/// torch marker, so an existing venv gets them too. Run by the `setup` and
/// `test` verbs only (the others need no Python, and a machine without
/// network must still run them). When `LIBTORCH` comes from the environment
/// and the venv is not there, it is installed first (torch included: trl
/// and the test need it).
pub fn ensure_python_packages() -> Result<(), String> {
    let python = venv_python();
    let venv = cache_dir().join(format!("torch-{TORCH_VERSION}"));
    if !venv.join(".afm-complete").exists() {
        // trl needs torch: the venv gets the torch tch links against first.
        install_torch_venv()?;
    }
    // find_spec does not import: when nothing is missing the check costs
    // one python start-up, not importing trl (and torch) every time. Run
    // outside the checkout: its `datasets/` folder would pass for the
    // `datasets` package (python puts the working directory on sys.path).
    let out = Command::new(&python)
        .current_dir(cache_dir())
        .args([
            "-c",
            "import importlib.util, sys; print(' '.join(m for m in sys.argv[1:] if importlib.util.find_spec(m) is None))",
        ])
        .args(PY_PACKAGES.map(|(m, _)| m))
        .output()
        .map_err(|e| format!("cannot run {}: {e}", python.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} failed: {}",
            python.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let missing: Vec<&str> = text.split_whitespace().collect();
    if missing.is_empty() {
        return ensure_afm_dist(&python);
    }
    let pip: Vec<&str> = PY_PACKAGES
        .iter()
        .filter(|(m, _)| missing.contains(m))
        .map(|(_, p)| *p)
        .collect();
    eprintln!(
        "xtask: installing {} into {} (once)",
        pip.join(" "),
        python.display()
    );
    run(Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--quiet",
        ])
        .args(&pip)
        // Keep the torch that tch links against.
        .arg(format!("torch=={TORCH_VERSION}")))?;
    let import = format!("import {}", missing.join(", "));
    run(Command::new(&python)
        .current_dir(cache_dir())
        .args(["-c", &import]))?;
    ensure_afm_dist(&python)
}

/// Install this checkout's `python/afm_dist` into the venv (editable, no
/// dependencies: torch, transformers and safetensors are already there),
/// unless the venv already imports it from here.
fn ensure_afm_dist(python: &Path) -> Result<(), String> {
    let src = root().join("python").join("afm_dist");
    let out = Command::new(python)
        .current_dir(cache_dir())
        .args([
            "-c",
            "import importlib.util, os, sys; s = importlib.util.find_spec('afm_dist'); \
             print('ok' if s and s.origin and os.path.realpath(s.origin).startswith(os.path.realpath(sys.argv[1])) else 'missing')",
        ])
        .arg(&src)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", python.display()))?;
    if String::from_utf8_lossy(&out.stdout).trim() == "ok" {
        return Ok(());
    }
    eprintln!(
        "xtask: installing {} into {}",
        src.display(),
        python.display()
    );
    run(Command::new(python)
        .current_dir(cache_dir())
        .args([
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--editable",
        ])
        .arg(&src))
}

fn install_torch_venv() -> Result<PathBuf, String> {
    let venv = cache_dir().join(format!("torch-{TORCH_VERSION}"));
    let marker = venv.join(".afm-complete");
    let python = venv.join("bin").join("python");
    if !marker.exists() {
        eprintln!(
            "xtask: installing torch=={TORCH_VERSION} from PyPI into {} (once; about 5 GB)",
            venv.display()
        );
        std::fs::create_dir_all(cache_dir())
            .map_err(|e| format!("cannot create {}: {e}", cache_dir().display()))?;
        if !python.exists() {
            let base = std::env::var("AFM_PYTHON").unwrap_or_else(|_| "python3".to_string());
            run(Command::new(&base).arg("-m").arg("venv").arg(&venv))?;
        }
        run(Command::new(&python).args([
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--quiet",
            &format!("torch=={TORCH_VERSION}"),
            "numpy",
        ]))?;
    }
    let out = Command::new(&python)
        .args([
            "-c",
            "import torch, os; print(torch.__version__); print(os.path.dirname(torch.__file__))",
        ])
        .output()
        .map_err(|e| format!("cannot run {}: {e}", python.display()))?;
    if !out.status.success() {
        let _ = std::fs::remove_file(&marker);
        return Err(format!(
            "torch in {} does not import: {}",
            venv.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let version = lines.next().unwrap_or_default().trim().to_string();
    let dir = PathBuf::from(lines.next().unwrap_or_default().trim());
    if !version.starts_with(TORCH_VERSION) {
        return Err(format!(
            "{} holds torch {version}, tch 0.26 needs {TORCH_VERSION}; delete the folder and rerun",
            venv.display()
        ));
    }
    if !looks_like_libtorch(&dir) {
        return Err(format!("{} has no lib/ and include/", dir.display()));
    }
    std::fs::write(&marker, format!("{version}\n"))
        .map_err(|e| format!("cannot write {}: {e}", marker.display()))?;
    Ok(dir)
}

fn link(libtorch: &Path, at: &Path) -> Result<(), String> {
    if std::fs::read_link(at).ok().as_deref() == Some(libtorch) {
        return Ok(());
    }
    if let Some(parent) = at.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    }
    if at.symlink_metadata().is_ok() {
        std::fs::remove_file(at).map_err(|e| format!("cannot replace {}: {e}", at.display()))?;
    }
    #[cfg(unix)]
    std::os::unix::fs::symlink(libtorch, at).map_err(|e| {
        format!(
            "cannot link {} -> {}: {e}",
            at.display(),
            libtorch.display()
        )
    })?;
    #[cfg(not(unix))]
    return Err("only unix-like systems are supported by xtask setup".into());
    eprintln!("xtask: {} -> {}", at.display(), libtorch.display());
    Ok(())
}
