"""afm's GPT in transformers: the exact model `afm train` trains.

GPT-2 (pre-LayerNorm blocks, GELU-tanh MLP, tied LM head, Conv1D `[in,
out]` weights under GPT-2's names) plus what afm adds, each optional:

- agent-role embeddings `transformer.role_emb.weight` `[n_roles, n_embd]`,
  added to the input of every position. The role ids come from the
  `role_ids` argument, or are derived from the tokens by afm's rule
  (`roles_from_ids`, afm_tokenizer's `RoleTracker`);
- smeared keys `transformer.h.N.attn.smear` `[n_head]`: each head's key is
  `a k_t + (1 - a) k_(t-1)` with `a = sigmoid(smear)`, not across a
  document start;
- smeared token embeddings `transformer.smear_tok.gate` `[n_embd]`: the
  input of position t adds `gate * e_(t-1)`, not across a document start;
- a corpus vocabulary: the embedding has rows only for the ids the data
  used. Inputs and logits stay in afm's id space (GPT-2 ids, afm's
  specials, the agent tokens), so the standard GPT-2 tokenizer's ids work
  and `generate` yields ids; an id without a row scores `missing_logit`
  (probability 0 in f32).

Packed rows (several documents in one row, as afm and TRL's padding-free
collator make them) are kept apart: `position_ids` restart at 0 at every
document, and attention never crosses a restart.

The reference is crates/afm-model/src/gpt.rs; `cargo xtask test` checks
that this file's logits equal afm's within 1e-4 in f32 on a trained model
(crates/afm-cli/tests/dist.rs). This file is copied into every export, so
it depends on torch and transformers only.
"""

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_afm import (
    END,
    EOT,
    FIRST_ROLE_TOKEN,
    OBS,
    ROLE_FIRST_AGENT,
    ROLE_NONE,
    ROLE_OBS,
    TASK,
    AfmConfig,
)


def roles_from_ids(input_ids: torch.Tensor) -> torch.Tensor:
    """Role id of every position (`[B, T]` -> `[B, T]`), afm's rule: a
    marker opens a role (`<|task|>` and `<|endoftext|>` none, `<|obs|>` the
    observation, `<|agent:X|>` X's), every other token (`<|end|>`
    included) keeps the current one; a row starts with none."""
    b, t = input_ids.shape
    marker = torch.full_like(input_ids, -1)
    marker = torch.where((input_ids == TASK) | (input_ids == EOT), ROLE_NONE, marker)
    marker = torch.where(input_ids == OBS, ROLE_OBS, marker)
    agent = input_ids >= FIRST_ROLE_TOKEN
    marker = torch.where(agent, input_ids - FIRST_ROLE_TOKEN + ROLE_FIRST_AGENT, marker)
    idx = torch.arange(t, device=input_ids.device).expand(b, t)
    last = torch.where(marker >= 0, idx, torch.full_like(idx, -1)).cummax(dim=1).values
    role = torch.gather(marker, 1, last.clamp(min=0))
    return torch.where(last >= 0, role, torch.full_like(role, ROLE_NONE))


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions of a (left- or right-) padded batch: 0, 1, ... over the
    real tokens, 0 on padding."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


class Conv1D(nn.Module):
    """GPT-2's linear layer: `weight` is `[in, out]`."""

    def __init__(self, n_in, n_out):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(n_in, n_out))
        self.bias = nn.Parameter(torch.zeros(n_out))

    def forward(self, x):
        return torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight).view(
            *x.shape[:-1], self.weight.shape[1]
        )


class AfmAttention(nn.Module):
    def __init__(self, config: AfmConfig):
        super().__init__()
        self.n_head = config.n_head
        self.c_attn = Conv1D(config.n_embd, 3 * config.n_embd)
        self.c_proj = Conv1D(config.n_embd, config.n_embd)
        self.smear = nn.Parameter(torch.zeros(config.n_head)) if config.smear_keys else None

    def forward(self, x, mask, continues):
        b, t, c = x.shape
        q, k, v = self.c_attn(x).split(c, dim=2)
        heads = lambda z: z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2)
        q, k, v = heads(q), heads(k), heads(v)
        if self.smear is not None:
            a = torch.sigmoid(self.smear).view(1, -1, 1, 1)
            prev = torch.cat([torch.zeros_like(k[:, :, :1]), k[:, :, :-1]], dim=2)
            k = a * k + (1.0 - a) * (prev * continues.view(b, 1, t, 1))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.c_proj(y.transpose(1, 2).reshape(b, t, c))


