"""The main job's pipeline on a tiny model, end to end in a subprocess: label -> rm -> P3O against the learned
reward model -> eval with the gold judge -> report; a second run reuses every stage."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

TESTS = Path(__file__).parent


def pipeline_yaml(tmp_path, model_dir, prompts_file, steps=30) -> Path:
    cfg = {
        "output_dir": str(tmp_path / "run"),
        "label": {"prompts": prompts_file, "judge": "helpers.vowel_reward:reward", "max_prompts": None,
                  "rollout": {"max_new_tokens": 8}},
        "rm": {"model": model_dir, "num_layers": None, "data": {"eval_fraction": 0.25}, "progress": False,
               "optim": {"lr": 3e-3, "epochs": 4, "minibatch_prompts": 4}},
        # the full-copy reference: the main job's top-blocks mode trains 2 of the tiny model's 3 blocks, too
        # little to learn the vowel task in 30 steps (top-blocks learning has its own tests in test_fast_paths)
        "train": {"prompts": prompts_file, "steps": steps, "progress": False,
                  "model": {"name_or_path": model_dir, "reference": "copy"},
                  "reward": {"gold": "helpers.vowel_reward:reward"},
                  "rollout": {"max_new_tokens": 8, "prompts_per_step": 8},
                  "optim": {"lr": 3e-3, "epochs": 4, "minibatch_prompts": 4}},
        "eval": {"prompts": prompts_file, "split": "train", "gold": "helpers.vowel_reward:reward",
                 "samples_per_prompt": 8, "rollout": {"max_new_tokens": 8}},
    }
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_cli(args, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(TESTS) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "rlcf.cli", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


def test_pipeline_end_to_end_then_cached(tiny_model_dir, prompts_file, tmp_path):
    # 8 prompts are too few for the reward model (pairs of one prompt are one row): 48 distinct ones, each
    # sampled 4 times and judged in up to 6 pairs (the pipeline's K = 4)
    prompts = [json.loads(x)["prompt"] for x in Path(prompts_file).read_text().splitlines() if x.strip()]
    Path(prompts_file).write_text("".join(json.dumps({"prompt": f"{p} ({i})"}) + "\n" for i in range(6) for p in prompts))
    config = pipeline_yaml(tmp_path, tiny_model_dir, prompts_file)
    first = run_cli(["pipeline", "--config", str(config)], tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    out = tmp_path / "run"
    report = out / "report" / "report.md"
    assert f"Report: {report.resolve()}" in first.stdout
    summary = json.loads((out / "report" / "pipeline.json").read_text())
    pairs = [json.loads(x) for x in (out / "label" / "pairs.jsonl").read_text().splitlines()]
    assert summary["pairs"] == len(pairs) > 20
    assert all(p["chosen_score"] > p["rejected_score"] for p in pairs)  # noiseless judge, ties dropped
    rm_eval = [m for m in map(json.loads, (out / "rm" / "metrics.jsonl").read_text().splitlines()) if "eval/accuracy" in m]
    assert summary["rm_heldout_accuracy"] == rm_eval[-1]["eval/accuracy"]
    assert summary["rm_heldout_pairs"] == rm_eval[-1]["eval/examples"] > 0
    lo, hi = summary["rm_heldout_ci95"]
    assert lo <= summary["rm_heldout_accuracy"] <= hi
    # the policy trained against the learned reward model, and eval compared it with the initial policy
    metrics = [json.loads(x) for x in (out / "train" / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 30 and "gold/mean" in metrics[-1]
    config_used = yaml.safe_load((out / "train" / "config.yaml").read_text())
    assert config_used["reward"]["model"] == str(out / "rm" / "final")
    ev = summary["eval"]
    assert ev["policy"]["kl/k1_seq"] > 0.05 and ev["win_rate"]["n"] > 0
    # what the gold judge saw went up: the vowel share of the trained policy beats the initial policy's
    assert ev["policy"]["gold/mean"] > ev["reference"]["gold/mean"] + 0.05, ev
    assert ev["win_rate"]["win_rate"] > 0.5
    assert report.exists() and "frontier" in report.read_text().lower()
    # sample pairs (initial against trained) from the eval's samples, with their gold scores
    samples = [json.loads(x) for x in (out / "train" / "eval.samples.jsonl").read_text().splitlines()]
    text = report.read_text()
    assert "### Samples" in text and f"**Prompt:** {samples[0]['prompt'].strip()}" in text
    assert f"gold {samples[0]['policy_gold']:.3f}" in text
    # the reward model's agreement with the gold judge on those pairs, as the eval computed it
    agree = ev["reward_gold_agreement"]
    assert agree["n"] == sum(s["policy_gold"] != s["reference_gold"] for s in samples)
    assert f"orders {agree['agreement']:.4f} of the {agree['n']} pairs" in text

    second = run_cli(["pipeline", "--config", str(config)], tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stdout.count("reusing") == 4, second.stdout

    # a changed RL setting reruns train and eval only
    third = run_cli(["pipeline", "--config", str(config), "--train.steps", "2"], tmp_path)
    assert third.returncode == 0, third.stderr[-3000:]
    assert "[1/5] label: reusing" in third.stdout and "[2/5] rm: reusing" in third.stdout
    assert "[3/5] train: reusing" not in third.stdout and "[4/5] eval: reusing" not in third.stdout
    assert len((out / "train" / "metrics.jsonl").read_text().splitlines()) == 2
    assert list(out.glob("train.stale-*"))  # the earlier run is kept aside, not deleted
