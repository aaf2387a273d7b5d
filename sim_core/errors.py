"""The errors the harness reports as one line, and its exit codes. No imports: every layer (and the Snakemake
process, which never imports torch) can use them."""


class ConfigError(ValueError):
    """A configuration problem (config file, override, scale config, command-line value), reported as one line."""


class CheckpointError(ValueError):
    """A missing, corrupt or foreign file: checkpoint, teacher, snapshot, asset."""


class RunDirError(ValueError):
    """The run directory holds a different run."""


EXIT_BAD_INPUT = 2      # bad input: one line on stderr, nothing written
EXIT_IO = 74            # EX_IOERR: a write failed (a full disk): nothing is lost, the same command resumes
EXIT_INTERRUPTED = 75   # EX_TEMPFAIL: the run checkpointed on a signal and can be resumed
