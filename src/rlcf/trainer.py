"""The one RL loop for every online algorithm, on accelerate.

Per step: 1. rollout -> 2. rewards (score, KL) -> 3. advantages -> 4. epochs x minibatches -> 5. log, checkpoint.
Algorithms differ only through their registry entry (losses/registry.py); the reference mode only through its object
(models/reference.py); what surrounds the steps (resume, signals, the non-finite guard, checkpoints, the final save)
is the scaffold the supervised loop shares (train/loop.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from accelerate.utils import set_seed

from .config import TrainConfig, to_dict
from .data.loading import Prompt, load_prompts, prepare_prompts, tokenize_prompts
from .data.tokens import tokenize_responses
from .generation import make_backend
from .generation.base import GenerationBackend
from .ilql_train import run_ilql
from .kl import make_kl_controller, sequence_kl
from .losses.registry import Algorithm, get_algorithm
from .models.hub import resolve_model_path
from .models.policy import PolicyModels, build_models
from .rewards.sources import RewardError, RewardScaler, RewardSource, check_scores, load_callable
from .train.accel import adamw, full_state_everywhere, is_sharded
from .train.loop import LoopSettings, TrainingLoop
from .train.offline import load_offline_rows
from .train.rl_eval import HeldOut, evaluate_policy, truncate_samples
from .train.rollout import FixedRollouts, RolloutEngine, SampledRollouts, Timings, eos_token_ids, release_memory
from .train.rundir import RunDir
from .train.safety import NonFiniteGuard, check_new_tokens
from .types import AdvantageInput, LossBatch, Rollout
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


def single_pass(cfg: TrainConfig) -> bool:
    """True when each rollout batch feeds exactly one forward and one optimiser step (one epoch, one minibatch):
    the sampling policy is then the current one, and pi_old (and V_old) come from the update's own forward."""
    return cfg.optim.epochs == 1 and cfg.optim.minibatch_prompts >= cfg.rollout.prompts_per_step and cfg.optim.grad_accum == 1


@dataclass
class RLRun:
    """Everything a run's steps use, built by `setup` before the first step."""

    cfg: TrainConfig
    algo: Algorithm
    loop: TrainingLoop
    models: PolicyModels
    """The unwrapped models (policy, reference mode, critic); `loop.model` is the same under accelerate."""
    rollouts: SampledRollouts | FixedRollouts
    sampler: PromptSampler
    backend: GenerationBackend
    kl_ctl: object
    scaler: RewardScaler
    gold: object = None
    reward_guard: NonFiniteGuard | None = None
    """Counts steps in a row whose rewards were not finite, apart from the update guard (a finite reward must not
    reset the count of non-finite updates)."""
    held: HeldOut | None = None
    """Held-out prompts for --eval-every, or None."""


