//! End to end with models trained in the test: `tiny` models overfit on a
//! scripted trajectory (laid out by `afm_format::layout`, roles by
//! `RoleTracker`, losses on the positions `afm_format::layout::label` assigns
//! to agents). The AFM, greedy, must then replay the chains itself: emit the
//! role tokens, call the tool, read the injected observation and answer
//! correctly. The MAS, with one model trained per agent on its own turns,
//! must do the same through its orchestrator. This checks that the
//! runtimes' prompts match the training layout.

mod common;
use afm_agents::mas::Mas;
use afm_agents::Task;
use afm_agents::{afm, RunOptions};
use afm_format::layout::{encode_trajectory, label};
use afm_format::{Step, StepKind, Trajectory};
use afm_model::{ForwardArgs, GptConfig, Model, Precision};
use afm_tokenizer::{Tokenizer, END, ROLE_NONE};
use common::*;
use tch::{nn, nn::OptimizerConfig, Tensor};

fn encode(t: &Tokenizer, task: &Task) -> Vec<u32> {
    let traj = afm_tasks::solve(task, &afm_tasks::AgentConfig::default()).unwrap();
    assert!(traj.success);
    let steps = traj
        .trajectory
        .iter()
        .map(|x| Step {
            agent: x.agent.clone(),
            kind: if x.output.is_some() {
                StepKind::Agent
            } else {
                StepKind::Observation
            },
            text: x.text().to_string(),
        })
        .collect();
    let rec = Trajectory {
        id: traj.id,
        task: traj.task,
        steps,
        success: None,
        score: None,
        answer: None,
        meta: None,
    };
    encode_trajectory(t, &rec).unwrap().tokens
}

/// Overfit `model` on `docs`, with loss on the targets whose owner passes
/// `keep` (role id of the owning agent), until the loss is below 0.01 or
/// `steps` steps are done. Returns the last loss.
fn overfit(model: &Model, docs: &[Vec<u32>], keep: impl Fn(u32) -> bool, steps: usize) -> f64 {
    let t = docs.iter().map(Vec::len).max().unwrap() - 1;
    let (mut x, mut y, mut r, mut w) = (vec![], vec![], vec![], vec![]);
    // The model is indexed by rows of its vocabulary (= ids without a
    // corpus vocabulary).
    let row = |id: u32| model.tokenizer.row(id).unwrap() as i64;
    for d in docs {
        let lab = label(d);
        for i in 0..t {
            x.push(row(*d.get(i).unwrap_or(&END)));
            y.push(row(*d.get(i + 1).unwrap_or(&END)));
            r.push(*lab.roles.get(i).unwrap_or(&ROLE_NONE) as i64);
            let owner = if i + 1 < d.len() { lab.owners[i] } else { 0 };
            w.push(if owner != 0 && keep(owner) { 1f32 } else { 0.0 });
        }
    }
    // The LM head runs only at the trained positions (`select`).
    let sel: Vec<i64> = (0..w.len() as i64)
        .filter(|&i| w[i as usize] > 0.0)
        .collect();
    let y: Vec<i64> = sel.iter().map(|&i| y[i as usize]).collect();
    let shape = [docs.len() as i64, t as i64];
    let dev = model.device();
    let x = Tensor::from_slice(&x).view(shape).to_device(dev);
    let y = Tensor::from_slice(&y).to_device(dev);
    let r = Tensor::from_slice(&r).view(shape).to_device(dev);
    let sel = Tensor::from_slice(&sel).to_device(dev);
    let mut opt = nn::Adam::default().build(&model.vs, 5e-3).unwrap();
    let mut last = f64::NAN;
    let t0 = std::time::Instant::now();
    for step in 0..steps {
        let args = ForwardArgs {
            tokens: &x,
            roles: Some(&r),
            positions: None,
            docs: None,
            select: Some(&sel),
        };
        let logits = model.gpt.forward(&args, Precision::F32, true);
        let loss = logits.cross_entropy_for_logits(&y);
        opt.backward_step(&loss);
        last = loss.double_value(&[]);
        if last < 0.01 {
            eprintln!(
                "fit in {} steps, {:?}, {} positions",
                step + 1,
                t0.elapsed(),
                sel.size()[0]
            );
            break;
        }
    }
    last
}

