"""Every user-facing error class and every exit status, in one place.

A UserError means "the user must fix something": it is reported in one line and every rank
exits with EXIT_USAGE. TrainingHalted is a decision all ranks reach together from the same
data (non-finite gradients, replica drift): EXIT_HALTED.
"""

EXIT_OK = 0
EXIT_CRASH = 1        # an unexpected exception on some rank: all ranks aborted (MPI_Abort)
EXIT_USAGE = 2        # a bad flag, config, data file, output folder or launch
EXIT_HALTED = 3       # training stopped by its NaN or drift policy
EXIT_WATCHDOG = 4     # a rank waited too long in one collective: a peer died or hangs
# A run that stopped early on request (SIGUSR1/SIGTERM) after writing a checkpoint:
# EX_TEMPFAIL from sysexits.h, "try again later". Job scripts requeue on it.
EXIT_PREEMPTED = 75
EXIT_INTERRUPTED = 130  # Ctrl-C: 128 + SIGINT


class UserError(Exception):
    """Bad input: a flag, a config file, a data file, an output directory."""


class ConfigError(UserError):
    pass


class DataError(UserError):
    pass


class CheckpointError(UserError):
    """A checkpoint that cannot be used: unreadable, corrupt, or from a different run."""


class MismatchError(UserError):
    """Ranks disagree on something that must be identical (config, layout, data); raised on
    every rank at once, so it is reported once, like any other user error."""


class TrainingHalted(Exception):
    """Every rank stops together at the same step (non-finite gradients, replica drift), by a
    decision all ranks reach from the same data; rank 0 reports it, every rank exits 3."""
