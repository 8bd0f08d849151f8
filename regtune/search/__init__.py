"""The study layer: the only place regtune imports Ray, Optuna and MLflow.

``space`` (search-space files) imports none of them; ``trainable``, ``tracking`` and
``study`` do, and are imported only by the commands that need them.
"""

from .space import SearchSpace, SpaceError, load_space, parse_space

__all__ = ["SearchSpace", "SpaceError", "load_space", "parse_space"]
