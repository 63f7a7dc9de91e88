"""afm's training rows, read from its TRL export, and afm's batches.

`afm export-sft --format trl` writes one JSONL line per packed row
(crates/afm-data/src/export/trl.rs). This module turns each line back into
afm's own alignment (`targets[i]` is the token predicted at position i,
with weight `weights[i]` and owner `owners[i]`), pads it to afm's row
length with a separate padding document, and builds the same batches
`afm train` builds (crates/afm-train/src/data.rs): the same row order
(SplitMix64, Fisher-Yates, per epoch), the same boundary loss weighting,
the same selected loss positions.
"""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import torch

from .configuration_afm import END, EOT, FIRST_ROLE_TOKEN, OBS

MASK64 = (1 << 64) - 1


class SplitMix64:
    """afm_format's generator (crates/afm-format/src/rng.rs), bit for bit."""

    def __init__(self, state: int):
        self.state = state & MASK64

    def next_u64(self) -> int:
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK64
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        return z ^ (z >> 31)

    def below(self, n: int) -> int:
        zone = MASK64 - MASK64 % n
        while True:
            x = self.next_u64()
            if x < zone:
                return x % n


def _shuffle(v: list, rng: SplitMix64, lo: int, hi: int):
    for i in range(hi - lo - 1, 0, -1):
        j = rng.below(i + 1)
        v[lo + i], v[lo + j] = v[lo + j], v[lo + i]


