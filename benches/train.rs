//! Training throughput (input positions per second) of one optimiser step
//! (forward + backward at the loss positions, AdamW update) for the `mini`
//! preset on synthetic packed shards, fp32 and bf16.
//!
//! `cargo bench --bench train`
//! Env: `AFM_BENCH_DEVICE=cuda` (default cpu), `AFM_BENCH_GPT2=1` adds the
//! `gpt2` preset, `AFM_BENCH_BATCH` (rows per step, default 8),
//! `AFM_BENCH_ROW_LEN` (default 256).
use afm_model::{weight_decay_applies, GptConfig, Model, Precision};
use afm_train::make_batch;
use afm_train::synthetic::{write_dataset, SyntheticSpec};
use afm_train::AdamW;
use afm_train::Teachers;
use afm_train::{train_step, TrainConfig};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn bench(c: &mut Criterion) {
    afm_model::device::tune_allocator();
    let device =
        afm_model::parse_device(&std::env::var("AFM_BENCH_DEVICE").unwrap_or("cpu".into()))
            .expect("AFM_BENCH_DEVICE");
    let batch = env_usize("AFM_BENCH_BATCH", 8);
    let row_len = env_usize("AFM_BENCH_ROW_LEN", 256);
    let dir = std::env::temp_dir().join(format!("afm-bench-train-{}", std::process::id()));
    let spec = SyntheticSpec {
        train_rows: batch * 4,
        val_rows: 0,
        row_len,
        ..Default::default()
    };
    let tok = write_dataset(&dir, &spec).unwrap();
    let shards = afm_format::shards::Shards::open(&dir, "train").unwrap();
    let mut presets = vec!["mini"];
    if std::env::var("AFM_BENCH_GPT2").is_ok_and(|v| v == "1") {
        presets.push("gpt2");
    }
    let cfg = TrainConfig::default();
    let mut g = c.benchmark_group("train_step");
    g.sample_size(10);
    g.throughput(Throughput::Elements((batch * row_len) as u64));
    for preset in presets {
        let mut gc = GptConfig::preset(preset, tok.n_vocab(), tok.roles().n_roles()).unwrap();
        gc.n_ctx = gc.n_ctx.max(row_len);
        let model = Model::new(gc, tok.clone(), device, 0).unwrap();
        let mut opt = AdamW::new(model.named_parameters(), &cfg.optim, weight_decay_applies);
        let teachers = Teachers::default();
        let batches: Vec<_> = (0..4)
            .map(|i| {
                let rows: Vec<usize> = (i * batch..(i + 1) * batch).collect();
                vec![make_batch(&shards, &rows, &cfg.loss, &tok, device)]
            })
            .collect();
        for (name, prec) in [("fp32", Precision::F32), ("bf16", Precision::Bf16)] {
            let mut k = 0;
            g.bench_function(format!("{preset}/{name}/b{batch}x{row_len}"), |b| {
                b.iter(|| {
                    let st = train_step(
                        &model,
                        &mut opt,
                        &teachers,
                        &batches[k % 4],
                        &cfg,
                        prec,
                        1e-4,
                    )
                    .unwrap();
                    k += 1;
                    if device.is_cuda() {
                        tch::Cuda::synchronize(0);
                    }
                    st.loss
                })
            });
        }
    }
    g.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, bench);
criterion_main!(benches);
