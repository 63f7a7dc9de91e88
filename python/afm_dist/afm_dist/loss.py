"""afm's training loss (crates/afm-train/src/loss.rs and trainer.rs).

Per loss position i with weight w_i (after boundary weighting):

    l_i = alpha * CE_i + beta * T^2 * D_T(teacher_i || student_i)   if i's owner has a teacher
    l_i = CE_i                                                      otherwise
    loss = sum_i w_i * l_i / sum_i w_i

the sums running over every micro-batch of the optimiser step (and, here,
over every rank). Each position is distilled from the teacher of the agent
that owns its target; a teacher reads the whole rows that hold its
positions. Teachers may have another role vocabulary: agent tokens and role
ids are mapped by agent name, and columns a teacher lacks get
`MISSING_LOGIT`, as afm does.
"""

from dataclasses import dataclass, field
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F

from .configuration_afm import FIRST_ROLE_TOKEN, ROLE_FIRST_AGENT
from .data import Batch

MISSING_LOGIT = -1.0e4


def divergence(student, teacher, kind: str, temperature: float, jsd_beta: float):
    """`T^2 * D(teacher || student)` per row (`[N]`); no gradient to the teacher."""
    t = temperature
    ls = F.log_softmax(student.float() / t, dim=-1)
    lt = F.log_softmax(teacher.detach().float() / t, dim=-1)
    if kind == "forward":
        d = (lt.exp() * (lt - ls)).sum(-1)
    elif kind == "reverse":
        d = (ls.exp() * (ls - lt)).sum(-1)
    elif kind == "jsd":
        b = jsd_beta
        lm = torch.logsumexp(torch.stack([lt + torch.log(torch.tensor(b)), ls + torch.log(torch.tensor(1.0 - b))]), 0)
        d = (lt.exp() * (lt - lm)).sum(-1) * b + (ls.exp() * (ls - lm)).sum(-1) * (1.0 - b)
    else:
        raise ValueError(f"loss.divergence: {kind!r} is not forward, reverse or jsd")
    return d * (t * t)