fn tiny(t: &Tokenizer, seed: i64) -> Model {
    let cfg = GptConfig::preset("tiny", t.n_vocab(), t.roles().n_roles()).unwrap();
    Model::new(cfg, t.clone(), afm_model::test_device(), seed).unwrap()
}

#[test]
fn trained_afm_and_mas_solve_their_tasks() {
    tch::set_num_threads(1);
    let t = tok();
    let tasks: Vec<Task> = tasks(30)
        .into_iter()
        .filter(|x| encode(&t, x).len() <= 48)
        .take(1)
        .collect();
    assert_eq!(tasks.len(), 1);
    trained_models_solve(&t, &tasks);
}

/// The same with a corpus vocabulary: models with rows only for the
/// data's tokens, and one of the task prompt's tokens left out so the
/// runtimes must encode it as bytes (byte fallback) to solve the task.
#[test]
fn trained_models_with_a_corpus_vocabulary_solve_their_tasks() {
    tch::set_num_threads(1);
    let full = tok();
    let tasks: Vec<Task> = tasks(30)
        .into_iter()
        .filter(|x| encode(&full, x).len() <= 40)
        .take(1)
        .collect();
    assert_eq!(tasks.len(), 1);
    let ids = encode(&full, &tasks[0]);
    let prompt = afm_format::layout::encode_task(&full, &tasks[0].prompt);
    let dropped = *prompt
        .iter()
        .find(|&&i| !full.is_special(i) && full.decode(&[i]).unwrap().len() > 1)
        .unwrap();
    let corpus = afm_tokenizer::CorpusVocab::from_ids(ids.into_iter().filter(|&i| i != dropped));
    let t = tok().with_corpus(corpus);
    assert!(t.n_vocab() < 400, "{}", t.n_vocab());
    assert!(t.row(dropped).is_none());
    assert!(encode(&t, &tasks[0]).len() > encode(&full, &tasks[0]).len());
    trained_models_solve(&t, &tasks);
}

fn trained_models_solve(t: &Tokenizer, tasks: &[Task]) {
    let t = t.clone();
    let docs: Vec<Vec<u32>> = tasks.iter().map(|x| encode(&t, x)).collect();
    let opts = RunOptions {
        max_new_tokens: 100,
        ..Default::default()
    };

    let model = tiny(&t, 5);
    let loss = overfit(&model, &docs, |_| true, 800);
    assert!(loss < 0.01, "AFM did not fit: loss {loss}");
    let runs = afm::run_batch(&model, tasks, &opts).unwrap();
    for r in &runs {
        assert!(r.success, "{r:#?}");
        assert_eq!(r.stats.calls, 1);
        assert_eq!(r.stats.tool_calls, 1);
        let agents: Vec<&str> = r.trajectory.iter().map(|x| x.agent.as_str()).collect();
        assert_eq!(agents, ["Planner", "Coder", "Interpreter", "Reviewer"]);
    }

    let models = ["Planner", "Coder", "Reviewer"]
        .into_iter()
        .enumerate()
        .map(|(i, agent)| {
            let m = tiny(&t, 10 + i as i64);
            let role = t.roles().role_id(agent).unwrap();
            let loss = overfit(&m, &docs, |owner| owner == role, 800);
            assert!(loss < 0.01, "{agent} did not fit: loss {loss}");
            (agent.to_string(), m)
        })
        .collect();
    let mas = Mas::from_models(models).unwrap();
    let mas_runs = mas.run_batch(tasks, &opts).unwrap();
    for (m, a) in mas_runs.iter().zip(&runs) {
        assert!(m.success, "{m:#?}");
        assert_eq!(m.stats.calls, 3);
        assert_eq!(m.trajectory, a.trajectory);
        assert!(m.stats.tokens_prefill > a.stats.tokens_prefill);
    }
}
