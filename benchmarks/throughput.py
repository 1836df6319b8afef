"""Seconds per RL step and peak memory: rlcf (full fine-tune, top-2-blocks) against TRL 1.16's RLOOTrainer and the
bare compute, on the same work, in one run. Writes a Markdown table (and the raw numbers as JSON beside it).

    .venv/bin/python benchmarks/throughput.py --steps 4 --out benchmarks/throughput.md

The work of one step, the same on every row: 16 prompts of the demo task (train split, chat template) x 2
samples = 32 responses of at most 48 new tokens (temperature 1, no top-k/top-p), SmolLM2-135M-Instruct in float32
on the CPU (by default; see below), the demo task's reward, KL beta 0.05 against the frozen initial policy, one
optimizer update (AdamW, lr 3e-5) per step with the rollout used once. rlcf runs P3O V2 with epochs 1 and one
minibatch; TRL runs RLOOTrainer with num_iterations 1 (benchmarks/trl_rloo.py, in its own environment made by
benchmarks/setup_trl.sh: torch 2.13.0, transformers as rlcf's, trl 1.16.0); the bare compute is plain torch and
transformers: generate, one reference forward, one policy forward + backward + AdamW step.

Each row runs in its own process (so its peak RSS is its own), one after the other: never time while anything
else runs on the machine. The first step of each row is a warm-up and is left out of min / median / max.

On a GPU machine the same work runs on the GPU (`--device auto`, the default, takes CUDA where there is one), and
`--dtype bfloat16` loads every row's weights (policy and reference) in bf16 with no autocast, as rlcf's
`--model.dtype bfloat16` does; the table then also gives each row's peak GPU memory (torch's allocator). Where
TRL is installed beside rlcf (no peer venv), `--trl-python python3` runs its row with that interpreter, and
`--model FOLDER` puts another model on every row. benchmarks/throughput_h100.md holds such runs:

    python3 benchmarks/throughput.py --steps 8 --dtype bfloat16 --trl-python python3 --out throughput_gpu.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TRL_PY = ROOT / ".bench" / "trl-venv" / "bin" / "python"
PROMPTS, K, NEW_TOKENS, LR, BETA = 16, 2, 48, 3e-5, 0.05


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


# ---- the rows, each run as a child process ----

def peak_gpu_gb() -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 1e9 if torch.cuda.is_available() else None


def model_path(model: str) -> str:
    from rlcf.models import embedded_model_path

    return str(embedded_model_path()) if model == "embedded" else model


def child_rlcf(reference: str, steps: int, dtype: str, model: str) -> dict:
    from rlcf.config import TrainConfig
    from rlcf.trainer import train

    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(algo="p3o", steps=steps, output_dir=tmp, progress=False, save_every=0, resume=False)
        cfg.p3o.variant, cfg.p3o.beta = "v2", BETA
        cfg.rollout.prompts_per_step, cfg.rollout.group_size, cfg.rollout.max_new_tokens = PROMPTS, K, NEW_TOKENS
        cfg.optim.lr, cfg.optim.epochs, cfg.optim.minibatch_prompts = LR, 1, PROMPTS
        cfg.model.reference, cfg.model.trainable_blocks, cfg.model.dtype = reference, 2, dtype
        cfg.model.name_or_path = model_path(model)
        train(cfg)
        records = [json.loads(line) for line in (Path(tmp) / "metrics.jsonl").read_text().splitlines()]
    return {
        "steps_s": [r["perf/step_s"] for r in records],
        "phases": {name: [r[f"perf/{name}_s"] for r in records] for name in ("generate", "logprobs", "update")},
        "length_mean": [r["response/length_mean"] for r in records],
        "reward_mean": [r["reward/mean"] for r in records],
        "peak_rss_gb": peak_rss_gb(),
        "peak_gpu_gb": peak_gpu_gb(),
    }


def child_bare(steps: int, dtype: str, model: str) -> dict:
    """The floor: what any implementation of this step must compute, written plainly."""
    import copy

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from rlcf.demo.task import load_prompts, reward
    path = model_path(model)
    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"
    device = "cuda" if torch.cuda.is_available() else "cpu"
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)  # phase times need the queue drained
    policy = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype)).to(device)
    ref = copy.deepcopy(policy).eval().requires_grad_(False)
    policy.generation_config = GenerationConfig(pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    opt = torch.optim.AdamW(policy.parameters(), lr=LR, betas=(0.9, 0.95), fused=True)
    prompts = load_prompts("train")
    out = {"steps_s": [], "phases": {"generate": [], "logprobs": [], "update": []}, "length_mean": []}
    for step in range(steps):
        t_step = time.perf_counter()
        batch = [prompts[(step * PROMPTS + i) % len(prompts)] for i in range(PROMPTS) for _ in range(K)]
        texts = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
                 for p in batch]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        t0 = time.perf_counter()
        policy.eval()
        with torch.no_grad():
            seqs = policy.generate(**enc, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                                   max_new_tokens=NEW_TOKENS)
        t1 = time.perf_counter()
        Q, T = enc["input_ids"].shape[1], seqs.shape[1] - enc["input_ids"].shape[1]
        resp = seqs[:, Q:]
        is_eos = (resp == tok.eos_token_id).int()
        mask = (torch.cumsum(is_eos, 1) - is_eos == 0).float()  # up to and including the first EOS
        attn = torch.cat([enc["attention_mask"], mask.long()], 1)
        pos = (attn.cumsum(-1) - 1).clamp(min=0)
        with torch.no_grad():
            ref_logits = ref(input_ids=seqs, attention_mask=attn, position_ids=pos, logits_to_keep=T + 1).logits[:, :-1]
            ref_lp = torch.log_softmax(ref_logits, -1).gather(-1, resp[..., None]).squeeze(-1)
        del ref_logits
        sync()
        t2 = time.perf_counter()
        policy.train()
        logits = policy(input_ids=seqs, attention_mask=attn, position_ids=pos, logits_to_keep=T + 1).logits[:, :-1]
        lp = torch.log_softmax(logits, -1).gather(-1, resp[..., None]).squeeze(-1)
        scores = torch.tensor(reward(batch, tok.batch_decode(resp * mask.long(), skip_special_tokens=True)),
                              device=device)
        seq_lp, seq_ref = (lp * mask).sum(1), (ref_lp * mask).sum(1)
        r = (scores - BETA * (seq_lp - seq_ref).detach()).view(-1, K)
        adv = (r - r.mean(1, keepdim=True)).view(-1)
        loss = -(adv * seq_lp).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        del logits, lp, loss
        sync()
        t3 = time.perf_counter()
        out["steps_s"].append(t3 - t_step)
        for name, v in (("generate", t1 - t0), ("logprobs", t2 - t1), ("update", t3 - t2)):
            out["phases"][name].append(v)
        out["length_mean"].append(float(mask.sum(1).mean()))
    out["peak_rss_gb"], out["peak_gpu_gb"] = peak_rss_gb(), peak_gpu_gb()
    return out


# ---- the driver ----

def run_child(args: list[str], device: str, python: str = sys.executable) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        dest = f.name
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    if device == "cpu":  # rlcf takes the GPU wherever there is one; hide it
        env["CUDA_VISIBLE_DEVICES"] = ""
    cmd = [python, *args, "--json", dest] if args[0] != str(ROOT / "benchmarks" / "trl_rloo.py") \
        else [python, *args, "--output", dest]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env=env, cwd=ROOT)
    data = json.loads(Path(dest).read_text())
    os.unlink(dest)
    return data


def trl_row(steps: int, device: str, dtype: str, python: str, model: str) -> dict:
    if python == str(TRL_PY):
        subprocess.run(["bash", str(ROOT / "benchmarks" / "setup_trl.sh")], check=True)
    raw = run_child([str(ROOT / "benchmarks" / "trl_rloo.py"), "--steps", str(steps), "--warmup", "1",
                     "--device", device, "--dtype", dtype, "--model", model_path(model)], device, python)
    # TRL's own profiling blocks: generate and the reference pass sit inside _prepare_inputs, the update after it
    ph = raw.get("trl_phase_s", [])
    phases = {"generate": [p.get("transformers.generate", 0.0) for p in ph],
              "logprobs": [p.get("_prepare_inputs", 0.0) - p.get("transformers.generate", 0.0)
                           - p.get("_calculate_rewards", 0.0) for p in ph],
              "update": [t - p.get("_prepare_inputs", 0.0) for t, p in zip(raw["steps_s"], ph)]}
    lengths = [c.get("mean_with_eos") for c in raw.get("completion_tokens_from_ids", [])]
    return {"steps_s": raw["steps_s"], "phases": phases, "length_mean": lengths, "peak_rss_gb": raw["peak_rss_gb"],
            "peak_gpu_gb": raw.get("peak_gpu_gb")}


def stats(xs: list[float]) -> str:
    xs = xs[1:] if len(xs) > 1 else xs  # the first step is a warm-up
    if not xs:
        return "-"
    return f"{min(xs):.2f} / {statistics.median(xs):.2f} / {max(xs):.2f}"


def median(xs):
    xs = xs[1:] if len(xs) > 1 else xs
    return statistics.median(xs) if xs else float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=4, help="steps per row, the first a warm-up (so >= 4 for 3 timed)")
    ap.add_argument("--rows", nargs="+", default=["trl", "bare", "rlcf-full", "rlcf-top2"])
    ap.add_argument("--out", default="benchmarks/throughput.md")
    ap.add_argument("--child", choices=["bare", "rlcf-full", "rlcf-top2"], help=argparse.SUPPRESS)
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                    help="auto: CUDA where there is a GPU, else the CPU")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                    help="every row's weights (policy and reference), no autocast")
    ap.add_argument("--model", default="embedded",
                    help="'embedded' (SmolLM2-135M-Instruct) or a local folder; the same model on every row")
    ap.add_argument("--trl-python", default=str(TRL_PY),
                    help="interpreter for TRL's row (default: the peer venv that benchmarks/setup_trl.sh makes)")
    ap.add_argument("--json", help=argparse.SUPPRESS)
    args = ap.parse_args()
    import torch

    if args.child:
        torch.manual_seed(0)
        data = child_bare(args.steps, args.dtype, args.model) if args.child == "bare" else child_rlcf(
            "copy" if args.child == "rlcf-full" else "top_blocks", args.steps, args.dtype, args.model)
        Path(args.json).write_text(json.dumps(data))
        return
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    where = f"{platform.machine()} ({os.cpu_count()} cores)" if device == "cpu" else torch.cuda.get_device_name(0)

    t_start = time.perf_counter()
    results = {}
    for row in args.rows:
        if row == "trl":
            results[row] = trl_row(args.steps, device, args.dtype, args.trl_python, args.model)
        else:
            results[row] = run_child([str(Path(__file__).resolve()), "--child", row, "--steps", str(args.steps),
                                      "--dtype", args.dtype, "--model", args.model], device)
        print(row, stats(results[row]["steps_s"]), f"peak {results[row]['peak_rss_gb']:.2f} GB", flush=True)

    names = {"trl": "TRL 1.16 RLOOTrainer (num_iterations 1, beta 0.05)",
             "bare": "bare compute (generate + reference forward + forward/backward/AdamW, plain torch)",
             "rlcf-full": "rlcf `--algo p3o` (v2), epochs 1, one minibatch, full fine-tune",
             "rlcf-top2": "rlcf `--algo p3o` (v2), same, `--model.reference top_blocks`, 2 blocks"}
    base = median(results["trl"]["steps_s"]) if "trl" in results else None
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {where}, {args.dtype} weights, torch {torch.__version__}, torch "
        f"threads {os.environ.get('OMP_NUM_THREADS', 'default')}, with `python benchmarks/throughput.py "
        f"{' '.join(sys.argv[1:])}` ({(time.perf_counter() - t_start) / 60:.1f} min in all). Seconds per step: "
        f"min / median / max of steps 2..{args.steps} (step 1 is a warm-up).", "",
        "| run | s/step min / median / max | x TRL (median) | generate | log-probs (old, ref) | update | peak RSS | "
        + ("peak GPU memory | " if device == "cuda" else "") + "response tokens |",
        "|---|---|---|---|---|---|---|---|" + ("---|" if device == "cuda" else ""),
    ]
    for row, r in results.items():
        speed = f"{base / median(r['steps_s']):.2f}x" if base else "-"
        ph = [stats(r["phases"].get(p, [])) for p in ("generate", "logprobs", "update")]
        lengths = [x for x in r.get("length_mean", []) if x is not None]
        length = f"{statistics.mean(lengths):.1f}" if lengths else "-"
        gpu = f"{r['peak_gpu_gb']:.2f} GB | " if device == "cuda" else ""
        lines.append(f"| {names.get(row, row)} | {stats(r['steps_s'])} | {speed} | {ph[0]} | {ph[1]} | {ph[2]} | "
                     f"{r['peak_rss_gb']:.2f} GB | {gpu}{length} |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    Path(args.out).with_suffix(".json").write_text(json.dumps(results, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
