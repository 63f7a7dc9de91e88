//! afm-data throughput: tokenizing a batch with rayon (as `prepare` does),
//! formatting+labelling trajectories, and packing documents into rows.
//! `cargo bench --bench data`
use afm_data::Packer;
use afm_format::layout::{encode_trajectory, AgentWeights, Doc};
use afm_format::{Step, StepKind, Trajectory};
use afm_tokenizer::{RoleVocab, Tokenizer};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rayon::prelude::*;

fn trajectories(n: usize) -> Vec<Trajectory> {
    let mut x = 7u64;
    let mut next = |m: u64| {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (x >> 33) % m
    };
    (0..n)
        .map(|i| {
            let (a, b) = (next(1000), next(1000));
            let st = |agent: &str, kind, text: String| Step {
                agent: agent.into(),
                kind,
                text,
            };
            let mut steps = vec![st(
                "Planner",
                StepKind::Agent,
                format!("Add {a} and {b} with the tool, then check the sum."),
            )];
            for k in 0..1 + next(3) {
                steps.push(st(
                    "Coder",
                    StepKind::Agent,
                    format!("total_{k} = {a} + {b}\nprint(total_{k})"),
                ));
                steps.push(st(
                    "Interpreter",
                    StepKind::Observation,
                    format!("{}", a + b),
                ));
            }
            steps.push(st(
                "Reviewer",
                StepKind::Agent,
                format!("Checked. ANSWER: {}", a + b),
            ));
            Trajectory {
                id: format!("g{i}"),
                task: format!("Record {i}: what is {a} + {b}?"),
                steps,
                success: Some(true),
                score: None,
                answer: None,
                meta: None,
            }
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let tok = Tokenizer::new(RoleVocab::from_agents(["Planner", "Coder", "Reviewer"]).unwrap());
    let trajs = trajectories(5000);
    let texts: Vec<&str> = trajs
        .iter()
        .flat_map(|t| {
            std::iter::once(t.task.as_str()).chain(t.steps.iter().map(|s| s.text.as_str()))
        })
        .collect();
    let n_tokens: usize = texts.iter().map(|t| tok.encode(t).len()).sum();
    let mut g = c.benchmark_group("data");
    g.sample_size(10);
    g.throughput(Throughput::Elements(n_tokens as u64));
    g.bench_function("tokenize_batch_rayon", |b| {
        b.iter(|| texts.par_iter().map(|t| tok.encode(t).len()).sum::<usize>())
    });
    g.bench_function("tokenize_batch_one_thread", |b| {
        b.iter(|| texts.iter().map(|t| tok.encode(t).len()).sum::<usize>())
    });
    let table = AgentWeights::default().table(&tok);
    g.bench_function("format_label_rayon", |b| {
        b.iter(|| {
            trajs
                .par_iter()
                .map(|t| Doc::new(encode_trajectory(&tok, t).unwrap().tokens, &table).len())
                .sum::<usize>()
        })
    });
    let docs: Vec<Doc> = trajs
        .iter()
        .map(|t| Doc::new(encode_trajectory(&tok, t).unwrap().tokens, &table))
        .collect();
    let doc_tokens: usize = docs.iter().map(Doc::len).sum();
    g.throughput(Throughput::Elements(doc_tokens as u64));
    g.bench_function("pack_256", |b| {
        b.iter(|| {
            let mut p = Packer::new(256, 8192);
            let mut rows = 0usize;
            let mut emit = |_: afm_data::Packed| -> Result<(), ()> {
                rows += 1;
                Ok(())
            };
            for d in &docs {
                p.push(d.clone(), &mut emit).unwrap();
            }
            p.finish(&mut emit).unwrap();
            rows
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
