"""The errors a user can cause with bad input: reported as one clear message, not a stack trace."""

from hydra.errors import InstantiationException
from omegaconf.errors import MissingMandatoryValue

from fairnas.data.errors import DataError
from fairnas.models.space import ArchitectureError, SearchSpaceError

USER_ERRORS: tuple[type[BaseException], ...] = (
    ArchitectureError,
    SearchSpaceError,
    DataError,
    FileNotFoundError,
    InstantiationException,
    MissingMandatoryValue,
)
