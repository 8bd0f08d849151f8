"""regtune: trainable-on-purpose 3D deformable image registration.

The core (``config``, ``data``, ``model``, ``losses``, ``metrics``, ``train``,
``evaluate``, ``register``) is plain torch/numpy. The study layer (``regtune.search``)
is the only place that imports Ray, Optuna or MLflow.
"""

__version__ = "0.1.0"
