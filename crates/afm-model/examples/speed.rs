//! Quick speed probe without the CLI (no polars in the build):
//! `cargo run --release -p afm-model --example speed -- mini 8 256 [bf16] [steps]`.

use afm_model::{speed, GptConfig, Model, Precision};
use afm_tokenizer::Tokenizer;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let preset = args.get(1).map(String::as_str).unwrap_or("mini");
    let batch: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(8);
    let ctx: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(256);
    let precision = Precision::from_bf16(args.get(4).is_some_and(|s| s == "bf16"));
    let steps: usize = args.get(5).map(|s| s.parse()).transpose()?.unwrap_or(3);
    let tok = Tokenizer::gpt2();
    let cfg = GptConfig::preset(preset, tok.n_vocab(), tok.roles().n_roles())?;
    let m = Model::new(cfg, tok, tch::Device::Cpu, 0)?;
    let g0 = speed::generate_tokens_per_s(&m, 32, 128, precision)?;
    println!("{preset} {precision:?} greedy 32+128 before training: {g0:.0} tok/s");
    let (tps, loss) = speed::train_tokens_per_s(&m, batch, ctx, precision, 1, steps, || {})?;
    println!("{preset} {precision:?} train {batch}x{ctx}: {tps:.0} tok/s (loss {loss:.3})");
    let g = speed::generate_tokens_per_s(&m, 32, 128, precision)?;
    println!("{preset} {precision:?} greedy 32+128: {g:.0} tok/s");
    println!(
        "matmul peak f32 {:.0} GFLOP/s, bf16 {:.0} GFLOP/s",
        speed::matmul_peak_gflops(tch::Kind::Float, 1024),
        speed::matmul_peak_gflops(tch::Kind::BFloat16, 1024)
    );
    Ok(())
}
