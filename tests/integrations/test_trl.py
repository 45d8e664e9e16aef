"""spo.integrations.trl on CPU with a tiny random Llama (each run: a few steps, ~1 s)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("trl")

from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer

from spo.algo import SPOState
from spo.integrations import trl as spo_trl
from spo.integrations.trl import SPOConfig, SPOTrainer

N_PROMPTS = 12


def letters(completions, **kwargs):
    """Fraction of the first 8 characters that are letters: fractional, text-driven."""
    return [sum(c.isalpha() for c in text[:8]) / 8 for text in completions]


def digits(completions, **kwargs):
    return [float(any(c.isdigit() for c in text)) for text in completions]


@pytest.fixture()
def dataset() -> Dataset:
    return Dataset.from_dict(
        {
            "prompt": [f"Say something about {i}." for i in range(N_PROMPTS)],
            "qid": [f"q{i:02d}" for i in range(N_PROMPTS)],
        }
    )


def config(tmp_path, **overrides) -> SPOConfig:
    base = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        max_steps=3,
        max_completion_length=8,
        learning_rate=1e-2,
        logging_steps=1,
        report_to="none",
        use_cpu=True,
        save_strategy="no",
        bf16=False,
        seed=7,
    )
    base.update(overrides)
    return SPOConfig(**base)


class Recording(SPOTrainer):
    """Records what each generation drew, the rewards TRL computed, the prompts TRL
    generated for, and the advantages the loss received."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.generations: list[dict] = []
        self.loss_advantages: list[torch.Tensor] = []

    def _generate_and_score_completions(self, inputs):
        out = super()._generate_and_score_completions(inputs)
        self.generations.append(
            {
                "keys": list(self.spo_last_keys),
                "rewards_per_func": self._spo_rewards_per_func.clone(),
                "advantages": out["advantages"].clone(),
                "step": self.state.global_step,
            }
        )
        return out

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        self.last_prompts = list(prompts)
        return super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)

    def compute_loss(self, model, inputs, *args, **kwargs):
        self.loss_advantages.append(inputs["advantages"].detach().clone())
        return super().compute_loss(model, inputs, *args, **kwargs)


def make_trainer(model_dir, dataset, args, *, reward_funcs=letters, cls=Recording, **kwargs):
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    return cls(
        model,
        reward_funcs=reward_funcs,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        **kwargs,
    )


def params(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}


def test_a_few_steps_train(tiny_model_dir, dataset, tmp_path):
    trainer = make_trainer(tiny_model_dir, dataset, config(tmp_path))
    before = params(trainer.model)
    trainer.train()
    after = params(trainer.model)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 3 and all(np.isfinite(h["loss"]) for h in logs)
    assert all("spo/tracker/seen_fraction" in h and "spo/step_drift" in h for h in logs)
    assert not any("frac_reward_zero_std" in h for h in logs)
    assert trainer.spo_state.tracker.num_updates == 3  # one observe per optimizer step
    assert trainer.spo_state.tracker.seen().sum() > 0


def test_advantages_and_draws_follow_spo_state(tiny_model_dir, dataset, tmp_path):
    """Two weighted reward functions; constant rho so the whole run can be replayed."""
    args = config(tmp_path, reward_weights=[1.0, 0.5], spo_rho="constant", max_steps=4)
    trainer = make_trainer(tiny_model_dir, dataset, args, reward_funcs=[letters, digits])
    trainer.train()
    assert trainer.spo_state.reward_range == (0.0, 1.5)  # Σ positive weights
    ref = SPOState(
        N_PROMPTS, seed=args.seed, reward_range=(0.0, 1.5), d_half=args.spo_d_half
    )  # a replay from the same seed
    assert len(trainer.generations) == 4
    for g in trainer.generations:
        keys = ref.select(4)
        assert keys == g["keys"]  # drawn prompts follow the sampler
        weighted = (g["rewards_per_func"] * torch.tensor([1.0, 0.5])).sum(1)
        expected = ref.advantages(weighted, keys)
        torch.testing.assert_close(g["advantages"], expected.float(), rtol=0, atol=0)
        ref.observe(keys, weighted, step=g["step"] + 1, rho=args.spo_rho_constant)
    # prompts TRL generated for = the drawn rows (the last generation)
    assert trainer.last_prompts == [dataset[k]["prompt"] for k in trainer.generations[-1]["keys"]]
    # what the loss trained on: the same values (TRL shuffles rows within a generation)
    trained = torch.sort(torch.cat(trainer.loss_advantages)).values
    drawn = torch.sort(torch.cat([g["advantages"] for g in trainer.generations])).values
    torch.testing.assert_close(trained, drawn, rtol=0, atol=0)
    for k in ("tracker", "sampler"):
        a, b = trainer.spo_state.state_dict()[k], ref.state_dict()[k]
        for name in a:
            np.testing.assert_array_equal(np.asarray(a[name]), np.asarray(b[name]), err_msg=name)


