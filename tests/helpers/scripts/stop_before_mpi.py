"""The last rank stops itself (SIGSTOP) before MPI starts; the others must not wait in
MPI_Init for ever: mpidl.world exits after its collective timeout and the launcher ends the job."""

import os
import signal
import sys

if os.environ.get("PMI_RANK") == str(int(os.environ.get("PMI_SIZE", "1")) - 1):
    os.kill(os.getpid(), signal.SIGSTOP)

import mpidl  # noqa: E402

mpidl.world(collective_timeout=float(sys.argv[1]))
print("MPI started on every rank", flush=True)
