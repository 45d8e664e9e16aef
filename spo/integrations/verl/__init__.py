"""SPO as a verl plug-in: estimator `single_stream_spo` and v1 trainer mode `single_stream_spo`.

    pip install 'spo-rl[verl]'
    python -m verl.trainer.main_ppo ... \\
        algorithm.adv_estimator=single_stream_spo trainer.v1.trainer_mode=single_stream_spo

verl imports this package in every process that imports verl: through the `verl.plugins`
entry point spo-rl installs, or with VERL_USE_EXTERNAL_MODULES=spo.integrations.verl.
Importing it registers both names (verl's loader swallows plug-in import errors, so an
unsupported verl is reported when the estimator or the trainer is first used).

- `estimator`  (r − v̂) from `reward_baselines`, batch-normalised, over response tokens
- `trainer`    SPOTrainer: priority draws, uid -> stable key, tracker update, checkpoints
- `keys`       stable prompt keys of a verl dataset
- `version`    the tested verl versions and the error for any other
"""

from spo.integrations.verl.version import (
    SUPPORTED_VERL,
    UnsupportedVerlError,
    require_supported_verl,
)

try:
    from spo.integrations.verl.estimator import ESTIMATOR_NAME, single_stream_spo_advantage
    from spo.integrations.verl.trainer import TRAINER_MODE, SPOSettings, SPOTrainer
except ImportError as e:  # an untested verl whose modules moved: say which verls work
    require_supported_verl()
    raise ImportError(f"spo-rl's verl plug-in cannot load on this verl: {e}") from e

__all__ = [
    "ESTIMATOR_NAME",
    "SUPPORTED_VERL",
    "TRAINER_MODE",
    "SPOSettings",
    "SPOTrainer",
    "UnsupportedVerlError",
    "require_supported_verl",
    "single_stream_spo_advantage",
]
