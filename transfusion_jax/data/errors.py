"""Errors the data layer raises; each message names the problem and the fix."""


class DataError(Exception):
    """Base class for data problems a user can fix (bad names, missing files)."""


class DatasetNotFoundError(DataError):
    """The dataset is not prepared or its files are missing."""
