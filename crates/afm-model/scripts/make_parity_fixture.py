#!/usr/bin/env python3
"""Build the HF-parity fixture of afm-model, or verify an afm export.

Installs nothing. Run with the libtorch venv's python after installing
transformers:

    ~/.cache/afm/torch-2.13.0/bin/pip install transformers safetensors
    ~/.cache/afm/torch-2.13.0/bin/python crates/afm-model/scripts/make_parity_fixture.py

writes crates/afm-model/tests/fixtures/tiny-gpt2/ (config.json,
model.safetensors, logits.json): a tiny random GPT-2 (2 layers, n_embd 32,
4 heads, vocab 1000, fixed seed; LayerNorm and bias parameters randomised
too, so a mistake in any of them shows) and the logits transformers gives
for a few inputs. The Rust test `hf_parity` imports it and compares.

    ... make_parity_fixture.py --verify-export DIR

loads an afm export (e.g. from `afm export-hf`, or the directory the Rust
test writes when AFM_EXPORT_DIR is set) with GPT2LMHeadModel.from_pretrained
and, if DIR/expected_logits.json exists (written by that test), checks
transformers' logits against afm's.
"""

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "..", "tests", "fixtures", "tiny-gpt2")
INPUTS = [[17], [5, 999, 3, 42, 0], [7, 7, 7, 100, 200, 300, 400, 500, 600, 1, 2, 998]]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--verify-export", metavar="DIR")
    args = ap.parse_args()
    try:
        import torch
        from transformers import GPT2Config, GPT2LMHeadModel
    except ImportError as e:
        print(f"transformers/torch not importable ({e}); install them into the venv first", file=sys.stderr)
        return 2
    if args.verify_export:
        return verify(args.verify_export, torch, GPT2LMHeadModel)

    torch.manual_seed(1234)
    cfg = GPT2Config(
        vocab_size=1000,
        n_positions=64,
        n_embd=32,
        n_layer=2,
        n_head=4,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        layer_norm_epsilon=1e-5,
        activation_function="gelu_new",
        bos_token_id=0,
        eos_token_id=0,
    )
    model = GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ln_" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
            else:
                p.copy_(0.15 * torch.randn_like(p))
    os.makedirs(args.out, exist_ok=True)
    model.save_pretrained(args.out, safe_serialization=True)
    gen = os.path.join(args.out, "generation_config.json")
    if os.path.exists(gen):
        os.remove(gen)
    logits = []
    with torch.no_grad():
        for ids in INPUTS:
            out = model(torch.tensor([ids])).logits[0]
            logits.append([[round(float(x), 7) for x in row] for row in out])
    with open(os.path.join(args.out, "logits.json"), "w") as f:
        json.dump({"inputs": INPUTS, "logits": logits}, f)
    total = sum(os.path.getsize(os.path.join(args.out, n)) for n in os.listdir(args.out))
    print(f"wrote {args.out} ({total} bytes)")
    return 0


def verify(d, torch, GPT2LMHeadModel):
    model = GPT2LMHeadModel.from_pretrained(d).eval()
    print(f"transformers loaded {d}: {sum(p.numel() for p in model.parameters())} parameters")
    exp = os.path.join(d, "expected_logits.json")
    if not os.path.exists(exp):
        print("no expected_logits.json: load check only")
        return 0
    with open(exp) as f:
        e = json.load(f)
    worst = 0.0
    with torch.no_grad():
        for ids, want in zip(e["inputs"], e["logits"]):
            got = model(torch.tensor([ids])).logits[0]
            worst = max(worst, float((got - torch.tensor(want)).abs().max()))
    print(f"max |logit diff| transformers vs afm: {worst:.3g}")
    if worst > 1e-4:
        print("FAIL: exceeds 1e-4", file=sys.stderr)
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
