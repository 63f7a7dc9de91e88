"""Checks of afm's transformers class and of afm_dist, run by
crates/afm-cli/tests/dist.rs (which `cargo xtask test` runs).

    python test_dist.py logits --export DIR --expected FILE
    python test_dist.py metrics --a FILE --b FILE [--rtol R] [--steps N]
    python test_dist.py same-weights --a DIR --b DIR

`logits`: loads the export the way a user does
(`AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)`, the
class files copied into the export) and checks, for every case afm wrote
into FILE (tokens, optional positions and role ids, afm's f32 logits over
the model's rows, afm's greedy continuation):

- the row logits equal afm's within 1e-4 (max abs), roles derived from the
  tokens when the case gives none;
- the id-space logits are the row logits at each row's id and
  `missing_logit` elsewhere;
- `generate` (greedy, no sampling) continues the prompt with afm's tokens.

`metrics`: two metrics.jsonl files (afm's and afm_dist's, or one process
and two) agree on every train record: loss, ce, kl, grad_norm and each
per-agent loss within a relative tolerance.

`same-weights`: two directories' model.safetensors hold the same tensors,
bit for bit.

Exits non-zero with a message on the first failed check.
"""

import argparse
import json
import math
import sys
from pathlib import Path


def fail(msg):
    print(f"test_dist: FAILED: {msg}", file=sys.stderr)
    sys.exit(1)


def check(cond, msg):
    if not cond:
        fail(msg)


def logits(a):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(a.export, trust_remote_code=True, dtype=torch.float32)
    model.eval()
    check(type(model).__name__ == "AfmForCausalLM", f"loaded {type(model).__name__}, not afm's class")
    cfg = model.config
    cases = json.loads(Path(a.expected).read_text())
    worst = 0.0
    for n, case in enumerate(cases):
        ids = torch.tensor([case["tokens"]], dtype=torch.long)
        kw = {}
        if case.get("positions") is not None:
            kw["position_ids"] = torch.tensor([case["positions"]], dtype=torch.long)
        if case.get("roles") is not None:
            kw["role_ids"] = torch.tensor([case["roles"]], dtype=torch.long)
        with torch.no_grad():
            rows = model(input_ids=ids, row_logits=True, **kw).logits[0]
            full = model(input_ids=ids, **kw).logits[0]
        want = torch.tensor(case["logits"], dtype=torch.float32)
        check(rows.shape == want.shape, f"case {n}: logits {tuple(rows.shape)}, afm's {tuple(want.shape)}")
        diff = float((rows - want).abs().max())
        worst = max(worst, diff)
        check(diff <= 1e-4, f"case {n} ({case['name']}): max |logit - afm's| = {diff:.3g} > 1e-4")
        # Id space: each row's column holds its logit, the rest missing_logit.
        row_to_id = torch.tensor(case["row_ids"], dtype=torch.long)
        check(full.shape[-1] == cfg.vocab_size, f"case {n}: id logits have {full.shape[-1]} columns")
        check(torch.equal(full[:, row_to_id], rows), f"case {n}: id logits differ from row logits")
        rest = torch.ones(cfg.vocab_size, dtype=torch.bool)
        rest[row_to_id] = False
        if bool(rest.any()):
            check(bool((full[:, rest] == cfg.missing_logit).all()), f"case {n}: ids without a row must score missing_logit")
        if case.get("continuation"):
            with torch.no_grad():
                out = model.generate(
                    ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=len(case["continuation"]),
                    do_sample=False,
                    eos_token_id=None,
                    pad_token_id=cfg.eos_token_id,
                )
            got = out[0, ids.shape[1]:].tolist()
            check(got == case["continuation"], f"case {n}: greedy continuation {got}, afm's {case['continuation']}")
    print(f"test_dist logits: {len(cases)} cases, max |diff| {worst:.3g}")


def records(path):
    out = {}
    for line in Path(path).read_text().splitlines():
        r = json.loads(line)
        if r.get("kind") == "train":
            out[r["step"]] = r
    return out


def metrics(a):
    ra, rb = records(a.a), records(a.b)
    steps = sorted(set(ra) & set(rb))
    check(steps, f"no common train steps in {a.a} ({sorted(ra)}) and {a.b} ({sorted(rb)})")
    if a.steps:
        check(len(steps) >= a.steps, f"only steps {steps} in both, need {a.steps}")

    def close(x, y, what):
        rel = abs(x - y) / max(abs(x), abs(y), 1e-12)
        check(rel <= a.rtol or abs(x - y) <= 1e-7, f"{what}: {x!r} vs {y!r} (relative {rel:.3g} > {a.rtol})")
        return rel

    worst = 0.0
    for s in steps:
        x, y = ra[s], rb[s]
        for k in ("loss", "ce", "grad_norm"):
            worst = max(worst, close(x[k], y[k], f"step {s} {k}"))
        if "kl" in x or "kl" in y:
            check(x.get("kl") is not None and y.get("kl") is not None, f"step {s}: kl in one file only")
            worst = max(worst, close(x["kl"], y["kl"], f"step {s} kl"))
        pa, pb = x.get("per_agent", {}), y.get("per_agent", {})
        check(set(pa) == set(pb), f"step {s}: per-agent keys {sorted(pa)} vs {sorted(pb)}")
        for agent in pa:
            worst = max(worst, close(pa[agent], pb[agent], f"step {s} per_agent {agent}"))
    print(f"test_dist metrics: steps {steps}, max relative diff {worst:.3g}")
    print(json.dumps({"steps": steps, "max_rel": worst, "loss": [ra[s]["loss"] for s in steps]}))


def same_weights(a):
    from safetensors.torch import load_file

    ta = load_file(str(Path(a.a) / "model.safetensors"))
    tb = load_file(str(Path(a.b) / "model.safetensors"))
    check(set(ta) == set(tb), f"tensor names differ: {sorted(set(ta) ^ set(tb))}")
    for k in ta:
        check(ta[k].shape == tb[k].shape and bool((ta[k] == tb[k]).all()), f"tensor {k} differs")
    print(f"test_dist same-weights: {len(ta)} tensors equal")


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("logits")
    p.add_argument("--export", required=True)
    p.add_argument("--expected", required=True)
    p = sub.add_parser("metrics")
    p.add_argument("--a", required=True)
    p.add_argument("--b", required=True)
    p.add_argument("--rtol", type=float, default=1e-4)
    p.add_argument("--steps", type=int, default=0)
    p = sub.add_parser("same-weights")
    p.add_argument("--a", required=True)
    p.add_argument("--b", required=True)
    a = ap.parse_args()
    {"logits": logits, "metrics": metrics, "same-weights": same_weights}[a.cmd](a)


if __name__ == "__main__":
    main()