def epoch_order(rows: int, seed: int, epoch: int, curriculum: bool, stages: int) -> List[int]:
    """afm_train's `epoch_order`: a seeded shuffle, the stored order (a
    strict curriculum), or `stages` buckets each shuffled afresh."""
    out = list(range(rows))
    rng = SplitMix64(seed ^ ((epoch * 0xD1B54A32D192ED03) & MASK64) ^ 0x5EED)
    if not curriculum:
        _shuffle(out, rng, 0, rows)
    elif stages > 0:
        n = max(1, min(stages, max(rows, 1)))
        for k in range(n):
            _shuffle(out, rng, k * rows // n, (k + 1) * rows // n)
    return out


class RowStream:
    """The endless train stream, epoch after epoch (afm_train's RowStream)."""

    def __init__(self, rows: int, seed: int, curriculum: bool, stages: int):
        self.rows, self.seed, self.curriculum, self.stages = rows, seed, curriculum, stages
        self.epoch, self.pos = 0, 0
        self.order = epoch_order(rows, seed, 0, curriculum, stages)

    def take(self, n: int) -> List[int]:
        out = []
        while len(out) < n:
            if self.pos >= self.rows:
                self.epoch, self.pos = self.epoch + 1, 0
                self.order = epoch_order(self.rows, self.seed, self.epoch, self.curriculum, self.stages)
            out.append(self.order[self.pos])
            self.pos += 1
        return out


@dataclass
class Row:
    """One packed row in afm's alignment, padded to the row length."""

    tokens: List[int]
    roles: List[int]
    positions: List[int]
    docs: List[int]
    targets: List[int]
    weights: List[float]
    owners: List[int]


@dataclass
class Split:
    rows: List[Row]
    curriculum: bool
    stages: int


class TrlExport:
    """An `afm export-sft --format trl` directory."""

    def __init__(self, path):
        self.path = Path(path)
        side = self.path / "afm_export.json"
        if not side.exists():
            raise FileNotFoundError(f"{side}: not an afm TRL export (run `afm export-sft --format trl`)")
        self.meta = json.loads(side.read_text())
        self.row_len = int(self.meta["row_len"])
        self.agents = list(self.meta["agents"])
        self.roles = list(self.meta["roles"])

    def split(self, name: str) -> Optional[Split]:
        info = self.meta["splits"].get(name)
        if not info or not info.get("file"):
            return None
        path = self.path / info["file"]
        rows = []
        with open(path) as f:
            for n, line in enumerate(f, 1):
                try:
                    rows.append(self._row(json.loads(line)))
                except (KeyError, ValueError, TypeError) as e:
                    raise ValueError(f"{path}:{n}: {e}") from e
        if len(rows) != info["rows"]:
            raise ValueError(f"{path}: {len(rows)} rows, afm_export.json says {info['rows']}")
        return Split(rows, bool(info.get("curriculum")), int(info.get("curriculum_stages", 0)))

    def _row(self, r) -> Row:
        ids, labels = r["input_ids"], r["labels"]
        n = len(ids)
        if n > self.row_len:
            raise ValueError(f"field input_ids: {n} tokens, longer than row_len {self.row_len}")
        for f in ("labels", "position_ids", "agent_ids", "owner_ids", "loss_weights"):
            if len(r[f]) != n:
                raise ValueError(f"field {f}: {len(r[f])} entries for {n} input_ids")
        if sum(r["seq_lengths"]) != n:
            raise ValueError(f"field seq_lengths: sums to {sum(r['seq_lengths'])}, not {n}")
        docs = []
        for d, length in enumerate(r["seq_lengths"]):
            docs.extend([d] * length)
        # afm's alignment: position i predicts labels[i + 1].
        targets, weights, owners = [], [], []
        for i in range(n):
            j = i + 1
            if j < n and labels[j] != -100 and docs[j] == docs[i]:
                targets.append(int(labels[j]))
                weights.append(float(r["loss_weights"][j]))
                owners.append(int(r["owner_ids"][j]))
            else:
                targets.append(0)
                weights.append(0.0)
                owners.append(0)
        pad = self.row_len - n
        last = docs[-1] + 1 if docs else 0
        return Row(
            tokens=list(ids) + [EOT] * pad,
            roles=list(r["agent_ids"]) + [0] * pad,
            positions=list(r["position_ids"]) + list(range(pad)),
            docs=docs + [last] * pad,
            targets=targets + [0] * pad,
            weights=weights + [0.0] * pad,
            owners=owners + [0] * pad,
        )


def boundary_weights(row: Row, loss) -> List[float]:
    """afm_train's `boundary_weights`: marker targets (`<|agent:X|>`,
    `<|obs|>`, `<|end|>`) get `role_token_weight` times their weight, the
    first `handoff_tokens` positions from an input `<|agent:X|>` (same
    document) `handoff_weight` times. Weights 0 stay 0. Computed in f32."""
    w = torch.tensor(row.weights, dtype=torch.float32)
    rtw = float(loss.get("role_token_weight", 1.0))
    if rtw != 1.0:
        for i, t in enumerate(row.targets):
            if w[i] != 0.0 and (t >= FIRST_ROLE_TOKEN or t == OBS or t == END):
                w[i] = w[i] * torch.tensor(rtw, dtype=torch.float32)
    k = int(loss.get("handoff_tokens", 0))
    hw = float(loss.get("handoff_weight", 1.0))
    if k > 0 and hw != 1.0:
        n = len(row.tokens)
        for i, t in enumerate(row.tokens):
            if t < FIRST_ROLE_TOKEN:
                continue
            for j in range(i, min(i + k, n)):
                if row.docs[j] != row.docs[i]:
                    break
                if w[j] != 0.0:
                    w[j] = w[j] * torch.tensor(hw, dtype=torch.float32)
    return w.tolist()


@dataclass
class Batch:
    """One micro-batch: inputs `[B, T]` and the `N` loss positions."""

    row_ids: List[int]
    tokens: torch.Tensor
    roles: torch.Tensor
    positions: torch.Tensor
    select: torch.Tensor
    targets: torch.Tensor
    weights: torch.Tensor
    owners: List[int]
    weight_sum: float


def make_batch(split: Split, row_ids: List[int], loss, device) -> Batch:
    tokens, roles, positions = [], [], []
    select, targets, weights, owners = [], [], [], []
    t = None
    for bi, r in enumerate(row_ids):
        row = split.rows[r]
        t = len(row.tokens)
        w = boundary_weights(row, loss)
        tokens.append(row.tokens)
        roles.append(row.roles)
        positions.append(row.positions)
        for i, wi in enumerate(w):
            if wi > 0.0:
                select.append(bi * t + i)
                targets.append(row.targets[i])
                weights.append(wi)
                owners.append(row.owners[i])
    as_long = lambda v: torch.tensor(v, dtype=torch.long, device=device)
    wt = torch.tensor(weights, dtype=torch.float32)
    return Batch(
        row_ids=list(row_ids),
        tokens=as_long(tokens),
        roles=as_long(roles),
        positions=as_long(positions),
        select=as_long(select),
        targets=as_long(targets),
        weights=wt.to(device),
        owners=owners,
        weight_sum=float(sum(float(x) for x in wt.tolist())),
    )