class Teacher:
    """A teacher model (an afm export loaded in transformers) and its maps
    from the student's ids, roles and rows."""

    def __init__(self, agent: str, model, student_cfg):
        self.agent, self.model = agent, model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        tcfg = model.config
        s_agents, t_agents = list(student_cfg.agents), list(tcfg.agents)
        # Student id -> teacher id (agent tokens by name), -1 if absent.
        n = student_cfg.vocab_size
        id_map = torch.arange(n, dtype=torch.long)
        for i in range(len(s_agents)):
            sid = FIRST_ROLE_TOKEN + i
            if sid < n:
                name = s_agents[i]
                id_map[sid] = FIRST_ROLE_TOKEN + t_agents.index(name) if name in t_agents else -1
        id_map[id_map >= tcfg.vocab_size] = -1
        self.id_map = id_map
        # Student role id -> teacher role id.
        role_map = list(range(ROLE_FIRST_AGENT))
        for name in s_agents:
            role_map.append(ROLE_FIRST_AGENT + t_agents.index(name) if name in t_agents else -1)
        self.role_map = torch.tensor(role_map, dtype=torch.long)
        # Student row -> teacher row (the column the teacher scores it in).
        s_id_to_row, s_row_to_id = _maps(student_cfg)
        t_id_to_row, _ = _maps(tcfg)
        tid = id_map[s_row_to_id.clamp(max=n - 1)]
        trow = torch.where(tid >= 0, t_id_to_row[tid.clamp(min=0)], torch.full_like(tid, -1))
        self.col_missing = trow < 0
        self.col_index = trow.clamp(min=0)

    @torch.no_grad()
    def row_logits(self, batch: Batch, positions: List[int], t: int) -> torch.Tensor:
        """Teacher logits `[len(positions), V_student_rows]` at the given
        indices into `batch.select`."""
        flat = batch.select[positions].cpu()
        rows = list(dict.fromkeys((flat // t).tolist()))  # first-seen order
        slot = {r: k for k, r in enumerate(rows)}
        sel = torch.tensor([slot[int(f) // t] * t + int(f) % t for f in flat], dtype=torch.long)
        ridx = torch.tensor(rows, dtype=torch.long)
        tokens = self.id_map[batch.tokens.cpu()[ridx]]
        if bool((tokens < 0).any()):
            bad = int(batch.tokens.cpu()[ridx][tokens < 0][0])
            raise ValueError(f"teacher of agent {self.agent!r} has no token {bad} that appears in its rows")
        kw = {}
        if self.model.config.n_roles > 0:
            roles = self.role_map[batch.roles.cpu()[ridx]]
            if bool((roles < 0).any()):
                raise ValueError(f"teacher of agent {self.agent!r} lacks a role its rows use")
            kw["role_ids"] = roles.to(batch.tokens.device)
        dev = next(self.model.parameters()).device
        out = self.model(
            input_ids=tokens.to(dev),
            position_ids=batch.positions[ridx].to(dev),
            select=sel.to(dev),
            row_logits=True,
            **kw,
        ).logits
        cols = out[:, self.col_index.to(dev)]
        return torch.where(self.col_missing.to(dev), torch.full_like(cols, MISSING_LOGIT), cols)


def _maps(cfg):
    from .modeling_afm import id_maps

    return id_maps(cfg)


@dataclass
class LossParts:
    """A micro-batch's loss (normalised by the step's total weight) and the
    sums afm logs."""

    loss: torch.Tensor
    ce_sum: float = 0.0
    kl_sum: float = 0.0
    kl_weight: float = 0.0
    ce_by_owner: Dict[int, Tuple[float, float]] = field(default_factory=dict)


def batch_loss(model, student_cfg, teachers: Dict[int, Teacher], batch: Batch, lcfg, weight_total: float) -> LossParts:
    """afm's `batch_loss` (unfused form) for one micro-batch. `teachers`
    maps an owner role id to its teacher."""
    n = batch.select.numel()
    dev = batch.tokens.device
    if n == 0 or weight_total <= 0.0:
        zero = sum(p.sum() * 0.0 for p in model.parameters())
        return LossParts(loss=zero)
    t = batch.tokens.shape[1]
    logits = model(
        input_ids=batch.tokens,
        position_ids=batch.positions,
        role_ids=batch.roles if student_cfg.n_roles > 0 else None,
        select=batch.select,
        row_logits=True,
    ).logits
    id_to_row, _ = _maps(student_cfg)
    target_rows = id_to_row.to(dev)[batch.targets]
    ce = F.cross_entropy(logits.float(), target_rows, reduction="none")
    wce = ce * batch.weights
    ce_host = ce.detach().cpu().tolist()
    w_host = batch.weights.cpu().tolist()
    ce_sum, by_owner = 0.0, {}
    for k, c in enumerate(ce_host):
        w = w_host[k]
        ce_sum += w * c
        a, b = by_owner.get(batch.owners[k], (0.0, 0.0))
        by_owner[batch.owners[k]] = (a + w * c, b + w)
    routes: Dict[int, List[int]] = {}
    for k, o in enumerate(batch.owners):
        if o in teachers:
            routes.setdefault(o, []).append(k)
    if not routes:
        return LossParts(wce.sum() / weight_total, ce_sum, 0.0, 0.0, by_owner)
    alpha, beta = float(lcfg.get("alpha", 0.5)), float(lcfg.get("beta", 0.5))
    kind = lcfg.get("divergence", "forward")
    temp, jsd_beta = float(lcfg.get("temperature", 2.0)), float(lcfg.get("jsd_beta", 0.5))
    coef = torch.ones(n, dtype=torch.float32, device=dev)
    total_kl = 0.0
    kl_terms = []
    kl_weight = 0.0
    for owner in sorted(routes):
        pos = routes[owner]
        idx = torch.tensor(pos, dtype=torch.long, device=dev)
        t_logits = teachers[owner].row_logits(batch, pos, t)
        d = divergence(logits.index_select(0, idx), t_logits, kind, temp, jsd_beta)
        coef[idx] = alpha
        kl_weight += sum(w_host[k] for k in pos)
        wd = (d * batch.weights.index_select(0, idx)).sum()
        total_kl += float(wd.detach())
        kl_terms.append(wd)
    total = (wce * coef).sum()
    for k in kl_terms:
        total = total + k * beta
    return LossParts(total / weight_total, ce_sum, total_kl, kl_weight, by_owner)
