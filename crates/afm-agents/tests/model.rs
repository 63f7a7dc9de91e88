//! Both runtimes on real `tiny` models (random weights, CPU): batched
//! decoding equals one-at-a-time decoding under greedy, the MAS runs end to
//! end, and a tool call's observation goes through the real KV-cache
//! decoder.

mod common;
use afm_agents::mas::Mas;
use afm_agents::ModelLm;
use afm_agents::{afm, RunOptions};
use afm_agents::{Lm, Policy, Session};
use afm_model::{GptConfig, Model, Precision, SamplingConfig};
use afm_tokenizer::Tokenizer;
use common::*;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

fn tiny(seed: i64) -> Model {
    // One intra-op thread: tests run side by side on a 2-core machine and
    // spinning libtorch thread pools slow each other down.
    tch::set_num_threads(1);
    let t = tok();
    let cfg = GptConfig::preset("tiny", t.n_vocab(), t.roles().n_roles()).unwrap();
    Model::new(cfg, t, afm_model::test_device(), seed).unwrap()
}

#[test]
fn afm_batched_equals_sequential_greedy() {
    let model = tiny(1);
    let tasks = tasks(5);
    let opts = RunOptions {
        max_new_tokens: 24,
        ..Default::default()
    };
    let one = afm::run_batch(&model, &tasks, &opts).unwrap();
    let three = afm::run_batch(
        &model,
        &tasks,
        &RunOptions {
            batch: 3,
            ..opts.clone()
        },
    )
    .unwrap();
    for r in &one {
        assert_eq!(r.stats.calls, 1);
        assert_eq!(
            r.stats.tokens_prefill,
            1 + seg(&model.tokenizer, &r.task).len()
                + r.trajectory
                    .iter()
                    .filter_map(|x| x.observation.as_ref())
                    .map(|o| seg(&model.tokenizer, o).len())
                    .sum::<usize>()
        );
        assert!(r.stats.tokens_decode >= 1 && r.stats.tokens_decode <= 24);
    }
    assert_eq!(strip_timing(one), strip_timing(three));
}

/// The runtimes' greedy choice (argmax on the device) equals the model
/// crate's own greedy generation.
#[test]
fn greedy_session_matches_afm_model_generate() {
    let model = tiny(7);
    let t = model.tokenizer.clone();
    let prompts: Vec<Vec<u32>> = tasks(3)
        .iter()
        .map(|x| afm_format::layout::encode_task(&t, &x.prompt))
        .collect();
    let want = afm_model::generate(
        &model,
        &prompts,
        20,
        &[],
        &SamplingConfig::greedy(),
        Precision::F32,
    )
    .unwrap();
    let lm = ModelLm::new(&model, Precision::F32, SamplingConfig::greedy());
    let mut sess = lm.start(prompts.len()).unwrap();
    sess.feed(&prompts.iter().cloned().enumerate().collect::<Vec<_>>())
        .unwrap();
    let rows: Vec<usize> = (0..prompts.len()).collect();
    let mut got = vec![vec![]; prompts.len()];
    for _ in 0..20 {
        let next = sess.sample(&rows).unwrap();
        for (g, &x) in got.iter_mut().zip(&next) {
            g.push(x);
        }
        sess.feed(
            &next
                .iter()
                .map(|&x| vec![x])
                .enumerate()
                .collect::<Vec<_>>(),
        )
        .unwrap();
    }
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g, &w.tokens);
    }
}

#[test]
fn mas_runs_end_to_end_and_batches_equal_sequential() {
    let mas = Mas::from_models(vec![
        ("Planner".into(), tiny(1)),
        ("Coder".into(), tiny(2)),
        ("Reviewer".into(), tiny(3)),
    ])
    .unwrap();
    let tasks = tasks(4);
    let opts = RunOptions {
        max_new_tokens: 12,
        ..Default::default()
    };
    let one = mas.run_batch(&tasks, &opts).unwrap();
    let four = mas
        .run_batch(
            &tasks,
            &RunOptions {
                batch: 4,
                ..opts.clone()
            },
        )
        .unwrap();
    for r in &one {
        assert_eq!(r.runtime, "mas");
        assert!(r.stats.calls >= 1);
        // The first call alone prefills `<|task|>` + prompt + `<|agent:Planner|>`.
        assert!(r.stats.tokens_prefill >= 2 + seg(&mas.models()[0].1.tokenizer, &r.task).len());
        assert!(!r.success || r.answer.is_some());
    }
    assert_eq!(strip_timing(one), strip_timing(four));
    // A missing agent or an unknown one is an error, not a panic.
    assert!(Mas::parse_spec("Planner=a,Coder=b").is_err());
    assert!(Mas::parse_spec("Planner=a,Coder=b,Reviewer=c,Critic=d").is_err());
    assert_eq!(
        Mas::parse_spec("Planner=a, Coder=b ,Reviewer=c")
            .unwrap()
            .len(),
        3
    );
}

