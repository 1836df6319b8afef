"""Surgery on a causal LM's transformer blocks: find them, freeze all but the top N, record the hidden state a
block receives, run only the top blocks on a given hidden state (the seeds' top-blocks mode).
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

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



class StopForward(Exception):
    pass


@contextlib.contextmanager
def capture_block_inputs(block: nn.Module, stop: bool = False):
    """Record the hidden state each call of `block` receives (a list, one [B, L, H] tensor per call: one for a
    full forward, the prompt then one token per step under generate()). stop=True ends the forward there:
    wrap the call in `except StopForward`."""
    captured: list[torch.Tensor] = []

    def hook(_module, args, kwargs):
        captured.append((args[0] if args else kwargs["hidden_states"]).detach())
        if stop:
            raise StopForward

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


