"""Errors that mean "the user must fix something": reported in one line, exit code 2."""


class UserError(Exception):
    """Bad input: a flag, a config file, a data file, an output directory."""


class ConfigError(UserError):
    pass


class DataError(UserError):
    pass


class TrainingHalted(Exception):
    """Every rank stops together at the same step (non-finite gradients, replica drift), by a
    decision all ranks reach from the same data; rank 0 reports it, every rank exits 3."""
