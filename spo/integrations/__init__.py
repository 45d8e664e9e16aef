"""Adapters that run SPO inside other training frameworks, all over `spo.algo.SPOState`.

- `spo.integrations.trl`   SPOConfig / SPOTrainer: a drop-in for TRL's GRPOConfig /
                           GRPOTrainer (`pip install 'spo-rl[trl]'`).
- `spo.integrations.verl`  a verl plug-in: estimator and v1 trainer mode
                           `single_stream_spo` (`pip install 'spo-rl[verl]'`), loaded by verl
                           itself through the `verl.plugins` entry point.

Each adapter is imported on its own (`from spo.integrations.trl import SPOTrainer`), so this
package imports no framework.
"""
