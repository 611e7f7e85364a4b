"""OpenAI's Files and Batches API on the socket, served by the spooler (a batch is a job)."""
