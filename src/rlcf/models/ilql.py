"""ILQL (Implicit Language Q-Learning, Snell et al. 2022) around a causal LM: heads, training model, saving, decoding.

- `ILQLHeads`: Q head(s) h -> 2h -> V, their Polyak-averaged target copies and a V head h -> 2h -> 1 (trlX's shapes),
  all run on the LM's last hidden state after the final norm (`hidden_states[-1]`, exactly what the LM head reads).
- `ILQLModel`: the trainable LM (its own LM head kept for the behaviour-cloning term) + the heads; one trunk forward
  gives the LM logits, the Qs, the target Qs and the Vs at the response states. The loss is `losses.ilql.ilql_loss`.
- `save_ilql` / `load_ilql`: a normal transformers folder (the behaviour-cloned LM, safetensors) plus
  `ilql_heads.safetensors` and `ilql.json`. Nothing is pickled.
- `ILQLDecoding`: the loaded LM + heads whose `forward(...).logits` are lm_logits + beta * (min_i targetQ_i - V), the
  paper's advantage-perturbed policy. `models.load.load_causal_lm` returns it for a folder holding `ilql.json`, so rlcf's
  sampler (`models.sampling.decode`), `rlcf eval` and `rlcf label` sample from and score the ILQL policy unchanged.

State indexing (ILQLModel.forward): the sequence is [prompt (left-padded, Q) | response (right-padded, T)]. State t
(t = 0..T) is everything before response token t, i.e. the hidden state at sequence position Q - 1 + t; the action
taken in state t is response token t. Qs and LM logits exist at states 0..T-1, V at states 0..T. For a row with n
real response tokens (its response_mask sums to n; an EOS, when present, is the last of them), the state after its
last token is index n: that is the row's terminal state (V there is what a truncated row would bootstrap from;
for a row that ended with EOS the loss should treat it as terminal, V = 0). States past n lie in the padding.
"""

from __future__ import annotations

import copy
import json
import math
import os
from pathlib import Path
from types import SimpleNamespace

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from transformers import AutoModelForCausalLM
from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper
from transformers.modeling_outputs import CausalLMOutputWithPast

from ..errors import ModelError
from ..losses.ilql import ilql_decode_logits, polyak_update
from .blocks import train_top_blocks
from .hub import DTYPES
from .logprobs import sequence_inputs
from .reference import NoReference, save_exported
from .sampling import cache_keyword, decode, returned_cache

HEADS_FILE = "ilql_heads.safetensors"
META_FILE = "ilql.json"


def _mlp(hidden: int, out: int) -> nn.Sequential:
    """trlX's head: Linear(h, 2h), ReLU, Linear(2h, out)."""
    return nn.Sequential(nn.Linear(hidden, 2 * hidden), nn.ReLU(), nn.Linear(2 * hidden, out))


def _lm_head_shape(lm: nn.Module) -> tuple[int, int]:
    """(vocab size, hidden size) as the LM head sees them (the width of the logits, not config.vocab_size)."""
    head = lm.get_output_embeddings()
    if head is None or getattr(head, "weight", None) is None or head.weight.dim() != 2:
        raise ValueError(f"{type(lm).__name__}: no linear output embedding (LM head) to size the ILQL heads from")
    vocab, hidden = head.weight.shape
    return int(vocab), int(hidden)


