"""Data for the supervised stages: preference pairs and rankings (``preferences``), SFT
demonstrations (``sft``), prompt sets (``prompts``), the file readers and row validation
behind them (``readers``, ``fields``), and tokenised batches (``batching``)."""
