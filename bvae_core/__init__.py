"""bvae_core: a β-VAE trainer on data with ground-truth factors. No Ray, Optuna or MLflow in here."""

from .cohort import Cohort, cohort_key, group_by_cohort
from .config import ConfigError, TrainConfig, parse_config
from .data import make_dataset
from .trainer import NonFiniteLossError, Trainer

__all__ = ["Cohort", "ConfigError", "NonFiniteLossError", "TrainConfig", "Trainer", "cohort_key", "group_by_cohort",
           "make_dataset", "parse_config"]
__version__ = "0.1.0"
