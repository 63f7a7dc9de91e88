"""transformers configuration of an afm model (`model_type = "afm_gpt"`).

afm writes this file, `modeling_afm.py` and a `config.json` whose
`auto_map` names them into every `afm export-hf` directory of a model that
plain GPT-2 cannot hold, so `AutoModelForCausalLM.from_pretrained(dir,
trust_remote_code=True)` loads the very model afm trained. The fields
mirror afm's `GptConfig` (crates/afm-model/src/config.rs) plus the id
space afm's tokenizer defines (crates/afm-tokenizer/src/lib.rs).
"""

from transformers import PretrainedConfig

# afm's id space (crates/afm-tokenizer/src/lib.rs): GPT-2's BPE ids, then
# afm's specials, then one `<|agent:NAME|>` token per agent.
EOT = 50256
TASK = 50257
END = 50258
OBS = 50259
FIRST_ROLE_TOKEN = 50260
# Role ids (what the role-embedding table is indexed by).
ROLE_NONE = 0
ROLE_OBS = 1
ROLE_FIRST_AGENT = 2


class AfmConfig(PretrainedConfig):
    """Hyper-parameters of an afm GPT.

    - `n_rows`: rows of the token embedding (afm's `vocab_size`).
    - `vocab_size`: size of the *id* space the model reads and scores
      (GPT-2 ids, afm's specials, the agent tokens). Equal to `n_rows`
      unless the model has a corpus vocabulary.
    - `corpus_ids`: the kept GPT-2 BPE ids (ascending) of a corpus
      vocabulary, or None. Row `r < len(corpus_ids)` is id
      `corpus_ids[r]`; then come `<|endoftext|>`, `<|task|>`, `<|end|>`,
      `<|obs|>` and the agent tokens. An id without a row gets logit
      `missing_logit` (probability 0) and is refused as input.
    - `agents`: the role vocabulary (agent `i` has token
      `FIRST_ROLE_TOKEN + i` and role id `2 + i`).
    - `n_roles`: rows of the role-embedding table (0: none).
    - `smear_keys`, `smear_tokens`: afm's smeared keys and smeared token
      embeddings (see crates/afm-model/src/config.rs).
    """

    model_type = "afm_gpt"
    attribute_map = {
        "hidden_size": "n_embd",
        "num_hidden_layers": "n_layer",
        "num_attention_heads": "n_head",
        "max_position_embeddings": "n_positions",
    }

    def __init__(
        self,
        vocab_size=FIRST_ROLE_TOKEN,
        n_rows=FIRST_ROLE_TOKEN,
        n_positions=1024,
        n_embd=768,
        n_layer=12,
        n_head=12,
        n_roles=0,
        layer_norm_epsilon=1e-5,
        smear_keys=False,
        smear_tokens=False,
        corpus_ids=None,
        agents=None,
        missing_logit=-1.0e4,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.n_rows = n_rows
        self.n_positions = n_positions
        self.n_embd = n_embd
        self.n_layer = n_layer
        self.n_head = n_head
        self.n_roles = n_roles
        self.layer_norm_epsilon = layer_norm_epsilon
        self.smear_keys = smear_keys
        self.smear_tokens = smear_tokens
        self.corpus_ids = corpus_ids
        self.agents = list(agents or [])
        self.missing_logit = missing_logit
        # No KV cache: generation re-runs the whole prefix (see
        # modeling_afm.AfmForCausalLM.prepare_inputs_for_generation).
        kwargs["use_cache"] = False
        kwargs.setdefault("tie_word_embeddings", True)
        kwargs.setdefault("bos_token_id", EOT)
        kwargs.setdefault("eos_token_id", END)
        super().__init__(**kwargs)