class ILQLHeads(nn.Module):
    """Q heads (1 or 2), their target copies (no grad, moved only by `sync_targets`) and a V head. The heads keep
    their own dtype (float32 as built) and cast the hidden state to it."""

    def __init__(self, hidden_size: int, vocab_size: int, two_qs: bool = True):
        super().__init__()
        self.hidden_size, self.vocab_size, self.two_qs = int(hidden_size), int(vocab_size), bool(two_qs)
        n = 2 if two_qs else 1
        self.q_heads = nn.ModuleList(_mlp(self.hidden_size, self.vocab_size) for _ in range(n))
        self.target_q_heads = copy.deepcopy(self.q_heads)
        for p in self.target_q_heads.parameters():
            p.requires_grad_(False)
        self.v_head = _mlp(self.hidden_size, 1)

    def _in(self, hidden: Tensor) -> Tensor:
        return hidden.to(self.v_head[0].weight.dtype)

    def q_values(self, hidden: Tensor) -> tuple[Tensor, ...]:
        x = self._in(hidden)
        return tuple(head(x) for head in self.q_heads)

    def target_q_values(self, hidden: Tensor) -> tuple[Tensor, ...]:
        """Target Qs: no gradient, neither to the target heads nor back into the trunk."""
        with torch.no_grad():
            x = self._in(hidden)
            return tuple(head(x) for head in self.target_q_heads)

    def values(self, hidden: Tensor) -> Tensor:
        return self.v_head(self._in(hidden)).squeeze(-1)

    def forward(self, hidden: Tensor) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...], Tensor]:
        """hidden [B, S, h] -> (qs: tuple of [B, S, V], target_qs: tuple of [B, S, V], vs: [B, S])."""
        return self.q_values(hidden), self.target_q_values(hidden), self.values(hidden)

    def sync_targets(self, alpha: float) -> None:
        """Polyak averaging: target <- alpha * q + (1 - alpha) * target (alpha = 1 copies the Q heads)."""
        polyak_update(self.target_q_heads, self.q_heads, alpha)

    def decode_logits(self, lm_logits: Tensor, hidden: Tensor, beta: float) -> Tensor:
        """lm_logits + beta * (min_i targetQ_i(s, .) - V(s)) at the states of `hidden` [B, S, h]."""
        return ilql_decode_logits(lm_logits, self.target_q_values(hidden), self.values(hidden), beta)


class ILQLModel(nn.Module):
    """A causal LM + ILQL heads, for training.

    trainable_blocks=None trains the whole LM; trainable_blocks=N freezes the LM except its top N transformer blocks,
    its final norm and its LM head (the heads always train; the target heads never do). When the LM head is tied to
    the input embeddings (e.g. SmolLM2, tie_word_embeddings) it stays frozen in that mode: training it would train the
    embeddings too, and the backward pass would then run through the whole frozen trunk, which the mode exists to avoid.
    """

    def __init__(self, lm: nn.Module, two_qs: bool = True, trainable_blocks: int | None = None):
        super().__init__()
        self.lm = lm
        vocab, hidden = _lm_head_shape(lm)
        self.heads = ILQLHeads(hidden, vocab, two_qs)
        self.trainable_blocks = trainable_blocks
        if trainable_blocks is not None:
            train_top_blocks(lm, trainable_blocks, lm_head=True)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def sync_targets(self, alpha: float) -> None:
        self.heads.sync_targets(alpha)

    def forward(self, query_ids: Tensor, query_mask: Tensor, response_ids: Tensor, response_mask: Tensor) -> dict:
        """One trunk forward over [prompt | response] (the layout and position ids of models.sequence_inputs). Returns:
        lm_logits [B, T, V]: the LM's logits at states 0..T-1 (those of models.response_logprobs);
        qs, target_qs: tuples (1 or 2) of [B, T, V], Q(s_t, .) at states 0..T-1 (target_qs without gradient);
        vs [B, T + 1]: V(s_t) at states 0..T; a row with n real response tokens ends in state n (module docstring).
        """
        input_ids, attention_mask, position_ids = sequence_inputs(query_ids, query_mask, response_ids, response_mask)
        T = response_ids.shape[1]
        out = self.lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                      logits_to_keep=T + 1, output_hidden_states=True, use_cache=False)
        hidden = out.hidden_states[-1][:, -(T + 1) :]  # positions Q - 1 .. Q + T - 1 = states 0..T
        return {
            "lm_logits": out.logits[:, :-1],
            "qs": self.heads.q_values(hidden[:, :-1]),
            "target_qs": self.heads.target_q_values(hidden[:, :-1]),
            "vs": self.heads.values(hidden),
        }


