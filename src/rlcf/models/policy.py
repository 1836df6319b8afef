"""The models an RL update needs: the policy, its reference (a `ReferenceMode`), and the critic.

Sequences are [prompt (left-padded, Q) | response (right-padded, T)]; position ids follow the attention mask, so
scoring sees the same positions sampling used.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from ..config import ModelConfig
from .blocks import StopForward, capture_block_inputs, run_top_blocks
from .critic import Critic, ValueHead
from .hub import load_lm, load_tokenizer
from .logprobs import sequence_inputs, token_logprobs
from .reference import ReferenceMode, make_reference, save_exported


def enable_gradient_checkpointing(model: nn.Module) -> nn.Module:
    """transformers' activation checkpointing on a model's blocks (active in train mode only, so sampling and the
    frozen passes are untouched). Non-reentrant: it needs no input that requires grad, so frozen embeddings, the
    top-blocks mode and LoRA work as they are."""
    if hasattr(model, "activation_checkpointing_enable"):  # the name since transformers 5.2x
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def policy_part(state: dict) -> dict:
    """The policy's own tensors of a PolicyModels state dict, under the policy's names."""
    return {n[len("policy."):]: t for n, t in state.items() if n.startswith("policy.")}


class PolicyModels(nn.Module):
    """Policy + reference (+ critic): the forward passes the rollout engine and the update need. The reference
    mode (`self.reference`) says what trains and what the reference is; nothing here compares its name."""

    def __init__(self, policy, tokenizer, cfg: ModelConfig, critic_kind: str | None):
        super().__init__()
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.reference: ReferenceMode = make_reference(cfg, initial=policy)
        self.policy = self.reference.select_trainable(policy)
        self.critic = None
        self.value_head = None
        if critic_kind == "separate":
            self.critic = Critic(self.base_policy())
        elif critic_kind == "value_head":
            self.value_head = ValueHead(self.base_policy().config.hidden_size)
        elif critic_kind is not None:
            raise ValueError(f"model.critic={critic_kind!r}: choose separate or value_head")
        if cfg.gradient_checkpointing:
            enable_gradient_checkpointing(self.base_policy())
            if self.critic is not None:
                enable_gradient_checkpointing(self.critic.trunk)

    @property
    def _no_split_modules(self) -> list[str]:
        """The units accelerate's FSDP auto-wrap shards on their own (its transformer-based policy reads this name):
        every transformer block, and every model that rlcf calls on its own (the policy, the reference copy, the
        critic and the value head), so each gathers its own parameters when it runs, whichever method calls it."""
        names = list(getattr(self.base_policy(), "_no_split_modules", None) or [])
        for part in (self.policy, getattr(self.reference, "model", None), self.critic, self.value_head):
            if part is not None:
                names.append(type(part).__name__)
        return list(dict.fromkeys(names))

    entry_points = ("sample", "old_and_ref_logprobs", "ref_logprobs", "trunk_hidden")
    """The methods besides forward() that run the models from outside: a sharded run registers each with FSDP2 as a
    forward of this module (train/accel.py), so this module's parameters are gathered and it stays the root."""

    def sample(self, generate, *args, **kwargs):
        """generate(*args, **kwargs): a generation backend's sampling, run as one of this module's passes."""
        return generate(*args, **kwargs)

    def train(self, mode: bool = True):
        """Train mode for the policy and critic only: the frozen reference stays in eval mode (no dropout)."""
        super().train(mode)
        self.reference.eval()
        return self

    def base_policy(self):
        """The plain transformers model underneath the policy (its config and generation config)."""
        return self.reference.base(self.policy)

    def trainable_parameters(self):
        return [p for p in self.parameters() if p.requires_grad]

    def first_trainable_block(self) -> nn.Module | None:
        """The block whose input the sampler records (top_blocks: the frozen trunk's output), or None."""
        return self.reference.capture_block(self.policy)

    def forward(self, query_ids, query_mask, response_ids, response_mask, temperature=1.0, with_values=False,
                hidden=None):
        """Policy token log-probs [B, T] of the response, and values [B, T] when asked.

        hidden (top_blocks only): the frozen trunk's output [B, Q + T, H] for these rows (`trunk_hidden`); the
        forward then runs only the trainable top blocks, the final norm and the head on it.
        """
        input_ids, attention_mask, position_ids = sequence_inputs(query_ids, query_mask, response_ids, response_mask)
        T = response_ids.shape[1]
        want_hidden = with_values and self.value_head is not None
        top = contextlib.nullcontext()
        if hidden is not None:
            top = run_top_blocks(self.policy, *self.reference.policy_top(self.policy), hidden)
        with top:
            out = self.policy(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                              logits_to_keep=T + 1, output_hidden_states=want_hidden, use_cache=False)
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
        """The input [B, Q + T, H] of the captured block (top_blocks: the frozen trunk's output), or None in a mode
        that captures none. Computed once per rollout batch; every epoch and minibatch then reruns only the top
        blocks on it."""
        block = self.first_trainable_block()
        if block is None:
            return None
        input_ids, attention_mask, position_ids = sequence_inputs(query_ids, query_mask, response_ids, response_mask)
        with capture_block_inputs(block, stop=True) as captured:
            try:
                self.policy(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                            use_cache=False)
            except StopForward:
                pass
        return captured[0]

    @torch.no_grad()
    def ref_logprobs(self, query_ids, query_mask, response_ids, response_mask, temperature=1.0, hidden=None):
        """Reference token log-probs [B, T] of the response; frozen, no gradient."""
        if hidden is None:
            hidden = self.trunk_hidden(query_ids, query_mask, response_ids, response_mask)
        return self.reference.ref_logprobs(self.policy, query_ids, query_mask, response_ids, response_mask,
                                           temperature, hidden)

    @torch.no_grad()
    def old_and_ref_logprobs(self, query_ids, query_mask, response_ids, response_mask, temperature=1.0,
                             with_values=False, need_old=True, hidden=None):
        """(pi_old log-probs or None, pi_ref log-probs, values or None, trunk hidden or None), one pass each.

        need_old=False skips the policy's pass (the update takes pi_old from its own forward). top_blocks: the
        frozen trunk runs once (or not at all when `hidden` came with the samples) and serves both.
        """
        if hidden is None:
            hidden = self.trunk_hidden(query_ids, query_mask, response_ids, response_mask)
        logprobs = values = None
        if need_old:
            logprobs, values = self.forward(query_ids, query_mask, response_ids, response_mask, temperature,
                                            with_values, hidden)
        ref = self.reference.ref_logprobs(self.policy, query_ids, query_mask, response_ids, response_mask,
                                          temperature, hidden)
        return logprobs, ref, values, hidden

    def merged_policy(self):
        """The policy as a plain transformers model (a LoRA adapter merged into a copy)."""
        return self.reference.export(self.policy)

    def export_state(self, gathered: dict | None = None) -> dict:
        """The exported plain model's state dict (a LoRA adapter merged). gathered: this module's full state dict
        gathered from every process (a sharded run: its module cannot be exported as itself); a tied weight then
        holds one tensor under each of its names, as a module's own state dict does."""
        if gathered is None:
            return self.merged_policy().state_dict()
        state = self.reference.exportable_state(self.policy, policy_part(gathered))
        first: dict[int, str] = {}
        for name, p in self.base_policy().named_parameters(remove_duplicate=False):
            name = name.replace(".base_layer.", ".")
            if name in state:
                state[name] = state[first.setdefault(id(p), name)]
        return state

    def save_policy(self, folder, gathered: dict | None = None) -> None:
        """The policy as a plain transformers folder, with its tokenizer. gathered: this module's full state dict
        gathered from several processes (see reference.save_exported)."""
        save_exported(self.reference, self.policy, folder, None if gathered is None else policy_part(gathered))
        self.tokenizer.save_pretrained(folder)

    def changed_tensors(self) -> list[str] | None:
        """Names (in the exported model) of the tensors an update changes; None: all of them."""
        return self.reference.changed_tensors(self.policy)


def build_models(cfg: ModelConfig, critic_kind: str | None) -> PolicyModels:
    tokenizer = load_tokenizer(cfg.name_or_path, cfg.trust_remote_code)
    policy = load_lm(cfg.name_or_path, cfg.dtype, cfg.trust_remote_code)  # the plain LM (an ILQL folder's too)
    if policy.generation_config.pad_token_id is None:
        policy.generation_config.pad_token_id = tokenizer.pad_token_id
    return PolicyModels(policy, tokenizer, cfg, critic_kind)
