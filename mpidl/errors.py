"""Errors that mean "the user must fix something": reported in one line, exit code 2."""


class UserError(Exception):
    """Bad input: a flag, a config file, a data file, an output directory."""


class ConfigError(UserError):
    pass


class DataError(UserError):
    pass