class AfmMLP(nn.Module):
    def __init__(self, config: AfmConfig):
        super().__init__()
        self.c_fc = Conv1D(config.n_embd, 4 * config.n_embd)
        self.c_proj = Conv1D(4 * config.n_embd, config.n_embd)

    def forward(self, x):
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))


class AfmBlock(nn.Module):
    def __init__(self, config: AfmConfig):
        super().__init__()
        eps = config.layer_norm_epsilon
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=eps)
        self.attn = AfmAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=eps)
        self.mlp = AfmMLP(config)

    def forward(self, x, mask, continues):
        x = x + self.attn(self.ln_1(x), mask, continues)
        return x + self.mlp(self.ln_2(x))


class SmearTokens(nn.Module):
    def __init__(self, n_embd):
        super().__init__()
        self.gate = nn.Parameter(torch.zeros(n_embd))


class AfmPreTrainedModel(PreTrainedModel):
    config_class = AfmConfig
    base_model_prefix = "transformer"
    _no_split_modules = ["AfmBlock"]
    _supports_sdpa = True

    def _init_weights(self, module):
        # GPT-2's initialisation, for weights a checkpoint does not provide.
        if isinstance(module, Conv1D):
            module.weight.data.normal_(0.0, 0.02)
            module.bias.data.zero_()
        elif isinstance(module, nn.LayerNorm):
            module.weight.data.fill_(1.0)
            module.bias.data.zero_()


