"""``tether demo``: the whole RLHF pipeline on a real instruct model, on a laptop CPU."""
