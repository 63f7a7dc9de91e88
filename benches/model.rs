//! Criterion benches of afm-model: one training step (forward, fused loss
//! on every position, backward, clipping, AdamW) and greedy decoding (batch
//! 1, 32-token prompt, 32 new tokens), `mini` in f32 and bf16. Set
//! `AFM_BENCH_GPT2=1` to add the 124M `gpt2` preset (slow on 2 cores).

use afm_model::speed::{random_tokens, TrainStep};
use afm_model::{generate, GptConfig, Model, Precision, SamplingConfig};
use afm_tokenizer::Tokenizer;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::time::Duration;

fn model(preset: &str) -> Model {
    let tok = Tokenizer::gpt2();
    let cfg = GptConfig::preset(preset, tok.n_vocab(), tok.roles().n_roles()).expect("preset");
    Model::new(cfg, tok, tch::Device::Cpu, 0).expect("model")
}

fn presets() -> Vec<(&'static str, usize, usize)> {
    let mut v = vec![("mini", 8, 256)];
    if std::env::var("AFM_BENCH_GPT2").is_ok_and(|x| x == "1") {
        v.push(("gpt2", 4, 256));
    }
    v
}

fn train_step(c: &mut Criterion) {
    afm_model::device::tune_allocator();
    let mut g = c.benchmark_group("model_train_step");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(20))
        .warm_up_time(Duration::from_secs(3));
    for (preset, batch, ctx) in presets() {
        let m = model(preset);
        for precision in [Precision::F32, Precision::Bf16] {
            let mut step = TrainStep::new(&m, batch, ctx, precision).expect("step");
            g.throughput(Throughput::Elements((batch * ctx) as u64));
            g.bench_function(format!("{preset}_{precision:?}_b{batch}x{ctx}"), |b| {
                b.iter(|| step.step(&m).expect("train step"))
            });
        }
    }
    g.finish();
}

fn greedy(c: &mut Criterion) {
    afm_model::device::tune_allocator();
    let mut g = c.benchmark_group("model_greedy_decode");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(10))
        .warm_up_time(Duration::from_secs(2));
    let new_tokens = 32;
    for (preset, _, _) in presets() {
        let m = model(preset);
        let prompt: Vec<u32> = Vec::<i64>::try_from(random_tokens(1, 32, 50257, 1).view([-1]))
            .expect("ids")
            .into_iter()
            .map(|x| x as u32)
            .collect();
        for precision in [Precision::F32, Precision::Bf16] {
            g.throughput(Throughput::Elements(new_tokens as u64));
            g.bench_function(format!("{preset}_{precision:?}_32+{new_tokens}"), |b| {
                b.iter(|| {
                    generate(
                        &m,
                        std::slice::from_ref(&prompt),
                        new_tokens,
                        &[],
                        &SamplingConfig::greedy(),
                        precision,
                    )
                    .expect("generate")
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, train_step, greedy);
criterion_main!(benches);
