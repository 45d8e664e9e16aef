"""Mutation check of the training loop's wiring (issue 13): `make mutation`.

Two parts, one result file (bench/results/mutation.{json,md}):

1. **Named hand mutations** of the wiring in spo/train — the bugs a refactor is likely to
   introduce and that formula tests cannot see (a constant baseline, the tracker fed
   1 − r or ρ = 1, misaligned baselines or rewards, the wrong sampler mode for a grouped
   algorithm, update and tracker order swapped, ...). Each is applied to a fresh copy of
   the tree and the trainer tests run against it; a mutant is *killed* when they fail.
   `--tests-rev REV` takes tests/ from another git revision (e.g. the commit before the
   wiring tests) to measure the kill rate "before".
2. **mutmut** (`--mutmut`), configured in pyproject.toml's [tool.mutmut] for spo/algo and
   spo/train/trainer.py; `--mutmut-names` picks which (default `spo.algo*`). Survivors run
   every covering test, trainer tests included (tens of seconds each): the full algo run
   takes hours on 2 cores, and the trainer's ~800 mutants more (the named mutants above
   are their targeted stand-in). To re-check known survivors only, pass their names.
   Counts and survivors go to bench/results/mutmut.json; each survivor's disposition is in
   bench/results/mutmut.md.

A mutation whose `old` text is not found exactly once is an error, not a silent pass:
after the code moves, this table must move with it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from common import RESULTS, ROOT, write_json

TESTS = [
    "tests/train/test_wiring.py",
    "tests/train/test_trainer.py",
    "tests/train/test_async_trainer.py",
    "tests/train/test_step_metrics.py",
    "tests/eval/test_eval.py",
]
TRAINER = "spo/train/trainer.py"


@dataclass(frozen=True)
class Mutant:
    name: str
    why: str  # the bug it stands for
    edits: tuple[tuple[str, str, str], ...]  # (file, old text (exactly once), new text)


def _m(name: str, why: str, *edits: tuple[str, str]) -> Mutant:
    return Mutant(name, why, tuple((TRAINER, old, new) for old, new in edits))


MUTANTS = [
    _m(
        "baseline_constant_half",
        "baseline is a constant 0.5 instead of the tracker's v̂",
        (
            "baseline_B = torch.from_numpy(self.spo.baseline(prompt_idx_B).astype(np.float32))",
            "baseline_B = torch.full_like(reward_B, 0.5)",
        ),
    ),
    _m(
        "tracker_one_minus_reward",
        "the tracker absorbs 1 − r instead of r",
        (
            "self.spo.observe(prompt_idx_B, reward_B, step=step, **rho_kw)",
            "self.spo.observe(prompt_idx_B, 1.0 - reward_B, step=step, **rho_kw)",
        ),
    ),
    _m(
        "tracker_rho_one",
        "the tracker is updated with ρ = 1 whatever the estimator returned",
        (
            "self.spo.observe(prompt_idx_B, reward_B, step=step, **rho_kw)",
            "self.spo.observe(prompt_idx_B, reward_B, step=step, rho=1.0)",
        ),
    ),
    _m(
        "tracker_wrong_step_stamp",
        "the tracker records the previous step as the visit",
        (
            "self.spo.observe(prompt_idx_B, reward_B, step=step, **rho_kw)",
            "self.spo.observe(prompt_idx_B, reward_B, step=self.step, **rho_kw)",
        ),
    ),
    _m(
        "baseline_misaligned",
        "each sample gets its neighbour's baseline",
        (
            "self.spo.baseline(prompt_idx_B).astype",
            "self.spo.baseline(np.roll(prompt_idx_B, 1)).astype",
        ),
    ),
    _m(
        "reward_credited_to_other_sample",
        "each completion is scored against another prompt's answer",
        (
            "scored = self.rewards(rollouts.texts, [self.train_examples[i] for i in prompt_idx_B])",
            "scored = self.rewards(rollouts.texts, [self.train_examples[i] "
            "for i in np.roll(prompt_idx_B, 1)])",
        ),
    ),
    _m(
        "tracker_ids_misaligned",
        "the tracker credits each reward to the neighbouring prompt",
        (
            "self.spo.observe(prompt_idx_B, reward_B, step=step, **rho_kw)",
            "self.spo.observe(np.roll(prompt_idx_B, 1), reward_B, step=step, **rho_kw)",
        ),
    ),
    _m(
        "tracker_before_update",
        "update and tracker order swapped: the tracker absorbs the rewards before the "
        "baseline is read and the policy is updated",
        (
            "        # Baseline is read BEFORE this step's rewards are absorbed "
            "(unbiased gradient).\n",
            "        self.spo.observe(prompt_idx_B, reward_B, step=step, "
            "rho=self.cfg.tracker.rho_max)\n",
        ),
        (
            "        rho_B = self.spo.observe(prompt_idx_B, reward_B, step=step, **rho_kw)\n",
            "        rho_B = np.full(len(prompt_idx_B), self.cfg.tracker.rho_max)\n",
        ),
    ),
    _m(
        "grouped_sampler_priority",
        "a grouped algorithm samples prompts by priority instead of the table's uniform",
        (
            'mode = self.algo.sampler if cfg.sampler.mode == "auto" else cfg.sampler.mode',
            'mode = "priority" if cfg.sampler.mode == "auto" else cfg.sampler.mode',
        ),
    ),
    _m(
        "sampler_override_ignored",
        "sampler.mode from the config is ignored",
        (
            'mode = self.algo.sampler if cfg.sampler.mode == "auto" else cfg.sampler.mode',
            "mode = self.algo.sampler",
        ),
    ),
    _m(
        "group_ids_tiled",
        "group ids interleaved: a group's members come from different prompts",
        (
            "np.repeat(np.arange(prompts_per_step), group)",
            "np.tile(np.arange(prompts_per_step), group)",
        ),
    ),
    _m(
        "responses_not_grouped",
        "the G responses of a prompt are not contiguous (tile instead of repeat)",
        (
            "prompt_idx_B = np.repeat(prompt_idx, group)",
            "prompt_idx_B = np.tile(prompt_idx, group)",
        ),
    ),
    _m(
        "baseline_none_ignored",
        "baseline=none trains with the tracker's baseline anyway",
        ('if cfg.baseline == "none" and self.algo.without_baseline:', "if False:"),
    ),
    _m(
        "offline_init_skipped",
        "tracker.init=offline does not load the values file",
        ('elif t.init == "offline":', "elif False:"),
    ),
    _m(
        "eval_system_prompt_differs",
        "in-training evaluation ignores the task's own system prompt and few-shot prefix",
        (
            "**chat_kwargs(self.cfg, self.task),\n            reward_pool=self.rewards,",
            "system_prompt=self.cfg.task.system_prompt,\n            reward_pool=self.rewards,",
        ),
    ),
    _m(
        "train_system_prompt_differs",
        "training ignores the task's own system prompt and few-shot prefix",
        (
            "prompts, **chat_kwargs(self.cfg, self.task))",
            "prompts, system_prompt=self.cfg.task.system_prompt)",
        ),
    ),
    _m(
        "generation_seed_constant",
        "every step samples with the same generation seed",
        ("seed=_step_seed(cfg.seed, step, 0)", "seed=_step_seed(cfg.seed, 0, 0)"),
    ),
    Mutant(
        "drift_visits_not_marked",
        "the drift estimator never records a visit: D grows from the run's start",
        (
            (
                "spo/algo/state.py",
                "                self.drift.mark(idx)\n",
                "                pass\n",
            ),
        ),
    ),
    Mutant(
        "replay_not_stored",
        "the replay estimator never stores the response it must re-score",
        (
            (
                "spo/train/forgetting.py",
                "            self.store.put(\n",
                "            (lambda *a: None)(\n",
            ),
        ),
    ),
    _m(
        "rho_state_not_restored",
        "resume ignores the checkpointed state of the active ρ estimator (drift clock or "
        "replay store)",
        ("if self.rho.key in state:", "if False:"),
    ),
    _m(
        "critic_reads_after_fit",
        "algo=critic: V is read after the head has fit this step's rewards (leakage)",
        (
            "adv_name, baseline_B = self.algo.advantage, self.critic.read(prompt_idx_B)",
            "self.critic.read(prompt_idx_B); self.critic.fit(reward_B); "
            "adv_name, baseline_B = self.algo.advantage, self.critic.read(prompt_idx_B)",
        ),
    ),
    _m(
        "critic_baseline_misaligned",
        "algo=critic: each sample gets V of its neighbour's prompt",
        ("self.critic.read(prompt_idx_B)", "self.critic.read(np.roll(prompt_idx_B, 1))"),
    ),
    _m(
        "critic_state_not_restored",
        "resume ignores the checkpointed value head (θ, feature scale, Adam state)",
        (
            "self.critic.load_state_dict(state[self.critic.key])",
            "state[self.critic.key]",
        ),
    ),
    Mutant(
        "one_optimizer_step",
        "optim.updates_per_step ignored: always one optimizer step",
        (("spo/train/update.py", "n_updates = cfg.optim.updates_per_step", "n_updates = 1"),),
    ),
    Mutant(
        "minibatch_advantages_shifted",
        "each mini-batch trains on the advantages of the rows next to it",
        (("spo/train/update.py", "adv_B[idx].to(dev)", "adv_B[(idx + 1) % B].to(dev)"),),
    ),
    Mutant(
        "minibatches_in_draw_order",
        "mini-batches are cut in draw (priority) order instead of a seeded shuffle",
        (("spo/train/update.py", "if shuffle_seed is None or n_updates == 1:", "if True:"),),
    ),
    Mutant(
        "offline_init_not_a_visit",
        "an offline-initialised prompt's first visit gets D = 0, as if its prior were fresh",
        (
            (
                "spo/algo/state.py",
                "        self.tracker.init_from_counts(idx, successes, trials)\n"
                "        self.drift.mark(idx)\n",
                "        self.tracker.init_from_counts(idx, successes, trials)\n",
            ),
        ),
    ),
]


def _copy_tree(dst: Path, tests_rev: str | None) -> None:
    for name in ("spo", "tests"):
        shutil.copytree(ROOT / name, dst / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", dst / "pyproject.toml")
    if tests_rev:  # tests/ as of another revision: the kill rate "before"
        shutil.rmtree(dst / "tests")
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", tests_rev, "tests"],
            check=True,
            capture_output=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(dst)], input=archive, check=True)


def _run_tests(tree: Path, tests: list[str], timeout: float) -> tuple[int, float, str]:
    # the mutated tree first; an existing PYTHONPATH (extra site dirs) stays behind it
    extra = os.environ.get("PYTHONPATH")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree), *([extra] if extra else [])])}
    existing = [t for t in tests if (tree / t).exists()]
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *existing]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=timeout
        )
        rc, out = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired:
        rc, out = -1, "timeout"
    lines = [x for x in out.strip().splitlines() if x.strip()]
    return rc, time.perf_counter() - t0, (lines[-1] if lines else "")


def run_hand_mutants(tests_rev: str | None, only: list[str] | None, timeout: float) -> dict:
    mutants = [m for m in MUTANTS if not only or m.name in only]
    with tempfile.TemporaryDirectory(prefix="spo-mutation-") as tmp:
        tree = Path(tmp)
        _copy_tree(tree, tests_rev)
        rc, secs, tail = _run_tests(tree, TESTS, timeout)
        if rc != 0:
            raise SystemExit(f"mutation: the unmutated tree fails its tests ({tail}); fix first")
        rows = []
        for m in mutants:
            originals = {}
            for file, old, new in m.edits:
                path = tree / file
                current = path.read_text()
                originals.setdefault(file, current)  # the unmutated text, restored below
                if current.count(old) != 1:
                    raise SystemExit(
                        f"mutation {m.name}: {old!r} occurs {current.count(old)} times in "
                        f"{file}; update bench/mutation.py after moving code"
                    )
                path.write_text(current.replace(old, new))
            rc, secs, tail = _run_tests(tree, TESTS, timeout)
            for file, text in originals.items():
                (tree / file).write_text(text)
            status = "killed" if rc == 1 else "survived" if rc == 0 else f"error (rc {rc})"
            rows.append(
                {
                    "name": m.name,
                    "why": m.why,
                    "status": status,
                    "seconds": round(secs, 1),
                    "pytest": tail,
                }
            )
            print(f"  {m.name:<32} {status:<10} {secs:6.1f}s  {tail}", flush=True)
    killed = sum(r["status"] == "killed" for r in rows)
    return {
        "tests": TESTS,
        "tests_rev": tests_rev or "HEAD (working tree)",
        "killed": killed,
        "total": len(rows),
        "mutants": rows,
    }


def run_mutmut(max_children: int, names: list[str]) -> dict:
    """`mutmut run NAMES` (config in pyproject.toml), then every mutant's status."""
    mutmut = [sys.executable, "-m", "mutmut"]
    t0 = time.perf_counter()
    subprocess.run(
        [*mutmut, "run", "--max-children", str(max_children), *names],
        cwd=ROOT,
        check=False,
        stdout=subprocess.DEVNULL,
    )
    out = subprocess.run(
        [*mutmut, "results", "--all", "true"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    statuses: dict[str, list[str]] = {}
    for line in out.splitlines():
        m = re.match(r"\s*(\S+):\s*(.+)$", line)
        if m:
            statuses.setdefault(m.group(2).strip(), []).append(m.group(1))
    by_module: dict[str, dict[str, int]] = {}
    for status, mutants in statuses.items():
        for name in mutants:
            module = name.split(".x")[0]
            by_module.setdefault(module, {}).setdefault(status, 0)
            by_module[module][status] += 1
    return {
        "command": f"mutmut run {' '.join(names)}",
        "seconds": round(time.perf_counter() - t0),
        "counts": {k: len(v) for k, v in sorted(statuses.items())},
        "by_module": dict(sorted(by_module.items())),
        "survived": sorted(statuses.get("survived", [])),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tests-rev", help="take tests/ from this git revision (kill rate before)")
    p.add_argument("--only", nargs="*", help="run only these named mutants")
    p.add_argument("--mutmut", action="store_true", help="also run mutmut")
    p.add_argument(
        "--mutmut-names",
        nargs="*",
        default=["spo.algo*"],
        help="mutant name globs for mutmut (default spo.algo*: ~2,200 mutants, hours on 2 "
        "cores; add 'spo.train*' for the trainer's ~800, or pass survivor names to re-check)",
    )
    p.add_argument("--no-hand", action="store_true", help="skip the named wiring mutants")
    p.add_argument("--max-children", type=int, default=2)
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per test run")
    p.add_argument("--out", default=str(RESULTS / "mutation.json"))
    args = p.parse_args(argv)

    if not args.no_hand:
        out = Path(args.out)
        result = json.loads(out.read_text()) if out.exists() else {}
        key = "hand_before" if args.tests_rev else "hand"
        which = "tests from " + args.tests_rev if args.tests_rev else "HEAD"
        print(f"named wiring mutants ({which}):")
        result[key] = run_hand_mutants(args.tests_rev, args.only, args.timeout)
        result[key]["date"] = time.strftime("%Y-%m-%d")
        print(f"killed {result[key]['killed']} of {result[key]['total']}")
        _write(out, result)
    if args.mutmut:
        result = run_mutmut(args.max_children, args.mutmut_names)
        result["date"] = time.strftime("%Y-%m-%d")
        print(f"mutmut: {result['counts']}")
        _write(RESULTS / "mutmut.json", result)
    return 0


def _write(path: Path, result: dict) -> None:
    write_json(path, result, ensure_ascii=False)
    print(f"wrote {path}")


if __name__ == "__main__":
    raise SystemExit(main())
