"""The reference modes as objects: what of the policy trains, what the frozen reference is, and what leaves the run.

Every loop asks its mode instead of comparing the mode's name (`model.reference`):
- `select_trainable(policy)`: freeze what does not train (returns the module to train: a LoRA policy is wrapped);
- `ref_logprobs(policy, ...)`: the reference's token log-probs of a response (frozen, no gradient);
- `base(policy)`: the plain transformers model underneath (its config, generation config, decoder);
- `export(policy)`: the policy as a plain transformers model to save or push into a sampling engine;
- `changed_tensors(policy)`: the names of the tensors an update can change (None: all of them, after export);
- `capture_block(policy)`: the block whose input the sampler records (top_blocks: the frozen trunk's output);
- `exportable_state(policy, state)`: the policy's full state dict gathered from several processes (a sharded run),
  as the exported model's (LoRA: the adapter merged into the weights it adapts).

The modes:
- `copy`: a full frozen copy of the initial policy; every weight trains.
- `top_blocks`: only the top N blocks and the final norm train; the reference is a frozen copy of just those, run on
  the hidden state the shared frozen trunk computed for the policy (the seeds' cheapest mode).
- `lora`: the policy carries a peft adapter; the reference is the same network with the adapter disabled.
- `none`: every weight trains and no reference is kept (supervised stages); as an RL reference it is the policy
  itself, so every KL to it is 0.
"""

from __future__ import annotations

import copy
from typing import Protocol

import torch
from torch import Tensor, nn

from ..config import ModelConfig
from .blocks import decoder_layers, final_norm, run_top_blocks, train_top_blocks
from .logprobs import response_logprobs, sequence_inputs, token_logprobs


def freeze(module: nn.Module) -> nn.Module:
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


class ReferenceMode(Protocol):
    name: str

    def select_trainable(self, policy: nn.Module) -> nn.Module: ...

    def ref_logprobs(self, policy: nn.Module, query_ids: Tensor, query_mask: Tensor, response_ids: Tensor,
                     response_mask: Tensor, temperature: float = 1.0, hidden: Tensor | None = None) -> Tensor: ...

    def base(self, policy: nn.Module) -> nn.Module: ...

    def export(self, policy: nn.Module) -> nn.Module: ...

    def changed_tensors(self, policy: nn.Module) -> list[str] | None: ...

    def capture_block(self, policy: nn.Module) -> nn.Module | None: ...

    def exportable_state(self, policy: nn.Module, state: dict) -> dict: ...


def _trained_names(policy: nn.Module) -> list[str]:
    return [n for n, p in policy.named_parameters() if p.requires_grad]


class NoReference(nn.Module):
    """Every weight trains; no frozen copy. As an RL reference: the policy itself (KL 0)."""

    name = "none"
    top_blocks: int | None = None
    """How many top blocks alone train (top_blocks mode), else None."""

    def select_trainable(self, policy):
        return policy

    @torch.no_grad()
    def ref_logprobs(self, policy, query_ids, query_mask, response_ids, response_mask, temperature=1.0, hidden=None):
        return response_logprobs(policy, query_ids, query_mask, response_ids, response_mask, temperature)

    def base(self, policy):
        return policy

    def export(self, policy):
        return policy

    def changed_tensors(self, policy):
        return _trained_names(policy)

    def capture_block(self, policy):
        return None

    def exportable_state(self, policy, state):
        return dict(state)


class CopyReference(NoReference):
    """A full frozen copy of the initial policy; every weight of the policy trains."""

    name = "copy"

    def __init__(self, initial: nn.Module):
        super().__init__()
        self.model = freeze(copy.deepcopy(initial))

    @torch.no_grad()
    def ref_logprobs(self, policy, query_ids, query_mask, response_ids, response_mask, temperature=1.0, hidden=None):
        return response_logprobs(self.model, query_ids, query_mask, response_ids, response_mask, temperature)


class TopBlocksReference(NoReference):
    """Only the top `n` blocks and the final norm train; the reference is a frozen copy of just those."""

    name = "top_blocks"

    def __init__(self, n: int):
        super().__init__()
        self.n = self.top_blocks = n
        self.blocks: nn.ModuleList | None = None
        self.norm: nn.Module | None = None

    def select_trainable(self, policy):
        policy = train_top_blocks(policy, self.n)
        layers = decoder_layers(policy)
        self.blocks = freeze(copy.deepcopy(nn.ModuleList(layers[len(layers) - self.n :])))
        self.norm = freeze(copy.deepcopy(final_norm(policy)))
        return policy

    def capture_block(self, policy):
        layers = decoder_layers(policy)
        return layers[len(layers) - self.n]

    def policy_top(self, policy) -> tuple[nn.ModuleList, nn.Module]:
        """The policy's own trainable top blocks and final norm (to run on a recorded trunk output)."""
        layers = decoder_layers(policy)
        return nn.ModuleList(layers[len(layers) - self.n :]), final_norm(policy)

    @torch.no_grad()
    def ref_logprobs(self, policy, query_ids, query_mask, response_ids, response_mask, temperature=1.0, hidden=None):
        if hidden is None:
            raise ValueError("top_blocks reference: pass the frozen trunk's output (PolicyModels.trunk_hidden)")
        input_ids, attention_mask, position_ids = sequence_inputs(query_ids, query_mask, response_ids, response_mask)
        T = response_ids.shape[1]
        with run_top_blocks(policy, self.blocks, self.norm, hidden):
            out = policy(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         logits_to_keep=T + 1, use_cache=False)
        return token_logprobs(out.logits[:, :-1], response_ids, temperature)


