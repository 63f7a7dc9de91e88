#!/usr/bin/env python3
"""Compare `afm train` with Hugging Face transformers (PyTorch eager) doing
the same SFT step, in the same run.

Both sides train the same preset from scratch on the same prepared shards
(the first --batch rows of train, reused every step), with the same packed
block-diagonal attention (4-D mask on the HF side), position ids, loss
weights (CE normalised by the sum of weights), grad-norm clip 1.0 and AdamW
(lr 3e-4, betas (0.9, 0.95), wd 0.1 on matmul weights). HF computes logits
at every position (its standard LM head); afm only at the loss positions.
afm has agent-role embeddings, HF does not (a negligible cost).

Reports positions/s of each (median over --steps steps after one warm-up
step) and MFU against an fp32 (or bf16) matmul peak measured in this process
(afm's MFU counts the HF-equivalent FLOPs: it skips the LM head off the loss
positions). afm tunes glibc's allocator for itself (large tensors are reused,
not page-faulted each step); --hf-tuned-malloc gives HF the same setting.

    cargo run --release -p afm-train --example synthetic_data -- /tmp/syn 64 256
    ~/.cache/afm/torch-2.13.0/bin/python benches/compare_hf_sft.py --afm target/release/afm --data /tmp/syn

Skips cleanly (exit 0) when transformers is not importable.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import tuned_malloc

PRESETS = {"tiny": (2, 2, 64, 128), "mini": (4, 4, 256, 256), "gpt2": (12, 12, 768, 1024)}


def load_split(np, data, split, rows):
    idx = json.load(open(os.path.join(data, f"{split}.index.json")))
    t = idx["row_len"]
    n = min(rows, idx["rows"])
    arr = {}
    for name, dt in [("tokens", "u4"), ("targets", "u4"), ("weights", "f4"), ("positions", "u2"), ("docs", "u2")]:
        ext = {"u4": "u32", "f4": "f32", "u2": "u16"}[dt]
        a = np.fromfile(os.path.join(data, f"{split}.{name}.{ext}"), dtype="<" + dt)
        arr[name] = a[: n * t].reshape(n, t)
    return arr, n, t


def matmul_peak(torch, dtype, threads):
    n = 1024
    a = torch.randn(n, n, dtype=dtype)
    b = torch.randn(n, n, dtype=dtype)
    for _ in range(2):
        a @ b
    reps = 10
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    dt = time.perf_counter() - t0
    return 2 * n**3 * reps / dt


def run_hf(torch, np, args, arr, n_vocab):
    from transformers import GPT2Config, GPT2LMHeadModel

    L, H, C, ctx = PRESETS[args.preset]
    cfg = GPT2Config(vocab_size=n_vocab, n_positions=ctx, n_embd=C, n_layer=L, n_head=H,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    model = GPT2LMHeadModel(cfg)
    model.train()
    decay = [p for n, p in model.named_parameters() if n.endswith("weight") and ".h." in n and "ln_" not in n]
    other = [p for n, p in model.named_parameters() if not (n.endswith("weight") and ".h." in n and "ln_" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}],
                            lr=3e-4, betas=(0.9, 0.95), eps=1e-8)
    tok = torch.from_numpy(arr["tokens"].astype(np.int64))
    tgt = torch.from_numpy(arr["targets"].astype(np.int64))
    w = torch.from_numpy(arr["weights"].copy())
    pos = torch.from_numpy(arr["positions"].astype(np.int64))
    docs = torch.from_numpy(arr["docs"].astype(np.int64))
    B, T = tok.shape
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    same = docs[:, :, None] == docs[:, None, :]
    allowed = (same & causal)[:, None]
    mask = torch.zeros(B, 1, T, T).masked_fill(~allowed, torch.finfo(torch.float32).min)
    times = []
    for step in range(args.steps + 1):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            logits = model(input_ids=tok, position_ids=pos, attention_mask=mask).logits
        ce = torch.nn.functional.cross_entropy(logits.float().view(-1, logits.size(-1)), tgt.view(-1), reduction="none")
        loss = (ce * w.view(-1)).sum() / w.sum()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=False)
        if step > 0:
            times.append(time.perf_counter() - t0)
    n_params = sum(p.numel() for p in model.parameters())
    return B * T / statistics.median(times), n_params, float(loss.detach())


def run_afm(args, n_rows):
    with tempfile.TemporaryDirectory() as tmp:
        # A data dir holding exactly the first n_rows rows, reused every step:
        # batch = n_rows, one row set, so both sides see the same rows.
        out = os.path.join(tmp, "run")
        cmd = [args.afm, "train", "--data", args.sub, "--out", out, "--preset", args.preset,
               "--max-steps", str(args.steps + 1), "--batch-size", str(n_rows), "--eval-interval", "0",
               "--log-interval", "1", "--no-plots", "--no-progress", "--lr", "3e-4", "--warmup-steps", "0",
               "--min-lr", "3e-4"]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        if args.bf16:
            cmd.append("--bf16")
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        recs = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))]
        tps = [r["tokens_per_s"] for r in recs if r["kind"] == "train"][1:]
        return statistics.median(tps)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--afm", required=True)
    ap.add_argument("--data", required=True, help="prepared dataset (train.* shards, vocab.json)")
    ap.add_argument("--preset", default="mini", choices=sorted(PRESETS))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--hf-tuned-malloc", action="store_true", help=tuned_malloc.HELP)
    args = ap.parse_args()
    tuned_malloc.reexec_if_requested(args.hf_tuned_malloc)
    try:
        import numpy as np
        import torch
        import transformers  # noqa: F401
    except ImportError as e:
        print(f"compare_hf_sft: skipped, transformers/torch/numpy not importable ({e})")
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    arr, n, t = load_split(np, args.data, "train", args.batch)
    vocab = json.load(open(os.path.join(args.data, "vocab.json")))
    n_vocab = vocab["first_role_token"] + len(vocab["agents"])
    # The afm side trains on a copy holding the same n rows.
    with tempfile.TemporaryDirectory() as sub:
        idx = json.load(open(os.path.join(args.data, "train.index.json")))
        for name, ext in [("tokens", "u32"), ("targets", "u32"), ("weights", "f32"), ("roles", "u16"),
                          ("owners", "u16"), ("positions", "u16"), ("docs", "u16")]:
            size = {"u32": 4, "f32": 4, "u16": 2}[ext]
            b = open(os.path.join(args.data, f"train.{name}.{ext}"), "rb").read(n * t * size)
            open(os.path.join(sub, f"train.{name}.{ext}"), "wb").write(b)
        idx.update(rows=n)
        json.dump(idx, open(os.path.join(sub, "train.index.json"), "w"))
        open(os.path.join(sub, "vocab.json"), "w").write(json.dumps(vocab))
        args.sub = sub
        afm_tps = run_afm(args, n)
    hf_tps, n_params, _ = run_hf(torch, np, args, arr, n_vocab)
    peak = matmul_peak(torch, torch.bfloat16 if args.bf16 else torch.float32, args.threads)
    # 6 N flops per position (dense LM approximation, logits everywhere):
    # afm computes the LM head only at loss positions, so its figure is the
    # HF-equivalent work rate, not the FLOPs it executed.
    mfu = lambda tps: 6 * n_params * tps / peak
    print(json.dumps({
        "preset": args.preset, "batch": n, "row_len": t, "bf16": args.bf16, "threads": torch.get_num_threads(),
        "afm_positions_per_s": round(afm_tps, 1), "hf_positions_per_s": round(hf_tps, 1),
        "speedup": round(afm_tps / hf_tps, 2), "matmul_peak_gflops": round(peak / 1e9, 1),
        "afm_mfu": round(mfu(afm_tps), 3), "hf_mfu": round(mfu(hf_tps), 3),
        "hf_allocator": "tuned" if tuned_malloc.active() else "default",
    }, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
