//! afm on PyTorch's stack (python/afm_dist): the export is exact in
//! transformers, afm_dist's step is afm's step, N processes train as one,
//! and the result comes back into afm.
//!
//! Each test builds a small prepared dataset (three agents, a tool, a
//! corpus vocabulary), trains `tiny` students with role embeddings, smeared
//! keys and smeared tokens (everything plain GPT-2 lacks), and drives
//! `python/tests/test_dist.py` and `python -m afm_dist.train` with the venv
//! python `cargo xtask test` passes as `AFM_TEST_PYTHON`.

mod common;

use afm_model::{ForwardArgs, Model, Precision};
use afm_tokenizer::{RoleTracker, Tokenizer, END, EOT, OBS, TASK};
use common::{afm, ok, s, write_agent_logs};
use std::path::{Path, PathBuf};
use std::process::Command;
use tch::{Device, Tensor};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Run the venv python with afm_dist importable; panics with its output
/// on failure. Returns stdout.
fn py(dir: &Path, args: &[&str]) -> String {
    let o = Command::new(common::python())
        .current_dir(dir)
        .args(args)
        .env("PYTHONPATH", root().join("python/afm_dist"))
        .env("HF_HOME", dir.join("hf"))
        .env("OMP_NUM_THREADS", "1")
        .output()
        .expect("running the venv python (set AFM_TEST_PYTHON or run `cargo xtask setup`)");
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    );
    assert!(o.status.success(), "python {args:?} failed:\n{out}\n{err}");
    out
}

fn test_dist(dir: &Path, args: &[&str]) -> String {
    let script = root().join("python/tests/test_dist.py");
    let mut a = vec![script.to_str().unwrap()];
    a.extend_from_slice(args);
    py(dir, &a)
}

/// `afm train` a tiny student with everything GPT-2 lacks.
fn train(prep: &Path, out: &Path, seed: u64, steps: usize, extra: &[&str]) {
    let (steps, seed) = (steps.to_string(), seed.to_string());
    let mut args = vec![
        "train",
        "--data",
        prep.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--max-steps",
        &steps,
        "--seed",
        &seed,
        "--batch-size",
        "4",
        "--warmup-steps",
        "2",
        "--lr",
        "3e-3",
        "--min-lr",
        "3e-4",
        "--eval-interval",
        "0",
        "--log-interval",
        "1",
        "--final-weights",
        "last",
        "--threads",
        "1",
        "--no-plots",
        "--no-progress",
        "--set",
        "snapshots=0",
    ];
    if !extra.contains(&"--init") {
        args.extend_from_slice(&[
            "--preset",
            "tiny",
            "--set",
            "shape.smear_keys=true",
            "--set",
            "shape.smear_tokens=true",
        ]);
    }
    args.extend_from_slice(extra);
    ok(&args);
}

struct Fixture {
    prep: PathBuf,
    trl: PathBuf,
    /// A trained student and its export.
    base: PathBuf,
    base_hf: PathBuf,
    /// Another trained model (another seed): the Coder's teacher.
    teacher: PathBuf,
    teacher_hf: PathBuf,
}

fn fixture(d: &Path) -> Fixture {
    let logs = d.join("logs.jsonl");
    write_agent_logs(&logs, 48);
    let prep = d.join("prep");
    ok(&[
        "prepare",
        "--input",
        &s(&logs),
        "--out",
        &s(&prep),
        "--seq-len",
        "96",
        "--val-fraction",
        "0.1",
        "--corpus-vocab",
        "--vocab-min-count",
        "3",
    ]);
    let trl = d.join("trl");
    ok(&[
        "export-sft",
        "--format",
        "trl",
        "--input",
        &s(&prep),
        "--out",
        &s(&trl),
    ]);
    let (base, teacher) = (d.join("base"), d.join("teacher"));
    train(&prep, &base, 0, 25, &[]);
    train(&prep, &teacher, 1, 25, &[]);
    let (base_hf, teacher_hf) = (d.join("base_hf"), d.join("teacher_hf"));
    for (from, to) in [(&base, &base_hf), (&teacher, &teacher_hf)] {
        ok(&[
            "export-hf",
            "--from",
            &s(&from.join("final")),
            "--out",
            &s(to),
        ]);
    }
    Fixture {
        prep,
        trl,
        base,
        base_hf,
        teacher,
        teacher_hf,
    }
}

/// afm's row logits of `tokens` (ids), with the given positions, roles
/// and documents, as `[T][rows]`.
fn afm_logits(
    m: &Model,
    tokens: &[u32],
    positions: Option<&[i64]>,
    roles: &[u32],
    docs: Option<&[i64]>,
) -> Vec<Vec<f32>> {
    let t = tokens.len() as i64;
    let rows: Vec<i64> = tokens
        .iter()
        .map(|&i| m.tokenizer.row(i).expect("a token with a row") as i64)
        .collect();
    let tok = Tensor::from_slice(&rows).view([1, t]);
    let rol = Tensor::from_slice(&roles.iter().map(|&r| r as i64).collect::<Vec<_>>()).view([1, t]);
    let pos = positions.map(|p| Tensor::from_slice(p).view([1, t]));
    let doc = docs.map(|d| Tensor::from_slice(d).view([1, t]));
    let args = ForwardArgs {
        tokens: &tok,
        roles: Some(&rol),
        positions: pos.as_ref(),
        docs: doc.as_ref(),
        select: None,
    };
    let l = tch::no_grad(|| m.gpt.try_forward(&args, Precision::F32, false)).unwrap();
    (0..t)
        .map(|i| Vec::<f32>::try_from(l.get(0).get(i)).unwrap())
        .collect()
}