def _meta(model: ILQLModel, beta: float, cfg_dict: dict) -> dict:
    return {"format": "rlcf-ilql", "version": 1, "beta": float(beta), "two_qs": model.heads.two_qs,
            "hidden_size": model.heads.hidden_size, "vocab_size": model.heads.vocab_size, "heads_file": HEADS_FILE,
            "config": cfg_dict}


def save_ilql(model: ILQLModel, tokenizer, folder, beta: float, cfg_dict: dict | None = None,
              gathered: dict | None = None) -> Path:
    """Write into `folder` (created if needed): the plain LM as a transformers folder (safetensors: loads with
    AutoModelForCausalLM as the behaviour-cloned LM), the tokenizer (when given), `ilql_heads.safetensors` (Q, target
    Q and V heads) and, last, `ilql.json` (beta, two_qs, sizes, the ILQL config). Callers wanting an all-or-nothing
    folder write into checkpoint.atomic_dir, as the stages do. gathered: the model's full state dict
    gathered from several processes (a sharded module cannot save itself), else None."""
    if not (isinstance(beta, (int, float)) and math.isfinite(beta)):
        raise ValueError(f"save_ilql: beta={beta!r} must be a finite number")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)

    def part(prefix: str) -> dict | None:
        return None if gathered is None else {n[len(prefix):]: t for n, t in gathered.items() if n.startswith(prefix)}

    save_exported(NoReference(), model.lm, folder, part("lm."))
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    heads = model.heads.state_dict() if gathered is None else part("heads.")
    state = {k: v.detach().to("cpu").contiguous() for k, v in heads.items()}
    save_file(state, str(folder / HEADS_FILE), metadata={"format": "pt"})
    text = json.dumps(_meta(model, beta, dict(cfg_dict or {})), indent=2, default=str)
    (folder / META_FILE).write_text(text + "\n", encoding="utf-8")
    return folder


def is_ilql_folder(path) -> bool:
    """A local folder written by save_ilql (it holds ilql.json)."""
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, META_FILE))


class ILQLDecoding(nn.Module):
    """A causal LM whose logits are lm_logits + beta * (min_i targetQ_i - V): drop-in for code that calls
    `model(input_ids=..., attention_mask=..., position_ids=..., cache=..., use_cache=..., logits_to_keep=...)`
    and reads `.logits` and the returned cache (models.sampling.decode, models.logprobs.response_logprobs), or reads
    `config`,
    `generation_config` (also assignable), `device`, `dtype`, `parameters()`. `generate()` covers HFBackend's
    top-k / top-p call. Not trainable as a policy: it is an inference wrapper (the plain LM is `.lm`).
    Logits come back in float32 (the heads' dtype); beta = 0 gives exactly the LM's logits."""

    def __init__(self, lm: nn.Module, heads: ILQLHeads, beta: float):
        super().__init__()
        if not math.isfinite(float(beta)):
            raise ValueError(f"ILQL beta={beta!r} must be a finite number")
        vocab, hidden = _lm_head_shape(lm)
        if (vocab, hidden) != (heads.vocab_size, heads.hidden_size):
            raise ValueError(f"ILQL heads are sized for vocab {heads.vocab_size}, hidden {heads.hidden_size}, but the "
                             f"LM has vocab {vocab}, hidden {hidden}")
        self.lm, self.heads, self.beta = lm, heads, float(beta)

    # ---- what code may read from an HF model ----
    @property
    def config(self):
        return self.lm.config

    @property
    def generation_config(self):
        return self.lm.generation_config

    @generation_config.setter
    def generation_config(self, value):
        self.lm.generation_config = value

    @property
    def device(self) -> torch.device:
        return next(self.lm.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return self.lm.dtype

    def get_input_embeddings(self):
        return self.lm.get_input_embeddings()

    def get_output_embeddings(self):
        return self.lm.get_output_embeddings()

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None, use_cache=None,
                logits_to_keep=0, output_hidden_states=None, labels=None, return_dict=None, past_key_values=None, **kw):
        if labels is not None:
            raise ValueError("ILQLDecoding is a decoding wrapper and computes no loss: train ILQLModel instead")
        kw[cache_keyword(self.lm)] = cache if cache is not None else past_key_values
        out = self.lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                      use_cache=use_cache, logits_to_keep=logits_to_keep, output_hidden_states=True, **kw)
        logits = out.logits.float()
        if self.beta != 0.0:
            keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
            hidden = out.hidden_states[-1][:, keep]
            logits = self.heads.decode_logits(logits, hidden, self.beta)
        cache_field = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"
        return CausalLMOutputWithPast(logits=logits, hidden_states=out.hidden_states if output_hidden_states else None,
                                      **{cache_field: returned_cache(out)})

    @torch.no_grad()
    def generate(self, input_ids: Tensor, attention_mask: Tensor | None = None, do_sample: bool = True,
                 temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                 max_new_tokens: int | None = None, **kw) -> Tensor:
        """What HFBackend asks of transformers' generate(), on the ILQL logits: [B, Q + T] ids, finished rows padded
        with generation_config.pad_token_id; temperature, then top-k, then top-p (transformers' order), then sampling
        (or argmax with do_sample=False). Other generate() options are refused."""
        if kw:
            raise ValueError(f"ILQLDecoding.generate: option(s) {sorted(kw)} are not supported (only attention_mask, "
                             "do_sample, temperature, top_k, top_p, max_new_tokens)")
        gen = self.generation_config
        max_new_tokens = max_new_tokens if max_new_tokens is not None else getattr(gen, "max_new_tokens", None)
        if not max_new_tokens:
            raise ValueError("ILQLDecoding.generate: pass max_new_tokens")
        eos = gen.eos_token_id
        eos = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
        pad = gen.pad_token_id if gen.pad_token_id is not None else (eos[0] if eos else 0)
        if not do_sample:  # greedy: only the top token survives
            warpers = [TopKLogitsWarper(1)]
        else:
            warpers = ([TopKLogitsWarper(int(top_k))] if top_k else []) + (
                [TopPLogitsWarper(float(top_p))] if top_p is not None and top_p < 1.0 else [])
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        sampling = SimpleNamespace(max_new_tokens=int(max_new_tokens), temperature=temperature if do_sample else 1.0)
        tokens = decode(self, input_ids, mask, sampling, pad, set(eos), warpers)
        return torch.cat([input_ids, tokens], dim=1)


