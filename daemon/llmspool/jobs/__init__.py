"""Deferred work: how uploads become a job (``intake``, ``submission``; checked lines wait
on disk in a ``spool`` until stored) and the job's plan (``plan``). What a job is
(``NewJob``, ``JobLine``) is a store record, in ``llmspool.store.records``."""
