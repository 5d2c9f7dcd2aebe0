"""`python -m mpidl.train` with one injected fault, for the failure tests.

usage: faulty_train.py FAULT RANK STEP [mpidl.train options...]
FAULT: nan (NaN in that rank's local gradient), drift (nudge that rank's weights after the
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
        grads = self.model.train_step_grads

        def poisoned(*a, **k):
            loss = grads(*a, **k)
            self.store.grad[-1] = float("nan")
            return loss
        self.model.train_step_grads = poisoned
        try:
            return original(self, step, batch)
        finally:
            self.model.train_step_grads = grads
    result = original(self, step, batch)
    if hit and fault == "drift":
        self.store.data[0] += 1e-3
    return result


Trainer.train_step = train_step
sys.exit(train.main(sys.argv[4:]))
