#!/usr/bin/env python3
"""Compare afm-model's speed with Hugging Face transformers + PyTorch eager.

Same config, batch, context and precision on both sides, in the same run:

  * training step: forward, loss on every position, backward, grad-norm clip
    at 1.0, AdamW (lr 3e-4, wd 0.1); tokens/s over --steps steps after one
    warm-up step. HF bf16 uses torch.autocast("cpu", dtype=torch.bfloat16).
  * greedy decoding: batch 1, --new-tokens new tokens after a
    --prompt-len-token random prompt, HF generate(do_sample=False) with the
    KV cache; new tokens / wall time (prefill included, as afm measures).

afm is measured by running `AFM bench model --json` with the same settings.

    ~/.cache/afm/torch-2.13.0/bin/python benches/compare_hf.py --afm target/release/afm
    ... --preset gpt2 --batch 4 --ctx 256 --bf16

Skips cleanly (exit 0) when transformers is not importable.
"""

import argparse
import json
import os
import subprocess
import sys
import time

import tuned_malloc

PRESETS = {  # n_layer, n_head, n_embd, n_ctx (afm-model's GptConfig::preset)
    "tiny": (2, 2, 64, 128),
    "mini": (4, 4, 256, 256),
    "gpt2": (12, 12, 768, 1024),
    "gpt2-medium": (24, 16, 1024, 1024),
}
AFM_VOCAB = 50260  # GPT-2 BPE + <|task|> <|end|> <|obs|> (afm's Tokenizer::gpt2().n_vocab())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--afm", required=True, help="path to the afm binary (cargo build --release -p afm-cli)")
    ap.add_argument("--preset", default="mini", choices=sorted(PRESETS))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=None, help="torch threads on both sides (default: torch's choice)")
    ap.add_argument("--decode-threads", type=int, default=None,
                    help="torch threads while decoding, both sides (default: as --threads)")
    ap.add_argument("--skip-hf", action="store_true", help="only run afm")
    ap.add_argument("--no-train", action="store_true", help="greedy decoding only (both sides)")
    ap.add_argument("--hf-tuned-malloc", action="store_true", help=tuned_malloc.HELP)
    args = ap.parse_args()
    tuned_malloc.reexec_if_requested(args.hf_tuned_malloc)

    try:
        import torch
        from transformers import GPT2Config, GPT2LMHeadModel
    except ImportError as e:
        print(f"compare_hf: skipped, transformers/torch not importable ({e}).")
        print("  install: ~/.cache/afm/torch-2.13.0/bin/pip install transformers safetensors")
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)

    afm = run_afm(args)
    hf = {} if args.skip_hf else run_hf(args, torch, GPT2Config, GPT2LMHeadModel)

    prec = "bf16" if args.bf16 else "f32"
    print()
    print(f"preset {args.preset}, {prec}, train batch {args.batch}x{args.ctx} ({afm.get('threads')} threads), "
          f"greedy {args.prompt_len}+{args.new_tokens} (batch 1, {afm.get('decode_threads')} threads)")
    print(f"{'metric':<26}{'HF eager':>12}{'afm':>12}{'afm/HF':>10}")
    for key, label in [("train_tokens_per_s", "train tokens/s"), ("generate_tokens_per_s", "greedy tokens/s"),
                       ("generate_libtorch_tokens_per_s", "greedy, libtorch ops only")]:
        if key not in afm:
            continue
        h, a = hf.get(key if key != "generate_libtorch_tokens_per_s" else "generate_tokens_per_s"), afm.get(key)
        ratio = f"{a / h:.2f}x" if h and a else "-"
        print(f"{label:<26}{fmt(h):>12}{fmt(a):>12}{ratio:>10}")
    if tuned_malloc.active():
        print("HF ran with afm's glibc allocator setting (--hf-tuned-malloc)")
    if "mfu" in afm:
        print(f"afm train MFU {100 * afm['mfu']:.1f}% of a measured {afm['matmul_peak_gflops']:.0f} GFLOP/s matmul")
        h = hf.get("train_tokens_per_s")
        if h:
            per_tok = afm["train_gflops"] / afm["train_tokens_per_s"]
            hf_mfu = h * per_tok / afm["matmul_peak_gflops"]
            print(f"HF  train MFU {100 * hf_mfu:.1f}% (same FLOP count); 2x HF needs {200 * hf_mfu:.1f}% MFU")
    if "generate_roofline_tokens_per_s" in afm:
        r = afm["generate_roofline_tokens_per_s"]
        g = afm.get("generate_tokens_per_s") or 0
        print(f"greedy memory roofline {r:.0f} tokens/s ({afm['decode_weight_bytes'] / 1e6:.0f} MB of weights a token "
              f"at a measured {afm['read_bandwidth_gbps']:.1f} GB/s read bandwidth): afm at {100 * g / r:.0f}%", end="")
        h = hf.get("generate_tokens_per_s")
        print(f"; 5x HF needs {5 * h / r:.2f}x the roofline" if h else "")
    print(json.dumps({"hf": hf, "afm": afm}))
    return 0


def fmt(x):
    return "-" if x is None else f"{x:.0f}"


def run_afm(args):
    cmd = [args.afm, "bench", "model", "--preset", args.preset, "--batch", str(args.batch),
           "--ctx", str(args.ctx), "--steps", str(args.steps), "--prompt-len", str(args.prompt_len),
           "--new-tokens", str(args.new_tokens), "--json"]
    if args.bf16:
        cmd.append("--bf16")
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.decode_threads:
        cmd += ["--decode-threads", str(args.decode_threads)]
    if args.no_train:
        cmd.append("--no-train")
    print("running:", " ".join(cmd), flush=True)
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def run_hf(args, torch, GPT2Config, GPT2LMHeadModel):
    import contextlib

    n_layer, n_head, n_embd, n_ctx = PRESETS[args.preset]
    cfg = GPT2Config(vocab_size=AFM_VOCAB, n_positions=n_ctx, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(cfg)
    amp = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if args.bf16 else contextlib.nullcontext
    out = {}

    if not args.no_train:
        hf_train(args, torch, model, amp, out)
    hf_generate(args, torch, model, amp, out)
    return out


def hf_train(args, torch, model, amp, out):
    print(f"HF: training {args.preset} ({sum(p.numel() for p in model.parameters())} params)", flush=True)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1)
    x = torch.randint(0, AFM_VOCAB, (args.batch, args.ctx))

    def step():
        with amp():
            loss = model(input_ids=x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    step()
    t = time.perf_counter()
    for _ in range(args.steps):
        step()
    out["train_tokens_per_s"] = args.batch * args.ctx * args.steps / (time.perf_counter() - t)


def hf_generate(args, torch, model, amp, out):
    print("HF: greedy generate()", flush=True)
    if args.decode_threads:
        torch.set_num_threads(args.decode_threads)
    model.eval()
    prompt = torch.randint(0, 50257, (1, args.prompt_len))
    kw = dict(do_sample=False, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, pad_token_id=0)
    with torch.no_grad(), amp():
        model.generate(prompt, **{**kw, "max_new_tokens": 4, "min_new_tokens": 4})
        t = time.perf_counter()
        g = model.generate(prompt, **kw)
        dt = time.perf_counter() - t
    out["generate_tokens_per_s"] = (g.shape[1] - args.prompt_len) / dt


if __name__ == "__main__":
    sys.exit(main())
