"""Check afm's TRL export against afm's own shards, from Python.

    python test_trl_export.py --export EXPORT_DIR --prepared PREPARED_DIR

EXPORT_DIR is what `afm export-sft --format trl --input PREPARED_DIR --out
EXPORT_DIR` wrote. The export is loaded the way a TRL user loads it
(`datasets.load_dataset("json", ...)`); the shards are read with numpy
straight from their files (crates/afm-format/src/shards.rs), so nothing
here trusts afm's own reader. Checks, for every row of every split:

- input_ids, position_ids, agent_ids are the shard row's real positions;
- seq_lengths are the row's documents; the padding tail is left out;
- labels follow TRL's convention: labels[j] == shard targets[j-1] ==
  input_ids[j] where the shard's weights[j-1] > 0, else -100 (and -100 at
  every document start); loss_weights[j] == weights[j-1] exactly (f32),
  owner_ids[j] == owners[j-1];
- afm_export.json matches vocab.json and the shard indexes.

Then, with TRL and transformers themselves:

- TRL's DataCollatorForLanguageModeling(padding_free=True) on a batch of
  rows yields the concatenated input_ids, the exported position_ids and
  the exported labels;
- transformers' causal-LM loss (which shifts labels) on that batch equals
  the mean cross-entropy over afm's trained positions (targets, weight > 0),
  and the loss_weights-weighted version equals afm's weighted loss;
- SFTTrainer with the README's settings (padding_free, max_length=None,
  skip_prepare_dataset) on a tiny random GPT-2 builds batches that are the
  exported rows and trains two steps.

Exits non-zero with a message on the first failed check (run by
crates/afm-data/tests/export_trl.rs, which `cargo xtask test` runs).
"""

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

EOT = 50256
IGNORE = -100


def fail(msg):
    print(f"test_trl_export: FAILED: {msg}", file=sys.stderr)
    sys.exit(1)


def check(cond, msg):
    if not cond:
        fail(msg)


def read_split(prepared, split):
    """The shard arrays of `split`, each [rows, row_len], read with numpy."""
    index = json.loads((prepared / f"{split}.index.json").read_text())
    rows, row_len = index["rows"], index["row_len"]
    arrays = {}
    for name, dtype in [
        ("tokens", "<u4"),
        ("targets", "<u4"),
        ("weights", "<f4"),
        ("roles", "<u2"),
        ("owners", "<u2"),
        ("positions", "<u2"),
        ("docs", "<u2"),
    ]:
        ext = {"<u4": "u32", "<f4": "f32", "<u2": "u16"}[dtype]
        a = np.fromfile(prepared / f"{split}.{name}.{ext}", dtype=dtype)
        check(a.size == rows * row_len, f"{split}.{name}: {a.size} values, index says {rows}x{row_len}")
        arrays[name] = a.reshape(rows, row_len)
    return index, arrays


def documents(tokens, docs):
    """(start, end) of each document of a row, and where padding starts."""
    n = len(tokens)
    segs, i = [], 0
    while i < n:
        s = i
        while i < n and docs[i] == docs[s]:
            i += 1
        segs.append((s, i))
    if segs and segs[-1][1] == n and tokens[segs[-1][0]] == EOT:
        return segs[:-1], segs[-1][0]
    return segs, n


def expected_row(a, r):
    """The exported row of shard row `r`, computed here from the arrays."""
    tokens, targets, weights = a["tokens"][r], a["targets"][r], a["weights"][r]
    owners = a["owners"][r]
    segs, real = documents(tokens, a["docs"][r])
    labels = np.full(real, IGNORE, dtype=np.int64)
    lw = np.zeros(real, dtype=np.float32)
    own = np.zeros(real, dtype=np.int64)
    trained = 0
    for s, e in segs:
        for j in range(s + 1, e):
            # Position j-1 predicts token j: afm's targets[j-1].
            check(int(targets[j - 1]) == int(tokens[j]), f"shard row {r}: targets[{j-1}] is not tokens[{j}]")
            if weights[j - 1] > 0:
                labels[j] = int(targets[j - 1])
                trained += 1
            lw[j] = weights[j - 1]
            own[j] = owners[j - 1]
        check(weights[e - 1] == 0, f"shard row {r}: last position of a document is trained")
    # Every trained shard position is one label.
    check(trained == int((weights > 0).sum()), f"row {r}: {trained} labels, {(weights > 0).sum()} trained positions")
    return {
        "input_ids": tokens[:real].astype(np.int64),
        "labels": labels,
        "position_ids": a["positions"][r][:real].astype(np.int64),
        "seq_lengths": np.array([e - s for s, e in segs], dtype=np.int64),
        "agent_ids": a["roles"][r][:real].astype(np.int64),
        "owner_ids": own,
        "loss_weights": lw,
    }, row_len_of(a) - real


