"""A supervised stage (sft, dpo or rm) on the tiny test model, for `accelerate launch` in tests/test_fsdp.py:

    accelerate launch --config_file CONFIG tests/helpers/stage_run.py KIND MODEL_DIR DATA.jsonl OUT
"""

from __future__ import annotations

import sys

import torch

if __name__ == "__main__":
    torch.set_num_threads(1)
    kind, model_dir, data, out = sys.argv[1:5]
    if kind == "sft":
        from rlcf.sft import run_sft
        from test_sft import sft_config

        run_sft(sft_config(model_dir, data, out, **{"optim.epochs": 2}))
    elif kind == "dpo":
        from rlcf.dpo import run_dpo
        from test_dpo import dpo_config

        run_dpo(dpo_config(model_dir, data, out))
    else:
        from rlcf.rm import run_rm
        from test_rm import rm_config

        run_rm(rm_config(model_dir, data, out, **{"optim.epochs": 2}))
    if torch.distributed.is_initialized():  # leave the group before exiting (as rlcf's CLI does)
        torch.distributed.destroy_process_group()
