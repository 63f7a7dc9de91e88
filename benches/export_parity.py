"""Does an `afm export-hf` directory continue real prompts as afm does?

    python benches/export_parity.py --checkpoint CKPT --export HF_DIR --trl TRL_DIR [--n 8] [--new 48]

CKPT is an afm checkpoint (e.g. runs/default/models/afm/final), HF_DIR its
`afm export-hf`, TRL_DIR `afm export-sft --format trl` of the data it was
trained on. For the first N validation documents, the prompt is the
document up to its first agent token (the task and `<|agent:...|>`); both
sides continue it greedily for NEW tokens with no stop token:

- afm: `afm generate --prompt-tokens ... --json` (afm's own decoder, f32);
- transformers: `AutoModelForCausalLM.from_pretrained(HF_DIR,
  trust_remote_code=True).generate(do_sample=False)`.

Prints, per prompt, whether the continuations match and the largest
difference between afm's log-probabilities of its tokens and transformers'
(teacher-forced on afm's continuation), then one JSON summary line. Run with
the torch venv's python (`cargo xtask setup` makes it).
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

FIRST_ROLE_TOKEN = 50260


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--export", required=True)
    ap.add_argument("--trl", required=True)
    ap.add_argument("--afm", default="target/release/afm")
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--new", type=int, default=48)
    a = ap.parse_args()
    model = AutoModelForCausalLM.from_pretrained(a.export, trust_remote_code=True, dtype=torch.float32).eval()
    prompts = []
    for line in open(Path(a.trl) / "val.jsonl"):
        r = json.loads(line)
        start = 0
        for length in r["seq_lengths"]:
            doc = r["input_ids"][start : start + length]
            start += length
            cut = next((i for i, t in enumerate(doc) if t >= FIRST_ROLE_TOKEN), None)
            if cut is not None:
                prompts.append(doc[: cut + 1])
            if len(prompts) >= a.n:
                break
        if len(prompts) >= a.n:
            break
    matched, worst = 0, 0.0
    for k, p in enumerate(prompts):
        out = subprocess.run(
            [a.afm, "generate", "--checkpoint", a.checkpoint, "--prompt-tokens", ",".join(map(str, p)),
             "--max-new-tokens", str(a.new), "--stop-tokens", "none", "--json"],
            capture_output=True, text=True, check=True,
        )
        g = json.loads(out.stdout)
        ids = torch.tensor([p])
        with torch.no_grad():
            hf = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=a.new,
                                do_sample=False, eos_token_id=None, pad_token_id=model.config.eos_token_id)
            full = torch.tensor([p + g["tokens"]])
            logp = torch.log_softmax(model(input_ids=full).logits[0].float(), -1)
        hf_tokens = hf[0, len(p):].tolist()
        ours = [float(logp[len(p) - 1 + i, t]) for i, t in enumerate(g["tokens"])]
        diff = max(abs(x - y) for x, y in zip(ours, g["logprobs"]))
        same = hf_tokens == g["tokens"]
        matched += same
        worst = max(worst, diff)
        print(f"prompt {k} ({len(p)} tokens): continuation {'matches' if same else 'DIFFERS'}, max |logprob diff| {diff:.2e}")
    print(json.dumps({"prompts": len(prompts), "matched": matched, "max_logprob_diff": worst}))
    return 0 if matched == len(prompts) else 1


if __name__ == "__main__":
    sys.exit(main())
