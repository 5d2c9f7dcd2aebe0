"""`python -m mpidl.train` with one injected fault, for the failure tests.

usage: faulty_train.py FAULT RANK STEP [mpidl.train options...]
FAULT: nan (NaN in one of that rank's inputs), drift (nudge that rank's weights after the
step), stall (that rank hangs before the step), raise (that rank raises), none.
"""

import sys
import time

from mpidl import train
from mpidl.trainer import Trainer

fault, fault_rank, fault_step = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
original = Trainer.train_step


def train_step(self, step, batch=None):
    hit = self.comm.rank == fault_rank and self.global_step + 1 == fault_step
    if hit and fault == "stall":
        time.sleep(3600)
    if hit and fault == "raise":
        raise RuntimeError(f"injected failure at step {fault_step}")
    if hit and fault == "nan":
        # A NaN in one input sample, as bad data would bring: it reaches the gradients during
        # backward, before any bucket of them is sent.
        x, y = batch if batch is not None else self.prepare_batch(step)
        x = x.copy()
        x.flat[0] = float("nan")
        return original(self, step, (x, y))
    result = original(self, step, batch)
    if hit and fault == "drift":
        self.store.data[0] += 1e-3
    return result


Trainer.train_step = train_step
sys.exit(train.main(sys.argv[4:]))
