"""Sampling speed against the memory-bandwidth floor: ms per new token and tokens per second of rlcf's decode loop
(the hf backend's), transformers' generate() with its dynamic and its static KV cache, and the floor, on the same work.

The work: R rows of one 32-token prompt each, exactly T new tokens (no EOS stops a row early), temperature 1, no
top-k/top-p, float32 on the CPU (bfloat16 on a GPU with --dtype bfloat16). Models: the embedded SmolLM2-135M and a
model of SmolLM2-1.7B's shape with random weights (`1.7b`).

Two floors per token: memory, reading every weight once plus the KV cache written so far at the machine's copy
bandwidth (the best of five copies of a 1 GiB tensor): (weight bytes + mean KV bytes) / bandwidth; and compute, the
step's matmul FLOPs (2 x parameters x rows, plus attention over the cache) at the machine's measured matmul rate (the
best of five 4096 x 4096 products in the run's dtype). The floor is the larger; a row's `x floor` is its ms per token
over it. On a GPU at 32 rows the memory floor binds; on a 2-core CPU the compute floor does.

    python benchmarks/sampling.py                                  # the CPU grid, writes benchmarks/sampling.md
    python benchmarks/sampling.py --models embedded 1.7b --rows 32 256 --tokens 48 128 --device cuda --dtype bfloat16

Each (model, rows, tokens) cell runs every method `--reps` times after one warm-up; min / median / max of the
per-token time. Never time while anything else runs on the machine.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

PROMPT_TOKENS = 32
OUT = Path(__file__).with_suffix(".md")


def build(model: str, dtype: torch.dtype, device: str):
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    from rlcf.models import embedded_model_path

    if model == "1.7b":  # SmolLM2-1.7B's shape, random weights
        config = LlamaConfig(vocab_size=49152, hidden_size=2048, intermediate_size=8192, num_hidden_layers=24,
                             num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=8192,
                             tie_word_embeddings=True)
        with torch.device(device):
            lm = LlamaForCausalLM(config).to(dtype)
    else:
        lm = AutoModelForCausalLM.from_pretrained(embedded_model_path(), dtype=dtype).to(device)
    lm.eval()
    lm.generation_config.eos_token_id = None  # every row runs its T tokens
    lm.generation_config.pad_token_id = 0
    return lm


def copy_bandwidth(device: str) -> float:
    """Bytes per second of a large tensor copy (read + write counted as the bytes read)."""
    src = torch.empty(1 << 28, dtype=torch.float32, device=device)  # 1 GiB
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(5):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        dst.copy_(src)
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return src.numel() * src.element_size() / best


def matmul_rate(device: str, dtype: torch.dtype) -> float:
    """FLOP/s of a large matrix product."""
    a = torch.randn(4096, 4096, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(5):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        a @ a
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return 2 * 4096**3 / best


def floors_ms(lm, rows: int, tokens: int, bandwidth: float, flops: float) -> tuple[float, float]:
    """(memory floor, compute floor) of one decode step, ms."""
    cfg = lm.config
    params = sum(p.numel() for p in lm.parameters())
    weight_bytes = sum(p.numel() * p.element_size() for p in lm.parameters())
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    per_position = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim * next(lm.parameters()).element_size()
    mean_len = PROMPT_TOKENS + tokens / 2
    memory = (weight_bytes + rows * per_position * mean_len) / bandwidth * 1000
    attention = 4 * cfg.num_hidden_layers * cfg.hidden_size * mean_len  # scores and weighted sum, per row
    compute = rows * (2 * params + attention) / flops * 1000
    return memory, compute


def run(method: str, lm, rows: int, tokens: int, device: str) -> float:
    from rlcf.config import RolloutConfig
    from rlcf.models.sampling import decode

    ids = torch.randint(100, 1000, (rows, PROMPT_TOKENS), device=device)
    mask = torch.ones_like(ids)
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    with torch.no_grad():
        if method == "rlcf decode":
            out = decode(lm, ids, mask, RolloutConfig(max_new_tokens=tokens), pad_id=0, eos_ids=set())
        else:
            out = lm.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_k=0,
                              top_p=1.0, max_new_tokens=tokens, min_new_tokens=tokens,
                              cache_implementation="static" if "static" in method else None)[:, PROMPT_TOKENS:]
    if device == "cuda":
        torch.cuda.synchronize()
    assert out.shape == (rows, tokens), out.shape
    return (time.perf_counter() - t0) * 1000 / tokens


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--models", nargs="+", default=["embedded"])
    p.add_argument("--rows", nargs="+", type=int, default=[32, 256])
    p.add_argument("--tokens", nargs="+", type=int, default=[48, 128])
    p.add_argument("--methods", nargs="+", default=["rlcf decode", "generate (dynamic cache)",
                                                    "generate (static cache)"])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--out", default=str(OUT))
    a = p.parse_args()
    dtype = getattr(torch, a.dtype)
    bandwidth, flops = copy_bandwidth(a.device), matmul_rate(a.device, dtype)
    lines = ["# Sampling speed against the memory-bandwidth floor", "",
             f"Device {a.device} ({torch.get_num_threads()} threads), {a.dtype}, measured copy bandwidth "
             f"{bandwidth / 1e9:.1f} GB/s, matmul rate {flops / 1e9:.0f} GFLOP/s; {PROMPT_TOKENS}-token prompts, exactly T new tokens, {a.reps} timed runs "
             "after one warm-up. ms/token: min / median / max.", "",
             f"Command: `python benchmarks/sampling.py --models {' '.join(a.models)} --rows "
             f"{' '.join(map(str, a.rows))} --tokens {' '.join(map(str, a.tokens))} --device {a.device} "
             f"--dtype {a.dtype}`", "",
             "| model | rows | T | method | ms/token | tokens/s | memory floor | compute floor | x floor |",
             "|---|---|---|---|---|---|---|---|---|"]
    for model in a.models:
        lm = build(model, dtype, a.device)
        for rows in a.rows:
            for tokens in a.tokens:
                memory, compute = floors_ms(lm, rows, tokens, bandwidth, flops)
                floor = max(memory, compute)
                for method in a.methods:
                    torch.manual_seed(0)
                    run(method, lm, rows, min(tokens, 8), a.device)  # warm-up
                    times = [run(method, lm, rows, tokens, a.device) for _ in range(a.reps)]
                    med = statistics.median(times)
                    lines.append(f"| {model} | {rows} | {tokens} | {method} | {min(times):.1f} / {med:.1f} / "
                                 f"{max(times):.1f} | {rows * 1000 / med:.0f} | {memory:.2f} | {compute:.1f} | "
                                 f"{med / floor:.1f}x |")
                    print(lines[-1], flush=True)
                    Path(a.out).write_text("\n".join(lines) + "\n")  # a stopped run keeps the rows it finished
        del lm
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
