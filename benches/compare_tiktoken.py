#!/usr/bin/env python3
"""Tokenizer throughput: afm's `Tokenizer::encode` (the exact fast encoder of
crates/afm-tokenizer) on one thread and on rayon (as `afm prepare` runs it) vs.
a single-process tiktoken-python pass over the same texts, in one run. The afm
side also times tiktoken-rs' `encode_ordinary` (tiktoken-python's Rust core)
on one thread, and checks that its ids equal tiktoken-rs' on every text.

    ~/.cache/afm/torch-2.13.0/bin/pip install tiktoken     # once
    ~/.cache/afm/torch-2.13.0/bin/python benches/compare_tiktoken.py

Texts: every task and step text of datasets/scripted/train.jsonl (repeated
to ~2M tokens), plus the Who&When logs when ../shared/datasets/who-and-when
is beside the checkout. Both sides must produce the same token count
(r50k_base). Exits 0 and prints a note when tiktoken is not installed, 2 when
either ratio (single thread, rayon) is under 1.5x.
"""
import glob
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def corpus():
    texts = []
    with open(os.path.join(ROOT, "datasets/scripted/train.jsonl"), encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            texts.append(r["task"])
            for s in r["trajectory"]:
                texts.append(s.get("output", s.get("observation", "")))
    texts = texts * 10
    ww = os.path.join(ROOT, "../shared/datasets/who-and-when/Algorithm-Generated")
    for p in sorted(glob.glob(os.path.join(ww, "*.json"))):
        with open(p, encoding="utf-8") as f:
            d = json.load(f)
        texts.append(d["question"])
        texts.extend(m.get("content") or "" for m in d["history"])
    return texts


def r50k_base(tiktoken):
    """tiktoken's r50k_base; offline, built from the same BPE file tiktoken-rs embeds
    (checked against tiktoken's expected hash)."""
    try:
        return tiktoken.get_encoding("r50k_base")
    except Exception:  # no network: use the copy shipped inside the tiktoken-rs crate
        from tiktoken.load import load_tiktoken_bpe
        from tiktoken_ext import openai_public
        home = os.environ.get("CARGO_HOME", os.path.expanduser("~/.cargo"))
        files = sorted(glob.glob(os.path.join(home, "registry/src/*/tiktoken-rs-*/assets/r50k_base.tiktoken")))
        if not files:
            raise
        ranks = load_tiktoken_bpe(files[-1], expected_hash="306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930")
        return tiktoken.Encoding(name="r50k_base", explicit_n_vocab=50257, pat_str=openai_public.r50k_pat_str,
                                 mergeable_ranks=ranks, special_tokens={"<|endoftext|>": 50256})


def main():
    try:
        import tiktoken
    except ImportError:
        print("note: tiktoken is not installed in this Python; skipping the comparison "
              "(pip install tiktoken)")
        return 0
    texts = corpus()
    enc = r50k_base(tiktoken)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False, encoding="utf-8") as f:
        for t in texts:
            f.write(json.dumps(t) + "\n")
        path = f.name
    try:
        subprocess.run(["cargo", "build", "--release", "-q", "-p", "afm-tokenizer", "--example",
                        "encode_throughput"], cwd=ROOT, check=True)
        n = sum(len(enc.encode_ordinary(t)) for t in texts)  # warm-up
        target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
        exe = os.path.join(target, "release/examples/encode_throughput")
        # Interleave the two sides (best of ROUNDS each) so load changes on a
        # shared machine hit both alike.
        rounds = int(os.environ.get("ROUNDS", "5"))
        py_best = py_batch_best = float("inf")
        rs = None
        for _ in range(rounds):
            t0 = time.perf_counter()
            m = sum(len(enc.encode_ordinary(t)) for t in texts)
            py_best = min(py_best, time.perf_counter() - t0)
            assert m == n
            out = subprocess.run([exe, path, "1"], check=True, capture_output=True, text=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            # Best of the rounds, per field.
            rs = r if rs is None else {k: max(v, r[k]) if k.endswith("_per_s") else v for k, v in rs.items()}
        for _ in range(2):
            t0 = time.perf_counter()
            sum(len(x) for x in enc.encode_ordinary_batch(texts))
            py_batch_best = min(py_batch_best, time.perf_counter() - t0)
        py_single = n / py_best
        py_batch = n / py_batch_best
    finally:
        os.unlink(path)
    if rs["tokens"] != n:
        print(f"token counts differ: afm {rs['tokens']} vs tiktoken {n}")
        return 1
    print(f"texts {len(texts)}, tokens {n}, cores {os.cpu_count()}, rayon threads {rs['threads']}")
    print(f"tiktoken-python encode_ordinary, single process : {py_single/1e6:8.2f} M tokens/s")
    print(f"tiktoken-python encode_ordinary_batch (threads) : {py_batch/1e6:8.2f} M tokens/s")
    print(f"tiktoken-rs encode_ordinary, one thread         : {rs['tiktoken_rs_single_thread_tokens_per_s']/1e6:8.2f} M tokens/s")
    print(f"afm Tokenizer::encode, one thread               : {rs['single_thread_tokens_per_s']/1e6:8.2f} M tokens/s")
    print(f"afm Tokenizer::encode_batch, rayon              : {rs['rayon_tokens_per_s']/1e6:8.2f} M tokens/s")
    single = rs["single_thread_tokens_per_s"] / py_single
    ratio = rs["rayon_tokens_per_s"] / py_single
    print(f"ratio afm(one thread) / tiktoken-python(single) : {single:8.2f}x (target >= 1.5x)")
    print(f"ratio afm(rayon) / tiktoken-python(single)      : {ratio:8.2f}x (target >= 1.5x)")
    print(f"ratio afm(one thread) / tiktoken-rs(one thread) : "
          f"{rs['single_thread_tokens_per_s'] / rs['tiktoken_rs_single_thread_tokens_per_s']:8.2f}x")
    return 0 if min(single, ratio) >= 1.5 else 2


if __name__ == "__main__":
    sys.exit(main())
