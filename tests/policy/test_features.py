"""prompt_hidden: the final hidden state at each prompt's last token, the same whatever the
padding and micro-batching, read without gradient (the critic arm's features)."""

from __future__ import annotations

import pytest
import torch

from spo.policy.features import prompt_hidden
from spo.policy.models import load_policy

PROMPTS = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14, 15, 16, 17, 18], [19]]
# a shared 6-token prefix (like a system prompt): run once, its keys/values repeated
SHARED = [[1, 2, 3, 4, 5, 6, *tail] for tail in ([7, 8], [9], [10, 11, 12])]


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return load_policy(str(tiny_model_dir))[0]


def reference(model, prompts):
    """Each prompt alone, the full model's last hidden state (after the final norm)."""
    with torch.no_grad():
        return torch.stack(
            [
                model(input_ids=torch.tensor([p]), output_hidden_states=True)
                .hidden_states[-1][0, -1]
                .float()
                for p in prompts
            ]
        )


def test_last_token_state_of_each_prompt_whatever_the_batching(model):
    want = reference(model, PROMPTS)
    for micro in (1, 3, 16):
        got = prompt_hidden(model, PROMPTS, pad_id=0, micro_batch_size=micro)
        assert got.shape == (len(PROMPTS), model.config.hidden_size)
        assert got.dtype == torch.float32 and not got.requires_grad
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    # padding after a row never changes it: another pad id gives identical features
    torch.testing.assert_close(
        prompt_hidden(model, PROMPTS, pad_id=0), prompt_hidden(model, PROMPTS, pad_id=3)
    )


def test_shared_prefix_runs_once_and_gives_the_same_states(model, monkeypatch):
    import spo.policy.features as features

    seen = []
    run = features.decoder_hidden

    def spy(model, batch, **kw):
        hidden_BLD, C = run(model, batch, **kw)
        seen.append(C)
        return hidden_BLD, C

    monkeypatch.setattr(features, "decoder_hidden", spy)
    got = prompt_hidden(model, SHARED, pad_id=0)
    assert seen == [6]
    torch.testing.assert_close(got, reference(model, SHARED), rtol=0, atol=1e-6)


def test_bad_input(model):
    with pytest.raises(ValueError, match="at least one token"):
        prompt_hidden(model, [[1, 2], []], pad_id=0)
    with pytest.raises(ValueError, match="micro_batch_size must be >= 1"):
        prompt_hidden(model, PROMPTS, pad_id=0, micro_batch_size=0)
    assert prompt_hidden(model, [], pad_id=0).shape == (0, model.config.hidden_size)
