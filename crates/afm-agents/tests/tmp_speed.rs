use afm_model::{Decoder, GptConfig, Model, Precision, SamplingConfig};
#[test]
fn speed() {
    tch::set_num_threads(1);
    let t = afm_tokenizer::Tokenizer::new(
        afm_tokenizer::RoleVocab::from_agents(["Planner", "Coder", "Reviewer"]).unwrap(),
    );
    let cfg = GptConfig::preset("tiny", t.n_vocab(), t.roles().n_roles()).unwrap();
    let m = Model::new(cfg, t.clone(), tch::Device::Cpu, 1).unwrap();
    for mode in 0..2 {
        let mut d = Decoder::new(&m, 8, Precision::F32);
        let mut l = d
            .feed(
                &(0..8)
                    .map(|r| (r, vec![50257u32, 100, 200]))
                    .collect::<Vec<_>>(),
            )
            .unwrap();
        let t0 = std::time::Instant::now();
        let (mut ts, mut tf) = (0.0, 0.0);
        for _ in 0..100 {
            let a = std::time::Instant::now();
            let toks: Vec<u32> = if mode == 0 {
                d.sample(&l, &SamplingConfig::greedy())
                    .unwrap()
                    .into_iter()
                    .map(|x| x.0)
                    .collect()
            } else {
                Vec::<i64>::try_from(l.argmax(-1, false))
                    .unwrap()
                    .into_iter()
                    .map(|x| x as u32)
                    .collect()
            };
            ts += a.elapsed().as_secs_f64();
            let b = std::time::Instant::now();
            l = d
                .feed(
                    &toks
                        .iter()
                        .enumerate()
                        .map(|(r, &x)| (r, vec![x]))
                        .collect::<Vec<_>>(),
                )
                .unwrap();
            tf += b.elapsed().as_secs_f64();
        }
        eprintln!(
            "mode {mode}: total {:?} sample {:.1} ms feed {:.1} ms per step",
            t0.elapsed(),
            ts * 10.0,
            tf * 10.0
        );
    }
}
