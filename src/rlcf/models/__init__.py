"""Models: where they load from (`hub`), block surgery (`blocks`), response log-probs (`logprobs`), the decode loop
(`sampling`), the critic, the reference modes (`reference`), the policy bundle an RL update uses (`policy`), and
ILQL's heads and decoding policy (`ilql`). The names below are the public API; inside rlcf, modules import from the
submodule that defines a name."""

from ..errors import ModelError
from .blocks import capture_block_inputs, decoder_layers, final_norm, run_top_blocks, train_top_blocks
from .critic import Critic, ValueHead
from .hub import (
                  DTYPES,
                  EMBEDDED,
                  embedded_model_path,
                  load_lm,
                  load_tokenizer,
                  resolve_model_path,
                  resolve_reward_model,
)
from .load import load_causal_lm
from .logprobs import response_logprobs, sequence_inputs, token_logprobs
from .policy import PolicyModels, build_models
from .reference import ReferenceMode, make_reference, select_trainable

__all__ = ["Critic", "DTYPES", "EMBEDDED", "ModelError", "PolicyModels", "ReferenceMode", "ValueHead", "build_models",
           "capture_block_inputs", "decoder_layers", "embedded_model_path", "final_norm", "load_causal_lm", "load_lm",
           "load_tokenizer", "make_reference", "resolve_model_path", "resolve_reward_model", "response_logprobs",
           "run_top_blocks", "select_trainable", "sequence_inputs", "token_logprobs", "train_top_blocks"]
