"""afm's training recipe on PyTorch's distributed stack.

    torchrun --nproc_per_node N -m afm_dist.train \\
        --config TRAIN_CONFIG.toml --model EXPORT --data TRL_EXPORT --out OUT \\
        [--teacher Coder=EXPORT ...] [--max-steps S] [--fsdp]

- `--config` is afm's own `train_config.toml` (what `afm train` wrote into
  its run directory, or the file you give `afm train --config`): the batch,
  the optimiser, the schedule and the loss come from it, so both trainers
  read one definition.
- `--model` is an `afm export-hf` directory (the starting weights),
  `--data` an `afm export-sft --format trl` directory, each `--teacher` the
  `afm export-hf` of that agent's teacher.
- One process or many (`torchrun`, or any launcher that sets `RANK`, `WORLD_SIZE`,
  `LOCAL_RANK` and `MASTER_ADDR`): DDP by default,
  FSDP (`fully_shard`, one unit per block) with `--fsdp`. gloo on the CPU,
  NCCL on GPUs. Every rank reads the whole export and takes its contiguous
  share of each micro-batch's rows; the loss is normalised by the global
  step's total weight, so N ranks compute the gradient of one process with
  the same global batch.
- Exactly afm's step (crates/afm-train/src/trainer.rs): the same row order,
  boundary weights, loss, global-norm clipping, AdamW with decoupled weight
  decay (not on embeddings, LayerNorms, biases or smear logits), linear
  warmup and cosine decay to `min_lr` over the run's steps. f32 only; no
  dropout; no time budget (steps only).
- OUT gets `metrics.jsonl` (afm's train records), the final weights as an
  `afm_gpt` directory (`afm import-hf --from OUT/final` brings them back)
  and `summary.json`.
"""

import argparse
import contextlib
import json
import math
import os
import shutil
import sys
import time
import tomllib
from pathlib import Path

import torch
import torch.distributed as dist

from .data import RowStream, TrlExport, make_batch
from .loss import Teacher, batch_loss
from .modeling_afm import AfmForCausalLM

PY_FILES = ("configuration_afm.py", "modeling_afm.py")
COPIED = PY_FILES + ("config.json", "afm_vocab.json")


# --- the schedule (crates/afm-train/src/optim.rs) ---------------------------


def lr_at(o, step: int, total_steps: int) -> float:
    warmup = int(o["warmup_steps"])
    if warmup > 0 and step < warmup:
        return o["lr"] * (step + 1) / warmup
    decay = max(total_steps - warmup, 1)
    t = min(max((step - min(warmup, step)) / decay, 0.0), 1.0)
    return o["min_lr"] + 0.5 * (o["lr"] - o["min_lr"]) * (1.0 + math.cos(math.pi * t))


def weight_decay_applies(name: str) -> bool:
    """afm_model's `weight_decay_applies`, on afm names."""
    n = name.removeprefix("transformer.")
    embedding = n.startswith(("wte.", "wpe.", "role_emb.", "smear_tok."))
    ln = any(p.startswith("ln_") for p in n.split("."))
    return not (n.endswith(".bias") or n.endswith(".smear") or embedding or ln)


# --- set-up --------------------------------------------------------------


def read_config(path: Path):
    with open(path, "rb") as f:
        cfg = tomllib.load(f)
    defaults_optim = dict(lr=6e-4, min_lr=6e-5, warmup_steps=100, weight_decay=0.1, beta1=0.9, beta2=0.95, eps=1e-8, grad_clip=1.0)
    cfg["optim"] = {**defaults_optim, **cfg.get("optim", {})}
    cfg.setdefault("loss", {})
    cfg.setdefault("batch_size", 8)
    cfg.setdefault("grad_accum", 1)
    cfg.setdefault("seed", 0)
    cfg.setdefault("log_interval", 10)
    if float(cfg.get("dropout", 0.0)) != 0.0:
        raise SystemExit(f"{path}: field dropout: afm_dist trains without dropout, got {cfg['dropout']}")
    return cfg


