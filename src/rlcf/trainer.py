"""The one RL loop for every online algorithm, on accelerate.

Per step: 1. rollout -> 2. rewards (score, KL) -> 3. advantages -> 4. epochs x minibatches
-> 5. log, checkpoint. Algorithms differ only through their registry entry (losses/registry.py).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from .accel import adamw, make_accelerator
from .checkpoint import atomic_dir, latest_checkpoint, load_checkpoint, save_checkpoint
from .config import TrainConfig, to_dict
from .data import (Prompt, check_length, load_prompts, load_records, load_rows, parse_columns, prepare_prompts,
                   tokenize_prompts)
from .kl import make_kl_controller, sequence_kl
from .losses import get_algorithm
from .losses.registry import offline_algorithms
from .metrics_log import MetricsLog, trackers
from .generation import make_backend
from .models import build_models, resolve_model_path
from .rewards import RewardError, RewardScaler, RewardSource, check_scores, load_callable
from .rollout import FixedRollouts, RolloutEngine, SampledRollouts, Timings, eos_token_ids, release_memory
from .rundir import RunDir
from .safety import NonFiniteGuard, StopSignals, stopped
from .stages import encode_response
from .types import AdvantageInput, LossBatch
from .validate import validate


class PromptSampler:
    """Deterministic epochs over the prompts: step i's batch is a pure function of (seed, i), so resume is exact."""

    def __init__(self, n: int, per_step: int, seed: int, rank: int = 0, world: int = 1):
        self.n, self.per_step, self.seed, self.rank, self.world = n, per_step, seed, rank, world

    def batch(self, step: int) -> list[int]:
        global_per_step = self.per_step * self.world
        start = step * global_per_step + self.rank * self.per_step
        out = []
        for pos in range(start, start + self.per_step):
            epoch, i = divmod(pos, self.n)
            g = torch.Generator().manual_seed(self.seed * 100003 + epoch)
            out.append(int(torch.randperm(self.n, generator=g)[i]))
        return out


def _mean_metrics(history: list[dict]) -> dict:
    # sorted: every process must reduce the same keys in the same order (set order differs between processes)
    keys = sorted({k for m in history for k in m})
    return {k: torch.stack([m[k].float() for m in history if k in m]).mean() for k in keys}


def save_model(models, out: Path, state_dict: dict | None = None) -> None:
    """The policy as a plain transformers folder (safetensors), written elsewhere and renamed into place.
    state_dict: the policy's full state dict when it was gathered from several processes (FSDP)."""
    with atomic_dir(out) as tmp:
        if state_dict is None:
            models.merged_policy().save_pretrained(tmp)
        else:
            models.policy.save_pretrained(tmp, state_dict=state_dict)
        models.tokenizer.save_pretrained(tmp)


def _update_values(accelerator, loss, grad_norm, mixed_precision: str) -> dict[str, float]:
    """The loss (mean over processes, so all agree) and the gradient norm an optimiser step is checked on. fp16's
    loss scaler skips overflowing steps itself while it calibrates, so there only the loss is checked."""
    out = {"loss": float(accelerator.reduce(loss.detach().float(), "mean"))}
    if mixed_precision != "fp16":
        out["grad_norm"] = float(grad_norm)
    return out


def single_pass(cfg: TrainConfig) -> bool:
    """True when each rollout batch feeds exactly one forward and one optimiser step (one epoch, one minibatch):
    the sampling policy is then the current one, and pi_old (and V_old) come from the update's own forward."""
    return cfg.optim.epochs == 1 and cfg.optim.minibatch_prompts >= cfg.rollout.prompts_per_step and cfg.optim.grad_accum == 1


