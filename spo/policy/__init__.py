"""The policy being trained, as torch objects: loading it, its trainable weights and their
sync to engines, and its forward pass over a packed batch.

- `models`    load a model directory or the embedded SmolLM2-135M; chat-encode prompts
- `lora`      PEFT LoRA adapters from `model.lora`
- `weights`   the policy's weights as engines need them (merged LoRA, full tensors)
- `batch`     PackedBatch: prompt + completion rows padded for one training forward
- `logprobs`  completion_logp: per-token log-probs of a PackedBatch (the trainer's forward)
"""
