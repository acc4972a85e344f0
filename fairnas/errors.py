"""The errors a user can cause with bad input: reported as one clear message, not a stack trace."""

from omegaconf.errors import MissingMandatoryValue

from fairnas.config_error import ConfigError
from fairnas.data.errors import DataError
from fairnas.models.space import ArchitectureError, SearchSpaceError

USER_ERRORS: tuple[type[BaseException], ...] = (
    ArchitectureError,
    SearchSpaceError,
    DataError,
    FileNotFoundError,
    ConfigError,
    MissingMandatoryValue,
)


def user_error(err: BaseException) -> BaseException | None:
    """The user-caused error behind ``err`` (looking through Hydra's InstantiationException), else None."""
    while err is not None:
        if isinstance(err, USER_ERRORS):
            return err
        err = err.__cause__
    return None