def train(cfg: TrainConfig) -> Path:
    from accelerate.utils import set_seed

    # the config, the data and reward, then the run folder, are checked before the models load; nothing is
    # written until they have
    validate(cfg)
    if cfg.algo == "ilql":  # offline only, on fixed rows: the supervised loop with Q and V heads
        from .ilql_train import run_ilql

        return run_ilql(cfg)
    algo = get_algorithm(cfg.algo)
    acfg = cfg.algo_config()
    out = Path(cfg.output_dir)
    accelerator = make_accelerator(gradient_accumulation_steps=cfg.optim.grad_accum, mixed_precision=cfg.optim.mixed_precision,
                                   log_with=trackers(cfg.report_to), project_dir=str(out))
    set_seed(cfg.seed)

    # data and reward are checked before any model is loaded, so bad input fails fast
    offline_rows = load_offline_rows(cfg, accelerator.device) if cfg.offline_data else None
    if offline_rows is not None:
        prompts, reward = [Prompt(text=r["prompt"], chat=None) for r in offline_rows], None
    else:
        prompts = load_prompts(cfg.prompts, cfg.prompt_column)
        reward = RewardSource(cfg.reward.function, cfg.reward.model, cfg.reward.batch_size, accelerator.device,
                              cfg.model.trust_remote_code, timeout_s=cfg.reward.timeout_s)
    gold = load_callable(cfg.reward.gold, "gold scorer", cfg.reward.timeout_s) if cfg.reward.gold else None
    run = RunDir(cfg)  # may the output folder be started or resumed? (before the models load)
    models = build_models(cfg.model, cfg.model.critic if algo.needs_critic else None)
    tokenizer = models.tokenizer
    source = cfg.offline_data or cfg.prompts
    if offline_rows is None:
        prompts, prompt_ids = prepare_prompts(prompts, tokenizer, cfg.rollout.max_prompt_tokens, cfg.chat_template,
                                              source, cfg.rollout.long_prompts)
    else:  # offline rows pair a prompt with its response and reward: a long one is an error, never dropped silently
        prompt_ids = tokenize_prompts(prompts, tokenizer, cfg.rollout.max_prompt_tokens, cfg.chat_template, source)
    if offline_rows is not None:
        response_ids = tokenize_responses([r["response"] for r in offline_rows], tokenizer, cfg.rollout.max_new_tokens,
                                          source)
    scaler = RewardScaler(cfg.reward.clip, cfg.reward.scaling)
    kl_ctl = make_kl_controller(getattr(acfg, "beta", 0.0), getattr(acfg, "kl_target", None) if algo.adaptive_kl else None,
                                getattr(acfg, "kl_horizon", 10000))

    critic_params = [p for n, p in models.named_parameters() if p.requires_grad and (n.startswith("critic.") or n.startswith("value_head."))]
    critic_ids = {id(p) for p in critic_params}
    policy_params = [p for p in models.trainable_parameters() if id(p) not in critic_ids]
    groups = [{"params": policy_params, "lr": cfg.optim.lr}]
    if critic_params:
        groups.append({"params": critic_params, "lr": cfg.optim.critic_lr or cfg.optim.lr})
    optimizer = adamw(groups, cfg.optim.lr, cfg.optim.betas, cfg.optim.weight_decay)

    run.start(accelerator.is_main_process)  # everything has loaded: claim the folder
    accelerator.wait_for_everyone()
    start_step = 0
    ckpt = latest_checkpoint(out) if cfg.resume else None
    if ckpt is not None:
        state = load_checkpoint(ckpt, models, optimizer, accelerator.process_index)
        start_step = state["step"]
        kl_ctl.load_state_dict(state["kl_controller"])
        scaler.load_state_dict(state["reward_scaler"])
        accelerator.print(f"resumed from {ckpt} (step {start_step})")
    models, optimizer = accelerator.prepare(models, optimizer)
    inner = accelerator.unwrap_model(models)
    eos_ids = eos_token_ids(tokenizer, inner.base_policy())
    backend = make_backend(cfg.rollout, inner.policy, tokenizer, eos_ids, resolve_model_path(cfg.model.name_or_path),
                           cfg.model.dtype, cfg.seed + accelerator.process_index, cfg.model.trust_remote_code)
    if ckpt is not None and backend.name != "hf":
        backend.update_weights(inner.merged_policy())
    engine = RolloutEngine(inner, reward, scaler, cfg.rollout, with_values=algo.needs_critic, backend=backend)
    engine.gather = accelerator.gather
    # where each step's rollout comes from: sampled online, or fixed rows (offline APA/AWR); the loop is the same
    if offline_rows is None:
        rollouts = SampledRollouts(engine, [p.text for p in prompts], prompt_ids, cfg.rollout.group_size,
                                   accelerator.device)
    else:
        rollouts = FixedRollouts(engine, offline_rows, prompt_ids, response_ids, accelerator.device)
    sampler = PromptSampler(len(rollouts), cfg.rollout.prompts_per_step, cfg.seed, accelerator.process_index,
                            accelerator.num_processes)
    log = MetricsLog(out, accelerator, start_step, f"rlcf-{cfg.algo}", to_dict(cfg), cfg.steps if cfg.progress else None)
    k = rollouts.group_size
    once = single_pass(cfg)
    trained_names = [n for n, p in inner.policy.named_parameters() if p.requires_grad]
    guard = NonFiniteGuard(cfg.optim.max_nonfinite_steps)
    with StopSignals() as signals:
        last_saved = start_step
        for step in range(start_step, cfg.steps):
            got = signals.requested(accelerator)  # a preempted job stops here, at a step boundary, with a checkpoint
            if got:
                if last_saved != step:
                    save_checkpoint(out, step, models, optimizer, accelerator,
                                    {"kl_controller": kl_ctl.state_dict(), "reward_scaler": scaler.state_dict()})
                raise stopped(got, step, out / "checkpoints", "rlcf train with the same --output-dir and settings")
            t_step = time.perf_counter()
            timings = Timings()
            # 1. rollout: K samples per prompt, scores, reference log-probs (and pi_old, values unless the update's own
            #    forward gives them); offline, the same from a batch of data rows
            try:
                rollout = rollouts.rollout(sampler.batch(step), timings, need_old=not once)
            except RewardError as e:
                raise e.at(f"step {step + 1}") from e.__cause__
            release_memory()  # generation's cache, before the update's activations
            raw_all = accelerator.gather(rollout.raw_scores.float())
            bad = ~torch.isfinite(raw_all)
            if not guard.ok({"reward": float(raw_all.sum())}, f"step {step + 1} ({int(bad.sum())} of {bad.numel()} "
                            "rewards non-finite)"):  # no update, no KL-controller or scaler update
                log.write({"step": step + 1, "optim/skipped": 1.0, "reward/nonfinite": int(bad.sum()),
                           "perf/step_s": time.perf_counter() - t_step})
                continue
            resp_mask = rollout.response_mask
            models.train()
            t0 = time.perf_counter()
            fwd = None
            if once:  # the sampling policy is the current one: its forward gives pi_old and V_old (detached)
                fwd = models(rollout.query_ids, rollout.query_mask, rollout.response_ids, resp_mask,
                             cfg.rollout.temperature, algo.needs_critic, rollout.trunk_hidden)
                rollout.logprobs = fwd[0].detach() * resp_mask
                rollout.values = fwd[1].detach() * resp_mask if fwd[1] is not None else None

            # 2. rewards: the KL of the sampling policy to the reference, with the estimator in the key
            beta = kl_ctl.value
            seq_kl = {e: sequence_kl(rollout.logprobs, rollout.ref_logprobs, resp_mask, e) for e in ("k1", "k3")}

            # 3. advantages (algorithm-specific, once per rollout batch)
            adv_out = algo.advantages(
                AdvantageInput(scores=rollout.scores, logprobs=rollout.logprobs, ref_logprobs=rollout.ref_logprobs,
                               mask=resp_mask, group_size=k, kl_coef=beta, values=rollout.values),
                acfg,
            )
            rollout.advantages = adv_out.get("advantages")
            rollout.returns = adv_out.get("returns")

            # 4. epochs x minibatches of whole prompt groups
            history, skipped = [], 0
            shuffle = torch.Generator().manual_seed(cfg.seed * 7919 + step)  # per step, so a resumed run matches
            for _ in range(cfg.optim.epochs):
                perm = torch.randperm(rollout.n_groups, generator=shuffle)
                for s in range(0, rollout.n_groups, cfg.optim.minibatch_prompts):
                    mb = rollout if fwd is not None else rollout.select_groups(perm[s : s + cfg.optim.minibatch_prompts])
                    with accelerator.accumulate(models):
                        logprobs, values = fwd if fwd is not None else models(
                            mb.query_ids, mb.query_mask, mb.response_ids, mb.response_mask, cfg.rollout.temperature,
                            algo.needs_critic, mb.trunk_hidden)
                        fwd = None
                        batch = LossBatch(
                            logprobs=logprobs * mb.response_mask, old_logprobs=mb.logprobs, ref_logprobs=mb.ref_logprobs,
                            mask=mb.response_mask, group_size=k, kl_coef=beta, scores=mb.scores,
                            advantages=mb.advantages, returns=mb.returns, values=values, old_values=mb.values,
                        )
                        loss, m = algo.loss(batch, acfg)
                        accelerator.backward(loss)
                        if accelerator.sync_gradients:  # a non-finite loss or gradient: no step (bounded in a row)
                            norm = accelerator.clip_grad_norm_(models.parameters(), cfg.optim.max_grad_norm or math.inf)
                            if cfg.optim.max_grad_norm > 0:
                                m["policy/grad_norm"] = norm
                            if guard.ok(_update_values(accelerator, loss, norm, cfg.optim.mixed_precision),
                                        f"step {step + 1}"):
                                optimizer.step()
                            else:
                                skipped += 1
                            optimizer.zero_grad()
                    history.append({key: v.detach() for key, v in m.items()})
            if backend.name != "hf":  # vllm: the next rollout samples the new policy (hf samples the module itself)
                backend.update_weights(inner.merged_policy(), None if inner.ref_mode == "lora" else trained_names)
            t_update = time.perf_counter() - t0
            release_memory()

            # 5. log (every process's rows, gathered), checkpoint
            g = accelerator.gather
            all_kl = {e: g(v) for e, v in seq_kl.items()}
            raw, scaled, lengths = g(rollout.raw_scores.float()), g(rollout.scores.float()), g(resp_mask.sum(1))
            kl_ctl.update(float(all_kl["k1"].mean()), raw.numel())
            step_s = time.perf_counter() - t_step
            record = {"step": step + 1, "optim/skipped_updates": skipped}
            means = {k_: accelerator.reduce(v.to(accelerator.device), "mean") for k_, v in _mean_metrics(history).items()}
            record.update({k_ if not k_.startswith("kl/") else "kl/update_" + k_[3:]: float(v) for k_, v in sorted(means.items())})
            record.update({k_: float(accelerator.reduce(adv_out[k_].float().to(accelerator.device), "mean"))
                           for k_ in sorted(adv_out) if "/" in k_})
            record.update({
                "reward/mean": float(raw.mean()),
                "reward/std": float(raw.std()) if raw.numel() > 1 else 0.0,
                "reward/scaled_mean": float(scaled.mean()),
                f"kl/{algo.kl_estimator}_seq": float(all_kl.get(algo.kl_estimator, all_kl["k1"]).mean()),
                "kl/k1_seq": float(all_kl["k1"].mean()),
                "kl/k3_seq": float(all_kl["k3"].mean()),
                "kl/coef": beta,
                "response/length_mean": float(lengths.float().mean()),
                "response/truncated_frac": float(g(rollout.truncated.float()).mean()),
                "perf/step_s": step_s,
                "perf/samples_per_s": raw.numel() / step_s,
                "perf/generate_s": timings.generate,
                "perf/score_s": timings.score,
                "perf/logprobs_s": timings.logprobs,
                "perf/update_s": t_update,
                "perf/processes": accelerator.num_processes,
            })
            if rollout.sampler_logprobs is not None:  # vllm: how far its sampling log-probs are from the policy's
                diff = ((rollout.sampler_logprobs - rollout.logprobs).abs() * resp_mask).sum() / resp_mask.sum()
                record["rollout/sampler_logprob_absdiff"] = float(accelerator.reduce(diff, "mean"))
            if gold is not None:
                gold_scores = check_scores(gold(rollout.prompts, rollout.responses), rollout.prompts, rollout.responses,
                                           cfg.reward.gold)
                record["gold/mean"] = float(g(gold_scores.to(accelerator.device)).mean())
            log.write(record, {"reward": f"{record['reward/mean']:.3f}", "kl": f"{record['kl/k1_seq']:.3f}"})
            if (cfg.save_every and (step + 1) % cfg.save_every == 0) or step + 1 == cfg.steps:
                save_checkpoint(out, step + 1, models, optimizer, accelerator,
                                {"kl_controller": kl_ctl.state_dict(), "reward_scaler": scaler.state_dict()})
                last_saved = step + 1
            accelerator.wait_for_everyone()
    log.close()
    final = out / "final"
    state = accelerator.get_state_dict(models) if accelerator.num_processes > 1 else None
    if accelerator.is_main_process:
        if state is not None and inner.ref_mode != "lora":
            state = {n[len("policy."):]: t for n, t in state.items() if n.startswith("policy.")}
        else:
            state = None
        save_model(inner, final, state)
    accelerator.wait_for_everyone()
    return final


