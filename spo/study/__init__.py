"""Everything that reads finished (or running) run directories; never trains, never samples.

- `runs`      RunData / load_run: metrics, config, held-out points, calibration of a run dir
- `plots`     shared matplotlib helpers (figure size, colours, "no data" panels, PNG bytes)
- `report`    the `spo report` HTML page over one or more runs
- `compare`   the `spo compare` study: plan of arms × seeds, running them as `spo train`
- `summary`   summary.json and plots of a study (aggregates over seeds, paired differences)
- `page`      the study's markdown page
"""
