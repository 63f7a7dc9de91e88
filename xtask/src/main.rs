//! `cargo xtask <verb>`: the project's runner (matklad's xtask pattern).
//!
//! Dependency-light on purpose: it only uses `std`, so it builds on a fresh
//! machine before libtorch exists. Every verb first runs `setup`, which
//! installs libtorch (PyPI's `torch==2.13.0` wheel, the version tch 0.26
//! needs) once into a cache outside the checkout and links
//! `target/libtorch` to it. `.cargo/config.toml` points `LIBTORCH` there and
//! sets an rpath, so plain `cargo build/test/run/bench` work afterwards.

mod fuzz;
mod setup;
mod verbs;

use std::process::ExitCode;

const HELP: &str = "\
cargo xtask <verb> [args]

verbs:
  setup              install libtorch (torch==2.13.0 from PyPI) into the cache and link target/libtorch;
                     make numpy, datasets and trl importable in that venv (pip-installs what is missing)
  test [args]        setup, then every test: cargo test --workspace [args] (AFM_TEST_PYTHON = the venv's python)
  pipeline [args]    setup, build release, then the full afm pipeline (see README); args go to `afm pipeline`
  bench [args]       setup, then cargo bench [args]
  compare            setup, install transformers into the torch venv, run benches/compare_hf.py
  ablation [args]    setup, build release, then `afm ablation` [args]
  lint               cargo fmt --check and cargo clippy -D warnings
  fuzz [--minutes N] every cargo-fuzz target in fuzz/ for N minutes in all (default 1); needs a
                     nightly toolchain (says so and fails without one); installs cargo-fuzz once
  gpu-smoke          on a CUDA machine: setup, the afm-model/afm-train/afm-agents tests (release,
                     AFM_TEST_DEVICE=cuda), then a short `afm pipeline --device cuda --name gpu-smoke`;
                     prints the seconds of each phase; fails at once if nvidia-smi -L lists no GPU

environment:
  AFM_TORCH_HOME     where the torch venv is cached (default: $XDG_CACHE_HOME/afm or ~/.cache/afm)
  LIBTORCH           use this libtorch instead (a directory holding lib/ and include/)
  AFM_PYTHON         the python used to create the venv (default: python3)
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(verb) = args.first() else {
        eprint!("{HELP}");
        return ExitCode::from(2);
    };
    let rest = &args[1..];
    let result = match verb.as_str() {
        "setup" => setup::setup().and_then(|_| setup::ensure_python_packages()),
        "test" => verbs::test(rest),
        "pipeline" => verbs::pipeline(rest),
        "bench" => verbs::bench(rest),
        "compare" => verbs::compare(rest),
        "ablation" => verbs::ablation(rest),
        "lint" => verbs::lint(),
        "gpu-smoke" => verbs::gpu_smoke(rest),
        "fuzz" => fuzz::fuzz(rest),
        "help" | "-h" | "--help" => {
            print!("{HELP}");
            Ok(())
        }
        other => Err(format!("unknown verb `{other}`\n\n{HELP}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e}");
            ExitCode::FAILURE
        }
    }
}
