"""Training: the loop (trainer), its config tree, the policy update, forgetting (ρ)
estimators, checkpoints, logging, optimizer, distributed trainer ranks."""


class TrainError(ValueError):
    """A run that cannot start or continue; the message is one line for the user."""