def test_checkpoint_resume_is_lossless(tiny_model_dir, dataset, tmp_path):
    straight_args = config(tmp_path / "a", max_steps=4, save_strategy="steps", save_steps=2)
    straight = make_trainer(tiny_model_dir, dataset, straight_args)
    straight.train()
    ckpt = tmp_path / "a" / "out" / "checkpoint-2"
    assert (ckpt / "spo" / "state.json").is_file()

    resumed_args = config(tmp_path / "b", max_steps=4, save_strategy="no")
    resumed = make_trainer(tiny_model_dir, dataset, resumed_args)
    resumed.train(resume_from_checkpoint=str(ckpt))
    # same next prompts after the resume, same tracker state at the end
    assert [g["keys"] for g in resumed.generations] == [g["keys"] for g in straight.generations[2:]]
    s, r = straight.spo_state.state_dict(), resumed.spo_state.state_dict()
    for part in ("tracker", "sampler", "drift"):
        for name in s[part]:
            np.testing.assert_array_equal(
                np.asarray(s[part][name]), np.asarray(r[part][name]), err_msg=f"{part}/{name}"
            )


def test_keyed_dataset_and_init_values(tiny_model_dir, dataset, tmp_path):
    from spo.algo.values import write_values

    values = write_values(tmp_path / "v.parquet", ["q03", "q07"], [8, 0], [8, 8])
    args = config(tmp_path, spo_key_column="qid", spo_init_values=str(values), max_steps=1)
    trainer = make_trainer(tiny_model_dir, dataset, args)
    assert trainer.spo_state.baseline(["q03", "q07", "q00"]) == pytest.approx(
        [8.5 / 9, 0.5 / 9, 0.5]
    )
    trainer.train()
    assert all(isinstance(k, str) for k in trainer.spo_last_keys)
    assert trainer.last_prompts == [dataset[int(k[1:])]["prompt"] for k in trainer.spo_last_keys]


def test_peft_config_trains_the_adapter(tiny_model_dir, dataset, tmp_path):
    peft = pytest.importorskip("peft")
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    trainer = make_trainer(tiny_model_dir, dataset, config(tmp_path, max_steps=2), peft_config=lora)
    before = params(trainer.model)
    assert before and all("lora" in k for k in before)
    trainer.train()
    after = params(trainer.model)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert trainer.spo_state.tracker.num_updates == 2


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"num_generations": 4},
            "SPOConfig samples one completion per prompt; got num_generations=4",
        ),
        ({"spo_rho": "replay"}, "SPOConfig spo_rho must be one of drift, constant; got 'replay'"),
        ({"spo_rho_min": 0.99, "spo_rho_max": 0.9}, "SPOConfig: rho_max must be >= rho_min"),
        ({"spo_reward_range": [1.0, 0.0]}, "SPOConfig: reward_range needs lo < hi"),
    ],
)
def test_bad_config_is_one_clear_error(tmp_path, overrides, message):
    with pytest.raises(ValueError, match="^" + __import__("re").escape(message)) as e:
        config(tmp_path, **overrides)
    assert "\n" not in str(e.value)


def test_bad_trainer_inputs_are_one_clear_error(tiny_model_dir, dataset, tmp_path):
    from trl import GRPOConfig

    grpo = GRPOConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    with pytest.raises(ValueError, match="needs an SPOConfig"):
        make_trainer(tiny_model_dir, dataset, grpo)
    with pytest.raises(ValueError, match="draws 4 distinct prompts per generation"):
        make_trainer(tiny_model_dir, dataset.select(range(3)), config(tmp_path))
    # a reward outside the range is an error naming the range setting, not clipped
    trainer = make_trainer(
        tiny_model_dir, dataset, config(tmp_path), reward_funcs=lambda completions, **k: [2.0] * 4
    )
    with pytest.raises(ValueError, match=r"rewards must be in \[0, 1\]; got 2.0.*spo_reward_range"):
        trainer.train()


def test_unsupported_trl_version_is_one_line(monkeypatch):
    import trl

    monkeypatch.setattr(trl, "__version__", "1.15.2")
    with pytest.raises(ImportError, match=r"^spo.integrations.trl supports trl>=1\.16,<1\.17") as e:
        spo_trl._import_trl()
    assert "\n" not in str(e.value) and "found trl 1.15.2" in str(e.value)
