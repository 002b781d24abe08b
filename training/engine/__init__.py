"""The training loop and what runs around it: config, callbacks, optimisers, distributed helpers, refreshes."""