def init_distributed():
    """(rank, world, device) from torchrun's environment (one process
    without it)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1:
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def load(path, device):
    path = Path(path)
    cfg = json.loads((path / "config.json").read_text())
    if cfg.get("model_type") != "afm_gpt":
        raise SystemExit(
            f"{path}/config.json: model_type {cfg.get('model_type')!r}: afm_dist trains afm_gpt exports "
            "(afm export-hf writes plain GPT-2 only for models that are exactly GPT-2)"
        )
    model = AfmForCausalLM.from_pretrained(path, dtype=torch.float32)
    return model.to(device)


def wrap(model, world: int, fsdp: bool, device):
    if world == 1:
        return model
    if fsdp:
        from torch.distributed.fsdp import fully_shard

        for block in model.transformer.h:
            fully_shard(block)
        return fully_shard(model)
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(model, device_ids=[device.index] if device.type == "cuda" else None)


def owner_label(role: int, agents) -> str:
    if role == 0:
        return "none"
    if role == 1:
        return "obs"
    i = role - 2
    return agents[i] if 0 <= i < len(agents) else f"role{role}"


def all_sum(values, world, device):
    if world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def full_state_dict(model, fsdp: bool, world: int):
    if world > 1 and fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    inner = model.module if hasattr(model, "module") else model
    return {k: v.detach().cpu() for k, v in inner.state_dict().items()}


def save(state, src: Path, out: Path):
    """Write `state` as an afm_gpt directory beside `src`'s config and code."""
    from safetensors.torch import save_file

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.contiguous().float() for k, v in state.items()}, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    for name in COPIED:
        if (src / name).exists():
            shutil.copy(src / name, tmp / name)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


# --- the recipe ----------------------------------------------------------