def train(cfg: TrainConfig) -> Path:
    """Train a policy with `cfg.algo` and return the folder of the final model (OUTPUT_DIR/final)."""
    validate(cfg)  # types, ranges and rules; then data, reward and run folder are checked in setup, before the models
    if cfg.algo == "ilql":  # offline only, on fixed rows: the supervised loop with Q and V heads
        return run_ilql(cfg)
    rl = setup(cfg)
    loop, acc, inner = rl.loop, rl.loop.accelerator, rl.models
    with loop:
        for step in range(loop.start_step, cfg.steps):
            loop.check_stop(step)  # a preempted job stops here, at a step boundary, with a checkpoint
            t_step, timings = time.perf_counter(), Timings()
            # 1. rollout: K samples per prompt, scores, reference log-probs (and pi_old, values unless the update's
            #    own forward gives them); offline, the same from a batch of data rows
            try:
                rollout = rl.rollouts.rollout(rl.sampler.batch(step), timings, need_old=not single_pass(cfg))
            except RewardError as e:
                raise e.at(f"step {step + 1}") from e.__cause__
            release_memory()  # generation's cache, before the update's activations
            if not rewards_finite(rl, rollout, step, t_step):
                continue  # no update, no KL-controller or scaler update
            t0 = time.perf_counter()
            loop.model.train()
            fwd = current_forward(rl, rollout) if single_pass(cfg) else None
            # 2. rewards: the KL of the sampling policy to the reference, with the estimator in the key
            beta = rl.kl_ctl.value
            seq_kl = {e: sequence_kl(rollout.logprobs, rollout.ref_logprobs, rollout.response_mask, e)
                      for e in ("k1", "k3")}
            # 3. advantages (algorithm-specific, once per rollout batch)
            adv_out = rl.algo.advantages(AdvantageInput(
                scores=rollout.scores, logprobs=rollout.logprobs, ref_logprobs=rollout.ref_logprobs,
                mask=rollout.response_mask, group_size=rollout.group_size, kl_coef=beta, values=rollout.values,
                total=partial(acc.reduce, reduction="sum") if acc.num_processes > 1 else None), cfg.algo_config())
            rollout.advantages, rollout.returns = adv_out.get("advantages"), adv_out.get("returns")
            # 4. epochs x minibatches of whole prompt groups
            history, skipped = update(rl, rollout, fwd, beta, step)
            if rl.backend.name != "hf":  # vllm: the next rollout samples the new policy (hf samples the module itself)
                rl.backend.update_weights(exported_state(inner, acc), inner.changed_tensors())
            t_update = time.perf_counter() - t0
            release_memory()
            # 5. log (every process's rows, gathered), checkpoint
            all_kl = {e: acc.gather(v) for e, v in seq_kl.items()}
            rl.kl_ctl.update(float(all_kl["k1"].mean()), acc.gather(rollout.raw_scores).numel())
            record = step_record(rl, step, rollout, history, skipped, adv_out, all_kl, beta, timings, t_update,
                                 time.perf_counter() - t_step)
            if rl.held is not None and ((step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps):
                record.update(evaluate_policy(rl.rollouts.engine, rl.held, step + 1, cfg.seed, acc, rl.gold, loop.out,
                                              cfg.eval_samples))  # its own phase: perf/eval_s, not in perf/step_s
            loop.log.write(record, {"reward": f"{record['reward/mean']:.3f}", "kl": f"{record['kl/k1_seq']:.3f}"})
            loop.end_step(step, cfg.steps)
    return loop.finish(inner.save_policy)


def setup(cfg: TrainConfig) -> RLRun:
    """Run folder (its lock, then may it be started or resumed), data, reward (all checked before any model loads),
    then models (a response length the policy's context cannot hold is refused), optimiser and rollout source."""
    algo = get_algorithm(cfg.algo)
    settings = LoopSettings(
        name=cfg.algo, command="rlcf train", output_dir=Path(cfg.output_dir), resume=cfg.resume,
        save_every=cfg.save_every, progress=cfg.progress, max_grad_norm=cfg.optim.max_grad_norm,
        mixed_precision=cfg.optim.mixed_precision, max_nonfinite_steps=cfg.optim.max_nonfinite_steps,
        report_to=cfg.report_to, tracker_config=to_dict(cfg), grad_accum=cfg.optim.grad_accum)
    accelerator = settings.accelerator()
    set_seed(cfg.seed)
    run = RunDir(cfg)  # one run per folder (its lock), and may it be started or resumed? Before anything loads
    try:
        return _setup(cfg, algo, settings, accelerator, run)
    except BaseException:
        run.release()  # a start that failed leaves the folder to the next one
        raise


def _setup(cfg: TrainConfig, algo: Algorithm, settings: LoopSettings, accelerator, run: RunDir) -> RLRun:
    # data and reward are checked before any model is loaded, so bad input fails fast
    offline_rows = load_offline_rows(cfg, accelerator.device) if cfg.offline_data else None
    if offline_rows is not None:
        prompts, reward = [Prompt(text=r["prompt"], chat=r.get("chat")) for r in offline_rows], None
    else:
        prompts = load_prompts(cfg.prompts, cfg.prompt_column)
        r = cfg.reward
        reward = RewardSource(r.function, r.model, r.batch_size, accelerator.device, cfg.model.trust_remote_code,
                              timeout_s=r.timeout_s, functions=r.functions, weights=r.weights, url=r.url,
                              retries=r.retries)
    gold = load_callable(cfg.reward.gold, "gold scorer", cfg.reward.timeout_s) if cfg.reward.gold else None
    held = load_held_out(cfg) if cfg.eval_every else None
    models = build_models(cfg.model, cfg.model.critic if algo.needs_critic else None)
    tokenizer, source = models.tokenizer, cfg.offline_data or cfg.prompts
    if offline_rows is None:
        prompts, prompt_ids = prepare_prompts(prompts, tokenizer, cfg.rollout.max_prompt_tokens, cfg.chat_template,
                                              source, cfg.rollout.long_prompts)
        # a response length the model cannot hold beside the longest prompt is refused, naming the limit
        check_new_tokens(cfg.rollout.max_new_tokens, max(map(len, prompt_ids), default=0),
                         models.base_policy().config, cfg.model.name_or_path)
    else:  # offline rows pair a prompt with its response and reward: a long one is an error, never dropped silently
        prompt_ids = tokenize_prompts(prompts, tokenizer, cfg.rollout.max_prompt_tokens, cfg.chat_template, source)
        response_ids = tokenize_responses([r["response"] for r in offline_rows], tokenizer,
                                          cfg.rollout.max_new_tokens, source)
    scaler = RewardScaler(cfg.reward.clip, cfg.reward.scaling)
    acfg = cfg.algo_config()
    beta = getattr(acfg, algo.kl_coef) if algo.kl_coef else 0.0  # the registry names the KL coefficient's field
    kl_ctl = make_kl_controller(beta, acfg.kl_target, acfg.kl_horizon) if algo.adaptive_kl else make_kl_controller(beta)
    loop = TrainingLoop(settings, accelerator, run, models, _optimizer(models, cfg),
                        lambda: {"kl_controller": kl_ctl.state_dict(), "reward_scaler": scaler.state_dict()})
    state = loop.start(cfg.steps)
    if state:
        kl_ctl.load_state_dict(state["kl_controller"])
        scaler.load_state_dict(state["reward_scaler"])

    eos_ids = eos_token_ids(tokenizer, models.base_policy())
    backend = make_backend(cfg.rollout, models.policy, tokenizer, eos_ids, resolve_model_path(cfg.model.name_or_path),
                           cfg.model.dtype, cfg.seed + accelerator.process_index, cfg.model.trust_remote_code)
    if state and backend.name != "hf":
        backend.update_weights(exported_state(models, accelerator))
    engine = RolloutEngine(models, reward, scaler, cfg.rollout, with_values=algo.needs_critic, backend=backend)
    engine.gather = accelerator.gather
    # where each step's rollout comes from: sampled online, or fixed rows (offline APA/AWR); the loop is the same
    if offline_rows is None:
        columns = [p.columns for p in prompts] if any(p.columns for p in prompts) else None
        rollouts = SampledRollouts(engine, [p.text for p in prompts], prompt_ids, cfg.rollout.group_size,
                                   accelerator.device, columns)
    else:
        rollouts = FixedRollouts(engine, offline_rows, prompt_ids, response_ids, accelerator.device)
    sampler = PromptSampler(len(rollouts), cfg.rollout.prompts_per_step, cfg.seed, accelerator.process_index,
                            accelerator.num_processes)
    if held is not None:
        texts, ids = prepare_prompts(held, tokenizer, cfg.rollout.max_prompt_tokens, cfg.chat_template,
                                     cfg.eval_prompts or "demo", cfg.rollout.long_prompts)
        columns = [p.columns for p in texts] if any(p.columns for p in texts) else None
        held = HeldOut([p.text for p in texts], ids, columns)
        if state and accelerator.is_main_process:
            truncate_samples(Path(cfg.output_dir), loop.start_step)  # the steps after the checkpoint are redone
    return RLRun(cfg, algo, loop, models, rollouts, sampler, backend, kl_ctl, scaler, gold,
                 NonFiniteGuard(cfg.optim.max_nonfinite_steps), held)


def _optimizer(models: PolicyModels, cfg: TrainConfig):
    """AdamW over the trainable parameters; a critic gets its own learning rate (optim.critic_lr) when set."""
    critic_params = [p for n, p in models.named_parameters()
                     if p.requires_grad and (n.startswith("critic.") or n.startswith("value_head."))]
    critic_ids = {id(p) for p in critic_params}
    groups = [{"params": [p for p in models.trainable_parameters() if id(p) not in critic_ids], "lr": cfg.optim.lr}]
    if critic_params:
        groups.append({"params": critic_params, "lr": cfg.optim.critic_lr or cfg.optim.lr})
    return adamw(groups, cfg.optim.lr, cfg.optim.betas, cfg.optim.weight_decay)


def rewards_finite(rl: RLRun, rollout: Rollout, step: int, t_step: float) -> bool:
    """False (and the step logged as skipped) when any process's batch holds a non-finite reward; too many such
    steps in a row stop the run."""
    raw_all = rl.loop.accelerator.gather(rollout.raw_scores.float())
    bad = ~torch.isfinite(raw_all)
    if rl.reward_guard.ok({"reward": float(raw_all.sum())},
                          f"step {step + 1} ({int(bad.sum())} of {bad.numel()} rewards non-finite)"):
        return True
    rl.loop.log.write({"step": step + 1, "optim/skipped": 1.0, "reward/nonfinite": int(bad.sum()),
                       "perf/step_s": time.perf_counter() - t_step})
    return False


def current_forward(rl: RLRun, rollout: Rollout):
    """One epoch over one minibatch: the sampling policy is the current one, so the update's own forward gives pi_old
    and V_old (detached) and is reused as the first minibatch's forward."""
    mask = rollout.response_mask
    fwd = rl.loop.model(rollout.query_ids, rollout.query_mask, rollout.response_ids, mask, rl.cfg.rollout.temperature,
                        rl.algo.needs_critic, rollout.trunk_hidden)
    rollout.logprobs = fwd[0].detach() * mask
    rollout.values = fwd[1].detach() * mask if fwd[1] is not None else None
    return fwd


def update(rl: RLRun, rollout: Rollout, fwd, beta: float, step: int) -> tuple[list[dict], int]:
    """Epochs x minibatches of whole prompt groups: forward, loss, backward, and an optimiser step every
    optim.grad_accum minibatches. Returns (each minibatch's loss metrics, the number of skipped optimiser steps)."""
    cfg, loop, acc = rl.cfg, rl.loop, rl.loop.accelerator
    history, skipped = [], 0
    shuffle = torch.Generator().manual_seed(cfg.seed * 7919 + step)  # per step, so a resumed run matches
    for epoch in range(cfg.optim.epochs):
        perm = torch.randperm(rollout.n_groups, generator=shuffle)
        for s in range(0, rollout.n_groups, cfg.optim.minibatch_prompts):
            mb = rollout if fwd is not None else rollout.select_groups(perm[s : s + cfg.optim.minibatch_prompts])
            with acc.accumulate(loop.model):
                logprobs, values = fwd if fwd is not None else loop.model(
                    mb.query_ids, mb.query_mask, mb.response_ids, mb.response_mask, cfg.rollout.temperature,
                    rl.algo.needs_critic, mb.trunk_hidden)
                fwd = None
                batch = LossBatch(
                    logprobs=logprobs * mb.response_mask, old_logprobs=mb.logprobs, ref_logprobs=mb.ref_logprobs,
                    mask=mb.response_mask, group_size=rollout.group_size, kl_coef=beta, scores=mb.scores,
                    advantages=mb.advantages, returns=mb.returns, values=values, old_values=mb.values)
                loss, m = rl.algo.loss(batch, cfg.algo_config())
                if acc.num_processes > 1 and rl.algo.token_mean(cfg.algo_config()):
                    tokens = mb.response_mask.sum()  # this process's share of the minibatch's tokens
                    loss = loss * tokens / acc.reduce(tokens.detach(), "mean")
                acc.backward(loss)
                if acc.sync_gradients:
                    stepped, norm = loop.optimizer_step(loss, f"step {step + 1}")
                    skipped += not stepped
                    if cfg.optim.max_grad_norm > 0:
                        m["policy/grad_norm"] = torch.tensor(norm)
            if cfg.optim.epochs > 1 and "policy/clipfrac" in m:  # how the trust region bites as the epochs go
                m[f"policy/clipfrac_epoch{epoch + 1}"] = m["policy/clipfrac"]
            history.append({key: v.detach() for key, v in m.items()})
    return history, skipped


def step_record(rl: RLRun, step: int, rollout: Rollout, history: list[dict], skipped: int, adv_out: dict,
                all_kl: dict, beta: float, timings: Timings, t_update: float, step_s: float) -> dict:
    """The step's line of metrics.jsonl: every metric over all processes' rows."""
    acc, g, mask = rl.loop.accelerator, rl.loop.accelerator.gather, rollout.response_mask
    raw, scaled, lengths = g(rollout.raw_scores.float()), g(rollout.scores.float()), g(mask.sum(1))
    record = {"step": step + 1, "optim/skipped_updates": skipped}
    means = {k: acc.reduce(v.to(acc.device), "mean") for k, v in _mean_metrics(history).items()}
    record.update({k if not k.startswith("kl/") else "kl/update_" + k[3:]: float(v) for k, v in sorted(means.items())})
    record.update({k: float(acc.reduce(adv_out[k].float().to(acc.device), "mean")) for k in sorted(adv_out) if "/" in k})
    record.update({
        "reward/mean": float(raw.mean()),
        "reward/std": float(raw.std()) if raw.numel() > 1 else 0.0,
        "reward/scaled_mean": float(scaled.mean()),
        f"kl/{rl.algo.kl_estimator}_seq": float(all_kl.get(rl.algo.kl_estimator, all_kl["k1"]).mean()),
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
        "perf/processes": acc.num_processes,
    })
    if rollout.sampler_logprobs is not None:  # vllm: how far its sampling log-probs are from the policy's
        diff = ((rollout.sampler_logprobs - rollout.logprobs).abs() * mask).sum() / mask.sum()
        record["rollout/sampler_logprob_absdiff"] = float(acc.reduce(diff, "mean"))
    reward = rl.rollouts.engine.reward
    if reward is not None and len(reward.components) > 1:  # each component of a weighted reward, on its own
        record.update({f"reward/{name}/mean": float(g(scores.float().to(acc.device)).mean())
                       for name, scores in reward.last_components.items()})
    if rl.gold is not None:
        gold = check_scores(rl.gold(rollout.prompts, rollout.responses), rollout.prompts, rollout.responses,
                            rl.cfg.reward.gold)
        record["gold/mean"] = float(g(gold.to(acc.device)).mean())
    return record


def load_held_out(cfg: TrainConfig) -> list[Prompt]:
    """The held-out prompts --eval-every samples (the first eval_max_prompts): --eval-prompts, or the demo's test
    split when training on the demo prompts."""
    if cfg.offline_data is not None:
        raise ValueError("--eval-every samples the policy and scores it with the reward; with --offline-data there is "
                         "none to score with: evaluate the final model with `rlcf eval` instead")
    if cfg.eval_prompts is None and cfg.prompts != "demo":
        raise ValueError("--eval-every needs held-out prompts: give --eval-prompts FILE (or a hub dataset with "
                         "--eval-split), prompts the run does not train on")
    source = cfg.eval_prompts or "demo"
    return load_prompts(source, cfg.prompt_column, cfg.eval_split)[: cfg.eval_max_prompts]


def exported_state(models: PolicyModels, accelerator) -> dict:
    """The policy's weights as the plain model's state dict, to push into a sampling engine: gathered from every
    process when the run is sharded (a collective: every process calls it)."""
    return models.export_state(full_state_everywhere(models) if is_sharded(accelerator) else None)
