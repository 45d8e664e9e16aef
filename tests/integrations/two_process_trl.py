"""Run by test_trl_two_processes.py under `torchrun --nproc_per_node 2` (CPU, gloo).

Writes, per rank, what each generation drew, the gathered rewards, this rank's
advantages and the final SPOState, as JSON at OUT.<rank>.json.
"""

import json
import sys
import tempfile
from pathlib import Path

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer

from spo.integrations.trl import SPOConfig, SPOTrainer

model_dir, out = sys.argv[1], sys.argv[2]
tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
dataset = Dataset.from_dict({"prompt": [f"Say {i}" for i in range(16)]})


def letters(completions, **kwargs):
    return [sum(c.isalpha() for c in text[:8]) / 8 for text in completions]


generations = []


class Recording(SPOTrainer):
    def _generate_and_score_completions(self, inputs):
        result = super()._generate_and_score_completions(inputs)
        generations.append(
            {
                "keys": list(self.spo_last_keys),
                "rewards": self._spo_rewards_per_func[:, 0].tolist(),
                "local_advantages": result["advantages"].tolist(),
                "step": self.state.global_step,
            }
        )
        return result


args = SPOConfig(
    output_dir=tempfile.mkdtemp(),
    per_device_train_batch_size=4,
    max_steps=2,
    max_completion_length=8,
    learning_rate=1e-2,
    report_to="none",
    use_cpu=True,
    save_strategy="no",
    seed=3,
    spo_rho="constant",
    disable_tqdm=True,
)
trainer = Recording(
    model, reward_funcs=letters, args=args, train_dataset=dataset, processing_class=tokenizer
)
trainer.train()
state = trainer.spo_state.state_dict()
Path(f"{out}.{trainer.accelerator.process_index}.json").write_text(
    json.dumps(
        {
            "world": trainer.accelerator.num_processes,
            "generations": generations,
            "alpha": state["tracker"]["alpha"].tolist(),
            "rng": state["sampler"]["rng_state"].tolist(),
        }
    )
)
