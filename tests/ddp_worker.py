"""Run under torchrun by tests/test_train.py: a few DDP steps, then each rank saves its weights."""

import sys
from pathlib import Path

import torch

from convnets.training import TrainConfig, train

out = Path(sys.argv[1])
result = train(TrainConfig(model="lenet5", data="digits", image_size=32, out=str(out / "run"), epochs=1,
                           batch_size=32, max_steps=4, augment="standard", progress=False, device="cpu"))
rank = int(__import__("os").environ["RANK"])
torch.save({k: v.cpu() for k, v in result.model.state_dict().items()}, out / f"rank{rank}.pt")
