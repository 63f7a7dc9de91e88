//! Time the parts of one training step (forward / loss / backward / optimizer).
//! `cargo run --release -p afm-model --example profile_step -- [bf16]`

use afm_model::{speed, ForwardArgs, GptConfig, Model, Precision};
use afm_tokenizer::Tokenizer;
use std::time::Instant;
use tch::{nn, nn::OptimizerConfig, Kind};

fn main() -> anyhow::Result<()> {
    if std::env::var_os("AFM_DEFAULT_MALLOC").is_none() {
        afm_model::device::tune_allocator();
    }
    let precision = Precision::from_bf16(std::env::args().nth(1).is_some_and(|s| s == "bf16"));
    let tok = Tokenizer::gpt2();
    let cfg = GptConfig::preset("mini", tok.n_vocab(), tok.roles().n_roles())?;
    let m = Model::new(cfg, tok, tch::Device::Cpu, 0)?;
    let x = speed::random_tokens(8, 257, 50257, 1);
    let (inp, tgt) = (x.narrow(1, 0, 256), x.narrow(1, 1, 256).reshape([-1]));
    let mut opt = nn::AdamW {
        wd: 0.1,
        ..Default::default()
    }
    .build(&m.vs, 3e-4)?;
    for it in 0..3 {
        let t0 = Instant::now();
        let h = m
            .gpt
            .hidden(&ForwardArgs::new(&inp), precision, true)
            .view([-1, 256]);
        let _ = h.sum(Kind::Float).double_value(&[]);
        let t1 = Instant::now();
        let loss = m.gpt.lm_loss(&h, &tgt, None, precision, None)?.loss / 2048.0;
        let _ = loss.double_value(&[]);
        let t2 = Instant::now();
        opt.zero_grad();
        loss.backward();
        let t3 = Instant::now();
        opt.clip_grad_norm(1.0);
        let t4 = Instant::now();
        opt.step();
        let t5 = Instant::now();
        // unfused reference
        let h = m
            .gpt
            .hidden(&ForwardArgs::new(&inp), precision, true)
            .view([-1, 256]);
        let t6 = Instant::now();
        let logits = m.gpt.lm_head(&h, &m.gpt.weights(precision));
        let l2 = logits.cross_entropy_for_logits(&tgt);
        let _ = l2.double_value(&[]);
        let t7 = Instant::now();
        opt.zero_grad();
        l2.backward();
        let t8 = Instant::now();
        let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1e3;
        println!(
            "it {it}: fwd {:.0} fused-loss {:.0} bwd {:.0} clip {:.0} adamw {:.0} | unfused: fwd {:.0} head+ce {:.0} bwd {:.0} ms",
            ms(t0, t1), ms(t1, t2), ms(t2, t3), ms(t3, t4), ms(t4, t5), ms(t5, t6), ms(t6, t7), ms(t7, t8)
        );
    }
    Ok(())
}
