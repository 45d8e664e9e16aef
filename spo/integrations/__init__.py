"""Adapters that run SPO inside other training frameworks, all over `spo.algo.SPOState`.

- `spo.integrations.trl`  SPOConfig / SPOTrainer: a drop-in for TRL's GRPOConfig /
                          GRPOTrainer (`pip install 'spo-rl[trl]'`).

Each adapter is imported on its own (`from spo.integrations.trl import SPOTrainer`), so this
package imports no framework.
"""
