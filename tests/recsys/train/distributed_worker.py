"""One rank of a distributed training test: `python -m tests.recsys.train.distributed_worker
CONFIG [--fault KIND --at-epoch E --ranks R ...]`, with torchrun's environment (RANK,
WORLD_SIZE, MASTER_ADDR, MASTER_PORT) set by the test. Prints the run's result as one JSON line.

`Fault` is the hook that plays a failure: at the start of epoch `at_epoch` (0-based; the previous
epoch's checkpoint is complete by then), on `ranks`, `exit` ends the process at once (a crash),
`hang` sleeps for ever (a stuck rank), `exit_mid_epoch` ends it after the epoch's first step.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from recsys import load_config
from recsys.tasks.hooks import Hook, LoopContext
from recsys.train.loop import fit

FAULT_EXIT = 3  # the exit status of a rank the fault ended


class Fault(Hook):
    name = "fault"

    def __init__(self, kind: str = "none", at_epoch: int = -1, ranks: tuple[int, ...] = ()):
        self.kind, self.at_epoch, self.ranks = kind, at_epoch, ranks
        self.rank = int(os.environ.get("RANK", "0"))

    def _due(self, ctx: LoopContext) -> bool:
        return ctx.epoch == self.at_epoch and self.rank in self.ranks

    def on_epoch_start(self, ctx: LoopContext) -> None:
        if self._due(ctx) and self.kind == "exit":
            os._exit(FAULT_EXIT)
        if self._due(ctx) and self.kind == "hang":
            time.sleep(3600)

    def after_step(self, ctx: LoopContext) -> None:
        if self._due(ctx) and self.kind == "exit_mid_epoch":
            os._exit(FAULT_EXIT)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("config")
    parser.add_argument("--fault", default="none")
    parser.add_argument("--at-epoch", type=int, default=-1)
    parser.add_argument("--ranks", type=int, nargs="*", default=[])
    args = parser.parse_args()
    result = fit(load_config(args.config), hooks=[Fault(args.fault, args.at_epoch,
                                                        tuple(args.ranks))])
    print(json.dumps({"run_dir": str(result.run_dir), "metrics": result.metrics}))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
