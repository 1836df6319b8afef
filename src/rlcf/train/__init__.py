"""What the training loops stand on: the accelerator (`accel`), run folders (`rundir`), checkpoints
(`checkpoint`), the metrics log (`metrics_log`), stop signals and the non-finite guard (`safety`), the scaffold both
loops share (`loop`), the RL rollout engine (`rollout`) and the supervised loop (`supervised`)."""
