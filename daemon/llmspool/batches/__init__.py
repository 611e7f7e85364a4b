"""What the two batch actors share (``context.BatchContext``). The batch vocabulary a provider
plugin speaks, the batch files (``core.batch_lines``) and remote batches (``core.remote_batch``),
lives in the core, with the plugin interface that names it."""