def _read_meta(folder: str) -> dict:
    path = os.path.join(folder, META_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except (ValueError, OSError) as e:
        raise ModelError(f"{path} cannot be read ({type(e).__name__}: {e}); save the ILQL model again") from None
    if not isinstance(meta, dict):
        raise ModelError(f"{path} is not a JSON object; save the ILQL model again")
    missing = [k for k in ("beta", "two_qs", "hidden_size", "vocab_size") if k not in meta]
    if missing:
        raise ModelError(f"{path} lacks {', '.join(missing)}; save the ILQL model again")
    if not isinstance(meta["beta"], (int, float)) or isinstance(meta["beta"], bool) or not math.isfinite(meta["beta"]):
        raise ModelError(f"{path}: beta={meta['beta']!r} is not a finite number")
    return meta


def load_ilql(folder, dtype: str | torch.dtype = "float32", device=None, trust_remote_code: bool = False,
              beta: float | None = None) -> ILQLDecoding:
    """The ILQL policy saved by save_ilql, in eval mode: the LM in `dtype`, the heads in float32; beta: override the
    saved one."""
    folder = str(folder)
    meta = _read_meta(folder)
    torch_dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    lm = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype, trust_remote_code=trust_remote_code)
    heads = ILQLHeads(meta["hidden_size"], meta["vocab_size"], meta["two_qs"])
    heads_path = os.path.join(folder, meta.get("heads_file", HEADS_FILE))
    try:
        state = load_file(heads_path)
        heads.load_state_dict(state, strict=True)
    except (OSError, SafetensorError, RuntimeError) as e:
        raise ModelError(f"{heads_path}: the ILQL heads cannot be loaded ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}); save the ILQL model again") from None
    model = ILQLDecoding(lm, heads, meta["beta"] if beta is None else beta)
    if device is not None:
        model.to(device)
    return model.eval()