fn agent_token(tok: &Tokenizer, name: &str) -> u32 {
    tok.role_token(name).unwrap()
}

/// The export of a trained model with role embeddings, smeared keys and
/// tokens and a corpus vocabulary gives afm's logits in transformers
/// (within 1e-4, f32), with roles given or derived from the tokens, on
/// packed rows, and greedy `generate` continues as `afm generate` does.
#[test]
fn export_is_exact_in_transformers() {
    let d = tempfile::tempdir().unwrap();
    let f = fixture(d.path());
    let m = Model::load(&f.base.join("final"), Device::Cpu).unwrap();
    assert!(m.tokenizer.corpus().is_some() && m.config.smear_keys && m.config.smear_tokens);
    assert!(m.uses_role_embeddings() && !m.is_plain_gpt2());
    let tk = &m.tokenizer;
    let enc = |text: &str| tk.encode(text);
    let mut traj = vec![TASK];
    traj.extend(enc("Task 3: what is 4 times 2?"));
    traj.push(agent_token(tk, "Planner"));
    traj.extend(enc("Multiply 4 by 2."));
    traj.push(agent_token(tk, "Coder"));
    traj.extend(enc("print(4 * 2)"));
    traj.push(OBS);
    traj.extend(enc("8"));
    traj.push(agent_token(tk, "Reviewer"));
    traj.extend(enc("ANSWER: 8"));
    traj.push(END);
    let roles = RoleTracker::roles_of(&traj);
    let nb = tk.corpus().map_or(0, |c| c.n_bpe() as u32);
    let row_ids: Vec<u32> = (0..m.config.vocab_size as u32)
        .map(|r| tk.id_of_row(r).unwrap_or(EOT + r - nb))
        .collect();
    // A packed row: the trajectory's second half as its own document
    // (positions restart, explicit roles carried over), then a prompt.
    let half = traj.len() / 2;
    let mut packed: Vec<u32> = traj[half..].to_vec();
    let mut p_roles: Vec<u32> = roles[half..].to_vec();
    let mut p_pos: Vec<i64> = (0..packed.len() as i64).collect();
    let mut p_docs: Vec<i64> = vec![0; packed.len()];
    let second = traj[..half].to_vec();
    p_roles.extend(RoleTracker::roles_of(&second));
    p_pos.extend(0..second.len() as i64);
    p_docs.extend(vec![1; second.len()]);
    packed.extend(second);
    // afm's greedy continuation of the prompt up to the Coder's turn.
    let prompt_len = traj.iter().position(|&x| x == OBS).unwrap();
    let prompt: Vec<String> = traj[..prompt_len].iter().map(|x| x.to_string()).collect();
    let (okd, stdout, err) = afm(&[
        "generate",
        "--checkpoint",
        &s(&f.base.join("final")),
        "--prompt-tokens",
        &prompt.join(","),
        "--max-new-tokens",
        "12",
        "--stop-tokens",
        "none",
        "--json",
    ]);
    assert!(okd, "{err}");
    let g: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let continuation = g["tokens"].clone();
    assert_eq!(continuation.as_array().unwrap().len(), 12, "{g}");
    let cases = serde_json::json!([
        {
            "name": "trajectory, roles derived from the tokens",
            "tokens": traj,
            "logits": afm_logits(&m, &traj, None, &roles, None),
            "row_ids": row_ids,
        },
        {
            "name": "packed row, explicit positions and roles",
            "tokens": packed,
            "positions": p_pos,
            "roles": p_roles,
            "logits": afm_logits(&m, &packed, Some(&p_pos), &p_roles, Some(&p_docs)),
            "row_ids": row_ids,
        },
        {
            "name": "prompt and greedy continuation",
            "tokens": &traj[..prompt_len],
            "logits": afm_logits(&m, &traj[..prompt_len], None, &roles[..prompt_len], None),
            "row_ids": row_ids,
            "continuation": continuation,
        },
    ]);
    let expected = d.path().join("expected.json");
    std::fs::write(&expected, cases.to_string()).unwrap();
    let out = test_dist(
        d.path(),
        &[
            "logits",
            "--export",
            &s(&f.base_hf),
            "--expected",
            &s(&expected),
        ],
    );
    assert!(out.contains("3 cases"), "{out}");
    eprintln!("{out}");
    // And back: importing the export gives afm's weights, bit for bit.
    let back = d.path().join("back");
    ok(&["import-hf", "--from", &s(&f.base_hf), "--out", &s(&back)]);
    let again = Model::load(&back, Device::Cpu).unwrap();
    assert_eq!(again.config, m.config);
    assert_eq!(again.tokenizer.to_json(), m.tokenizer.to_json());
    for ((na, a), (nb, b)) in again.named_parameters().iter().zip(m.named_parameters()) {
        assert_eq!(na, &nb);
        assert!(a.equal(&b), "{na} differs after export + import");
    }
}