def main(argv=None):
    ap = argparse.ArgumentParser(prog="afm_dist.train", description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True, type=Path, help="afm's train_config.toml")
    ap.add_argument("--model", required=True, type=Path, help="afm export-hf directory: the starting weights")
    ap.add_argument("--data", required=True, type=Path, help="afm export-sft --format trl directory")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--teacher", action="append", default=[], metavar="AGENT=EXPORT")
    ap.add_argument("--max-steps", type=int, default=None, help="overrides the config's max_steps")
    ap.add_argument("--log-interval", type=int, default=None)
    ap.add_argument("--fsdp", action="store_true", help="fully_shard instead of DDP")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads per process")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    cfg = read_config(a.config)
    steps = a.max_steps if a.max_steps is not None else int(cfg.get("max_steps", 0))
    if steps <= 0:
        raise SystemExit(f"{a.config}: field max_steps: afm_dist needs a step count (--max-steps), got {steps}")
    log_interval = a.log_interval or int(cfg["log_interval"])
    rank, world, device = init_distributed()
    if rank == 0:
        for key, what in (("bf16", "trains in f32"), ("time_budget", "counts steps, not seconds")):
            if cfg.get(key):
                print(f"afm_dist: {a.config}: {key} = {cfg[key]!r} is not used: afm_dist {what}", file=sys.stderr)
    torch.manual_seed(int(cfg["seed"]))

    # Data, student, teachers.
    data = TrlExport(a.data)
    train = data.split("train")
    if train is None or not train.rows:
        raise SystemExit(f"{a.data}: no train rows")
    student = load(a.model, device)
    scfg = student.config
    if list(scfg.agents[: len(data.agents)]) != list(data.agents):
        raise SystemExit(
            f"{a.model}: the model's agents {scfg.agents} do not start with the data's {data.agents} "
            "(the role ids would disagree)"
        )
    bsz, accum = int(cfg["batch_size"]), int(cfg["grad_accum"])
    if bsz % world:
        raise SystemExit(f"{a.config}: field batch_size: {bsz} rows do not split across {world} processes")
    given = dict(t.split("=", 1) for t in a.teacher)
    wanted = set(cfg.get("teachers", {}))
    if wanted - set(given):
        raise SystemExit(
            f"{a.config}: [teachers] names {sorted(wanted)}: give each one's export with --teacher AGENT=DIR "
            f"(missing {sorted(wanted - set(given))})"
        )
    teachers = {}
    for agent, path in given.items():
        if agent not in scfg.agents:
            raise SystemExit(f"--teacher {agent}: not an agent of the model ({scfg.agents})")
        teachers[2 + list(scfg.agents).index(agent)] = Teacher(agent, load(path, device), scfg)

    names = [n for n, _ in student.named_parameters()]
    o, lcfg = cfg["optim"], cfg["loss"]
    model = wrap(student, world, a.fsdp, device)
    params = dict(model.named_parameters())
    strip = lambda n: n.removeprefix("module.").removeprefix("_fsdp_wrapped_module.")
    decay = [p for n, p in params.items() if weight_decay_applies(strip(n))]
    no_decay = [p for n, p in params.items() if not weight_decay_applies(strip(n))]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": o["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}],
        lr=o["lr"],
        betas=(o["beta1"], o["beta2"]),
        eps=o["eps"],
    )
    stream = RowStream(len(train.rows), int(cfg["seed"]), train.curriculum, train.stages)
    a.out.mkdir(parents=True, exist_ok=True)
    metrics = open(a.out / "metrics.jsonl", "w") if rank == 0 else None
    window = []
    started = time.time()
    tokens_seen = 0
    for step in range(steps):
        # The global step's rows; this rank's contiguous share of each micro-batch.
        micro = [stream.take(bsz) for _ in range(accum)]
        share = bsz // world
        batches = [make_batch(train, rows, lcfg, device) for rows in micro]
        weight_total = sum(b.weight_sum for b in batches)
        # This rank's share (the whole batch for one process: built once).
        mine = batches if world == 1 else [
            make_batch(train, rows[rank * share : (rank + 1) * share], lcfg, device) for rows in micro
        ]
        lr = lr_at(o, step, steps)
        for g in opt.param_groups:
            g["lr"] = lr
        sums = {"loss": 0.0, "ce": 0.0, "kl": 0.0, "klw": 0.0}
        by_owner = {}
        for k, b in enumerate(mine):
            last = k == len(mine) - 1
            sync = model.no_sync() if (world > 1 and not a.fsdp and not last) else contextlib.nullcontext()
            with sync:
                parts = batch_loss(model, scfg, teachers, b, lcfg, weight_total)
                lv = float(parts.loss.detach())
                if not math.isfinite(lv):
                    raise SystemExit(f"loss is {lv} at step {step + 1} (data rows {b.row_ids})")
                # DDP and FSDP average gradients over ranks; the loss is
                # already normalised by the global weight, so undo the mean.
                (parts.loss * world).backward()
            sums["loss"] += lv
            sums["ce"] += parts.ce_sum
            sums["kl"] += parts.kl_sum
            sums["klw"] += parts.kl_weight
            for own, (s, w) in parts.ce_by_owner.items():
                x = by_owner.setdefault(own, [0.0, 0.0])
                x[0] += s
                x[1] += w
        clip = o["grad_clip"] if o["grad_clip"] > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
        if not math.isfinite(norm):
            raise SystemExit(f"gradient norm is {norm} at step {step + 1} (data rows {[r for m in micro for r in m]})")
        if weight_total > 0.0:
            opt.step()
        opt.zero_grad(set_to_none=True)
        # Ranks may see different owners: reduce over every role id.
        all_owners = sorted(set(by_owner) | set(range(2 + len(scfg.agents))))
        flat = [sums["loss"], sums["ce"], sums["kl"], sums["klw"]]
        for own in all_owners:
            flat += by_owner.get(own, [0.0, 0.0])
        flat = all_sum(flat, world, device)
        tokens_seen += sum(b.tokens.numel() for b in batches)
        window.append((flat, norm, all_owners, weight_total))
        done = step + 1
        if done % log_interval == 0 or done == steps:
            if rank == 0:
                loss = sum(w[0][0] for w in window) / len(window)
                ce = sum(w[0][1] for w in window)
                kl, klw = sum(w[0][2] for w in window), sum(w[0][3] for w in window)
                wt = sum(w[3] for w in window)
                per = {}
                for i, own in enumerate(all_owners):
                    s = sum(w[0][4 + 2 * i] for w in window)
                    ww = sum(w[0][5 + 2 * i] for w in window)
                    if ww > 0:
                        per[owner_label(own, scfg.agents)] = s / ww
                rec = {
                    "kind": "train",
                    "step": done,
                    "lr": lr,
                    "loss": loss,
                    "ce": ce / wt if wt > 0 else 0.0,
                    "grad_norm": norm,
                    "tokens": tokens_seen,
                    "elapsed_s": time.time() - started,
                    "per_agent": per,
                }
                if teachers:
                    rec["kl"] = kl / klw if klw > 0 else 0.0
                metrics.write(json.dumps(rec) + "\n")
                metrics.flush()
                print(f"step {done}/{steps}: loss {loss:.6f} grad_norm {norm:.6f} lr {lr:.3e}", flush=True)
            window = []
    state = full_state_dict(model, a.fsdp, world)
    if rank == 0:
        state = {k: v for k, v in state.items() if k.removeprefix("module.") in set(names) or k in set(names)}
        state = {k.removeprefix("module."): v for k, v in state.items()}
        save(state, a.model, a.out / "final")
        (a.out / "summary.json").write_text(
            json.dumps({"steps": steps, "world_size": world, "fsdp": a.fsdp, "seconds": time.time() - started})
        )
        metrics.close()
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