def load_offline_rows(cfg: TrainConfig, device="cpu") -> list[dict]:
    """(prompt, response, reward) rows for offline APA/AWR/ILQL, validated up front. A file of preference pairs
    (prompt, chosen, rejected columns, e.g. `rlcf label`'s output) gives two rows a pair, rewarded +1 (chosen)
    and -1 (rejected), or with --offline-pair-rewards reward_model, by --reward.model's scores."""
    if cfg.algo not in offline_algorithms():
        raise ValueError(f"--offline-data works with --algo {', '.join(offline_algorithms())} (fixed rows); {cfg.algo} "
                         "learns from its own samples. For preference pairs use `rlcf dpo`.")
    mapping = parse_columns(cfg.offline_columns, ("prompt", "response", "reward", "chosen", "rejected"),
                            "--offline-columns")
    first = load_rows(cfg.offline_data)[:1]
    if not first or not {mapping.get("chosen", "chosen"), mapping.get("rejected", "rejected")} <= set(first[0]) \
            or mapping.get("response", "response") in first[0]:
        return load_records(cfg.offline_data, text=("prompt", "response"), numbers=("reward",),
                            columns=cfg.offline_columns, option="--offline-columns")
    pairs = load_records(cfg.offline_data, text=("prompt", "chosen", "rejected"), columns=cfg.offline_columns,
                         option="--offline-columns")
    rows = [{"prompt": p["prompt"], "response": p[side], "reward": sign}
            for p in pairs for side, sign in (("chosen", 1.0), ("rejected", -1.0))]
    if cfg.offline_pair_rewards == "reward_model":
        scorer = RewardSource(None, cfg.reward.model, cfg.reward.batch_size, device, cfg.model.trust_remote_code)
        scores = scorer([r["prompt"] for r in rows], [r["response"] for r in rows])
        for r, v in zip(rows, scores.tolist()):
            r["reward"] = v
    return rows


def tokenize_responses(responses: list[str], tokenizer, max_tokens: int, source: str) -> list[list[int]]:
    """Token ids of each fixed response with EOS appended (the response ends there, as a sampled one would)."""
    out = []
    for i, text in enumerate(responses):
        ids = encode_response(tokenizer, text)
        check_length(len(ids), max_tokens, f"{source}, row {i + 1}, field 'response'", "--rollout.max-new-tokens")
        out.append(ids)
    return out
