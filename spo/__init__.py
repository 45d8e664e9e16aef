"""spo-rl: Single-stream Policy Optimization.

The packages are layers; each imports only the ones above it in this list
(tests/test_layout.py checks it):

    algo/          the math: tracker, ρ, advantages, sampler, losses, metrics, the
                   ALGORITHMS table, SPOState (numpy/torch only, no I/O but the values file)
    tasks/         prompt sources, verifiers, the reward pool
    tools/         the tool-call protocol and the Python sandbox
    policy/        models, LoRA, weights, the packed batch, the training forward
    sim/           agentic throughput simulation
    rollout/       engines (HF / CPU decoder, vLLM, Ray), scheduler, multi-turn loop
    eval/          sample and score a policy on held-out prompts
    train/         the trainer loop, config, update, ρ estimators, checkpoints, logging
    study/         read run directories: report, compare study, summary, page
    integrations/  TRL and verl adapters over spo.algo.SPOState
    commands/      one module per `spo` command (argparse and printing live only here)
    cli.py         the `spo` entry point: parser, user-error mapping, dispatch

One name per concept, everywhere (code, checkpoints, files):

    prompt_id      a prompt's stable string id (`Example.id`: id column or content hash);
                   what checkpoints, values/tracker parquet files and samples.jsonl store
    prompt_idx     its dense integer index: row of the tracker, `prompt_idx_B` per sample
    prompt_tokens  its chat-encoded token ids (what engines and `pack` take)
    behaviour_logp log-probs of the sampled tokens under the policy that sampled them
                   (the engine); `old_logp` is the trainer's own pre-update recomputation
    key            in `spo.algo.SPOState` only: the host framework's prompt key (any
                   hashable), mapped to a prompt_idx
"""

import os as _os

# OpenMP worker threads (GNU libgomp, as in PyTorch's CPU wheels) spin ~300k iterations
# waiting for work by default: fastest on an idle machine, but on small shared CPUs the
# spinning steals the cores other processes need (generation 8.3 s vs 4.7 s with 2 busy
# cores). PASSIVE (sleep at once) is robust but slow when idle (4.1 s vs 2.6 s). A short
# spin gets both: 2.6 s idle, 5.3 s with 2 busy cores (64 x 64-token rollouts of
# SmolLM2-135M, 2 threads). Must be set before torch is imported; the user's own setting wins.
_os.environ.setdefault("GOMP_SPINCOUNT", "20000")

__version__ = "0.1.0"
