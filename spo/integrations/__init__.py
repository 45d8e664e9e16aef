"""Adapters that run SPO inside other RL frameworks, thin layers over `spo.algo.SPOState`.

- `verl`  a verl plug-in: advantage estimator + v1 trainer mode `single_stream_spo`
          (docs/integrations.md, "verl"). Needs `pip install 'spo-rl[verl]'`.
"""
