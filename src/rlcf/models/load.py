"""What a policy folder loads as for sampling and scoring: its plain LM, or, for a folder saved by ILQL, the
advantage-perturbed decoding policy."""

from __future__ import annotations

from .hub import check_causal_lm, load_lm, resolve_model_path
from .ilql import is_ilql_folder, load_ilql


def load_causal_lm(name_or_path: str, dtype: str = "float32", trust_remote_code: bool = False,
                   ilql_decoding: bool = True):
    """A causal LM from a local folder, a hub id or 'embedded' (`hub.load_lm`). A folder saved by ILQL (it holds
    ilql.json) gives its decoding policy, `ilql.ILQLDecoding` (the LM's logits perturbed by beta * advantage),
    unless ilql_decoding=False, which gives the plain behaviour-cloned LM in it."""
    if ilql_decoding:
        path = resolve_model_path(name_or_path)
        if is_ilql_folder(path):
            check_causal_lm(name_or_path, path, trust_remote_code)
            return load_ilql(path, dtype, trust_remote_code=trust_remote_code)
    return load_lm(name_or_path, dtype, trust_remote_code)
