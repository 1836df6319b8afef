"""Peer benchmark: seconds per optimizer step of TRL's RLOOTrainer on the work rlcf's step_time.py measures.

Run with the peer venv made by benchmarks/setup_trl.sh (TRL 1.16.0, same torch/transformers as rlcf):

    bash benchmarks/setup_trl.sh
    .bench/trl-venv/bin/python benchmarks/trl_rloo.py --steps 4 --warmup 1 --output benchmarks/trl_rloo.json

Work per optimizer step: 16 prompts of rlcf's demo task x 2 samples = 32 completions of at most 48 new
tokens (temperature 1, no top-p/top-k truncation), SmolLM2-135M-Instruct in float32 on CPU (--device cuda and
--dtype bfloat16 for a GPU), full fine-tune, reward = rlcf.demo.task:reward, KL beta 0.05 against a frozen
reference copy, one pass (num_iterations 1) and one optimizer update per step.

Where the time goes in TRL 1.16 (checked against its source): Trainer._run_epoch fires on_step_begin, then
calls RLOOTrainer.training_step -> Trainer.training_step -> RLOOTrainer._prepare_inputs, which (every
steps_per_generation * num_iterations = 1 micro-steps, i.e. every step here) runs
_generate_and_score_completions: model.generate, old and reference log-probs, the reward, RLOO advantages.
Then compute_loss + backward, grad clipping, optimizer.step, lr_scheduler.step, and on_step_end. So the
on_step_begin -> on_step_end interval covers generation + scoring + update of that step. Only the data
loader's fetch of the 32 prompt rows (before on_step_begin) and logging (after on_step_end) are outside it;
`step_end_to_end_s` (previous on_step_end to this one) includes them as a cross-check.

TRL's profiling_context timings (generate, reward, compute_loss, ...) only go to wandb/mlflow/trackio; this
script captures them in-process by wrapping ProfilingContext._log_metrics, without changing what TRL runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

T_START = time.perf_counter()
LOAD_AT_START = os.getloadavg()

import datasets  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
import trl  # noqa: E402
from transformers import TrainerCallback  # noqa: E402
from trl import RLOOConfig, RLOOTrainer  # noqa: E402
from trl.extras import profiling as trl_profiling  # noqa: E402

from rlcf.demo.task import load_prompts  # noqa: E402
from rlcf.demo.task import reward as demo_reward  # noqa: E402

MODEL_DIR = os.environ.get("RLCF_BENCH_MODEL", "/root/.cache/rlcf/smollm2-135m-instruct")
PROMPTS_PER_STEP = 16
NUM_GENERATIONS = 2
MAX_COMPLETION_LENGTH = 48


def rss_gb() -> float:
    """Process peak RSS so far in GB (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


class StepRecorder(TrainerCallback):
    """Wall-clock of each optimizer step (on_step_begin -> on_step_end), TRL's logs, TRL's phase timings."""

    def __init__(self):
        self.steps_s: list[float] = []
        self.step_end_to_end_s: list[float] = []
        self.rss_gb_at_step_end: list[float] = []
        self.logs: list[dict] = []
        self.phases: list[dict[str, float]] = []  # per step: TRL profiling name -> seconds (summed)
        self.completion_tokens: list[dict] = []  # per step, computed from the completion ids the reward sees
        self._t0 = None
        self._last_end = None
        self._phase_now: dict[str, float] | None = None

    # TRL's profiling hook (installed in main) calls this for every profiled block.
    def add_phase(self, name: str, seconds: float):
        if self._phase_now is not None:
            key = name.removeprefix("RLOOTrainer.")
            self._phase_now[key] = self._phase_now.get(key, 0.0) + seconds

    def on_train_begin(self, args, state, control, **kw):
        self._last_end = time.perf_counter()

    def on_step_begin(self, args, state, control, **kw):
        self._phase_now = {}
        self._t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        t = time.perf_counter()
        self.steps_s.append(t - self._t0)
        self.step_end_to_end_s.append(t - self._last_end)
        self._last_end = t
        self.rss_gb_at_step_end.append(rss_gb())
        self.phases.append(self._phase_now or {})
        self._phase_now = None
        print(f"[trl_rloo] step {state.global_step}: {self.steps_s[-1]:.2f}s  peak RSS {rss_gb():.2f} GB",
              file=sys.stderr, flush=True)

    def on_log(self, args, state, control, logs=None, **kw):
        if logs is not None:
            self.logs.append({"step": state.global_step, **{k: v for k, v in logs.items()}})


def make_reward(recorder: StepRecorder):
    """rlcf's demo reward in TRL's reward-function signature. Conversational completions arrive as
    [{"role": "assistant", "content": text}]; the prompt is the user turn's text."""

    def rlcf_demo_reward(prompts, completions, completion_ids=None, **kwargs):
        prompt_texts = [p[-1]["content"] if isinstance(p, list) else p for p in prompts]
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        if completion_ids is not None:
            # TRL's completion ids include the EOS token when the sample stopped (its mean_length counts it).
            lens = [len(ids) for ids in completion_ids]
            recorder.completion_tokens.append({
                "n": len(lens),
                "mean_with_eos": sum(lens) / len(lens),
                "mean_without_eos": sum(len(ids) - (1 if ids and ids[-1] in EOS_IDS else 0)
                                        for ids in completion_ids) / len(lens),
                "truncated": sum(1 for ids in completion_ids if not ids or ids[-1] not in EOS_IDS),
            })
        return demo_reward(prompt_texts, texts)

    return rlcf_demo_reward


EOS_IDS: set[int] = set()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=4, help="optimizer steps to run and time")
    ap.add_argument("--warmup", type=int, default=1, help="leading steps marked as warm-up (kept in steps_s)")
    ap.add_argument("--output", default="benchmarks/trl_rloo.json", help="JSON file to write")
    ap.add_argument("--num-prompts", type=int, default=None,
                    help="use the first N demo train prompts (default: 16 x steps, one pass over distinct prompts)")
    ap.add_argument("--optim", default="adamw_torch_fused",
                    help="Trainer optimizer; adamw_torch_fused (TRL's default) = torch's fused AdamW, as rlcf uses")
    ap.add_argument("--model", default=MODEL_DIR)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                    help="the weights' dtype (policy and reference); no autocast, as rlcf's --model.dtype")
    args = ap.parse_args()

    torch.manual_seed(0)
    n_prompts = args.num_prompts or PROMPTS_PER_STEP * args.steps
    prompts = load_prompts("train")[:n_prompts]
    if len(prompts) < PROMPTS_PER_STEP:
        raise SystemExit(f"need at least {PROMPTS_PER_STEP} prompts, got {len(prompts)}")
    train_ds = datasets.Dataset.from_list([{"prompt": [{"role": "user", "content": p}]} for p in prompts])

    recorder = StepRecorder()
    orig_log_metrics = trl_profiling.ProfilingContext._log_metrics

    def _log_metrics(self, duration):
        recorder.add_phase(self.name, duration)
        return orig_log_metrics(self, duration)

    trl_profiling.ProfilingContext._log_metrics = _log_metrics

    out_dir = tempfile.mkdtemp(prefix="trl_rloo_")
    completions_per_step = PROMPTS_PER_STEP * NUM_GENERATIONS
    config = RLOOConfig(
        output_dir=out_dir,
        # model / precision / device
        model_init_kwargs={"dtype": args.dtype},  # the policy (and the reference, built from the same kwargs)
        use_cpu=args.device == "cpu",
        bf16=False,  # TRL's base config turns bf16 ON by default when fp16 is off
        fp16=False,
        # TRL's base config turns gradient_checkpointing ON by default; transformers 5.23 renamed it
        # activation_checkpointing (the old name is a deprecated alias mirrored from the new one).
        activation_checkpointing=False,
        use_vllm=False,
        # batch geometry: one optimizer step == one generation batch of 16 prompts x 2 samples
        per_device_train_batch_size=completions_per_step,  # counts completions (rows), not prompts
        gradient_accumulation_steps=1,  # => steps_per_generation = 1, generation_batch_size = 32
        num_generations=NUM_GENERATIONS,
        num_iterations=1,
        max_steps=args.steps,
        # sampling
        max_completion_length=MAX_COMPLETION_LENGTH,
        temperature=1.0,
        top_p=1.0,
        top_k=0,  # 0 = no top-k filtering in TRL 1.16
        # objective
        beta=0.05,
        learning_rate=3e-5,
        lr_scheduler_type="constant",  # rlcf keeps lr fixed; TRL's default would decay linearly to 0 over max_steps
        warmup_steps=0,
        optim=args.optim,
        adam_beta1=0.9,
        adam_beta2=0.95,  # rlcf's AdamW betas
        weight_decay=1e-6,  # rlcf's default
        max_grad_norm=1.0,  # same as rlcf's default clip
        # bookkeeping
        logging_steps=1,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
    )
    # Check the derived geometry before spending time.
    assert config.steps_per_generation == 1, config.steps_per_generation
    assert config.generation_batch_size == completions_per_step, config.generation_batch_size

    t_init0 = time.perf_counter()
    trainer = RLOOTrainer(
        model=args.model,
        reward_funcs=make_reward(recorder),
        args=config,
        train_dataset=train_ds,
        callbacks=[recorder],
    )
    EOS_IDS.update(trainer.eos_token_ids)
    model_ckpt = getattr(trainer.model, "is_activation_checkpointing", None)
    assert not model_ckpt, "activation checkpointing is on"
    t_init = time.perf_counter() - t_init0
    rss_after_init = rss_gb()

    t_train0 = time.perf_counter()
    trainer.train()
    t_train = time.perf_counter() - t_train0
    peak = rss_gb()
    peak_gpu = torch.cuda.max_memory_allocated() / 1e9 if args.device == "cuda" else None

    step_logs = [lg for lg in recorder.logs if "train_runtime" not in lg]
    summary_log = next((lg for lg in recorder.logs if "train_runtime" in lg), {})

    def per_step(key):
        return [lg.get(key) for lg in step_logs]

    steps_s = recorder.steps_s
    warm = min(args.warmup, len(steps_s))
    measured = steps_s[warm:] or steps_s
    result = {
        "steps_s": steps_s,
        "warmup_steps": warm,
        "warmup_note": f"steps_s[:{warm}] include one-off warm-up; mean_s/median_s use the steps after them",
        "is_warmup": [i < warm for i in range(len(steps_s))],
        "mean_s": statistics.fmean(measured),
        "median_s": statistics.median(measured),
        "completions_per_s": completions_per_step / statistics.fmean(measured),
        "step_end_to_end_s": recorder.step_end_to_end_s,
        "peak_rss_gb": peak,
        "peak_gpu_gb": peak_gpu,
        "rss_gb_after_trainer_init": rss_after_init,
        "rss_gb_at_step_end": recorder.rss_gb_at_step_end,
        "trl_version": trl.__version__,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "datasets": datasets.__version__,
        "python": platform.python_version(),
        "machine": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "num_threads": torch.get_num_threads(),
        "load_avg_at_start": LOAD_AT_START,  # 1/5/15-min load; above ~cpu_count means the timings are contended
        "load_avg_at_end": os.getloadavg(),
        "time_import_s": t_init0 - T_START,
        "time_trainer_init_s": t_init,
        "time_train_s": t_train,
        # TRL's own logs, per step
        "completion_mean_length": per_step("completions/mean_length"),  # tokens, EOS included when present
        "completion_clipped_ratio": per_step("completions/clipped_ratio"),
        "completion_tokens_from_ids": recorder.completion_tokens,
        "trl_step_time_s": per_step("step_time"),  # TRL: training_step only (no grad clip / optimizer.step)
        "reward_mean": per_step("reward"),
        "kl": per_step("kl"),
        "trl_phase_s": recorder.phases,  # TRL profiling_context blocks, summed per step
        "trl_logs": step_logs,
        "trl_train_summary": summary_log,
        "config": {
            "model": args.model,
            "dtype": args.dtype,
            "device": str(config.device),
            "prompts": f"rlcf.demo.task.load_prompts('train')[:{n_prompts}] as [{{'role':'user','content':p}}]",
            "n_prompts": n_prompts,
            "prompts_per_step": PROMPTS_PER_STEP,
            "num_generations": config.num_generations,
            "completions_per_step": completions_per_step,
            "per_device_train_batch_size": config.per_device_train_batch_size,
            "gradient_accumulation_steps": config.gradient_accumulation_steps,
            "steps_per_generation": config.steps_per_generation,
            "generation_batch_size": config.generation_batch_size,
            "num_iterations": config.num_iterations,
            "max_completion_length": config.max_completion_length,
            "temperature": config.temperature,
            "top_p": config.top_p,
            "top_k": config.top_k,
            "beta": config.beta,
            "epsilon": config.epsilon,
            "learning_rate": config.learning_rate,
            "lr_scheduler_type": getattr(config.lr_scheduler_type, "value", config.lr_scheduler_type),
            "optim": getattr(config.optim, "value", config.optim),
            "adam_betas": [config.adam_beta1, config.adam_beta2],
            "weight_decay": config.weight_decay,
            "max_grad_norm": config.max_grad_norm,
            "bf16": config.bf16,
            "fp16": config.fp16,
            "activation_checkpointing": config.activation_checkpointing,
            "gradient_checkpointing": config.gradient_checkpointing,
            "model_is_activation_checkpointing": model_ckpt,
            "attn_implementation": trainer.model.config._attn_implementation,
            "eos_token_ids": sorted(EOS_IDS),
            "use_vllm": config.use_vllm,
            "shuffle_dataset": config.shuffle_dataset,
            "normalize_advantages": config.normalize_advantages,
            "disable_dropout": config.disable_dropout,
            "seed": config.seed,
            "steps": args.steps,
            "reward": "rlcf.demo.task:reward(prompt_texts, completion_texts)",
        },
    }
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(json.dumps({k: result[k] for k in ("steps_s", "mean_s", "peak_rss_gb", "completion_mean_length",
                                              "trl_phase_s", "num_threads")}, indent=1, default=str))
    print(f"[trl_rloo] wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