def row_len_of(a):
    return a["tokens"].shape[1]


def check_split(ds, a, split, info):
    rows = a["tokens"].shape[0]
    check(len(ds) == rows, f"{split}: {len(ds)} exported rows, {rows} shard rows")
    check(info["rows"] == rows, f"{split}: afm_export.json says {info['rows']} rows")
    tokens = loss = docs = padding = 0
    for r in range(rows):
        got = ds[r]
        want, pad = expected_row(a, r)
        for k, v in want.items():
            g = np.asarray(got[k], dtype=v.dtype)
            check(g.shape == v.shape, f"{split} row {r} `{k}`: length {g.shape} vs {v.shape}")
            # loss_weights compare as f32 bit for bit (json float -> f32).
            check(np.array_equal(g, v), f"{split} row {r} `{k}` differs from the shards")
        tokens += len(want["input_ids"])
        loss += int((want["labels"] != IGNORE).sum())
        docs += len(want["seq_lengths"])
        padding += pad
    for key, v in [("tokens", tokens), ("loss_tokens", loss), ("documents", docs), ("padding_dropped", padding)]:
        check(info[key] == v, f"{split}: afm_export.json {key} {info[key]}, counted {v}")
    return tokens, loss


def check_trl(ds, a, meta):
    """TRL's padding-free collator and transformers' loss on the export."""
    import torch
    from transformers.loss.loss_utils import ForCausalLMLoss
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    n = min(3, len(ds))
    check(n >= 2, "need at least two train rows to check a padding-free batch")
    # What SFTTrainer keeps of a pre-tokenized dataset (its signature columns).
    batch = [{k: ds[i][k] for k in ("input_ids", "labels", "seq_lengths")} for i in range(n)]
    out = DataCollatorForLanguageModeling(pad_token_id=EOT, padding_free=True)(batch)
    check("attention_mask" not in out, "padding-free batch has an attention_mask")
    cat = lambda k: [x for i in range(n) for x in ds[i][k]]
    check(out["input_ids"].tolist() == [cat("input_ids")], "collated input_ids differ")
    check(out["position_ids"].tolist() == [cat("position_ids")], "collator's position_ids differ from the export's")
    check(out["labels"].tolist() == [cat("labels")], "collated labels differ")
    if "cu_seq_lens_q" in out:  # newer TRL: the varlen kernels' document bounds
        bounds = np.concatenate([[0], np.cumsum(cat("seq_lengths"))]).tolist()
        check(out["cu_seq_lens_q"].tolist() == bounds, "collator's cu_seq_lens differ from seq_lengths")

    # The loss TRL trains with (transformers shifts labels inside) equals
    # afm's mean cross-entropy over its trained positions.
    vocab = meta["vocab_size"]
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(1, out["input_ids"].shape[1], vocab, generator=g)
    hf = ForCausalLMLoss(logits, out["labels"], vocab_size=vocab).item()
    ce_all, w_all = [], []
    offset = 0
    for i in range(n):
        t = a["targets"][i].astype(np.int64)
        w = a["weights"][i]
        real = len(ds[i]["input_ids"])
        pos = np.nonzero(w[:real] > 0)[0]
        lg = logits[0, offset + torch.from_numpy(pos)]
        ce_all.append(torch.nn.functional.cross_entropy(lg, torch.from_numpy(t[pos]), reduction="none"))
        w_all.append(torch.from_numpy(w[pos].astype(np.float32)))
        offset += real
    ce, w = torch.cat(ce_all), torch.cat(w_all)
    afm_mean = ce.mean().item()
    check(abs(hf - afm_mean) < 1e-4 * max(1.0, abs(afm_mean)), f"transformers loss {hf} != afm's mean CE {afm_mean}")
    # loss_weights, shifted like labels, give afm's weighted loss.
    lw = torch.tensor([cat("loss_weights")], dtype=torch.float32)[:, 1:]
    lab = out["labels"][:, 1:]
    per = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, vocab), lab.reshape(-1), ignore_index=IGNORE, reduction="none"
    )
    weighted = (per * lw.reshape(-1)).sum() / lw.sum()
    afm_weighted = ((ce * w).sum() / w.sum()).item()
    check(abs(weighted.item() - afm_weighted) < 1e-4 * max(1.0, abs(afm_weighted)),
          f"loss_weights loss {weighted.item()} != afm's weighted loss {afm_weighted}")
    return hf