class AfmModel(AfmPreTrainedModel):
    """The body: embeddings, blocks and the final LayerNorm."""

    def __init__(self, config: AfmConfig):
        super().__init__(config)
        c = config.n_embd
        self.wte = nn.Embedding(config.n_rows, c)
        self.wpe = nn.Embedding(config.n_positions, c)
        self.role_emb = nn.Embedding(config.n_roles, c) if config.n_roles > 0 else None
        self.smear_tok = SmearTokens(c) if config.smear_tokens else None
        self.h = nn.ModuleList([AfmBlock(config) for _ in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(c, eps=config.layer_norm_epsilon)
        # Plain attributes, not buffers: transformers builds models on the
        # meta device and would leave non-persistent buffers empty.
        self._maps = {}
        self.post_init()

    def maps(self, device):
        """(`id_to_row`, `row_to_id`) on `device` (see `id_maps`)."""
        key = str(device)
        if key not in self._maps:
            self._maps[key] = tuple(m.to(device) for m in id_maps(self.config))
        return self._maps[key]

    def rows_of(self, input_ids):
        """Embedding rows of afm ids; an id without a row is an error."""
        id_to_row, _ = self.maps(input_ids.device)
        if input_ids.numel() and (
            int(input_ids.min()) < 0 or int(input_ids.max()) >= id_to_row.numel()
        ):
            raise ValueError(
                f"token ids must be in 0..{id_to_row.numel()}, got "
                f"{int(input_ids.min())}..={int(input_ids.max())}"
            )
        rows = id_to_row[input_ids]
        if bool((rows < 0).any()):
            bad = int(input_ids[rows < 0][0])
            raise ValueError(
                f"token id {bad} has no row in this model's corpus vocabulary: encode text "
                "as afm does (GPT-2 BPE, then each token outside the corpus as its bytes)"
            )
        return rows

    def forward(self, input_ids, position_ids=None, role_ids=None, attention_mask=None):
        """Final hidden states `[B, T, C]` (after `ln_f`)."""
        b, t = input_ids.shape
        if t > self.config.n_positions:
            raise ValueError(
                f"sequence length {t} exceeds the model context {self.config.n_positions}"
            )
        dev = input_ids.device
        if position_ids is None:
            if attention_mask is not None:
                position_ids = positions_from_mask(attention_mask)
            else:
                position_ids = torch.arange(t, device=dev).expand(b, t)
        tok = self.wte(self.rows_of(input_ids))
        continues = (position_ids > 0).to(tok.dtype)
        if self.smear_tok is not None:
            prev = torch.cat([torch.zeros_like(tok[:, :1]), tok[:, :-1]], dim=1)
            tok = tok + self.smear_tok.gate * (prev * continues.unsqueeze(-1))
        x = tok + self.wpe(position_ids)
        if self.role_emb is not None:
            if role_ids is None:
                role_ids = roles_from_ids(input_ids)
            if role_ids.numel() and int(role_ids.max()) >= self.config.n_roles:
                raise ValueError(
                    f"role id {int(role_ids.max())} has no role embedding "
                    f"(n_roles = {self.config.n_roles})"
                )
            x = x + self.role_emb(role_ids)
        # Documents: a new one starts wherever the position restarts at 0.
        docs = (position_ids == 0).long().cumsum(-1)
        allowed = (docs.unsqueeze(2) == docs.unsqueeze(1)) & torch.ones(
            t, t, dtype=torch.bool, device=dev
        ).tril()
        if attention_mask is not None:
            allowed = allowed & attention_mask.bool().unsqueeze(1)
        # Every position sees itself, so padded queries stay finite.
        allowed = allowed | torch.eye(t, dtype=torch.bool, device=dev)
        mask = allowed.unsqueeze(1)
        for block in self.h:
            x = block(x, mask, continues)
        return self.ln_f(x)


def id_maps(config: AfmConfig):
    """(`id_to_row` `[vocab_size]`, -1 where an id has no row;
    `row_to_id` `[n_rows]`) for the config's vocabulary."""
    if config.corpus_ids is None:
        ids = torch.arange(config.n_rows, dtype=torch.long)
        id_to_row = torch.full((config.vocab_size,), -1, dtype=torch.long)
        n = min(config.vocab_size, config.n_rows)
        id_to_row[:n] = ids[:n]
        return id_to_row, ids
    kept = torch.tensor(config.corpus_ids, dtype=torch.long)
    n_special = config.n_rows - len(config.corpus_ids)
    specials = torch.arange(EOT, EOT + n_special, dtype=torch.long)
    row_to_id = torch.cat([kept, specials])
    id_to_row = torch.full((config.vocab_size,), -1, dtype=torch.long)
    id_to_row[row_to_id] = torch.arange(config.n_rows, dtype=torch.long)
    return id_to_row, row_to_id


class AfmForCausalLM(AfmPreTrainedModel, GenerationMixin):
    """afm's GPT with its tied LM head. `logits` are over the id space
    (`config.vocab_size`); `row_logits=True` returns them over the model's
    rows instead (what afm's loss uses), and `select` (flat indices into
    `B*T`) keeps only those positions (`[N, V]`)."""

    def __init__(self, config: AfmConfig):
        super().__init__(config)
        self.transformer = AfmModel(config)
        self.post_init()

    def get_input_embeddings(self):
        return self.transformer.wte

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        role_ids=None,
        labels=None,
        select=None,
        row_logits=False,
        **kwargs,
    ):
        h = self.transformer(input_ids, position_ids, role_ids, attention_mask)
        if select is not None:
            h = h.reshape(-1, h.shape[-1]).index_select(0, select)
        rows = h @ self.transformer.wte.weight.t()
        logits = rows if row_logits else self.to_ids(rows)
        loss = None
        if labels is not None:
            if select is not None or row_logits:
                raise ValueError("labels need id logits of every position")
            loss = F.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                labels[:, 1:].reshape(-1),
                ignore_index=-100,
            )
        return CausalLMOutputWithPast(loss=loss, logits=logits)

    def to_ids(self, rows):
        """Row logits `[..., n_rows]` -> id logits `[..., vocab_size]`."""
        cfg = self.config
        if cfg.corpus_ids is None and cfg.vocab_size == cfg.n_rows:
            return rows
        out = rows.new_full((*rows.shape[:-1], cfg.vocab_size), cfg.missing_logit)
        _, row_to_id = self.transformer.maps(rows.device)
        keep = row_to_id < cfg.vocab_size
        out[..., row_to_id[keep]] = rows[..., keep]
        return out

    def prepare_inputs_for_generation(self, input_ids, attention_mask=None, **kwargs):
        # No KV cache: every step reads the whole prefix (roles, smeared
        # tokens and keys need it; the model is small).
        return {"input_ids": input_ids, "attention_mask": attention_mask}


__all__ = ["AfmForCausalLM", "AfmModel", "AfmPreTrainedModel", "roles_from_ids", "id_maps"]
