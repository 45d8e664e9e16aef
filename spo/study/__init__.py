"""Everything that reads finished (or running) run directories; never trains, never samples.

- `runs`      RunData / load_run: metrics, config, held-out points, calibration of a run dir;
              what a study commits of each run (COMMITTED, run.json) and reading it back
- `plots`     shared matplotlib helpers (figure size, colours, "no data" panels, PNG bytes)
- `report`    the `spo report` HTML page over one or more runs
- `compare`   the `spo compare` study: plan of arms × seeds, running them as `spo train`
- `summary`   summary.json and plots of a study (aggregates over seeds, paired differences)
- `page`      the study's markdown page
- `oracle`    the oracle share Var_x(p)/Var(r) of fresh rewards: what a per-prompt baseline
              can remove (bench/oracle_share.py measures it on the initial policy)
"""
