"""afm_dist: afm's model in transformers and afm's training recipe on
PyTorch's distributed stack.

- `AfmConfig`, `AfmForCausalLM`: the class every `afm export-hf` of a
  non-GPT-2 model carries (also copied into the export itself, for
  `trust_remote_code=True`).
- `afm_dist.train`: `torchrun ... -m afm_dist.train` trains an export on
  afm's TRL export with afm's loss, schedule and optimiser (see its docs).
"""

from .configuration_afm import AfmConfig
from .modeling_afm import AfmForCausalLM, AfmModel, roles_from_ids

__all__ = ["AfmConfig", "AfmForCausalLM", "AfmModel", "roles_from_ids"]
