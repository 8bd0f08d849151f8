"""``regtune diagnose``: read a finished study back and explain it.

- :mod:`.analysis`: load the study (MLflow runs + the persisted Optuna study) into one
  :class:`Diagnosis`;
- :mod:`.trials`: the trials as MLflow recorded them and the one class each gets;
- :mod:`.rules`: separation rules, no-motion causes, safe ranges, the next space;
- :mod:`.optuna_study`: the persisted Optuna study (or one rebuilt from MLflow) and the
  parameter importances on it;
- :mod:`.figures`: the report's figures;
- :mod:`.report`: the findings in words and the report files.
"""

from ..space import Param
from .analysis import Diagnosis, diagnose
from .report import explain, write_report
from .trials import CLASSES, COLOURS, DIVERGED, TrialInfo, classify

__all__ = ["diagnose", "write_report", "explain", "classify", "Diagnosis", "TrialInfo", "CLASSES", "COLOURS", "DIVERGED",
           "Param"]
