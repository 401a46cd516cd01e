"""Training samples: conversations -> token ids with assistant-only labels -> packed or padded batches."""
