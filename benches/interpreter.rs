//! The tool interpreter: parse + run of typical Coder programs (the ones
//! the scripted agents write), plus a hostile program that hits the fuel
//! limit. `cargo bench --bench interpreter`
use afm_tasks::lang::{parse, run_program, run_to_observation, Limits};
use afm_tasks::{generate, solution};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;

fn bench(c: &mut Criterion) {
    let lim = Limits::default();
    // 300 reference programs from the task generator (all families and levels).
    let (tasks, _) = generate(1, 300, 0).expect("generate tasks");
    let programs: Vec<String> = tasks
        .iter()
        .filter_map(|t| solution(t).map(|s| s.program))
        .collect();
    let mut g = c.benchmark_group("interpreter");
    g.throughput(Throughput::Elements(programs.len() as u64));
    g.bench_function("parse_300_programs", |b| {
        b.iter(|| {
            for p in &programs {
                black_box(parse(black_box(p), &lim).is_ok());
            }
        })
    });
    g.bench_function("parse_run_observe_300_programs", |b| {
        b.iter(|| {
            for p in &programs {
                black_box(run_to_observation(black_box(p), &lim));
            }
        })
    });
    g.throughput(Throughput::Elements(1));
    g.bench_function("out_of_fuel_program", |b| {
        b.iter(|| run_program(black_box("map(x => sum(range(5000)), range(4000))"), &lim).is_err())
    });
    g.bench_function("omega_too_deep", |b| {
        b.iter(|| run_program(black_box("(f => f(f))(f => f(f))"), &lim).is_err())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