/// `afm train --init BASE` and `python -m afm_dist.train` from BASE's
/// export, on the same data and config, log the same loss, per-agent
/// losses and gradient norm at steps 1 and 2 (relative 1e-4, f32): without
/// teachers, and with the Coder distilled from a teacher.
#[test]
fn afm_dist_steps_match_afm_train() {
    let d = tempfile::tempdir().unwrap();
    let f = fixture(d.path());
    let init = s(&f.base.join("final"));
    let teacher = format!("Coder={}", s(&f.teacher.join("final")));
    let teacher_hf = format!("Coder={}", s(&f.teacher_hf));
    for (name, extra_afm, extra_py) in [
        ("plain", vec![], vec![]),
        (
            "distil",
            vec!["--teacher", teacher.as_str()],
            vec!["--teacher", teacher_hf.as_str()],
        ),
    ] {
        let run = d.path().join(format!("afm-{name}"));
        let mut extra = vec!["--init", init.as_str()];
        extra.extend(extra_afm);
        train(&f.prep, &run, 3, 2, &extra);
        let out = d.path().join(format!("py-{name}"));
        let mut args = vec!["-m", "afm_dist.train", "--config"];
        let cfg = s(&run.join("train_config.toml"));
        let (model, data, o) = (s(&f.base_hf), s(&f.trl), s(&out));
        args.extend_from_slice(&[
            &cfg,
            "--model",
            &model,
            "--data",
            &data,
            "--out",
            &o,
            "--threads",
            "1",
        ]);
        args.extend(extra_py);
        py(d.path(), &args);
        let m = test_dist(
            d.path(),
            &[
                "metrics",
                "--a",
                &s(&run.join("metrics.jsonl")),
                "--b",
                &s(&out.join("metrics.jsonl")),
                "--steps",
                "2",
            ],
        );
        eprintln!("{name}: {m}");
    }
}

/// Two processes (`torchrun --nproc_per_node 2`, gloo), DDP and FSDP, give
/// the loss curve of one process with the same global batch; the result
/// comes back with `afm import-hf` (bit for bit) and `afm eval` runs it.
#[test]
fn two_processes_train_as_one_and_come_back() {
    let d = tempfile::tempdir().unwrap();
    let f = fixture(d.path());
    let run = d.path().join("cfg-run");
    train(&f.prep, &run, 3, 1, &["--init", &s(&f.base.join("final"))]);
    let cfg = s(&run.join("train_config.toml"));
    let (model, data) = (s(&f.base_hf), s(&f.trl));
    let one = d.path().join("one");
    py(
        d.path(),
        &[
            "-m",
            "afm_dist.train",
            "--config",
            &cfg,
            "--model",
            &model,
            "--data",
            &data,
            "--out",
            &s(&one),
            "--max-steps",
            "4",
            "--threads",
            "1",
        ],
    );
    for (name, extra) in [("ddp", None), ("fsdp", Some("--fsdp"))] {
        let out = d.path().join(name);
        let o = s(&out);
        let mut args = vec![
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            if extra.is_some() { "29531" } else { "29530" },
            "-m",
            "afm_dist.train",
            "--config",
            &cfg,
            "--model",
            &model,
            "--data",
            &data,
            "--out",
            &o,
            "--max-steps",
            "4",
            "--threads",
            "1",
        ];
        args.extend(extra);
        py(d.path(), &args);
        let m = test_dist(
            d.path(),
            &[
                "metrics",
                "--a",
                &s(&one.join("metrics.jsonl")),
                "--b",
                &s(&out.join("metrics.jsonl")),
                "--steps",
                "4",
            ],
        );
        eprintln!("{name}: {m}");
    }
    // Back into afm: import is exact, and afm eval runs the model.
    let ck = d.path().join("ck");
    ok(&[
        "import-hf",
        "--from",
        &s(&d.path().join("ddp/final")),
        "--out",
        &s(&ck),
    ]);
    let re = d.path().join("re");
    ok(&["export-hf", "--from", &s(&ck), "--out", &s(&re)]);
    test_dist(
        d.path(),
        &[
            "same-weights",
            "--a",
            &s(&d.path().join("ddp/final")),
            "--b",
            &s(&re),
        ],
    );
    let tasks = root().join("datasets/tasks/test.jsonl");
    let (okd, stdout, err) = afm(&[
        "eval",
        "--checkpoint",
        &s(&ck),
        "--tasks",
        &s(&tasks),
        "--limit",
        "2",
        "--max-new-tokens",
        "24",
        "--json",
    ]);
    assert!(okd, "{err}");
    let r: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(r["tasks"], 2, "{r}");
    assert!(r["success_rate"].is_number(), "{r}");
}