/// A real decoder whose choices are overridden by a policy: the runtime's
/// feeds (prompt, sampled tokens, injected observations) all go through the
/// real KV cache, so its row lengths check the accounting.
struct Forced<'a> {
    inner: ModelLm<'a>,
    policy: Policy,
    /// What the real model would have chosen (greedy), per row context
    /// start: checks the real decoder's logits under mixed feeds.
    log: Log,
}

type Log = Arc<Mutex<HashMap<Vec<u32>, Vec<u32>>>>;

struct ForcedSession<'a> {
    inner: Box<dyn Session + 'a>,
    log: Log,
    policy: Policy,
    fed: Vec<Vec<u32>>,
    queue: Vec<Vec<u32>>,
}

impl Lm for Forced<'_> {
    fn tokenizer(&self) -> &Tokenizer {
        self.inner.tokenizer()
    }
    fn n_ctx(&self) -> usize {
        self.inner.n_ctx()
    }
    fn start(&self, batch: usize) -> anyhow::Result<Box<dyn Session + '_>> {
        Ok(Box::new(ForcedSession {
            inner: self.inner.start(batch)?,
            log: self.log.clone(),
            policy: self.policy.clone(),
            fed: vec![vec![]; batch],
            queue: vec![vec![]; batch],
        }))
    }
}

impl Session for ForcedSession<'_> {
    fn feed(&mut self, rows: &[(usize, Vec<u32>)]) -> anyhow::Result<()> {
        for (r, t) in rows {
            self.fed[*r].extend(t);
        }
        self.inner.feed(rows)
    }
    fn sample(&mut self, rows: &[usize]) -> anyhow::Result<Vec<u32>> {
        let real = self.inner.sample(rows)?;
        let mut log = self.log.lock().unwrap();
        for (&r, &x) in rows.iter().zip(&real) {
            log.entry(prompt_of(&self.fed[r])).or_default().push(x);
        }
        Ok(rows
            .iter()
            .map(|&r| {
                if self.queue[r].is_empty() {
                    let mut v = (self.policy)(&self.fed[r]);
                    v.reverse();
                    self.queue[r] = v;
                }
                self.queue[r].pop().unwrap()
            })
            .collect())
    }
    fn row_len(&self, row: usize) -> usize {
        let n = self.inner.row_len(row);
        assert_eq!(n, self.fed[row].len());
        n
    }
}

#[test]
fn tool_call_through_the_real_decoder() {
    let model = tiny(4);
    let t = model.tokenizer.clone();
    let tasks: Vec<_> = tasks(8)
        .into_iter()
        .filter(|x| t.encode(&x.prompt).len() < 40)
        .take(3)
        .collect();
    assert!(!tasks.is_empty());
    let forced = |batch: usize| {
        let lm = Forced {
            inner: ModelLm::new(&model, Precision::F32, SamplingConfig::greedy()),
            policy: afm_policy(t.clone(), solutions(&t, &tasks), true),
            log: Log::default(),
        };
        let opts = RunOptions {
            batch,
            ..Default::default()
        };
        let runs = afm::run_batch_lm(&lm, &tasks, &opts).unwrap();
        let log = lm.log.lock().unwrap().clone();
        (runs, log)
    };
    let (runs, log3) = forced(3);
    for r in &runs {
        assert!(r.success, "{r:?}");
        assert_eq!((r.stats.tool_calls, r.stats.tool_successes), (2, 1));
        assert_eq!(r.trajectory.len(), 7);
    }
    // Rows get observations injected at different steps in the batch; the
    // real model's greedy choices match running each task alone.
    let (runs1, log1) = forced(1);
    assert_eq!(strip_timing(runs), strip_timing(runs1));
    assert_eq!(log3.len(), tasks.len());
    assert_eq!(log3, log1);
}
