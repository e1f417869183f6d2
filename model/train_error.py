"""The trainer's one error: bad input (options, files, a corpus too short), printed as one line, exit status 2."""

__all__ = ["TrainError"]


class TrainError(Exception):
    """Bad input to the trainer: printed as one line, exit status 2."""