def check_sft_trainer(ds, val, meta, workdir):
    """TRL's SFTTrainer with the settings the README gives, on a tiny
    randomly initialised GPT-2 (nothing downloaded): every batch its data
    loader builds (one row per batch) is an exported row with its labels and
    position ids, and two training steps run with a finite loss."""
    import math

    from tokenizers import Tokenizer, models
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast
    from trl import SFTConfig, SFTTrainer

    eot = "<|endoftext|>"
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({eot: 0}, unk_token=eot)), eos_token=eot, pad_token=eot
    )
    config = GPT2Config(n_layer=1, n_head=2, n_embd=32, n_positions=meta["row_len"], vocab_size=meta["vocab_size"])
    args = SFTConfig(
        output_dir=str(workdir / "sft"),
        padding_free=True,
        max_length=None,
        dataset_kwargs={"skip_prepare_dataset": True},
        per_device_train_batch_size=1,
        max_steps=2,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        seed=0,
    )
    __import__("torch").manual_seed(0)
    trainer = SFTTrainer(
        model=GPT2LMHeadModel(config), args=args, train_dataset=ds, eval_dataset=val, processing_class=tok
    )
    rows = {tuple(r["input_ids"]): r for r in ds}
    seen = 0
    for batch in trainer.get_train_dataloader():
        ids = tuple(batch["input_ids"][0].tolist())
        check(ids in rows, "SFTTrainer built a batch that is no exported row")
        r = rows[ids]
        check(batch["labels"][0].tolist() == r["labels"], "SFTTrainer's labels differ from the export's")
        check(batch["position_ids"][0].tolist() == r["position_ids"], "SFTTrainer's position_ids differ")
        check("attention_mask" not in batch, "SFTTrainer batch has an attention_mask")
        seen += 1
    check(seen == len(ds), f"SFTTrainer yielded {seen} batches for {len(ds)} rows")
    loss = trainer.train().training_loss
    check(math.isfinite(loss), f"SFTTrainer loss {loss}")
    return loss


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--export", required=True, type=Path)
    p.add_argument("--prepared", required=True, type=Path)
    args = p.parse_args()
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import datasets

    meta = json.loads((args.export / "afm_export.json").read_text())
    vocab = json.loads((args.prepared / "vocab.json").read_text())
    check(meta["format"] == "trl", f"format {meta['format']}")
    check(meta["tokenizer"] == vocab["bpe"] == "r50k_base", "tokenizer name")
    check(meta["agents"] == vocab["agents"], "agents differ from vocab.json")
    check(meta["roles"][2:] == vocab["agents"] and len(meta["roles"]) == 2 + len(vocab["agents"]), "role names")
    check(meta["vocab_size"] == vocab["first_role_token"] + len(vocab["agents"]), "vocab_size")
    check(meta["ignore_index"] == IGNORE, "ignore_index")
    checked = []
    train = val = None
    with tempfile.TemporaryDirectory() as cache:
        for split in ("train", "val"):
            if not (args.prepared / f"{split}.index.json").exists():
                continue
            index, a = read_split(args.prepared, split)
            info = meta["splits"][split]
            check(meta["row_len"] == index["row_len"], "row_len")
            if index["rows"] == 0:
                check(info["file"] is None, f"{split}: no rows but a file")
                continue
            ds = datasets.load_dataset(
                "json", data_files=str(args.export / info["file"]), split="train", cache_dir=cache
            )
            for k in ("input_ids", "labels", "position_ids", "seq_lengths", "agent_ids", "owner_ids", "loss_weights"):
                check(k in ds.column_names, f"{split}: no column {k}")
            # The agent ids name roles of the vocabulary.
            top = max(max(r) for r in ds["agent_ids"])
            check(top < len(meta["roles"]), f"{split}: agent id {top} has no role name")
            tokens, loss = check_split(ds, a, split, info)
            checked.append(f"{split}: {len(ds)} rows, {tokens} tokens, {loss} labels")
            if split == "train":
                train = (ds, a)
            else:
                val = ds
        check(train is not None, "no train split exported")
        hf = check_trl(*train, meta)
        sft = check_sft_trainer(train[0], val, meta, Path(cache))
    print(
        "test_trl_export: ok; "
        + "; ".join(checked)
        + f"; TRL collator + transformers loss {hf:.4f} agree; SFTTrainer 2 steps, loss {sft:.4f}"
    )


if __name__ == "__main__":
    main()