class LoraReference(NoReference):
    """A peft LoRA adapter trains; the reference is the same network with the adapter disabled."""

    name = "lora"

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg

    def select_trainable(self, policy):
        from peft import LoraConfig, get_peft_model  # deferred: peft is only needed in this mode

        cfg, targets = self.cfg, self.cfg.lora_target_modules
        return get_peft_model(policy, LoraConfig(
            r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, task_type="CAUSAL_LM",
            target_modules=targets if targets == "all-linear" else [t.strip() for t in targets.split(",")]))

    @torch.no_grad()
    def ref_logprobs(self, policy, query_ids, query_mask, response_ids, response_mask, temperature=1.0, hidden=None):
        with policy.disable_adapter():
            return response_logprobs(policy, query_ids, query_mask, response_ids, response_mask, temperature)

    def base(self, policy):
        return policy.get_base_model()

    def export(self, policy):
        return copy.deepcopy(policy).merge_and_unload()

    def changed_tensors(self, policy):
        return None  # merging changes every adapted weight: push them all

    def exportable_state(self, policy, state):
        """W + scaling * B A for each adapted layer, from the gathered tensors (a sharded module cannot be copied and
        merged as `export` does); the adapter's tensors dropped and the names the plain model's."""
        from peft.tuners.lora import LoraLayer  # deferred: peft is only needed in this mode

        merged = {}
        for name, module in policy.named_modules():
            if isinstance(module, LoraLayer) and "default" in module.lora_A:
                weight = state[f"{name}.base_layer.weight"]
                delta = state[f"{name}.lora_B.default.weight"].float() @ state[f"{name}.lora_A.default.weight"].float()
                delta = delta * module.scaling["default"]
                merged[f"{name}.base_layer.weight"] = (weight.float() + (delta.T if module.fan_in_fan_out else delta)
                                                       ).to(weight.dtype)
        prefix = "base_model.model."
        return {n[len(prefix):].replace(".base_layer.", "."): merged.get(n, t) for n, t in state.items()
                if n.startswith(prefix) and ".lora_" not in n}


def save_exported(mode: ReferenceMode, policy: nn.Module, folder, gathered: dict | None = None) -> None:
    """The policy as a plain transformers folder (safetensors). gathered: the policy's full state dict gathered from
    several processes (a sharded module cannot be exported as itself), made the plain model's by the mode; a tied
    weight is then written once, as an unsharded save writes it."""
    if gathered is None:
        mode.export(policy).save_pretrained(folder)
        return
    base = mode.base(policy)
    state = mode.exportable_state(policy, gathered)
    own = {n.replace(".base_layer.", ".") for n, _ in base.named_parameters() if ".lora_" not in n}
    own |= {n for n, _ in base.named_buffers()}
    base.save_pretrained(folder, state_dict={n: t for n, t in state.items() if n in own})


def make_reference(cfg: ModelConfig, initial: nn.Module | None = None) -> ReferenceMode:
    """The mode `model.reference` names. `initial`: the policy before training (the copy mode copies it)."""
    if cfg.reference == "copy":
        return CopyReference(initial) if initial is not None else NoReference()
    if cfg.reference == "top_blocks":
        return TopBlocksReference(cfg.trainable_blocks)
    if cfg.reference == "lora":
        return LoraReference(cfg)
    if cfg.reference == "none":
        return NoReference()
    raise ValueError(f"model.reference={cfg.reference!r}: choose copy, top_blocks, lora or none")


def select_trainable(policy: nn.Module, cfg: ModelConfig) -> tuple[nn.Module, ReferenceMode]:
    """What of the policy trains, for a stage that keeps no reference (sft, ilql): copy = none = every weight;
    top_blocks = the top model.trainable_blocks blocks and the final norm; lora = a peft adapter (the module
    returned wraps the policy). Returns (the module to train, its mode: ask it for `export`)."""
    mode = make_reference(cfg)
    return mode.select_trainable(policy), mode
